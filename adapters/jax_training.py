"""JAX's training-loop paths: accumulation over micro-batches in ``lax.scan``, rematerialization, per-example gradients,
layers as a scan, donated buffers.

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
* ``scan``: layers as a scan, the way deep JAX models are written when their blocks are alike: the first hidden
  layer (fed by the n(1) inputs), then ``lax.scan`` over the L − 3 square hidden layers' weights stacked into one
  (L − 3, h, h) array and their biases into one (L − 3, h), then the output layer, all in ``jax.jit(jax.grad(cost))``.
  It needs every hidden layer of one width h; a network with L ≤ 3 (the fidelity tier's, the contract's has L = 4)
  scans zero layers, and one with L = 2 has no first hidden layer either. The suite draws only such networks for it
  (:attr:`~backprop_conformance.adapters.base.Capabilities.layer_scan_paths`), and it refuses any other with a
  :class:`~backprop_conformance.adapters.base.RequestError` naming the widths, rather than run an unscanned model
  under the scan's name.
* ``jit-donate``: ``jax.jit(jax.grad(cost), donate_argnums=0)``, the parameters' buffers donated to the program, as a
  training step that replaces its parameters does: XLA may write the gradients (of the parameters' shapes and
  formats) into the donated buffers. The gradients must be those of ``jit``.

Each step a planted bug changes is a hook of the adapter (:class:`Hooks`, the built-in JAX adapter's methods), passed
to the program builders, so that a subclass overriding one gets programs of its own (tests/training_mutants.py).

All compile once per shape and format (their shapes come from the pool) and are compiled on first use, not ahead:
the compile-ahead worker (:mod:`~backprop_conformance.adapters.jax_precompile`) knows only the paths of
:data:`~backprop_conformance.adapters.jax_model.JITTED_PATHS`, and these are declared not to use it. Importing this
module does not import JAX.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from backprop_conformance.adapters.base import AdapterOutput, RequestError
from backprop_conformance.adapters.jax_model import by_layer, compute_format, forward, import_jax, parameters, put
from backprop_conformance.reference.dtypes import float_format
from backprop_conformance.reference.model import Batch, Gradients, Network

PATHS = ("accumulate", "per-example", "remat", "remat-dots", "scan", "jit-donate")

REMAT_POLICIES = {"remat": "nothing_saveable", "remat-dots": "dots_with_no_batch_dims_saveable"}
"""The ``jax.checkpoint`` policy of each remat path (``jax.checkpoint_policies``): recompute everything in the backward
pass, or keep the matrix products and recompute the rest."""

SCAN_STEPS = 8
"""The accumulation scan's length: the most micro-batches one program takes (the suite draws at most 8)."""


class Hooks(Protocol):
    """The steps of the training-loop paths where their bugs live, one method each (the JAX adapter's)."""

    def micro_batch_pieces(self, batch: Batch) -> tuple[slice, ...]:
        """The micro-batches ``accumulate`` runs, as slices of the batch."""
        ...

    def micro_batch_cost(self, cost: Any, micro_batches: Any) -> Any:
        """The cost each micro-batch differentiates, given k (traced)."""
        ...

    def per_example_terms(self, per_example: Any) -> Any:
        """The per-example gradients (leading axis: the B examples) as ``per-example`` returns and sums them."""
        ...

    def per_example_sum(self, per_example: Any) -> Any:
        """∂C/∂θ from the per-example gradients."""
        ...

    def checkpointed(self, layer: Callable[..., Any], policy: Any) -> Callable[..., Any]:
        """``layer`` (w, b, a) → (z, a) as the remat paths run it, rematerialized under ``policy``."""
        ...

    def scan_step_parameters(self, step: tuple[Any, Any], stacked: tuple[Any, Any]) -> tuple[Any, Any]:
        """The (w, b) one step of the layer scan computes with, given its slice of the stack and the whole stack."""
        ...


def layer(w: Any, b: Any, a: Any) -> tuple[Any, Any]:
    """One layer of the page's network, (z^l, a^l) from a^{l−1}, as :func:`~backprop_conformance.adapters.jax_model.forward` computes it."""
    jax = import_jax()
    z = jax.numpy.matmul(a, w.T, precision=jax.lax.Precision.HIGHEST) + b
    return z, jax.nn.sigmoid(z)


def _cast(params: Any, x: Any, compute: str | None) -> tuple[Any, Any]:
    """The parameters and inputs cast to a mixed-precision policy's compute format inside the forward pass (none: as they are)."""
    if compute is None:
        return params, x
    return import_jax().tree.map(lambda v: v.astype(compute), params), x.astype(compute)


@functools.cache
def _accumulated(cost_of: Callable[[Any, Any], Any]) -> Any:
    """(params, x, y, masks, k) → (Σ_i ∂C_i/∂θ, (Σ_i C_i, [z^l], [a^l])), masks of shape (steps, B, 1), one per
    micro-batch, k their number; ``cost_of`` is :meth:`Hooks.micro_batch_cost`."""
    jax = import_jax()
    jnp = jax.numpy

    def micro_batch(params: Any, x: Any, y: Any, mask: Any, k: Any) -> Any:
        c, (_, zs, activations) = forward(params, x, y, None, mask)
        c = cost_of(c, k)
        return c, (c, zs, activations)

    gradient = jax.grad(micro_batch, has_aux=True)

    def run(params: Any, x: Any, y: Any, masks: Any, k: Any) -> Any:
        def step(carry: Any, mask: Any) -> Any:
            total, cost = carry
            g, (c, zs, activations) = gradient(params, x, y, mask, k)
            return (jax.tree.map(jnp.add, total, g), cost + c), (zs, activations)

        start = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), x.dtype))
        (total, cost), (zs, activations) = jax.lax.scan(step, start, masks)
        return total, (cost, [z[0] for z in zs], [a[0] for a in activations])

    return jax.jit(run)


@functools.cache
def _per_example(terms: Callable[[Any], Any], summed: Callable[[Any], Any]) -> Any:
    """(params, x, y) → (Σ_x ∂C_x/∂θ, [∂C_x/∂θ], (Σ_x C_x, [z^l], [a^l])) with vmap over the examples; ``terms`` and
    ``summed`` are :meth:`Hooks.per_example_terms` and :meth:`Hooks.per_example_sum`."""
    jax = import_jax()

    def one(params: Any, x: Any, y: Any) -> Any:
        return forward(params, x[None], y[None])

    def run(params: Any, x: Any, y: Any) -> Any:
        per_example, (costs, zs, activations) = jax.vmap(jax.grad(one, has_aux=True), in_axes=(None, 0, 0))(params, x, y)
        per_example = jax.tree.map(terms, per_example)
        total = jax.tree.map(summed, per_example)
        return total, per_example, (costs.sum(), [z[:, 0] for z in zs], [a[:, 0] for a in activations])

    return jax.jit(run)


@functools.cache
def _rematerialized(policy: str, compute: str | None, checkpointed: Callable[..., Any]) -> Any:
    """``jax.jit(jax.grad(cost))`` with every layer under ``jax.checkpoint(policy=...)`` (:meth:`Hooks.checkpointed`): the
    backward pass recomputes what the policy did not save. (params, x, y) → (gradients, (C, [z^l], [a^l])). ``compute``,
    for a mixed-precision policy, is the format the layers compute in, the float32 parameters and inputs cast to it
    inside the forward pass as :func:`~backprop_conformance.adapters.jax_model.forward` does."""
    jax = import_jax()
    jnp = jax.numpy
    remat = checkpointed(layer, getattr(jax.checkpoint_policies, policy))

    def cost(params: Any, x: Any, y: Any) -> Any:
        params, x = _cast(params, x, compute)
        a, zs, activations = x, [], [x]
        for w, b in params:
            z, a = remat(w, b, a)
            zs.append(z)
            activations.append(a)
        c = 0.5 * jnp.sum((y - a) ** 2)
        return c, (c, zs, activations)

    return jax.jit(jax.grad(cost, has_aux=True))


@functools.cache
def _scanned(compute: str | None, step_parameters: Callable[..., Any]) -> Any:
    """``jax.jit(jax.grad(cost))`` of the network as first layer, ``lax.scan`` over the stacked square layers, output
    layer. (first or None, (W, B), last, x, y) → ((∂first, (∂W, ∂B), ∂last), (C, first's z, the scan's z stacked, z^L,
    then a^1 and the same of a)); ``step_parameters`` is :meth:`Hooks.scan_step_parameters`."""
    jax = import_jax()
    jnp = jax.numpy

    def cost(params: Any, x: Any, y: Any) -> Any:
        params, x = _cast(params, x, compute)
        first, stacked, (wL, bL) = params
        z_first, a_first = (None, x) if first is None else layer(*first, x)

        def step(a: Any, step: tuple[Any, Any]) -> Any:
            z, a = layer(*step_parameters(step, stacked), a)
            return a, (z, a)

        a_hidden, (z_stack, a_stack) = jax.lax.scan(step, a_first, stacked)
        z_last, a_last = layer(wL, bL, a_hidden)
        c = 0.5 * jnp.sum((y - a_last) ** 2)
        return c, (c, (z_first, z_stack, z_last), (x, a_first, a_stack, a_last))

    return jax.jit(jax.grad(cost, has_aux=True))


@functools.cache
def _donated(compute: str | None) -> Any:
    """``jax.jit(jax.grad(cost), donate_argnums=0)``: (params, x, y) → (gradients, (C, [z^l], [a^l])), the parameters' buffers donated."""
    jax = import_jax()
    f = forward if compute is None else functools.partial(forward, compute=compute)
    return jax.jit(jax.grad(f, has_aux=True), donate_argnums=0)


def masks(pieces: tuple[slice, ...], batch_size: int, dtype: str, device: str) -> Any:
    """The split as (:data:`SCAN_STEPS`, B, 1) masks: row i is 1 on micro-batch i's examples; rows past k are 0."""
    if len(pieces) > SCAN_STEPS:
        raise RequestError(f"jax: the accumulate path takes at most {SCAN_STEPS} micro-batches, got {len(pieces)}")
    rows = np.zeros((SCAN_STEPS, batch_size, 1))
    for i, piece in enumerate(pieces):
        rows[i, piece] = 1.0
    return put(rows, dtype, device)


def hidden_width(network: Network) -> int:
    """h, the one width of every hidden layer (n(1) when there is none), which the ``scan`` path needs; a
    :class:`RequestError` naming the widths otherwise."""
    widths = network.widths
    hidden = set(widths[1:-1]) or {widths[0]}
    if len(hidden) != 1:
        raise RequestError(
            "jax: the scan path runs the hidden layers as lax.scan over stacked weights, which needs every hidden layer of "
            f"one width (n(1), h, ..., h, n(L)); got widths {widths}"
        )
    return hidden.pop()


def _stacked(network: Network, dtype: str, device: str) -> Any:
    """The ``scan`` path's parameters: (w^2, b^2) (None when L = 2: no hidden layer feeds the scan), (W, B) stacking the
    square layers 3..L−1 (empty stacks when L ≤ 3), (w^L, b^L)."""
    h = hidden_width(network)
    layers = network.layers
    middle = layers[1:-1]
    w = np.stack([network.w[l] for l in middle]) if middle else np.zeros((0, h, h))
    b = np.stack([network.b[l] for l in middle]) if middle else np.zeros((0, h))
    first = None if len(layers) == 1 else (put(network.w[layers[0]], dtype, device), put(network.b[layers[0]], dtype, device))
    return (
        first,
        (put(w, dtype, device), put(b, dtype, device)),
        (put(network.w[layers[-1]], dtype, device), put(network.b[layers[-1]], dtype, device)),
    )


def _unstacked(first: Any, stack: Any, last: Any) -> list[Any]:
    """Per layer, l = 2..L, from the first layer's (None: no such layer), the scanned layers' (stacked on a leading axis)
    and the last layer's."""
    return [*([] if first is None else [first]), *list(stack), last]


def _run_scan(network: Network, batch: Batch, dtype: str, device: str, hooks: Hooks) -> tuple[Any, ...]:
    """The ``scan`` path's gradients and forward trace, per layer, as the other paths return them."""
    params = _stacked(network, dtype, device)
    x, y = put(batch.x, dtype, device), put(batch.y, dtype, device)
    grads, (cost, (z_first, z_stack, z_last), (a_in, a_first, a_stack, a_last)) = _scanned(
        compute_format(dtype), hooks.scan_step_parameters
    )(params, x, y)
    first, (gW, gB), (gwL, gbL) = grads
    gw1, gb1 = (None, None) if first is None else first
    gradients = list(zip(_unstacked(gw1, gW, gwL), _unstacked(gb1, gB, gbL), strict=True))
    return gradients, cost, _unstacked(z_first, z_stack, z_last), [a_in, *_unstacked(None if z_first is None else a_first, a_stack, a_last)]


def run(network: Network, batch: Batch, *, dtype: str, path: str, device: str, hooks: Hooks) -> AdapterOutput:
    """``path``'s gradients, cost, a^l and z^l (and per-example gradients on ``per-example``), in ``dtype``'s carrier.

    Must run inside :func:`~backprop_conformance.adapters.jax_model.precision_scope`.
    """
    carrier = float_format(dtype).carrier
    per_example = None
    if path == "scan":
        gradients, cost, zs, activations = _run_scan(network, batch, dtype, device, hooks)
    else:
        params = parameters(network, dtype, device)
        x, y = put(batch.x, dtype, device), put(batch.y, dtype, device)
        if path == "accumulate":
            pieces = hooks.micro_batch_pieces(batch)
            k = put(np.float64(len(pieces)), dtype, device)
            program = _accumulated(hooks.micro_batch_cost)
            gradients, (cost, zs, activations) = program(params, x, y, masks(pieces, batch.size, dtype, device), k)
        elif path in REMAT_POLICIES:
            program = _rematerialized(REMAT_POLICIES[path], compute_format(dtype), hooks.checkpointed)
            gradients, (cost, zs, activations) = program(params, x, y)
        elif path == "jit-donate":
            gradients, (cost, zs, activations) = _donated(compute_format(dtype))(params, x, y)
        else:
            gradients, terms, (cost, zs, activations) = _per_example(hooks.per_example_terms, hooks.per_example_sum)(params, x, y)
            per_example = Gradients(by_layer([w for w, _ in terms], carrier), by_layer([b for _, b in terms], carrier))
    return AdapterOutput(
        gradients=Gradients(by_layer([w for w, _ in gradients], carrier), by_layer([b for _, b in gradients], carrier)),
        cost=float(cost),
        a=by_layer(activations, carrier, first=1),
        z=by_layer(zs, carrier),
        per_example=per_example,
    )
