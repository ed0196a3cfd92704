"""Backpropagation for a whole batch at once: the page's equations as matrix products.

This is the reference every framework is compared with. Each function below implements one
equation of the page, stated in its docstring in the page's indices; the batch adds a leading
axis (one row per example) that the page, which treats one example, does not have.

Cost convention. The page's cost is for one example, C = 1/2 Σ_j (y_j − a^L_j)². For a batch the
suite uses the *sum* over examples, C = Σ_x 1/2 Σ_j (y_j − a^L_j)², not the mean, because:

* the gradient of a sum is the sum of the per-example gradients, so every formula of the page holds
  unchanged for each example and the batch gradient is their plain sum (∂C/∂w^l_jk = Σ_x ...);
* a mean would multiply by 1/B, which for most B is not a power of two and adds a rounding of its
  own to every gradient; and frameworks provide the sum directly (``reduction="sum"``).

Errata of the page (text extraction lost the primes): wherever the page writes σ(z) inside a
derivative (∂a/∂w, ∂a/∂a, and both factors of the theorem's formula), σ′(z) is meant; and the bias
formula the page leaves as ``???`` is ∂C/∂b^l_j = ∂C/∂a^l_j σ′(z^l_j). Each function below notes the
point it implements.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from backprop_conformance.reference.model import Batch, Gradients, Network, check_compatible
from backprop_conformance.reference.sigmoid import sigmoid_and_prime


def weighted_input(w_l: np.ndarray, a_prev: np.ndarray, b_l: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """z^l_j = Σ_k w^l_jk a^{l−1}_k + b^l_j, for every example (row) of ``a_prev`` at once.

    Like every function below, it writes into ``out`` when given one (see :func:`_layer_buffers` for why).
    """
    z = np.matmul(a_prev, w_l.T, out=out)
    z += b_l
    return z


def activation(z_l: np.ndarray, out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """a^l_j = σ(z^l_j), with the overflow-free σ of :mod:`backprop_conformance.reference.sigmoid`.

    Returned together with σ′(z^l_j) = σ(z)σ(−z), computed from the same exponential: the backward
    pass needs σ′ at exactly these z (see :func:`error`).
    """
    return sigmoid_and_prime(z_l, out=out)


def quadratic_cost(a_L: np.ndarray, y: np.ndarray) -> np.ndarray:
    """C = 1/2 Σ_j (y_j − a^L_j)², summed over the batch as well (see the module docstring)."""
    r = y - a_L
    np.multiply(r, r, out=r)
    return 0.5 * np.sum(r)


def output_activation_gradient(a_L: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """∂C/∂a^L_j = a^L_j − y_j  (page: "We also have ∂C/∂a^L_j = a^L_j − y_j").

    From C = 1/2 Σ_j (y_j − a^L_j)²: d/da of 1/2 (y − a)² is −(y − a) = a − y; the ½ cancels the 2.
    """
    return np.subtract(a_L, y, out=out)


def error(dC_da_l: np.ndarray, sigma_prime_l: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """δ^l_j = ∂C/∂z^l_j = ∂C/∂a^l_j σ′(z^l_j), given σ′(z^l_j) from :func:`activation`.

    The page never names this product but uses it in every formula; naming it lets the backward
    recursion and both gradients share it, and lets a failure report say where it first goes wrong.
    The σ′ here is the one the page prints as σ(z^l_j) in its theorem statement (lost prime).
    ``out`` may be ``sigma_prime_l`` itself: :func:`backprop` overwrites σ′, which it keeps nowhere, with δ.
    """
    return np.multiply(dC_da_l, sigma_prime_l, out=out)


def hidden_activation_gradient(w_next: np.ndarray, delta_next: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """∂C/∂a^l_j = Σ_i ∂C/∂a^{l+1}_i σ′(z^{l+1}_i) w^{l+1}_ij = Σ_i δ^{l+1}_i w^{l+1}_ij.

    The page derives it from ∂C/∂a^l_j = Σ_i ∂C/∂a^{l+1}_i ∂a^{l+1}_i/∂a^l_j and
    ∂a^{l+1}_i/∂a^l_j = σ′(z^{l+1}_i) w^{l+1}_ij; its text prints the latter, the theorem and the final
    line with σ(z^{l+1}_i), where the derivative σ′(z^{l+1}_i) is meant (a^{l+1}_i = σ(z^{l+1}_i) and
    the chain rule gives σ′). The sum over i is a product with w^{l+1}, not its transpose:
    column j of w^{l+1} holds the weights leaving neuron j of layer l.
    """
    return np.matmul(delta_next, w_next, out=out)


def weight_gradient(delta_l: np.ndarray, a_prev: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """∂C/∂w^l_jk = ∂C/∂a^l_j σ′(z^l_j) a^{l−1}_k = δ^l_j a^{l−1}_k, summed over the batch.

    The page writes ∂a^l_j/∂w^l_jk = σ(z^l_j) a^{l−1}_k (and σ(z^L_j) in the base case); the prime was
    lost: a^l_j = σ(z^l_j) and ∂z^l_j/∂w^l_jk = a^{l−1}_k, so the chain rule gives σ′(z^l_j) a^{l−1}_k.
    The batch sum Σ_x δ^l_j(x) a^{l−1}_k(x) is the matrix product δᵀ a.
    """
    return np.matmul(delta_l.T, a_prev, out=out)


def bias_gradient(delta_l: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """∂C/∂b^l_j = ∂C/∂a^l_j σ′(z^l_j) = δ^l_j, summed over the batch -- the formula the page leaves as ``???``.

    Derivation, as the page does it for w^l_jk: C depends on b^l_j only through a^l_j, and
    a^l_j = σ(z^l_j) with z^l_j = Σ_k w^l_jk a^{l−1}_k + b^l_j, so by the chain rule
    ∂C/∂b^l_j = ∂C/∂a^l_j · ∂a^l_j/∂b^l_j = ∂C/∂a^l_j · σ′(z^l_j) · ∂z^l_j/∂b^l_j, and ∂z^l_j/∂b^l_j = 1.
    It is the weight formula with the input a^{l−1}_k replaced by the constant 1 that b^l_j multiplies.
    """
    return delta_l.sum(axis=0, out=out)


_ALIGNMENT = 64  # bytes: every view starts on a cache line of its own, as a separately allocated array would


class _LayerBuffers(NamedTuple):
    """Where layer l's results go: z^l, a^l, σ′(z^l) then δ^l, ∂C/∂a^l, ∂C/∂w^l and ∂C/∂b^l."""

    z: np.ndarray
    a: np.ndarray
    delta: np.ndarray
    dC_da: np.ndarray
    weight_gradient: np.ndarray
    bias_gradient: np.ndarray


def _layer_buffers(widths: tuple[int, ...], batch_size: int, dtype: np.dtype) -> dict[int, _LayerBuffers]:
    """Non-overlapping, aligned views of *one* new block, for everything :func:`backprop` returns.

    Why one block. A backward pass returns 4·B·n(l) + n(l)·(n(l−1) + 1) numbers per layer, megabytes at the large
    profile's widths. Allocated array by array, that memory went back to the operating system when the caller dropped
    the trace (glibc hands back free memory beyond twice the largest block freed so far) and every call page-faulted
    it in again, which cost more than all the matrix products. One block raises glibc's threshold to its own size (up
    to 32 MiB), so the next call reuses it. Larger blocks are mapped afresh but in huge pages, which numpy requests
    from 4 MiB. The figures: ``python -m benchmarks.bench_reference``, table (iii).
    Writing into views instead of new arrays changes no bit of any result, since the same numpy calls
    run on the same operands (``tests/test_vectorized.py``); the price is that one array of a trace
    keeps the whole block alive.
    """
    layout, end = _layout(widths, batch_size, dtype)
    block = np.empty(end + _ALIGNMENT, np.uint8)
    start = -block.__array_interface__["data"][0] % _ALIGNMENT
    return {l: _LayerBuffers(*(np.ndarray(shape, dtype, block, start + offset) for shape, offset in views)) for l, views in layout}


@functools.lru_cache(maxsize=256)
def _layout(
    widths: tuple[int, ...], batch_size: int, dtype: np.dtype
) -> tuple[tuple[tuple[int, tuple[tuple[tuple[int, ...], int], ...]], ...], int]:
    """The views of :func:`_layer_buffers` for one shape, as (l, ((shape, byte offset) per view)) per layer, and the
    block's size: computed once per shape, since a small network's backward pass costs little more than laying it out.

    Every offset is rounded up to a multiple of :data:`_ALIGNMENT`.
    """
    B, itemsize = batch_size, dtype.itemsize
    layers, end = [], 0
    for l in range(2, len(widths) + 1):
        n, n_prev = widths[l - 1], widths[l - 2]
        views = []
        for shape in ((B, n), (B, n), (B, n), (B, n), (n, n_prev), (n,)):
            views.append((shape, end))
            end += -(-math.prod(shape) * itemsize // _ALIGNMENT) * _ALIGNMENT
        layers.append((l, tuple(views)))
    return tuple(layers), end


@dataclass(frozen=True)
class BackpropTrace:
    """Everything one backward pass computes, keyed by the page's layer l.

    Per-example quantities have one row per example: ``z[l]``, ``a[l]``, ``dC_da[l]`` and ``delta[l]``
    have shape (B, n(l)). ``a`` has l = 1..L (a^1 is the input x); the others have l = 2..L. They are
    kept so that, when a framework's gradient is wrong, the suite can name the first layer at which
    its own intermediates leave their bounds.
    """

    z: Mapping[int, np.ndarray]
    a: Mapping[int, np.ndarray]
    dC_da: Mapping[int, np.ndarray]
    delta: Mapping[int, np.ndarray]
    gradients: Gradients
    cost: float


def backprop(network: Network, batch: Batch, dtype: np.dtype | type = np.float64) -> BackpropTrace:
    """Gradients of C = Σ_x 1/2 Σ_j (y_j − a^L_j)² with every intermediate, computed in ``dtype``.

    The network and batch are converted to ``dtype`` first (float64 by default). To evaluate the
    reference at exactly the point a lower-precision framework sees, round the parameters and data to
    that format and pass them here in float64. Every returned array is a view of one block (see
    :func:`_layer_buffers`); each equation still returns its result, which is what is kept, so a
    replaced equation (the mutation tests do that) that ignores ``out`` still yields a correct trace of it.
    """
    check_compatible(network, batch)
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"backprop computes in a floating dtype (float16, float32, float64, longdouble); got {dtype}")
    # copy=False: the network's arrays are read-only and only read, so no copy is needed in float64.
    w = {l: network.w[l].astype(dtype, copy=False) for l in network.layers}
    b = {l: network.b[l].astype(dtype, copy=False) for l in network.layers}
    L = network.depth
    buffers = _layer_buffers(network.widths, batch.size, dtype)
    a: dict[int, np.ndarray] = {1: batch.x.astype(dtype, copy=False)}
    z: dict[int, np.ndarray] = {}
    sigma_prime: dict[int, np.ndarray] = {}
    for l in range(2, L + 1):
        z[l] = weighted_input(w[l], a[l - 1], b[l], out=buffers[l].z)
        a[l], sigma_prime[l] = activation(z[l], out=(buffers[l].a, buffers[l].delta))
    y = batch.y.astype(dtype, copy=False)
    dC_da: dict[int, np.ndarray] = {L: output_activation_gradient(a[L], y, out=buffers[L].dC_da)}
    delta: dict[int, np.ndarray] = {L: error(dC_da[L], sigma_prime[L], out=sigma_prime[L])}
    for l in range(L - 1, 1, -1):
        dC_da[l] = hidden_activation_gradient(w[l + 1], delta[l + 1], out=buffers[l].dC_da)
        delta[l] = error(dC_da[l], sigma_prime[l], out=sigma_prime[l])
    gradients = Gradients.adopt(
        {l: weight_gradient(delta[l], a[l - 1], out=buffers[l].weight_gradient) for l in range(2, L + 1)},
        {l: bias_gradient(delta[l], out=buffers[l].bias_gradient) for l in range(2, L + 1)},
    )
    return BackpropTrace(z=z, a=a, dC_da=dC_da, delta=delta, gradients=gradients, cost=float(quadratic_cost(a[L], y)))
