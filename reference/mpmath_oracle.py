"""The page's forward pass and backpropagation in arbitrary precision (mpmath): the accuracy oracle.

The float64 reference is itself a floating-point computation, so something more accurate must check
it. This module runs the page's equations with ``dps`` significant decimal digits (50 by default)
starting from the float64 parameters and data *exactly* (an mpf made from a binary float is exact), so
the only error in its result is the rounding at 50 digits -- some 34 digits below float64's resolution,
unless a gradient cancels to 1e-34 of its terms. Rounded once to float64 (:func:`to_float64`, correctly
rounded, subnormals included), its gradients are what an infinitely careful float64 implementation
would return, and the reference must be within its error bound of them.

It implements the same formulas as :mod:`backprop_conformance.reference.vectorized` (so it does not check the page's
algebra -- the complex step and finite differences do that), in the page's indices and one example at
a time:

    z^l_j = Σ_k w^l_jk a^{l−1}_k + b^l_j,   a^l_j = σ(z^l_j),   ∂C/∂a^L_j = a^L_j − y_j,
    δ^l_j = ∂C/∂a^l_j σ′(z^l_j),   ∂C/∂a^l_j = Σ_i δ^{l+1}_i w^{l+1}_ij,
    ∂C/∂w^l_jk = Σ_x δ^l_j a^{l−1}_k,   ∂C/∂b^l_j = Σ_x δ^l_j.

σ′ is evaluated as σ(z)σ(−z) = e/(1 + e)² with e = e^(−z), never σ(z)(1 − σ(z)): at z = 700,
σ(z) = 1 − 1e-304 rounds to exactly 1 even at 50 digits, so 1 − σ(z) is 0 although σ′(700) ≈ 9.86e-305.
mpmath's exponent range is unbounded, so e^(−z) needs no overflow guard here.

Cost: pure-Python big-number arithmetic, per index: fine for the small networks of tests, far too slow to replace
the float64 reference (``python -m benchmarks.bench_reference`` times it).

Precision is set with :func:`mpmath.workdps`, which restores mpmath's global precision on exit (also on
an exception), so calling the oracle never changes the precision seen by other code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import mpmath
import numpy as np

from backprop_conformance.reference.model import Batch, Gradients, Network, check_compatible

DEFAULT_DPS = 50
"""Working precision in decimal digits: 50 is ~34 digits more than float64 keeps, ample margin for the
cancellation in a batch sum, at little extra cost over fewer digits (the Python-level overhead dominates)."""

MIN_DPS = 20
"""Fewer digits could let the oracle's own rounding show in the last bit of its float64 results."""

_SUBNORMAL_EXPONENT = -1074
"""2^-1074 is the smallest positive float64, the spacing of the subnormal grid."""


def _check_dps(dps: int) -> int:
    if isinstance(dps, bool) or not isinstance(dps, int) or dps < MIN_DPS:
        raise ValueError(
            f"dps (working precision in decimal digits) must be an integer >= {MIN_DPS}, so that the oracle's own "
            f"rounding stays far below float64's ~16 digits; got {dps!r}"
        )
    return dps


def to_float64(value: mpmath.mpf) -> float:
    """Round an mpf to the nearest float64 (ties to even), including on the subnormal grid.

    ``float(mpf)`` rounds to 53 bits and then lets ``ldexp`` round again when the result is subnormal: a
    double rounding that can be one subnormal step off. Below the normal range this rounds once, to an
    integer multiple of 2^-1074.
    """
    if not mpmath.isfinite(value):
        raise ValueError(f"cannot round the non-finite value {value} to a float64 gradient")
    if abs(value) < mpmath.ldexp(1, -1022):
        # ldexp is exact and nint rounds half to even; the integer is at most 2^52, so no precision is lost.
        steps = mpmath.nint(mpmath.ldexp(value, -_SUBNORMAL_EXPONENT))
        return math.ldexp(int(steps), _SUBNORMAL_EXPONENT)
    return float(value)


def _sigmoid(z: mpmath.mpf) -> mpmath.mpf:
    return 1 / (1 + mpmath.exp(-z))


def _sigmoid_prime(z: mpmath.mpf) -> mpmath.mpf:
    """σ′(z) = σ(z)σ(−z) = e/(1 + e)² with e = e^(−z): one exponential, no subtraction, so no cancellation for any z."""
    e = mpmath.exp(-z)
    return e / (1 + e) ** 2


def sigmoid_mp(z: float, dps: int = DEFAULT_DPS) -> mpmath.mpf:
    """σ(z) = 1/(1 + e^(−z)) at ``dps`` digits, for the float64 value of ``z`` taken exactly."""
    with mpmath.workdps(_check_dps(dps)):
        return _sigmoid(mpmath.mpf(float(z)))


def sigmoid_prime_mp(z: float, dps: int = DEFAULT_DPS) -> mpmath.mpf:
    """σ′(z) = σ(z)σ(−z) at ``dps`` digits, for the float64 value of ``z`` taken exactly.

    Relative accuracy ~10^-dps for every z: no subtraction, and mpmath's exponent does not underflow, so
    σ′(800) ≈ 3.7e-348 comes out with all its digits (and rounds to 0.0 in float64, as it must).
    """
    with mpmath.workdps(_check_dps(dps)):
        return _sigmoid_prime(mpmath.mpf(float(z)))


def sigmoid_prime_float64(z: float, dps: int = DEFAULT_DPS) -> float:
    """σ′(z) correctly rounded to float64 (subnormals included): the value an exact σ′ would return."""
    return to_float64(sigmoid_prime_mp(z, dps))


def _exact_parameters(network: Network) -> tuple[dict[int, list[list[mpmath.mpf]]], dict[int, list[mpmath.mpf]]]:
    """w^l and b^l as nested lists of mpf, each exactly the float64 value (no rounding at any precision)."""
    mpf = mpmath.mpf
    w = {l: [[mpf(v) for v in row] for row in network.w[l].astype(np.float64).tolist()] for l in network.layers}
    b = {l: [mpf(v) for v in network.b[l].astype(np.float64).tolist()] for l in network.layers}
    return w, b


def _forward(
    w: Mapping[int, list[list[mpmath.mpf]]], b: Mapping[int, list[mpmath.mpf]], x_row: list[float]
) -> tuple[dict[int, list[mpmath.mpf]], dict[int, list[mpmath.mpf]]]:
    """z^l_j = Σ_k w^l_jk a^{l−1}_k + b^l_j and a^l_j = σ(z^l_j) for one example, a^1 = x exactly."""
    a = {1: [mpmath.mpf(v) for v in x_row]}
    z: dict[int, list[mpmath.mpf]] = {}
    for l in sorted(w):
        z[l] = [mpmath.fdot(w_j, a[l - 1]) + b_j for w_j, b_j in zip(w[l], b[l], strict=True)]
        a[l] = [_sigmoid(v) for v in z[l]]
    return z, a


def _example_cost(a_L: list[mpmath.mpf], y_row: list[float]) -> mpmath.mpf:
    """1/2 Σ_j (y_j − a^L_j)² for one example."""
    return mpmath.fsum((mpmath.mpf(yj) - aj) ** 2 for yj, aj in zip(y_row, a_L, strict=True)) / 2


@dataclass(frozen=True)
class MpmathBackprop:
    """The oracle's result at ``dps`` digits, keyed by the page's layer l.

    ``z``, ``a``, ``delta`` hold one list per example x of per-neuron mpf values (``a`` for l = 1..L,
    ``z`` and ``delta`` for l = 2..L). ``dC_dw[l][j][k]`` is ∂C/∂w^l_(j+1)(k+1) and ``dC_db[l][j]`` is
    ∂C/∂b^l_(j+1), summed over the batch; ``cost`` is C = Σ_x 1/2 Σ_j (y_j − a^L_j)².
    """

    dps: int
    z: Mapping[int, list[list[mpmath.mpf]]]
    a: Mapping[int, list[list[mpmath.mpf]]]
    delta: Mapping[int, list[list[mpmath.mpf]]]
    dC_dw: Mapping[int, list[list[mpmath.mpf]]]
    dC_db: Mapping[int, list[mpmath.mpf]]
    cost: mpmath.mpf

    def gradients(self) -> Gradients:
        """∂C/∂w^l and ∂C/∂b^l, each element correctly rounded to float64."""
        return Gradients(
            {l: np.array([[to_float64(v) for v in row] for row in rows], dtype=np.float64) for l, rows in self.dC_dw.items()},
            {l: np.array([to_float64(v) for v in row], dtype=np.float64) for l, row in self.dC_db.items()},
        )


def mpmath_backprop(network: Network, batch: Batch, dps: int = DEFAULT_DPS) -> MpmathBackprop:
    """Forward pass, cost and backpropagation of C = Σ_x 1/2 Σ_j (y_j − a^L_j)² at ``dps`` digits.

    Parameters and data (any float dtype) are taken exactly; only the arithmetic rounds, at ``dps``
    digits. Sums use :func:`mpmath.fsum`/:func:`mpmath.fdot`, which add at the working precision.
    """
    dps = _check_dps(dps)
    check_compatible(network, batch)
    L = network.depth
    with mpmath.workdps(dps):
        w, b = _exact_parameters(network)
        # Column j of w^{l+1} (the weights leaving neuron j of layer l), for the backward sum over i.
        w_cols = {l: [list(col) for col in zip(*w[l], strict=True)] for l in network.layers}
        zs: dict[int, list[list[mpmath.mpf]]] = {l: [] for l in network.layers}
        acts: dict[int, list[list[mpmath.mpf]]] = {l: [] for l in range(1, L + 1)}
        deltas: dict[int, list[list[mpmath.mpf]]] = {l: [] for l in network.layers}
        costs = []
        for x_row, y_row in zip(batch.x.astype(np.float64).tolist(), batch.y.astype(np.float64).tolist(), strict=True):
            z, a = _forward(w, b, x_row)
            costs.append(_example_cost(a[L], y_row))
            y = [mpmath.mpf(v) for v in y_row]
            # δ^L_j = (a^L_j − y_j) σ′(z^L_j);  δ^l_j = (Σ_i δ^{l+1}_i w^{l+1}_ij) σ′(z^l_j)
            delta = {L: [(aj - yj) * _sigmoid_prime(zj) for aj, yj, zj in zip(a[L], y, z[L], strict=True)]}
            for l in range(L - 1, 1, -1):
                delta[l] = [mpmath.fdot(delta[l + 1], col) * _sigmoid_prime(zj) for col, zj in zip(w_cols[l + 1], z[l], strict=True)]
            for l in network.layers:
                zs[l].append(z[l])
                deltas[l].append(delta[l])
            for l in range(1, L + 1):
                acts[l].append(a[l])
        # ∂C/∂w^l_jk = Σ_x δ^l_j a^{l−1}_k ;  ∂C/∂b^l_j = Σ_x δ^l_j (the weight formula with a^{l−1}_k = 1)
        dC_dw = {
            l: [[mpmath.fdot(delta_j, a_k) for a_k in zip(*acts[l - 1], strict=True)] for delta_j in zip(*deltas[l], strict=True)]
            for l in network.layers
        }
        dC_db = {l: [mpmath.fsum(delta_j) for delta_j in zip(*deltas[l], strict=True)] for l in network.layers}
        cost = mpmath.fsum(costs)
    return MpmathBackprop(dps=dps, z=zs, a=acts, delta=deltas, dC_dw=dC_dw, dC_db=dC_db, cost=cost)


def mpmath_cost(network: Network, batch: Batch, dps: int = DEFAULT_DPS) -> mpmath.mpf:
    """C = Σ_x 1/2 Σ_j (y_j − a^L_j)² at ``dps`` digits, forward pass only (for exact finite differences)."""
    dps = _check_dps(dps)
    check_compatible(network, batch)
    with mpmath.workdps(dps):
        w, b = _exact_parameters(network)
        rows = zip(batch.x.astype(np.float64).tolist(), batch.y.astype(np.float64).tolist(), strict=True)
        return mpmath.fsum(_example_cost(_forward(w, b, x_row)[1][network.depth], y_row) for x_row, y_row in rows)
