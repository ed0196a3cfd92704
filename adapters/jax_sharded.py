"""The JAX adapter's ``sharded`` path: ``jax.jit`` with the batch sharded over a mesh of N CPU devices.

What is on trial: JAX's SPMD partitioner. The parameters are replicated and the batch is split along its first axis
over a one-axis ``Mesh`` (``NamedSharding(mesh, PartitionSpec("batch"))``); ``jax.jit(jax.value_and_grad(cost))``
is then compiled for that layout, and XLA's partitioner, not the suite, decides that each device sums its own
examples' contributions to ∂C/∂w^l and ∂C/∂b^l and inserts the cross-device all-reduce that combines them. The
returned gradient is already the page's (the cost is a sum, and nothing averages), so the adapter only reads it.

N host devices without surprising the user's process: XLA makes N CPU devices only when
``--xla_force_host_platform_device_count=N`` is in ``XLA_FLAGS`` before JAX initialises its backend, and in a
process that has already used JAX (as the ``jit`` path has) it is too late, while setting it for the whole process
would change what every other JAX computation in it runs on. So the path runs in a worker process of its own
(:mod:`backprop_conformance.adapters.worker`) hosting :class:`~backprop_conformance.adapters.jax_sharded_mesh.ShardedJax`,
started with that flag added to the parent's ``XLA_FLAGS``, 64-bit
types enabled (``JAX_ENABLE_X64``: it is that process's only configuration) and ``JAX_PLATFORMS=cpu``; the user's
process is left exactly as it was. N comes from :data:`DEVICES_VARIABLE` (2 by default).

Batches that do not divide: JAX refuses to shard an axis of B examples over N devices unless N divides B
(``device_put`` raises). The path does what a JAX user does: it pads the batch with zero rows to a multiple of N,
⌈B/N⌉ per device (the split of :func:`~backprop_conformance.adapters.ranks.shards`), and multiplies each example's
squared residual by a mask, 1 for a real example and 0 for padding (the ``mask`` of the one forward pass,
:func:`~backprop_conformance.adapters.jax_model.forward`). The mask changes no real example's arithmetic
(a product by 1 is exact), a padded example's residual, δ and every gradient contribution are exactly 0, and adding
0 is exact, so the gradient is that of the real batch; the padded rows are dropped from the returned z and a.
"""

from __future__ import annotations

import os

from backprop_conformance.adapters import worker
from backprop_conformance.adapters.ranks import count_from_environment

DEVICES_VARIABLE = "BACKPROP_CONFORMANCE_SHARDED_DEVICES"
DEFAULT_DEVICES = 2
MAX_DEVICES = 64
TARGET = "backprop_conformance.adapters.jax_sharded_mesh:ShardedJax"
"""The class the worker hosts (:class:`~backprop_conformance.adapters.jax_sharded_mesh.ShardedJax`)."""
FORCE_DEVICES = "--xla_force_host_platform_device_count"


def device_count() -> int:
    """N from :data:`DEVICES_VARIABLE` (default 2); anything but a whole number 1..64 is an :class:`AdapterError` saying so."""
    return count_from_environment(DEVICES_VARIABLE, DEFAULT_DEVICES, MAX_DEVICES, "the number of devices the jax sharded path shards over")


def shared_worker(devices: int) -> worker.Worker:
    """The worker process that hosts the sharded computation on ``devices`` CPU devices (one per N, per process)."""
    flags = " ".join(flag for flag in os.environ.get("XLA_FLAGS", "").split() if not flag.startswith(FORCE_DEVICES))
    environment = {
        "XLA_FLAGS": f"{flags} {FORCE_DEVICES}={devices}".strip(),
        "JAX_PLATFORMS": "cpu",
        "JAX_ENABLE_X64": "1",
    }
    return worker.shared(TARGET, environment, name=f"jax sharded over {devices} devices")


def padded_size(batch_size: int, devices: int) -> int:
    """B rounded up to a multiple of N: ⌈B/N⌉ examples per device."""
    return -(-batch_size // devices) * devices
