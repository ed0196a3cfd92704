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
(:mod:`backprop_conformance.adapters.worker`), started with that flag added to the parent's ``XLA_FLAGS``, 64-bit
types enabled (``JAX_ENABLE_X64``: it is that process's only configuration) and ``JAX_PLATFORMS=cpu``; the user's
process is left exactly as it was. N comes from :data:`DEVICES_VARIABLE` (2 by default).

Batches that do not divide: JAX refuses to shard an axis of B examples over N devices unless N divides B
(``device_put`` raises). The path does what a JAX user does: it pads the batch with zero rows to a multiple of N,
⌈B/N⌉ per device (the split of :func:`~backprop_conformance.adapters.base.shards`), and multiplies each example's
squared residual by a mask, 1 for a real example and 0 for padding. The mask changes no real example's arithmetic
(a product by 1 is exact), a padded example's residual, δ and every gradient contribution are exactly 0, and adding
0 is exact, so the gradient is that of the real batch; the padded rows are dropped from the returned z and a.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np

from backprop_conformance.adapters import worker
from backprop_conformance.adapters.base import count_from_environment
from backprop_conformance.reference.dtypes import float_format
from backprop_conformance.reference.model import Batch, Network

DEVICES_VARIABLE = "BACKPROP_CONFORMANCE_SHARDED_DEVICES"
DEFAULT_DEVICES = 2
MAX_DEVICES = 64
TARGET = "backprop_conformance.adapters.jax_sharded:ShardedJax"
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


class ShardedJax:
    """Hosted in the worker: one mesh over every CPU device, one jitted function, called per example."""

    def __init__(self) -> None:
        import jax

        self._jax = jax
        devices = jax.devices("cpu")
        self.devices = len(devices)
        mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
        self._replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        self._split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
        self._step = jax.jit(jax.value_and_grad(_masked_cost, has_aux=True))

    def run(self, network: Network, batch: Batch, dtype: str) -> dict[str, Any]:
        """∂C/∂w^l, ∂C/∂b^l, C and the real examples' z^l, a^l, computed with the batch sharded over every device."""
        jax = self._jax
        jdtype = jax.numpy.dtype(dtype)
        B = batch.size
        padded = padded_size(B, self.devices)
        x = np.zeros((padded, batch.x.shape[1]), dtype=jdtype)
        y = np.zeros((padded, batch.y.shape[1]), dtype=jdtype)
        x[:B], y[:B] = batch.x, batch.y
        mask = np.zeros((padded, 1), dtype=jdtype)
        mask[:B] = 1
        params = [
            (
                jax.device_put(np.asarray(network.w[l], dtype=jdtype), self._replicated),
                jax.device_put(np.asarray(network.b[l], dtype=jdtype), self._replicated),
            )
            for l in network.layers
        ]
        xs, ys, masks = (jax.device_put(array, self._split) for array in (x, y, mask))
        (cost, (zs, activations)), gradients = self._step(params, xs, ys, masks)
        carrier = float_format(dtype).carrier

        def by_layer(arrays: list[Any], first: int = 2) -> dict[int, np.ndarray]:
            return {l: np.asarray(array).astype(carrier)[:B] for l, array in enumerate(arrays, start=first)}

        return {
            "w": {l: np.asarray(w).astype(carrier) for l, (w, _) in enumerate(gradients, start=2)},
            "b": {l: np.asarray(b).astype(carrier) for l, (_, b) in enumerate(gradients, start=2)},
            "cost": float(cost),
            "a": by_layer(activations, first=1),
            "z": by_layer(zs),
            "sharding": str(xs.sharding.spec),
        }

    def collectives(self, widths: tuple[int, ...], batch_size: int, dtype: str) -> dict[str, Any]:
        """What XLA compiled for a shape: the devices it spans and the cross-device operations it inserted.

        The evidence that the path is data-parallel at all: a program that gathered the batch onto one device
        would have no all-reduce, and would pass every gradient check.
        """
        jax = self._jax
        jdtype = jax.numpy.dtype(dtype)
        padded = padded_size(batch_size, self.devices)
        params = [
            (jax.ShapeDtypeStruct((n, m), jdtype, sharding=self._replicated), jax.ShapeDtypeStruct((n,), jdtype, sharding=self._replicated))
            for m, n in itertools.pairwise(widths)
        ]
        rows = [jax.ShapeDtypeStruct((padded, columns), jdtype, sharding=self._split) for columns in (widths[0], widths[-1], 1)]
        text = self._step.lower(params, *rows).compile().as_text()
        names = ("all-reduce", "reduce-scatter", "all-gather", "all-to-all", "collective-permute")
        return {"devices": self.devices, "collectives": {name: text.count(f" {name}(") for name in names}}


def _masked_cost(params: list[tuple[Any, Any]], x: Any, y: Any, mask: Any) -> tuple[Any, tuple[Any, Any]]:
    """C = Σ_x m_x · 1/2 Σ_j (y_j − a^L_j)², m_x = 1 for a real example and 0 for padding; with z^l and a^l as aux."""
    import jax

    highest = jax.lax.Precision.HIGHEST
    a = x
    zs, activations = [], [x]
    for w, b in params:
        # z^l_j = Σ_k w^l_jk a^{l−1}_k + b^l_j, one example per row; a^l_j = σ(z^l_j)
        z = jax.numpy.matmul(a, w.T, precision=highest) + b
        a = jax.nn.sigmoid(z)
        zs.append(z)
        activations.append(a)
    cost = 0.5 * jax.numpy.sum(mask * (y - a) ** 2)
    return cost, (zs, activations)
