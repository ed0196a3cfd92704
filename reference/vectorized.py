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

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from reference.model import Batch, Gradients, Network, check_compatible
from reference.sigmoid import sigmoid_and_prime


def weighted_input(w_l: np.ndarray, a_prev: np.ndarray, b_l: np.ndarray) -> np.ndarray:
    """z^l_j = Σ_k w^l_jk a^{l−1}_k + b^l_j, for every example (row) of ``a_prev`` at once."""
    z = a_prev @ w_l.T
    z += b_l
    return z


def activation(z_l: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a^l_j = σ(z^l_j), with the overflow-free σ of :mod:`reference.sigmoid`.

    Returned together with σ′(z^l_j) = σ(z)σ(−z), computed from the same exponential: the backward
    pass needs σ′ at exactly these z (see :func:`error`).
    """
    return sigmoid_and_prime(z_l)


def quadratic_cost(a_L: np.ndarray, y: np.ndarray) -> np.ndarray:
    """C = 1/2 Σ_j (y_j − a^L_j)², summed over the batch as well (see the module docstring)."""
    r = y - a_L
    return 0.5 * np.sum(r * r)


def output_activation_gradient(a_L: np.ndarray, y: np.ndarray) -> np.ndarray:
    """∂C/∂a^L_j = a^L_j − y_j  (page: "We also have ∂C/∂a^L_j = a^L_j − y_j").

    From C = 1/2 Σ_j (y_j − a^L_j)²: d/da of 1/2 (y − a)² is −(y − a) = a − y; the ½ cancels the 2.
    """
    return a_L - y


def error(dC_da_l: np.ndarray, sigma_prime_l: np.ndarray) -> np.ndarray:
    """δ^l_j = ∂C/∂z^l_j = ∂C/∂a^l_j σ′(z^l_j), given σ′(z^l_j) from :func:`activation`.

    The page never names this product but uses it in every formula; naming it lets the backward
    recursion and both gradients share it, and lets a failure report say where it first goes wrong.
    The σ′ here is the one the page prints as σ(z^l_j) in its theorem statement (lost prime).
    """
    return dC_da_l * sigma_prime_l


def hidden_activation_gradient(w_next: np.ndarray, delta_next: np.ndarray) -> np.ndarray:
    """∂C/∂a^l_j = Σ_i ∂C/∂a^{l+1}_i σ′(z^{l+1}_i) w^{l+1}_ij = Σ_i δ^{l+1}_i w^{l+1}_ij.

    The page derives it from ∂C/∂a^l_j = Σ_i ∂C/∂a^{l+1}_i ∂a^{l+1}_i/∂a^l_j and
    ∂a^{l+1}_i/∂a^l_j = σ′(z^{l+1}_i) w^{l+1}_ij; its text prints the latter, the theorem and the final
    line with σ(z^{l+1}_i), where the derivative σ′(z^{l+1}_i) is meant (a^{l+1}_i = σ(z^{l+1}_i) and
    the chain rule gives σ′). The sum over i is a product with w^{l+1}, not its transpose:
    column j of w^{l+1} holds the weights leaving neuron j of layer l.
    """
    return delta_next @ w_next


def weight_gradient(delta_l: np.ndarray, a_prev: np.ndarray) -> np.ndarray:
    """∂C/∂w^l_jk = ∂C/∂a^l_j σ′(z^l_j) a^{l−1}_k = δ^l_j a^{l−1}_k, summed over the batch.

    The page writes ∂a^l_j/∂w^l_jk = σ(z^l_j) a^{l−1}_k (and σ(z^L_j) in the base case); the prime was
    lost: a^l_j = σ(z^l_j) and ∂z^l_j/∂w^l_jk = a^{l−1}_k, so the chain rule gives σ′(z^l_j) a^{l−1}_k.
    The batch sum Σ_x δ^l_j(x) a^{l−1}_k(x) is the matrix product δᵀ a.
    """
    return delta_l.T @ a_prev


def bias_gradient(delta_l: np.ndarray) -> np.ndarray:
    """∂C/∂b^l_j = ∂C/∂a^l_j σ′(z^l_j) = δ^l_j, summed over the batch -- the formula the page leaves as ``???``.

    Derivation, as the page does it for w^l_jk: C depends on b^l_j only through a^l_j, and
    a^l_j = σ(z^l_j) with z^l_j = Σ_k w^l_jk a^{l−1}_k + b^l_j, so by the chain rule
    ∂C/∂b^l_j = ∂C/∂a^l_j · ∂a^l_j/∂b^l_j = ∂C/∂a^l_j · σ′(z^l_j) · ∂z^l_j/∂b^l_j, and ∂z^l_j/∂b^l_j = 1.
    It is the weight formula with the input a^{l−1}_k replaced by the constant 1 that b^l_j multiplies.
    """
    return delta_l.sum(axis=0)


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
    that format and pass them here in float64.
    """
    check_compatible(network, batch)
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"backprop computes in a floating dtype (float16, float32, float64, longdouble); got {dtype}")
    # copy=False: the network's arrays are read-only and only read, so no copy is needed in float64.
    w = {l: network.w[l].astype(dtype, copy=False) for l in network.layers}
    b = {l: network.b[l].astype(dtype, copy=False) for l in network.layers}
    L = network.depth
    a: dict[int, np.ndarray] = {1: batch.x.astype(dtype, copy=False)}
    z: dict[int, np.ndarray] = {}
    sigma_prime: dict[int, np.ndarray] = {}
    for l in range(2, L + 1):
        z[l] = weighted_input(w[l], a[l - 1], b[l])
        a[l], sigma_prime[l] = activation(z[l])
    y = batch.y.astype(dtype, copy=False)
    dC_da: dict[int, np.ndarray] = {L: output_activation_gradient(a[L], y)}
    delta: dict[int, np.ndarray] = {L: error(dC_da[L], sigma_prime[L])}
    for l in range(L - 1, 1, -1):
        dC_da[l] = hidden_activation_gradient(w[l + 1], delta[l + 1])
        delta[l] = error(dC_da[l], sigma_prime[l])
    gradients = Gradients(
        {l: weight_gradient(delta[l], a[l - 1]) for l in range(2, L + 1)},
        {l: bias_gradient(delta[l]) for l in range(2, L + 1)},
    )
    return BackpropTrace(z=z, a=a, dC_da=dC_da, delta=delta, gradients=gradients, cost=float(quadratic_cost(a[L], y)))
