"""Per-element bounds on the rounding error of a gradient: the tolerance of every verdict.

Implements the running error bound of the design note ``shared/design/error-bound.md`` (first order,
standard model of floating point, Higham's γ_n). A framework's gradient passes when, element by
element,

    |g_framework − g_reference| ≤ K · (E(framework precision) + E(reference precision)),   K = 2,

where E is computed here from the float64 reference's own forward and backward values at the very
point (parameters and data already rounded to the framework's format) the framework was given.

Why a bound instead of rtol/atol: the note's measurements show that a fixed relative tolerance fails
almost every correct float32 network, while the usual absolute tolerance passes pure rounding noise
and misses float32 arithmetic hidden in a float64 run. The bound follows each element's own
conditioning: width enters through γ_n, magnitude through |W||a| and |W|ᵀ|δ|, depth through the
recursion, and saturation through E_s, the error of σ′ as frameworks compute it, a(1 − a).

Symbols (all elementwise, all |·| taken in float64): u is the unit roundoff of storage, u_a that of
accumulation (a float16 or bfloat16 dot product accumulated in float32 has u_a = 2^-24), η the
underflow allowance (``finfo.tiny``: XLA on CPU flushes subnormals to zero), c_σ ≈ 4 the error of one
sigmoid evaluation in ulps, σ′_l = σ(z^l)σ(−z^l) evaluated stably.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from backprop_conformance.reference.dtypes import float_format
from backprop_conformance.reference.model import Batch, Gradients, Network
from backprop_conformance.reference.sigmoid import sigmoid_prime
from backprop_conformance.reference.vectorized import BackpropTrace

K = 2.0
"""Safety factor of the verdict. The note measured a worst error/bound ratio of 0.55 (float32) and 0.83
(float16) with K = 2 over ~1,200 correct networks, so K = 2 leaves margin without hiding real bugs."""

C_SIGMA = 4.0
"""Error of one sigmoid evaluation, in ulps; torch and jax measured ≤ 1.76 ulp in float32."""


@dataclass(frozen=True)
class Precision:
    """The rounding constants of one computation: storage u, accumulation, underflow η, sigmoid c_σ.

    Accumulation is charged per operation, because frameworks differ per operation: ``u_a`` is the unit
    roundoff of the matrix products (z^l, (w^{l+1})ᵀδ^{l+1}, and the weight gradient's sum over the
    batch, a matrix product too), ``u_batch`` that of the bias gradient's sum over the batch, and
    ``u_cost`` that of the cost's sum; the last two default to ``u_a``. numpy, MyGrad and TensorFlow
    in float16 round their matrix products as if accumulating in float32 but sum the bias gradient in
    float16, which one accumulation per dtype cannot describe.
    """

    u: float
    u_a: float
    eta: float
    c_sigma: float = C_SIGMA
    u_batch: float | None = None
    u_cost: float | None = None

    @property
    def u_bias_sum(self) -> float:
        """Unit roundoff of the bias gradient's sum over the batch."""
        return self.u_a if self.u_batch is None else self.u_batch

    @property
    def u_cost_sum(self) -> float:
        """Unit roundoff of the cost's sum over the batch and the outputs."""
        return self.u_a if self.u_cost is None else self.u_cost

    @classmethod
    def of(cls, storage: str, accumulation: str | Mapping[str, str] | None = None) -> Precision:
        """Constants for a format named as in :mod:`backprop_conformance.reference.dtypes`, optionally accumulated in another.

        ``Precision.of("float16", accumulation="float32")`` describes float16 storage with every sum
        accumulated in float32, which is what torch does on CPU; ``accumulation`` may instead map the
        operations ``"dot"``, ``"batch_sum"`` and ``"cost_sum"`` to formats (an operation not named
        accumulates in ``storage``).
        """
        fmt = float_format(storage)
        if accumulation is None or isinstance(accumulation, str):
            acc = float_format(accumulation) if accumulation is not None else fmt
            return cls(u=fmt.u, u_a=acc.u, eta=fmt.tiny)
        unknown = sorted(set(accumulation) - {"dot", "batch_sum", "cost_sum"})
        if unknown:
            raise ValueError(f"unknown operation(s) {', '.join(unknown)} in the accumulation; the operations are dot, batch_sum, cost_sum")
        per_op = {op: float_format(accumulation.get(op, storage)).u for op in ("dot", "batch_sum", "cost_sum")}
        return cls(u=fmt.u, u_a=per_op["dot"], eta=fmt.tiny, u_batch=per_op["batch_sum"], u_cost=per_op["cost_sum"])


FLOAT64 = Precision.of("float64")
"""The reference's own precision: its rounding errors are part of every tolerance."""


def gamma(n: int, u_a: float) -> float:
    """γ_n = n·u_a / (1 − n·u_a), Higham's bound for a length-n dot product.

    Raises when n·u_a ≥ 1: the first-order bound is then infinite, and an infinite tolerance would
    pass anything -- a verdict that cannot fail is worse than none.
    """
    nu = n * u_a
    if nu >= 1:
        raise ValueError(
            f"the error bound is vacuous for a length-{n} sum with accumulation unit roundoff {u_a:.3g} "
            f"(n·u_a = {nu:.3g} ≥ 1); use a smaller layer/batch or a wider accumulation format"
        )
    return nu / (1 - nu)


@dataclass(frozen=True)
class ErrorBounds:
    """Bounds on the absolute error of each computed quantity, same keys and shapes as the trace.

    ``z``, ``a``, ``sigma_prime``, ``dC_da`` and ``delta`` are per example, shape (B, n(l)); ``a`` has
    l = 1..L, the others l = 2..L. ``gradients`` bounds ∂C/∂w^l and ∂C/∂b^l; ``cost`` bounds C.
    """

    z: Mapping[int, np.ndarray]
    a: Mapping[int, np.ndarray]
    sigma_prime: Mapping[int, np.ndarray]
    dC_da: Mapping[int, np.ndarray]
    delta: Mapping[int, np.ndarray]
    gradients: Gradients
    cost: float

    def __add__(self, other: ErrorBounds) -> ErrorBounds:
        return _combine(self, other, lambda p, q: p + q)

    def scaled(self, factor: float) -> ErrorBounds:
        return _combine(self, self, lambda p, _q: factor * p)


def _combine(x: ErrorBounds, y: ErrorBounds, op: object) -> ErrorBounds:
    def each(m: Mapping[int, np.ndarray], n: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        return {l: op(m[l], n[l]) for l in m}  # type: ignore[operator]

    return ErrorBounds(
        z=each(x.z, y.z),
        a=each(x.a, y.a),
        sigma_prime=each(x.sigma_prime, y.sigma_prime),
        dC_da=each(x.dC_da, y.dC_da),
        delta=each(x.delta, y.delta),
        gradients=Gradients(each(x.gradients.w, y.gradients.w), each(x.gradients.b, y.gradients.b)),
        cost=float(op(x.cost, y.cost)),  # type: ignore[operator]
    )


def error_bounds(
    network: Network, batch: Batch, trace: BackpropTrace, precision: Precision, *, stable_sigma_prime: bool = False
) -> ErrorBounds:
    """First-order bounds E on the error of a computation done at ``precision``.

    With ``stable_sigma_prime`` the bound describes a computation whose σ′ is as accurate as
    σ(z)σ(−z) evaluated in the format (a few ulps *relative*), instead of the a(1 − a) that frameworks
    compute, whose error is absolute (≈ u·a). It is the exactness standard of the suite's fidelity
    tier: E_s^l = |1 − 2a^l| σ′_l E_z^l + 2c_σ u σ′_l + η (the first term propagates z's error through
    σ″ = (1 − 2σ)σ′, the second is the evaluation of the two factors).

    ``trace`` must be the float64 reference's trace at exactly ``network`` and ``batch``. Equations
    (design note, in the page's indices; products with |W| are matrix products, per example):

    Forward, layer l with fan-in n = n(l−1), E_a^1 = u|x|:
        E_z^l = |W^l| E_a^{l−1} + (γ_{n+1} + 2u)(|W^l||a^{l−1}| + |b^l|) + (2n + 1)η
        E_a^l = σ′_l E_z^l + c_σ u a^l + η
        E_s^l = |1 − 2a^l| E_a^l + 2u σ′_l + η        (error of σ′ computed as a(1 − a))
    Backward, r = a^L − y, h^l = ∂C/∂a^l = (W^{l+1})ᵀ δ^{l+1}:
        E_h^L = E_a^L + u(|r| + |y|)
        E_δ^L = E_h^L σ′_L + |r| E_s^L + 3u|δ^L| + η
        E_h^l = |W^{l+1}|ᵀ E_δ^{l+1} + γ_{n(l+1)} |W^{l+1}|ᵀ|δ^{l+1}| + 2n(l+1)η
        E_δ^l = E_h^l σ′_l + |h^l| E_s^l + 2u|δ^l| + η
    Gradients summed over B examples:
        E[∂C/∂w^l] = E_δ^l |a^{l−1}|ᵀ + |δ^l| (E_a^{l−1})ᵀ + (u + γ_B)|δ^l||a^{l−1}|ᵀ + 2Bη
        E[∂C/∂b^l] = Σ_batch E_δ^l + γ_B Σ_batch |δ^l| + Bη          (γ_B at u_batch, the bias sum's own accumulation)
    Underflow is charged η per term of a sum, where the note adds η once per quantity: with
    flush-to-zero every product of a dot product and every partial sum can lose up to η on its own.
    Found by the suite: XLA returned 0 for a float32 ∂C/∂w^3 of 2.7e-38 whose four per-example
    products were each below float32's tiny and flushed. The extra terms matter only for values
    within a few η of zero.
    Cost, with N = B·n(L) terms (not in the note; the same model applied to C = Σ 1/2 r²):
        E_C = Σ (|r| E_h^L + 1/2 (E_h^L)²) + (u + γ_N) Σ 1/2 r² + 2Nη   (γ_N at u_cost)
    The second-order term 1/2 (E_h^L)² is kept because 1/2 (r + e)² − 1/2 r² = r·e + 1/2 e²: when the
    targets equal the outputs (r = 0, a corner the suite generates on purpose) the first-order
    term vanishes and a framework's cost of 1/2 e² ≈ 1e-33 would otherwise be judged wrong.
    """
    u, u_a, eta, c_sigma = precision.u, precision.u_a, precision.eta, precision.c_sigma
    L = network.depth
    B = batch.size
    absw = {l: np.abs(network.w[l].astype(np.float64)) for l in network.layers}
    absb = {l: np.abs(network.b[l].astype(np.float64)) for l in network.layers}
    a = {l: np.asarray(v, dtype=np.float64) for l, v in trace.a.items()}
    sp = {l: sigmoid_prime(np.asarray(trace.z[l], dtype=np.float64)) for l in network.layers}

    E_a: dict[int, np.ndarray] = {1: u * np.abs(a[1])}
    E_z: dict[int, np.ndarray] = {}
    E_s: dict[int, np.ndarray] = {}
    for l in network.layers:
        n = network.widths[l - 2]
        E_z[l] = E_a[l - 1] @ absw[l].T + (gamma(n + 1, u_a) + 2 * u) * (np.abs(a[l - 1]) @ absw[l].T + absb[l]) + (2 * n + 1) * eta
        E_a[l] = sp[l] * E_z[l] + c_sigma * u * a[l] + eta
        if stable_sigma_prime:
            E_s[l] = np.abs(1 - 2 * a[l]) * sp[l] * E_z[l] + 2 * c_sigma * u * sp[l] + eta
        else:
            E_s[l] = np.abs(1 - 2 * a[l]) * E_a[l] + 2 * u * sp[l] + eta

    y = np.asarray(batch.y, dtype=np.float64)
    r = np.asarray(trace.dC_da[L], dtype=np.float64)
    delta = {l: np.abs(np.asarray(v, dtype=np.float64)) for l, v in trace.delta.items()}
    h = {l: np.abs(np.asarray(v, dtype=np.float64)) for l, v in trace.dC_da.items()}
    E_h: dict[int, np.ndarray] = {L: E_a[L] + u * (np.abs(r) + np.abs(y))}
    E_d: dict[int, np.ndarray] = {L: E_h[L] * sp[L] + np.abs(r) * E_s[L] + 3 * u * delta[L] + eta}
    for l in range(L - 1, 1, -1):
        n_next = network.widths[l]
        E_h[l] = E_d[l + 1] @ absw[l + 1] + gamma(n_next, u_a) * (delta[l + 1] @ absw[l + 1]) + 2 * n_next * eta
        E_d[l] = E_h[l] * sp[l] + h[l] * E_s[l] + 2 * u * delta[l] + eta

    g_B = gamma(B, u_a)
    E_w = {
        l: E_d[l].T @ np.abs(a[l - 1]) + delta[l].T @ E_a[l - 1] + (u + g_B) * (delta[l].T @ np.abs(a[l - 1])) + 2 * B * eta
        for l in network.layers
    }
    g_bias = gamma(B, precision.u_bias_sum)
    E_b = {l: E_d[l].sum(axis=0) + g_bias * delta[l].sum(axis=0) + B * eta for l in network.layers}
    g_N = gamma(B * network.widths[-1], precision.u_cost_sum)
    E_C = float(np.sum(np.abs(r) * E_h[L] + 0.5 * E_h[L] ** 2) + (u + g_N) * np.sum(0.5 * r * r) + 2 * B * network.widths[-1] * eta)
    return ErrorBounds(z=E_z, a=E_a, sigma_prime=E_s, dC_da=E_h, delta=E_d, gradients=Gradients(E_w, E_b), cost=E_C)


def tolerance(
    network: Network,
    batch: Batch,
    trace: BackpropTrace,
    framework: Precision,
    reference: Precision = FLOAT64,
    k: float = K,
) -> ErrorBounds:
    """The verdict's tolerance, K·(E(framework) + E(reference)), for every quantity of the trace."""
    return (error_bounds(network, batch, trace, framework) + error_bounds(network, batch, trace, reference)).scaled(k)
