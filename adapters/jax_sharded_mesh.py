"""The JAX adapter's ``sharded`` path, hosted in its worker process: one mesh over every CPU device, one jitted step.

The parent's side -- the worker's environment (N host devices), the padding rule, the number N -- and the reasons
for each are :mod:`backprop_conformance.adapters.jax_sharded`. The step differentiates the single-process paths' own
forward pass (:func:`~backprop_conformance.adapters.jax_model.forward`) with the padding mask, so the sharded path
computes the same network, and only the partitioning is new. Only the worker process imports this module (and JAX).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from backprop_conformance.adapters.jax_model import by_layer, forward
from backprop_conformance.adapters.jax_sharded import padded_size
from backprop_conformance.reference.dtypes import float_format
from backprop_conformance.reference.model import Batch, Network


def _masked_forward(params: list[tuple[Any, Any]], x: Any, y: Any, mask: Any) -> tuple[Any, tuple[Any, ...]]:
    """:func:`~backprop_conformance.adapters.jax_model.forward` with the padding mask, in the argument order the step shards."""
    return forward(params, x, y, mask=mask)


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
        self._step = jax.jit(jax.value_and_grad(_masked_forward, has_aux=True))

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
        (cost, (_, zs, activations)), gradients = self._step(params, xs, ys, masks)
        carrier = float_format(dtype).carrier

        def real(arrays: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
            return {l: array[:B] for l, array in arrays.items()}

        return {
            "w": by_layer([w for w, _ in gradients], carrier),
            "b": by_layer([b for _, b in gradients], carrier),
            "cost": float(cost),
            "a": real(by_layer(activations, carrier, first=1)),
            "z": real(by_layer(zs, carrier)),
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
