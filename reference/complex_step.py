"""Complex-step differentiation of the page's cost: an oracle that shares no formula with backpropagation.

For a function f that is real on the reals and analytic, f(θ + ih) = f(θ) + ih f′(θ) − h²/2 f″(θ) − ih³/6 f‴(θ) + …,
so Im f(θ + ih)/h = f′(θ) − h²/6 f‴(θ) + …. Unlike a finite difference there is no subtraction, hence no
cancellation: h can be taken absurdly small (h = 1e-200), the truncation term h² f‴/6 is then far below
float64 resolution, and the result is the derivative to within the rounding error of evaluating f once.

Applied to the page's network: perturb one parameter w^l_jk or b^l_j by ih, run the forward pass in
complex arithmetic, and read ∂C/∂w^l_jk = Im C/h. Nothing of the page's backward recursion is used --
neither ∂C/∂a^L_j = a^L_j − y_j, nor σ′, nor the sum over i of the next layer -- so an error in any of
those formulas (for example the page's own σ in place of σ′, or the missing bias formula) cannot be
shared with this oracle. The only requirements are that every step is analytic:

* σ(z) = 1/(1 + e^(−z)) is analytic. It is evaluated with the same overflow-free branches as the real
  reference, the branch chosen on Re z: for Re z ≥ 0, 1/(1 + e^(−z)); otherwise e^z/(1 + e^z). Both
  exponentiate a number with real part −|Re z| ≤ 0, so nothing overflows for any finite weight.
* the cost is C = Σ_x 1/2 Σ_j (y_j − a^L_j)², computed as a plain square with no abs() or conj(): |r|²
  is not analytic, and Im |r + is|² = 0 would silently return zero gradients.

Limits (why this oracle is not used everywhere):

* Underflow. The imaginary parts carried through the network are h times the derivatives of the
  intermediates. With h = 1e-200, any intermediate derivative below about 1e-108 has an imaginary part
  in the subnormal range (precision lost), and below about 5e-124 it flushes to zero. In a saturated
  network σ′(z) ≈ e^(−|z|) makes such derivatives common (σ′(250) ≈ 3e-109), and the complex step then
  returns 0 or a few-digit value where the true gradient is tiny but nonzero: its result carries an
  *absolute* error of order 2^-1074/h ≈ 5e-124 times the network's sensitivities, bounded by
  :func:`underflow_allowance`. A larger h (1e-100, say) shrinks that by 1e-100, still with a truncation
  term h²f‴/6 far below rounding for the nets the suite uses; the mpmath oracle has no such limit.
* It costs one complex forward pass per parameter. The passes are stacked along a leading axis
  (:func:`coordinate_costs`), so a ~100-parameter net takes a few milliseconds.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from backprop_conformance.reference.model import Batch, Gradients, ModelError, Network, check_compatible

if TYPE_CHECKING:
    from backprop_conformance.reference.vectorized import BackpropTrace

DEFAULT_STEP = 1e-200
"""h of the complex step. Small enough that h²f‴/6 is negligible for any net the suite builds, large
enough that h·∂C/∂θ stays a normal float64 for every gradient above ~2e-108."""

_STACK = 128
"""Perturbed copies of the network evaluated in one stacked pass; bounds memory to _STACK × (parameters)."""


def parameter_vector(network: Network) -> np.ndarray:
    """Every parameter in one float64 vector: w^2 (row-major, so w^2_jk before w^2_j(k+1)), b^2, w^3, b^3, …, w^L, b^L.

    The order is the one :func:`coordinate_costs` and :func:`gradients_from_vector` use, and it is exact:
    float16/float32 parameters are widened to float64 without rounding.
    """
    parts: list[np.ndarray] = []
    for l in network.layers:
        parts.append(network.w[l].astype(np.float64).ravel())
        parts.append(network.b[l].astype(np.float64))
    return np.concatenate(parts)


def gradients_from_vector(network: Network, flat: np.ndarray) -> Gradients:
    """Split a vector in :func:`parameter_vector` order back into ∂C/∂w^l and ∂C/∂b^l arrays in page layout."""
    flat = np.asarray(flat)
    if flat.shape != (network.parameter_count,):
        raise ModelError(f"expected a vector of the network's {network.parameter_count} parameters; got shape {flat.shape}")
    w: dict[int, np.ndarray] = {}
    b: dict[int, np.ndarray] = {}
    offset = 0
    for l in network.layers:
        shape = network.w[l].shape
        w[l] = flat[offset : offset + shape[0] * shape[1]].reshape(shape)
        offset += shape[0] * shape[1]
        b[l] = flat[offset : offset + shape[0]]
        offset += shape[0]
    return Gradients(w, b)


def analytic_sigmoid(z: np.ndarray) -> np.ndarray:
    """σ(z) = 1/(1 + e^(−z)) for real or complex z, overflow-free, as an analytic function of z.

    With s = +1 where Re z ≥ 0 and −1 elsewhere, e = e^(−s·z) has real part −|Re z| ≤ 0, so |e| ≤ 1:
    σ(z) = 1/(1 + e) where Re z ≥ 0, e/(1 + e) elsewhere. Both branches are the same analytic function
    (multiply 1/(1 + e^(−z)) by e^z/e^z), so the complex step through either branch gives σ′(z).
    """
    z = np.asarray(z)
    nonneg = np.real(z) >= 0
    e = np.exp(np.where(nonneg, -z, z))
    return np.where(nonneg, np.ones_like(e), e) / (1 + e)


def coordinate_costs(network: Network, batch: Batch, values: np.ndarray) -> np.ndarray:
    """C at P points, one per parameter: point p is the network with parameter p set to ``values[p]``.

    ``values`` has shape (P,) in :func:`parameter_vector` order; every other parameter keeps its value.
    C = Σ_x 1/2 Σ_j (y_j − a^L_j)² with z^l_j = Σ_k w^l_jk a^{l−1}_k + b^l_j and a^l_j = σ(z^l_j) is written
    out here independently of :mod:`backprop_conformance.reference.vectorized`, so the oracles built on it do not inherit a
    bug of the reference. Complex values give complex costs (the complex step), real values real ones
    (finite differences, :mod:`backprop_conformance.reference.finite_difference`).

    The P networks are evaluated as stacks of up to ``_STACK`` copies. The dot products are broadcast
    multiplications summed by numpy itself, not BLAS, so that no complex-matrix kernel (such as a
    3-multiplication zgemm) can mix the tiny imaginary parts into the real ones.
    """
    check_compatible(network, batch)
    theta = parameter_vector(network)
    P = theta.size
    values = np.asarray(values)
    if values.shape != (P,) or not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.complexfloating)):
        raise ModelError(
            f"expected {P} real or complex values, one per parameter of the network; got shape {values.shape} of {values.dtype}"
        )
    x = batch.x.astype(np.float64)
    y = batch.y.astype(np.float64)
    costs = np.empty(P, dtype=np.result_type(values.dtype, np.float64))
    for start in range(0, P, _STACK):
        rows = np.arange(start, min(start + _STACK, P))
        points = np.tile(theta.astype(costs.dtype), (rows.size, 1))
        points[rows - start, rows] = values[rows]
        a = np.broadcast_to(x, (rows.size, *x.shape))
        for w_l, b_l in _layer_stacks(network, points):
            # z[s, x, j] = Σ_k w[s, j, k] a[s, x, k] + b[s, j]  for copy s and example x
            z = (w_l[:, None, :, :] * a[:, :, None, :]).sum(axis=-1) + b_l[:, None, :]
            a = analytic_sigmoid(z)
        r = y - a
        costs[rows] = 0.5 * (r * r).sum(axis=(1, 2))
    return costs


def _layer_stacks(network: Network, points: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split S parameter vectors, shape (S, P), into per-layer stacks [(w^l, shape (S, n(l), n(l−1)); b^l, shape (S, n(l))), …]."""
    S = points.shape[0]
    stacks = []
    offset = 0
    for l in network.layers:
        rows, cols = network.w[l].shape
        w = points[:, offset : offset + rows * cols].reshape(S, rows, cols)
        offset += rows * cols
        stacks.append((w, points[:, offset : offset + rows]))
        offset += rows
    return stacks


def underflow_allowance(network: Network, trace: BackpropTrace, h: float = DEFAULT_STEP) -> float:
    """A first-order bound on the absolute error gradual underflow adds to every complex-step gradient.

    Where the imaginary part of an operation's result is subnormal, its rounding error is absolute, at
    most s/2 with s = 2^-1074, instead of relative. An error e put into Im q of an intermediate q reaches
    Im C as e·∂C/∂q, and the gradient as e·∂C/∂q / h. Counting the roundings that write an imaginary
    part, per example x and neuron j of layer l:

    * z^l_j = Σ_k w^l_jk a^{l−1}_k + b^l_j: two products and a sum per term, ≤ 4n(l−1) + 1 roundings,
      reaching C through ∂C/∂z^l_j = δ^l_j;
    * a^l_j = σ(z^l_j): the complex exponential and Smith's division, ≤ 8 roundings (each scaled by a
      derivative of magnitude ≤ 1 inside σ), reaching C through ∂C/∂a^l_j;
    * the cost: one square and one term of the sum per output, ≤ 3 roundings of sensitivity 1.

    So |error| ≤ s/(2h) · (Σ_x Σ_l Σ_j [(4n(l−1) + 1)|δ^l_j| + 8|∂C/∂a^l_j|] + 3·B·n(L)), the same for
    every parameter. ``trace`` supplies δ and ∂C/∂a (magnitudes only; the float64 reference's are
    accurate enough for that). For ordinary nets the bound is ~1e-122: irrelevant unless the true
    gradient is itself that small, which is exactly where the complex step stops being an oracle.
    """
    s = 2.0**-1074
    total = 3.0 * trace.delta[network.depth].size
    for l in network.layers:
        total += (4 * network.widths[l - 2] + 1) * float(np.abs(trace.delta[l]).sum()) + 8 * float(np.abs(trace.dC_da[l]).sum())
    return s / (2 * float(h)) * total


def complex_step_gradients(network: Network, batch: Batch, h: float = DEFAULT_STEP) -> Gradients:
    """∂C/∂w^l_jk and ∂C/∂b^l_j as Im C(θ + ih·e_p)/h for every parameter p, in float64.

    ``h`` must be a positive finite float; see the module docstring for why 1e-200 and when it underflows.
    """
    if isinstance(h, bool) or not isinstance(h, (int, float)) or not math.isfinite(h) or h <= 0:
        raise ValueError(f"the complex step h must be a positive finite float (the default is {DEFAULT_STEP}); got {h!r}")
    h = float(h)
    return gradients_from_vector(network, coordinate_costs(network, batch, parameter_vector(network) + 1j * h).imag / h)
