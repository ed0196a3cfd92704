"""JAX's training-loop paths: accumulation over micro-batches in ``lax.scan``, rematerialization, per-example gradients.

* ``accumulate``: one ``jax.jit`` program whose ``lax.scan`` runs ``jax.grad`` once per micro-batch and adds each
  micro-batch's gradient to a carry in the parameters' own format, as a JAX training loop with gradient accumulation
  does. The micro-batches are the batch's split (:attr:`~backprop_conformance.reference.model.Batch.micro_batches`,
  drawn by the suite, uneven ones included), each given as a 0/1 mask over the examples, the way a JAX loop takes
  uneven micro-batches through one compiled step (padding and masking): a masked example contributes exact zeros to
  every sum. The scan always runs :data:`SCAN_STEPS` steps (the steps past the k micro-batches have all-zero masks,
  whose gradients are exact zeros, and adding 0 is exact), so that one program per shape serves every split.
* ``remat`` and ``remat-dots``: ``jax.jit(jax.grad(cost))`` with every layer under ``jax.checkpoint`` (rematerialization),
  with the policy that saves nothing (the backward pass recomputes each layer) or the one that saves the matrix
  products (:data:`REMAT_POLICIES`); the recomputed forward must give the same gradients.
* ``per-example``: ``jax.jit`` of ``jax.vmap(jax.grad(cost of one example))``, the per-example gradients of DP-SGD
  libraries, summed over the batch in the same program; the per-example gradients are returned too, and judged.

All compile once per shape and format (their shapes come from the pool) and are compiled on first use, not ahead:
the compile-ahead worker (:mod:`~backprop_conformance.adapters.jax_precompile`) knows only the paths of
:data:`~backprop_conformance.adapters.jax_model.JITTED_PATHS`, and these are declared not to use it. Importing this
module does not import JAX.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from backprop_conformance.adapters.base import AdapterOutput, RequestError
from backprop_conformance.adapters.jax_model import by_layer, compute_format, forward, import_jax, parameters, put
from backprop_conformance.reference.dtypes import float_format
from backprop_conformance.reference.model import Batch, Gradients, Network

PATHS = ("accumulate", "per-example", "remat", "remat-dots")

REMAT_POLICIES = {"remat": "nothing_saveable", "remat-dots": "dots_with_no_batch_dims_saveable"}
"""The ``jax.checkpoint`` policy of each remat path (``jax.checkpoint_policies``): recompute everything in the backward
pass, or keep the matrix products and recompute the rest."""

SCAN_STEPS = 8
"""The scan's length: the most micro-batches one program takes (the suite draws at most 8)."""


@functools.cache
def _accumulated() -> Any:
    """(params, x, y, masks) → (Σ_i ∂C_i/∂θ, (Σ_i C_i, [z^l], [a^l])), masks of shape (steps, B, 1), one per micro-batch."""
    jax = import_jax()
    jnp = jax.numpy
    gradient = jax.grad(forward, has_aux=True)

    def run(params: Any, x: Any, y: Any, masks: Any) -> Any:
        def step(carry: Any, mask: Any) -> Any:
            total, cost = carry
            g, (c, zs, activations) = gradient(params, x, y, None, mask)
            return (jax.tree.map(jnp.add, total, g), cost + c), (zs, activations)

        start = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), x.dtype))
        (total, cost), (zs, activations) = jax.lax.scan(step, start, masks)
        return total, (cost, [z[0] for z in zs], [a[0] for a in activations])

    return jax.jit(run)


@functools.cache
def _per_example() -> Any:
    """(params, x, y) → (Σ_x ∂C_x/∂θ, [∂C_x/∂θ], (Σ_x C_x, [z^l], [a^l])) with vmap over the examples."""
    jax = import_jax()

    def one(params: Any, x: Any, y: Any) -> Any:
        return forward(params, x[None], y[None])

    def run(params: Any, x: Any, y: Any) -> Any:
        per_example, (costs, zs, activations) = jax.vmap(jax.grad(one, has_aux=True), in_axes=(None, 0, 0))(params, x, y)
        total = jax.tree.map(lambda g: g.sum(0), per_example)
        return total, per_example, (costs.sum(), [z[:, 0] for z in zs], [a[:, 0] for a in activations])

    return jax.jit(run)


@functools.cache
def _rematerialized(policy: str, compute: str | None) -> Any:
    """``jax.jit(jax.grad(cost))`` with every layer under ``jax.checkpoint(policy=...)``: the backward pass recomputes
    what the policy did not save. (params, x, y) → (gradients, (C, [z^l], [a^l])). ``compute``, for a mixed-precision
    policy, is the format the layers compute in, the float32 parameters and inputs cast to it inside the forward pass
    as :func:`~backprop_conformance.adapters.jax_model.forward` does."""
    jax = import_jax()
    jnp = jax.numpy

    @functools.partial(jax.checkpoint, policy=getattr(jax.checkpoint_policies, policy))
    def layer(w: Any, b: Any, a: Any) -> Any:
        z = jnp.matmul(a, w.T, precision=jax.lax.Precision.HIGHEST) + b
        return z, jax.nn.sigmoid(z)

    def cost(params: Any, x: Any, y: Any) -> Any:
        if compute is not None:
            params = [(w.astype(compute), b.astype(compute)) for w, b in params]
            x = x.astype(compute)
        a, zs, activations = x, [], [x]
        for w, b in params:
            z, a = layer(w, b, a)
            zs.append(z)
            activations.append(a)
        c = 0.5 * jnp.sum((y - a) ** 2)
        return c, (c, zs, activations)

    return jax.jit(jax.grad(cost, has_aux=True))


def masks(batch: Batch, dtype: str, device: str) -> Any:
    """The split as (:data:`SCAN_STEPS`, B, 1) masks: row i is 1 on micro-batch i's examples; rows past k are 0."""
    pieces = batch.pieces
    if len(pieces) > SCAN_STEPS:
        raise RequestError(f"jax: the accumulate path takes at most {SCAN_STEPS} micro-batches, got {len(pieces)}")
    rows = np.zeros((SCAN_STEPS, batch.size, 1))
    for i, piece in enumerate(pieces):
        rows[i, piece] = 1.0
    return put(rows, dtype, device)


def run(network: Network, batch: Batch, *, dtype: str, path: str, device: str) -> AdapterOutput:
    """``path``'s gradients, cost, a^l and z^l (and per-example gradients on ``per-example``), in ``dtype``'s carrier.

    Must run inside :func:`~backprop_conformance.adapters.jax_model.precision_scope`.
    """
    params = parameters(network, dtype, device)
    x, y = put(batch.x, dtype, device), put(batch.y, dtype, device)
    carrier = float_format(dtype).carrier
    per_example = None
    if path == "accumulate":
        gradients, (cost, zs, activations) = _accumulated()(params, x, y, masks(batch, dtype, device))
    elif path in REMAT_POLICIES:
        gradients, (cost, zs, activations) = _rematerialized(REMAT_POLICIES[path], compute_format(dtype))(params, x, y)
    else:
        gradients, terms, (cost, zs, activations) = _per_example()(params, x, y)
        per_example = Gradients(by_layer([w for w, _ in terms], carrier), by_layer([b for _, b in terms], carrier))
    return AdapterOutput(
        gradients=Gradients(by_layer([w for w, _ in gradients], carrier), by_layer([b for _, b in gradients], carrier)),
        cost=float(cost),
        a=by_layer(activations, carrier, first=1),
        z=by_layer(zs, carrier),
        per_example=per_example,
    )
