"""A complete third-party adapter: hand-written numpy backpropagation, put on trial by the suite.

It ships with the suite so that it can be run, read and copied wherever the suite is installed:

    python -m pytest conformance --conformance-backend backprop_conformance.adapters.example_numpy:NumpyAdapter
    backprop-conformance --conformance-backend backprop_conformance.adapters.example_numpy:NumpyAdapter

This is the template for a framework author: copy this file into your package, replace the numpy code
in ``run`` with your framework's model, cost and gradient calls, and name your copy on the command
line. Everything the suite needs is below; docs/adapters.md explains each part.
"""

from __future__ import annotations

import numpy as np

from backprop_conformance.adapters.base import Adapter, AdapterOutput, Capabilities
from backprop_conformance.reference.model import Batch, Gradients, Network


class NumpyAdapter(Adapter):
    requires = ("numpy",)  # import names of what the adapter needs; missing ones make the suite skip it

    def capabilities(self) -> Capabilities:
        return Capabilities(
            name="numpy-example",
            framework="NumPy (hand-written backprop)",
            version=np.__version__,
            dtypes=("float64", "float32", "float16"),
            paths=("manual",),
            default_paths=("manual",),
            # Sums accumulate in the storage format, except in float16, declared per operation: numpy's float16
            # matrix products and its sum of a whole array accumulate in float32, but sum(axis=0), the bias
            # gradient's batch sum, adds row by row in float16.
            accumulation={"float16": {"dot": "float32", "cost_sum": "float32"}},
        )

    def load_parameters(self, network: Network, *, dtype: str, device: str = "cpu") -> Network:
        # A real framework would build its model here and read the parameters back out of it.
        return Network({l: network.w[l].astype(dtype) for l in network.layers}, {l: network.b[l].astype(dtype) for l in network.layers})

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        w = {l: network.w[l].astype(dtype) for l in network.layers}
        b = {l: network.b[l].astype(dtype) for l in network.layers}
        a, z, sp = {1: batch.x.astype(dtype)}, {}, {}
        for l in network.layers:  # forward: z^l = a^{l-1} (w^l)^T + b^l, a^l = σ(z^l)
            z[l] = a[l - 1] @ w[l].T + b[l]
            e = np.exp(-np.abs(z[l]))  # σ(z) from e^{-|z|}: no overflow; σ′ = σ(z)σ(−z), exact even where σ(z) rounds to 1
            a[l] = np.where(z[l] >= 0, 1, e) / (1 + e)
            sp[l] = (1 / (1 + e)) * (e / (1 + e))
        L = network.depth
        r = a[L] - batch.y.astype(dtype)
        cost = 0.5 * np.sum(r * r)
        delta = {L: r * sp[L]}  # δ^L = (a^L − y) σ′(z^L)
        for l in range(L - 1, 1, -1):  # δ^l = (δ^{l+1} w^{l+1}) ⊙ σ′(z^l)
            delta[l] = (delta[l + 1] @ w[l + 1]) * sp[l]
        grads = Gradients({l: delta[l].T @ a[l - 1] for l in network.layers}, {l: delta[l].sum(axis=0) for l in network.layers})
        return AdapterOutput(grads, float(cost), a=a, z=z, delta=delta)
