"""Per-element bounds on the rounding error of a gradient: the tolerance of every verdict.

The derivation, every equation and the evidence behind each refinement: ``docs/error-bound.md``. It
starts from the design note's running error bound (standard model of floating point, Higham's γ_n) and
keeps, beyond first order, what can dominate when a first-order factor vanishes: the exact range of σ
over z's error interval, and the product of the two errors wherever two erroneous factors multiply.
A framework's gradient passes when, element by element,

    |g_framework − g_reference| ≤ K · (E(framework precision) + E(reference precision)),   K = 2,

where E is computed here from the float64 reference's own forward and backward values at the very
point (parameters and data already rounded to the framework's format) the framework was given. Each
equation is one function below, in the page's indices; :func:`error_bounds` chains them.

Why a bound instead of rtol/atol: a fixed relative tolerance fails almost every correct float32
network, while the usual absolute tolerance passes pure rounding noise and misses float32 arithmetic
hidden in a float64 run. The bound follows each element's own conditioning: width enters through γ_n,
magnitude through |W||a| and |W|ᵀ|δ|, depth through the recursion, and saturation through E_s, the
error of σ′ as frameworks compute it, a(1 − a).

Symbols (all elementwise, all |·| taken in float64): u is the unit roundoff of storage; u_a, u_batch and
u_cost those of the three kinds of sum (:class:`Precision`); η the underflow allowance (``finfo.tiny``:
XLA on CPU and TensorFlow flush subnormal results to zero, and TensorFlow reads subnormal inputs as zero);
c_σ ≈ 4 the error of one sigmoid evaluation in ulps; σ′ = σ(z)σ(−z) evaluated stably; Δσ the range of σ over
z's error interval (:func:`sigma_deviation`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np

from backprop_conformance.reference.dtypes import float_format
from backprop_conformance.reference.model import Batch, Gradients, Network
from backprop_conformance.reference.sigmoid import sigmoid, sigmoid_prime
from backprop_conformance.reference.vectorized import BackpropTrace

K = 2.0
"""Safety factor of the verdict. The note measured a worst error/bound ratio of 0.55 (float32) and 0.83
(float16) with K = 2 over ~1,200 correct networks, so K = 2 leaves margin without hiding real bugs."""

C_SIGMA = 4.0
"""Error of one sigmoid evaluation, in ulps; torch and jax measured ≤ 1.76 ulp in float32."""


EVALUATION_MARGIN = 2.0**-30
"""The relative margin every equation's value is raised by, so that it stays an upper bound after its own rounding.

Each equation below is a sum of non-negative products, evaluated in float64 by numpy in whatever order and with
whatever fused multiply-adds its kernels pick on this CPU (OpenBLAS chooses them per core type). Its computed value
can therefore come out a few ulps *below* the exact real value of the bound: one ulp was enough for an exactly
attained error to exceed its bound on an AVX-512 machine (``tests/test_error_bound.py``). The rounding error of
such a sum of m terms of at most four factors is below γ_{m+4}(2^−53) relative, and no evaluation here exceeds
m = 2^22 terms (the largest sum is the cost's B·n(L) ≤ 2^19 in the ``large`` profile): 2^−30 covers it with a
factor of 2 to spare, and moves no verdict (it is 2^−6 of float32's own unit roundoff, applied to the bound).
Larger inputs than the profiles draw would need a larger margin."""

_Bound = TypeVar("_Bound", np.ndarray, float)


def _rounded_up(equation: Callable[..., _Bound]) -> Callable[..., _Bound]:
    """``equation``'s value raised by :data:`EVALUATION_MARGIN`: an upper bound however numpy's kernels round it.

    Raising every equation keeps the chain an upper bound too: each equation is non-decreasing in the bounds it
    takes, so bounds raised at their source can only raise the ones computed from them.
    """

    @functools.wraps(equation)
    def raised(*args: object, **kwargs: object) -> _Bound:
        value = equation(*args, **kwargs)
        if isinstance(value, np.ndarray) and value.base is None and value.flags.writeable and _not_given(value, args, kwargs):
            value *= _RAISED  # an array the equation just made: the same product, without a new array
            return value  # type: ignore[return-value]
        return value * _RAISED

    return raised


_RAISED = 1 + EVALUATION_MARGIN
"""The factor :func:`_rounded_up` multiplies by, 1 + 2^−30: exact in float64, so computing it once changes no bit."""


def _not_given(value: np.ndarray, args: tuple[object, ...], kwargs: Mapping[str, object]) -> bool:
    """Whether ``value`` is none of an equation's arguments (a plain loop: a generator over them cost more than the
    multiplication, once per equation)."""
    for given in args:
        if given is value:
            return False
    for given in kwargs.values():
        if given is value:
            return False
    return True


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
    ranks: int = 1
    """R, the number of data-parallel ranks whose partial sums over the batch are combined
    (:func:`cross_rank_reduction_bound`); 1 for a computation in one process on one device."""

    def __post_init__(self) -> None:
        if not isinstance(self.ranks, int) or isinstance(self.ranks, bool) or self.ranks < 1:
            raise ValueError(f"ranks must be a whole number ≥ 1, got {self.ranks!r}")

    def constants(self) -> tuple[float, float, float, float, float, float, int]:
        """(u, u_a, η, c_σ, u_batch, u_cost, R) as the equations read them: two precisions with equal constants give equal bounds."""
        return (self.u, self.u_a, self.eta, self.c_sigma, self.u_bias_sum, self.u_cost_sum, self.ranks)

    @property
    def u_bias_sum(self) -> float:
        """Unit roundoff of the bias gradient's sum over the batch."""
        return self.u_a if self.u_batch is None else self.u_batch

    @property
    def u_cost_sum(self) -> float:
        """Unit roundoff of the cost's sum over the batch and the outputs."""
        return self.u_a if self.u_cost is None else self.u_cost

    @classmethod
    def of(cls, storage: str, accumulation: str | Mapping[str, str] | None = None, *, ranks: int = 1) -> Precision:
        """Constants for a format named as in :mod:`backprop_conformance.reference.dtypes`, optionally accumulated in another.

        ``Precision.of("float16", accumulation="float32")`` describes float16 storage with every sum
        accumulated in float32, which is what torch does on CPU; ``accumulation`` may instead map the
        operations ``"dot"``, ``"batch_sum"`` and ``"cost_sum"`` to formats (an operation not named
        accumulates in ``storage``). ``ranks`` is R for a data-parallel computation.
        """
        fmt = float_format(storage)
        if accumulation is None or isinstance(accumulation, str):
            acc = float_format(accumulation) if accumulation is not None else fmt
            return cls(u=fmt.u, u_a=acc.u, eta=fmt.tiny, ranks=ranks)
        unknown = sorted(set(accumulation) - {"dot", "batch_sum", "cost_sum"})
        if unknown:
            raise ValueError(f"unknown operation(s) {', '.join(unknown)} in the accumulation; the operations are dot, batch_sum, cost_sum")
        per_op = {op: float_format(accumulation.get(op, storage)).u for op in ("dot", "batch_sum", "cost_sum")}
        return cls(u=fmt.u, u_a=per_op["dot"], eta=fmt.tiny, u_batch=per_op["batch_sum"], u_cost=per_op["cost_sum"], ranks=ranks)


FLOAT64 = Precision.of("float64")
"""The reference's own precision: its rounding errors are part of every tolerance."""


class VacuousBound(ValueError):
    """A sum too long for its accumulation format: its bound would be infinite, so nothing computed with it can be judged."""


def gamma(n: int, u_a: float) -> float:
    """γ_n = n·u_a / (1 − n·u_a), Higham's bound for a length-n dot product.

    Raises when n·u_a ≥ 1: the first-order bound is then infinite, and an infinite tolerance would
    pass anything -- a verdict that cannot fail is worse than none.
    """
    nu = n * u_a
    if nu >= 1:
        raise VacuousBound(
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


SATURATED = 40.0
"""|z| from which σ(|z|) = 1/(1 + e^{−|z|}) is exactly 1 in float64: e^{−40} < 2^−54, so 1 + e^{−|z|} rounds to 1."""


def sigma_deviation(z: np.ndarray, E_z: np.ndarray) -> np.ndarray:
    """Δσ^l_j = max |σ(ẑ^l_j) − σ(z^l_j)| over every ẑ^l_j with |ẑ^l_j − z^l_j| ≤ E_z^l_j, in closed form:

        Δσ = (1 − e^{−E_z}) σ(|z|) σ(E_z − |z|)

    σ is increasing, so the deviation is σ(z + E_z) − σ(z) or σ(z) − σ(z − E_z); σ′ decreases with
    |z|, so it is the first for z ≤ 0 (the interval's upper half lies nearer 0) and the second for
    z ≥ 0, and σ(−t) = 1 − σ(t) makes the two the same function of |z|. The identity
    σ(p) − σ(q) = σ(p) σ(−q) (1 − e^{q − p}) writes it without subtracting two nearly equal σ.

    Why not the first-order σ′(z^l_j) E_z^l_j of the design note: in saturation every derivative of σ
    is about σ itself, so σ(z + E) − σ(z) ≈ σ(z)(e^E − 1) and no truncated Taylor series bounds it once
    E_z is about 1 or more, as it is in bfloat16 (u = 2^-8) for a z^l_j summed from products of total
    magnitude above about 100. For small E_z, Δσ = σ′ E_z (1 + O(E_z)): nothing changes where the
    first-order term was valid.
    """
    magnitude = np.abs(z)
    # σ(|z|) is 1/(1 + e^{−|z|}): sigmoid's own formula for a non-negative argument, bit for bit, in fewer calls.
    # Each step is written into an array made here, the same operations in the same order as
    # −expm1(−E_z) · (1/(1 + e^{−|z|})) · σ(E_z − |z|), without a new array per step.
    deviation = np.negative(E_z)
    np.expm1(deviation, out=deviation)
    np.negative(deviation, out=deviation)
    # |z| capped at SATURATED: from there 1 + e^{−|z|} rounds to 1, so σ(|z|) is 1 either way, and numpy's exp of a
    # saturated unit's −|z| (a subnormal or zero result) costs up to fifty times a normal one.
    sigma_abs = np.minimum(magnitude, SATURATED)
    np.negative(sigma_abs, out=sigma_abs)
    np.exp(sigma_abs, out=sigma_abs)
    np.add(1, sigma_abs, out=sigma_abs)
    np.divide(1, sigma_abs, out=sigma_abs)
    deviation *= sigma_abs
    np.subtract(E_z, magnitude, out=magnitude)
    deviation *= sigmoid(magnitude)
    return deviation


@_rounded_up
def input_bound(x: np.ndarray, precision: Precision) -> np.ndarray:
    """E_a^1_k = u|x_k| + η: the error of the input as the framework reads it.

    x is exactly representable in the format (the suite rounds it first), so u|x| is a margin, not a rounding.
    η is not: a framework that treats subnormal inputs as zero (denormals-are-zero; TensorFlow on CPU does, in
    every path, measured) reads an x below ``finfo.tiny`` as 0, an error of up to η, which the weights then
    carry into z^2 (x = 2^-130 times w = 2^20 is a normal z^2 = 2^-110, computed as 0).
    """
    return precision.u * np.abs(x) + precision.eta


@_rounded_up
def weighted_input_bound(
    abs_w: np.ndarray, abs_b: np.ndarray, a_prev: np.ndarray, E_a_prev: np.ndarray, precision: Precision
) -> np.ndarray:
    """E_z^l_j = Σ_k |w^l_jk| E_a^{l−1}_k + (γ_{n+1} + 2u) Σ_k |w^l_jk| |a^{l−1}_k| + (γ_{n+1} + u)|b^l_j| + (2n + 1)η, n = n(l − 1).

    The error of z^l_j = Σ_k w^l_jk a^{l−1}_k + b^l_j: the inputs' errors carried through the exact
    weights (linear, so first order is exact), the sum's rounding at the accumulation's γ_{n+1}, the
    rounding of each product w^l_jk a^{l−1}_k to storage (u, where a framework forms them there) and of z
    itself (u|z| ≤ u(Σ_k |w^l_jk||a^{l−1}_k| + |b^l_j|)), and η per product and partial sum. b^l_j is
    no product, so it is charged the one rounding of z, not the design note's two: in bfloat16 a z made
    mostly of bias is otherwise uncertain by twice its own rounding, enough for σ's exact range at a
    saturated output to admit a σ′ of 0 (docs/error-bound.md).
    ``abs_w``, ``abs_b`` are |w^l|, |b^l|; ``a_prev``, ``E_a_prev`` per example, shape (B, n(l − 1)).
    """
    n = abs_w.shape[1]
    u, g = precision.u, gamma(n + 1, precision.u_a)
    # Σ_k |w_jk| (E_a_k + c|a_k|): both sums in one product, an order docs/error-bound.md proves still rounds within the margin.
    carried = np.abs(a_prev, dtype=np.float64)
    carried *= g + 2 * u
    carried += E_a_prev
    value = carried @ abs_w.T
    value += (g + u) * abs_b
    value += (2 * n + 1) * precision.eta
    return value


@_rounded_up
def activation_bound(z: np.ndarray, a: np.ndarray, E_z: np.ndarray, precision: Precision) -> np.ndarray:
    """E_a^l_j = Δσ(z^l_j, E_z^l_j) + c_σ u a^l_j + η.

    The error of a^l_j = σ(z^l_j): the error z^l_j already carries, through σ (:func:`sigma_deviation`),
    plus the evaluation of σ itself (c_σ ulps) and underflow (η: a σ(z) below the format's smallest
    normal number may be flushed to zero).
    """
    value = sigma_deviation(z, E_z) + precision.c_sigma * precision.u * a  # a new array: the last sum goes into it
    value += precision.eta
    return value


@_rounded_up
def sigma_prime_bound(a: np.ndarray, E_a: np.ndarray, sigma_prime: np.ndarray, precision: Precision) -> np.ndarray:
    """E_s^l_j = |1 − 2a^l_j| E_a^l_j + (E_a^l_j)² + 2u σ′(z^l_j) + η: the error of σ′ computed as a(1 − a).

    With â = a + e the computed activation, â(1 − â) − a(1 − a) = e (1 − 2a − e) exactly, so
    |1 − 2a| E_a + E_a² bounds it with nothing left out (a product of two errors, kept because its
    first-order companion vanishes: at a = 1/2, where 1 − 2a = 0, and wherever E_a exceeds a, as in a
    saturated unit whose z is uncertain by more than 1). 2u σ′ is the subtraction and the product.
    The computed a(1 − a) has an absolute error of about u·a, so its relative error grows like u·e^{|z|}
    and in float32 it is exactly 0 from z ≈ 16.7: this term is what lets the bound follow a saturated unit.
    """
    return np.abs(1 - 2 * a) * E_a + E_a * E_a + 2 * precision.u * sigma_prime + precision.eta


@_rounded_up
def stable_sigma_prime_bound(z: np.ndarray, a: np.ndarray, E_z: np.ndarray, sigma_prime: np.ndarray, precision: Precision) -> np.ndarray:
    """E_s^l_j = |1 − 2a^l_j| Δσ^l_j + (Δσ^l_j)² + 2c_σ u σ′(z^l_j) + η: σ′ as accurate as σ(z)σ(−z) in the format.

    The fidelity tier's standard: σ′ evaluated at the computed ẑ to a few ulps relative. With
    σ(ẑ) = σ(z) + e, |e| ≤ Δσ, σ′(ẑ) − σ′(z) = e (1 − 2σ(z) − e) exactly, the identity of
    :func:`sigma_prime_bound` without the rounding of σ; 2c_σ u σ′ is the evaluation of the two factors.
    """
    deviation = sigma_deviation(z, E_z)
    return np.abs(1 - 2 * a) * deviation + deviation * deviation + 2 * precision.c_sigma * precision.u * sigma_prime + precision.eta


@_rounded_up
def output_activation_gradient_bound(E_a_L: np.ndarray, r: np.ndarray, y: np.ndarray, precision: Precision) -> np.ndarray:
    """E_h^L_j = E_a^L_j + u(|a^L_j − y_j| + |y_j|): the error of ∂C/∂a^L_j = a^L_j − y_j (y is exact)."""
    return E_a_L + precision.u * (np.abs(r) + np.abs(y))


def product_error(x: np.ndarray, E_x: np.ndarray, y: np.ndarray, E_y: np.ndarray) -> np.ndarray:
    """|x̂ŷ − xy| ≤ E_x |y| + |x| E_y + E_x E_y, for |x̂ − x| ≤ E_x and |ŷ − y| ≤ E_y: the product rule of errors.

    Exact, not first order: x̂ŷ − xy = (x̂ − x) y + x (ŷ − y) + (x̂ − x)(ŷ − y). The product of the two
    errors is what the design note's first-order bound left out, and it dominates when both first-order
    terms vanish: x ≈ 0 (a residual a − y far below a's own error, targets set to the outputs) and
    y ≈ 0 (σ′ of a saturated unit, or a value below the underflow threshold, whose error η exceeds it).
    """
    return E_x * np.abs(y) + np.abs(x) * E_y + E_x * E_y


@_rounded_up
def output_error_bound(
    E_h_L: np.ndarray, r: np.ndarray, sigma_prime: np.ndarray, E_s_L: np.ndarray, delta_L: np.ndarray, precision: Precision
) -> np.ndarray:
    """E_δ^L_j = E_h^L_j σ′(z^L_j) + |a^L_j − y_j| E_s^L_j + E_h^L_j E_s^L_j + 3u|δ^L_j| + η.

    The error of δ^L_j = (a^L_j − y_j) σ′(z^L_j), by :func:`product_error`, plus its roundings. The
    product E_h E_s is the one a correct framework was failed for (issue 12, replayed by
    ``tests/test_recorded_cases.py``): a saturated output whose target lies far closer to the true a^L
    than a^L's own error, so that (â − y) is all error, and so is â(1 − â).
    """
    return product_error(r, E_h_L, sigma_prime, E_s_L) + 3 * precision.u * np.abs(delta_L) + precision.eta


@_rounded_up
def hidden_activation_gradient_bound(
    abs_w_next: np.ndarray, E_delta_next: np.ndarray, delta_next: np.ndarray, precision: Precision
) -> np.ndarray:
    """E_h^l_j = Σ_i |w^{l+1}_ij| E_δ^{l+1}_i + γ_n Σ_i |w^{l+1}_ij| |δ^{l+1}_i| + 2nη, n = n(l + 1).

    The error of ∂C/∂a^l_j = Σ_i δ^{l+1}_i w^{l+1}_ij: δ^{l+1}'s error through the exact weights (linear),
    the dot product's rounding, and η per product and partial sum. ``abs_w_next`` is |w^{l+1}|.
    """
    n = abs_w_next.shape[0]
    carried = np.abs(delta_next, dtype=np.float64)  # Σ_i |w_ij| (E_δ_i + γ_n|δ_i|): both sums in one product, as in weighted_input_bound
    carried *= gamma(n, precision.u_a)
    carried += E_delta_next
    value = carried @ abs_w_next
    value += 2 * n * precision.eta
    return value


@_rounded_up
def hidden_error_bound(
    E_h: np.ndarray, h: np.ndarray, sigma_prime: np.ndarray, E_s: np.ndarray, delta: np.ndarray, precision: Precision
) -> np.ndarray:
    """E_δ^l_j = E_h^l_j σ′(z^l_j) + |∂C/∂a^l_j| E_s^l_j + E_h^l_j E_s^l_j + 2u|δ^l_j| + η, for l < L.

    The error of δ^l_j = ∂C/∂a^l_j σ′(z^l_j), by :func:`product_error`, plus the product's rounding (and
    the dot product's final rounding to storage). E_h E_s matters where ∂C/∂a^l_j is below its own error
    and σ′(z^l_j) below its own: a saturated hidden unit fed by an output that is already pure noise.
    """
    return product_error(h, E_h, sigma_prime, E_s) + 2 * precision.u * np.abs(delta) + precision.eta


@_rounded_up
def cross_rank_reduction_bound(magnitude: np.ndarray | float, local_error: np.ndarray | float, precision: Precision) -> np.ndarray | float:
    """E_R = (γ_{R−1}(u) + ρ_R) (S + E_local) + R η, ρ_R = 0 when R is a power of 2, else 2u; 0 when R = 1.

    The extra error of a sum over the batch computed data-parallel: each of R ranks sums its own slice
    of the batch (a partial sum p̂_r, whose error the single-process bound E_local already covers,
    since a slice's γ_{B_r} ≤ γ_B), and the R partial sums are then combined by an all-reduce, in an
    order the suite does not control (a ring, a tree, recursive halving). Whatever the order, a sum of
    R terms is a binary tree of R − 1 additions, each rounding once, and Higham's bound for any such
    tree is |fl(Σ_r p̂_r) − Σ_r p̂_r| ≤ γ_{R−1} Σ_r |p̂_r| ≤ γ_{R−1} (S + E_local), with S the sum of the
    magnitudes of the terms (Σ_x |δ^l_j||a^{l−1}_k| for ∂C/∂w^l_jk). The all-reduce adds in the
    gradients' storage format, so u, not the accumulation's u_a, is charged: DDP buckets float16 and
    bfloat16 gradients and reduces them in float16 and bfloat16.

    ρ_R is the mean: DistributedDataParallel divides each rank's gradient by R before it reduces, and
    the adapter multiplies the mean by R to return the gradient of the page's summed cost; each is
    exact for R a power of 2 (barring underflow, η per rank), else one rounding each. ``magnitude`` is
    S, ``local_error`` the bound of the same sum computed in one process.
    """
    R = precision.ranks
    if R == 1:
        return np.zeros_like(magnitude) if isinstance(magnitude, np.ndarray) else 0.0
    rho = 0.0 if R & (R - 1) == 0 else 2 * precision.u
    return (gamma(R - 1, precision.u) + rho) * (magnitude + local_error) + R * precision.eta


def _with_ranks(local: np.ndarray, magnitude: np.ndarray, precision: Precision) -> np.ndarray:
    """``local`` plus :func:`cross_rank_reduction_bound`; ``local`` itself for one rank, whose term is 0 (adding 0 to a
    positive bound changes no bit)."""
    if precision.ranks == 1:
        return local
    return local + cross_rank_reduction_bound(magnitude, local, precision)


@_rounded_up
def weight_gradient_bound(
    E_delta: np.ndarray, delta: np.ndarray, a_prev: np.ndarray, E_a_prev: np.ndarray, precision: Precision
) -> np.ndarray:
    """E[∂C/∂w^l_jk] = Σ_x (E_δ^l_j |a^{l−1}_k| + |δ^l_j| E_a^{l−1}_k + E_δ^l_j E_a^{l−1}_k) + (u + γ_B) Σ_x |δ^l_j| |a^{l−1}_k| + 2Bη.

    The error of ∂C/∂w^l_jk = Σ_x δ^l_j a^{l−1}_k, a matrix product over the batch: :func:`product_error`
    for each example's term (E_δ E_a where both δ and a^{l−1} are below their errors: a unit of layer
    l − 1 saturated low, feeding a δ that is noise), the sum's γ_B at the matrix products' accumulation,
    the final rounding to storage (u), and η per product and partial sum; computed on R data-parallel
    ranks, plus the combination of their partial sums (:func:`cross_rank_reduction_bound`).
    """
    B = delta.shape[0]
    abs_delta, abs_a = np.abs(delta), np.abs(a_prev)
    c = precision.u + gamma(B, precision.u_a)
    if precision.ranks > 1:  # the cross-rank term needs Σ_x |δ||a| on its own
        errors = E_delta.T @ (abs_a + E_a_prev) + abs_delta.T @ E_a_prev  # E_δ|a| + E_δ E_a in one product
        magnitude = abs_delta.T @ abs_a
        local = errors + c * magnitude + 2 * B * precision.eta
        return _with_ranks(local, magnitude, precision)
    # Σ_x (E_δ (|a| + E_a) + |δ| (E_a + c|a|)): one product over 2B terms, the order docs/error-bound.md proves safe.
    carried = abs_a * c
    carried += E_a_prev
    abs_a += E_a_prev
    value = np.concatenate((E_delta, abs_delta)).T @ np.concatenate((abs_a, carried))
    value += 2 * B * precision.eta
    return value


@_rounded_up
def bias_gradient_bound(E_delta: np.ndarray, delta: np.ndarray, precision: Precision) -> np.ndarray:
    """E[∂C/∂b^l_j] = Σ_x E_δ^l_j + (u + γ_B) Σ_x |δ^l_j| + Bη, γ_B at the bias sum's own accumulation (``u_batch``).

    The error of ∂C/∂b^l_j = Σ_x δ^l_j. The final rounding to storage (u) is charged as it is for the
    weight gradient: a sum accumulated in float32 is still returned in float16 or bfloat16. Computed on
    R data-parallel ranks, plus the combination of their partial sums (:func:`cross_rank_reduction_bound`).
    """
    B = delta.shape[0]
    magnitude = np.add.reduce(np.abs(delta), axis=0)  # the kernel .sum(axis=0) runs, without its Python layers
    local = np.add.reduce(E_delta, axis=0) + (precision.u + gamma(B, precision.u_bias_sum)) * magnitude + B * precision.eta
    return _with_ranks(local, magnitude, precision)


@_rounded_up
def cost_bound(r: np.ndarray, E_h_L: np.ndarray, precision: Precision) -> float:
    """E_C = Σ_x Σ_j (|r_j| E_h^L_j + 1/2 (E_h^L_j)²) + (2u + γ_N) Σ_x Σ_j 1/2 r_j², N = B·n(L) terms, γ_N at ``u_cost``.

    The error of C = Σ_x 1/2 Σ_j r_j², r_j = a^L_j − y_j: 1/2 (r + e)² − 1/2 r² = r·e + 1/2 e² exactly (the
    second-order term matters when the targets equal the outputs: r = 0, and a framework's cost of
    1/2 e² ≈ 1e-33 would otherwise be judged wrong), the rounding of each square (u), the sum's γ_N and
    its final rounding to storage (u), and η per square and partial sum. Computed on R data-parallel
    ranks, each its slice's cost, plus the sum of their R costs (:func:`cross_rank_reduction_bound`).
    """
    N = r.size
    # np.add.reduce over every axis: the kernel np.sum runs, without its Python layers.
    half_squares = float(np.add.reduce(0.5 * r * r, axis=None))
    propagated = float(np.add.reduce(np.abs(r) * E_h_L + 0.5 * E_h_L * E_h_L, axis=None))
    local = propagated + (2 * precision.u + gamma(N, precision.u_cost_sum)) * half_squares + 2 * N * precision.eta
    if precision.ranks == 1:  # the cross-rank term is 0, and adding 0 to a positive bound changes no bit
        return local
    return local + float(cross_rank_reduction_bound(half_squares, local, precision))


class _TraceValues(NamedTuple):
    """What every precision's bound reads from one trace: |w^l|, |b^l|, a^l, z^l, σ′(z^l), y, ∂C/∂a^l and δ^l in float64.

    The same for the framework's precision and the reference's, so :func:`tolerance` takes them once for both: σ′
    alone, one exponential per unit, cost a tenth of a tolerance (a saturated unit's exponential is a subnormal
    number, many times slower than a normal one).
    """

    absw: dict[int, np.ndarray]
    absb: dict[int, np.ndarray]
    a: dict[int, np.ndarray]
    z: dict[int, np.ndarray]
    sp: dict[int, np.ndarray]
    y: np.ndarray
    h: dict[int, np.ndarray]
    delta: dict[int, np.ndarray]


def _trace_values(network: Network, batch: Batch, trace: BackpropTrace) -> _TraceValues:
    z = {l: np.asarray(v, dtype=np.float64) for l, v in trace.z.items()}
    return _TraceValues(
        absw={l: np.abs(network.w[l].astype(np.float64, copy=False)) for l in network.layers},
        absb={l: np.abs(network.b[l].astype(np.float64, copy=False)) for l in network.layers},
        a={l: np.asarray(v, dtype=np.float64) for l, v in trace.a.items()},
        z=z,
        sp={l: sigmoid_prime(z[l]) for l in network.layers},
        y=np.asarray(batch.y, dtype=np.float64),
        h={l: np.asarray(v, dtype=np.float64) for l, v in trace.dC_da.items()},
        delta={l: np.asarray(v, dtype=np.float64) for l, v in trace.delta.items()},
    )


def error_bounds(
    network: Network, batch: Batch, trace: BackpropTrace, precision: Precision, *, stable_sigma_prime: bool = False
) -> ErrorBounds:
    """Bounds E on the error of every quantity of a computation done at ``precision``, one equation each.

    ``trace`` must be the float64 reference's trace at exactly ``network`` and ``batch``. The
    equations, in the page's indices, are those of the functions called below, in this order (the
    derivation: docs/error-bound.md). Forward: :func:`input_bound`, then for l = 2..L :func:`weighted_input_bound`,
    :func:`activation_bound`, :func:`sigma_prime_bound` (or :func:`stable_sigma_prime_bound`). Backward:
    :func:`output_activation_gradient_bound`, :func:`output_error_bound`, then for l = L − 1..2
    :func:`hidden_activation_gradient_bound` and :func:`hidden_error_bound`. Gradients, summed over the
    batch: :func:`weight_gradient_bound`, :func:`bias_gradient_bound`; the cost: :func:`cost_bound`.

    With ``stable_sigma_prime`` the bound describes a computation whose σ′ is as accurate as
    σ(z)σ(−z) evaluated in the format (a few ulps *relative*), instead of the a(1 − a) that frameworks
    compute, whose error is absolute (≈ u·a): the exactness standard of the suite's fidelity tier.
    """
    return _error_bounds(_trace_values(network, batch, trace), precision, stable_sigma_prime)


def _error_bounds(values: _TraceValues, precision: Precision, stable_sigma_prime: bool = False, *, per_example: bool = True) -> ErrorBounds:
    """:func:`error_bounds` from the trace's values (:func:`_trace_values`), which several precisions' bounds share.

    Without ``per_example`` only the bounds on the gradients and the cost are returned (the per-example mappings are
    empty), and each per-example bound is dropped as soon as the recursion has read it for the last time: E_z^l once
    E_a^l and E_s^l are made, E_h^l and E_δ^l once layer l − 1's are, E_a^{l−1} and E_s^l once layer l's gradient
    bounds are. A passing verdict reads nothing else, and at the ``large`` profile each of the five per-example
    bounds is 60 MiB (``docs/speed.md``). The equations, their arguments and so their bits are the same either way;
    each layer's gradient bounds are computed as soon as E_δ^l exists instead of after the whole backward pass, which
    changes no bit, since no equation writes into an array another one reads.
    """
    absw, absb, a, z, sp, y, h, delta = values
    layers = range(2, len(z) + 2)
    L = layers[-1]

    E_a: dict[int, np.ndarray] = {1: input_bound(a[1], precision)}
    E_z: dict[int, np.ndarray] = {}
    E_s: dict[int, np.ndarray] = {}
    for l in layers:
        E_z[l] = weighted_input_bound(absw[l], absb[l], a[l - 1], E_a[l - 1], precision)
        E_a[l] = activation_bound(z[l], a[l], E_z[l], precision)
        if stable_sigma_prime:
            E_s[l] = stable_sigma_prime_bound(z[l], a[l], E_z[l], sp[l], precision)
        else:
            E_s[l] = sigma_prime_bound(a[l], E_a[l], sp[l], precision)
        if not per_example:
            del E_z[l]

    E_h: dict[int, np.ndarray] = {L: output_activation_gradient_bound(E_a[L], h[L], y, precision)}
    E_d: dict[int, np.ndarray] = {L: output_error_bound(E_h[L], h[L], sp[L], E_s[L], delta[L], precision)}
    E_C = cost_bound(h[L], E_h[L], precision)
    E_w: dict[int, np.ndarray] = {}
    E_b: dict[int, np.ndarray] = {}
    for l in range(L, 1, -1):
        E_w[l] = weight_gradient_bound(E_d[l], delta[l], a[l - 1], E_a[l - 1], precision)
        E_b[l] = bias_gradient_bound(E_d[l], delta[l], precision)
        if l > 2:
            E_h[l - 1] = hidden_activation_gradient_bound(absw[l], E_d[l], delta[l], precision)
            E_d[l - 1] = hidden_error_bound(E_h[l - 1], h[l - 1], sp[l - 1], E_s[l - 1], delta[l - 1], precision)
        if not per_example:
            del E_h[l], E_d[l], E_s[l], E_a[l - 1]
    # adopt: the arrays were just computed and nothing else holds them, so they are frozen instead of copied.
    gradients = Gradients.adopt({l: E_w[l] for l in layers}, {l: E_b[l] for l in layers})
    if not per_example:
        return ErrorBounds(z={}, a={}, sigma_prime={}, dC_da={}, delta={}, gradients=gradients, cost=E_C)
    return ErrorBounds(z=E_z, a=E_a, sigma_prime=E_s, dC_da=E_h, delta=E_d, gradients=gradients, cost=E_C)


def _scaled_in_place(bounds: ErrorBounds, factor: float, add: ErrorBounds | None = None) -> ErrorBounds:
    """``factor·(bounds + add)``, or ``factor·bounds``, computed into ``bounds``' own arrays: :func:`error_bounds`' fresh result.

    The same two roundings as ``(bounds + add).scaled(factor)`` (a sum, then a product), so the same bits, without
    a second copy of every per-example bound: at the ``large`` profile, megabytes per example.
    """
    for name in ("z", "a", "sigma_prime", "dC_da", "delta"):
        for l, array in getattr(bounds, name).items():
            if add is not None:
                array += getattr(add, name)[l]
            array *= factor
    for kind, l, array in bounds.gradients.items():
        array.setflags(write=True)  # error_bounds adopted them; nothing else refers to them yet
        if add is not None:
            array += (add.gradients.w if kind == "w" else add.gradients.b)[l]
        array *= factor
        array.setflags(write=False)
    cost = bounds.cost + add.cost if add is not None else bounds.cost
    return dataclasses.replace(bounds, cost=float(factor * cost))


def tolerance(
    network: Network,
    batch: Batch,
    trace: BackpropTrace,
    framework: Precision,
    reference: Precision = FLOAT64,
    k: float = K,
) -> ErrorBounds:
    """The verdict's tolerance, K·(E(framework) + E(reference)), for every quantity of the trace.

    A framework computing at the reference's own precision (the built-in adapters' float64 cells, all but the
    data-parallel ones, whose R differs) has E(framework) = E(reference), and the tolerance is then 2K·E(reference),
    computed once: the bound is about a fifth of a torch cell's time, and 2K·E equals K·(E + E) bit for bit (doubling is
    exact). Otherwise the two bounds share what they read from the trace (:class:`_TraceValues`).
    """
    return _tolerance(_trace_values(network, batch, trace), framework, reference, k, per_example=True)


def gradient_tolerance(
    network: Network,
    batch: Batch,
    trace: BackpropTrace,
    framework: Precision,
    reference: Precision = FLOAT64,
    k: float = K,
) -> tuple[Gradients, float]:
    """:func:`tolerance`'s bounds on the gradients and on the cost, bit for bit, without the per-example bounds.

    All that the verdict of a passing example reads. The recursion still computes every per-example bound (each
    layer's needs the last), but drops each once read for the last time, and none is scaled by K: at the turn from
    the forward to the backward pass it holds two of the five per layer (E_a and E_s), and fewer as the backward pass
    goes down, with the framework's gradient bounds kept while the reference's recursion runs, instead of all five
    per layer for each precision. A failing example's diagnosis computes the full :func:`tolerance` again.
    """
    bounds = _tolerance(_trace_values(network, batch, trace), framework, reference, k, per_example=False)
    return bounds.gradients, bounds.cost


def _tolerance(values: _TraceValues, framework: Precision, reference: Precision, k: float, *, per_example: bool) -> ErrorBounds:
    if framework.constants() == reference.constants():
        return _scaled_in_place(_error_bounds(values, reference, per_example=per_example), 2 * k)
    ours = _error_bounds(values, framework, per_example=per_example)
    return _scaled_in_place(ours, k, add=_error_bounds(values, reference, per_example=per_example))


def batch_sum_magnitudes(trace: BackpropTrace) -> tuple[Gradients, float]:
    """S, the sums of the terms' magnitudes of the three sums over the batch: Σ_x |δ^l_j||a^{l−1}_k| and Σ_x |δ^l_j| per
    layer, and Σ_x Σ_j ½ r_j² for the cost (r = a^L − y)."""
    layers = sorted(trace.delta)
    delta = {l: np.abs(np.asarray(trace.delta[l], dtype=np.float64)) for l in layers}
    a = {l: np.abs(np.asarray(trace.a[l - 1], dtype=np.float64)) for l in layers}
    r = np.asarray(trace.dC_da[max(layers)], dtype=np.float64)
    return Gradients({l: delta[l].T @ a[l] for l in layers}, {l: delta[l].sum(axis=0) for l in layers}), float(np.sum(0.5 * r * r))


@_rounded_up
def micro_batch_accumulation_bound(
    magnitude: np.ndarray | float, local_error: np.ndarray | float, micro_batches: int, precision: Precision
) -> np.ndarray | float:
    """E_k = γ_{k−1}(u) (S + E_local) + kη; 0 when k = 1: the accumulation of k micro-batches' partial sums.

    A training loop that accumulates gradients splits the batch into k micro-batches of B_1 + ... + B_k = B examples,
    computes each micro-batch's sum p̂_i (its error is the single-batch bound over its own examples, with γ_{B_i} ≤ γ_B
    and the final rounding to storage u|p_i|, so the k of them together stay within E_local, the whole batch's bound),
    and adds the k partial sums: ``.grad`` += p̂_i in torch, a carry in JAX's scan, in the gradients' storage format
    (u, not the accumulation's u_a). Whatever the order, k terms are added by k − 1 roundings, and Higham's bound for
    any summation tree gives |fl(Σ_i p̂_i) − Σ_i p̂_i| ≤ γ_{k−1} Σ_i |p̂_i| ≤ γ_{k−1} (S + E_local); kη is underflow.
    The same holds for the sum of B per-example gradients, each rounded to storage first (k = B, one example each).
    Derivation: docs/error-bound.md, "Micro-batch accumulation".
    """
    if micro_batches < 1:
        raise ValueError(f"micro_batches must be ≥ 1, got {micro_batches!r}")
    if micro_batches == 1:
        return np.zeros_like(magnitude) if isinstance(magnitude, np.ndarray) else 0.0
    return gamma(micro_batches - 1, precision.u) * (magnitude + local_error) + micro_batches * precision.eta


def accumulated_error_bounds(bounds: ErrorBounds, trace: BackpropTrace, micro_batches: int, precision: Precision) -> ErrorBounds:
    """``bounds`` (one computation's, :func:`error_bounds`) with each sum over the batch -- ∂C/∂w^l, ∂C/∂b^l and C -- charged
    the accumulation of its ``micro_batches`` partial sums (:func:`micro_batch_accumulation_bound`); the per-example
    quantities do not depend on the split and are unchanged."""
    if micro_batches == 1:
        return bounds
    magnitude, half_squares = batch_sum_magnitudes(trace)

    def charged(size: Mapping[int, np.ndarray], local: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        return {l: local[l] + micro_batch_accumulation_bound(size[l], local[l], micro_batches, precision) for l in local}

    gradients = Gradients(charged(magnitude.w, bounds.gradients.w), charged(magnitude.b, bounds.gradients.b))
    cost = bounds.cost + float(micro_batch_accumulation_bound(half_squares, bounds.cost, micro_batches, precision))
    return dataclasses.replace(bounds, gradients=gradients, cost=cost)


def micro_batch_tolerance(network: Network, batch: Batch, trace: BackpropTrace, framework: Precision, micro_batches: int) -> ErrorBounds:
    """The verdict's tolerance, K·(E(framework) + E(float64 reference)), for a framework that accumulates ``micro_batches``
    partial sums of each sum over the batch (the reference computes the batch in one piece); :func:`tolerance` when 1."""
    if micro_batches == 1:
        return tolerance(network, batch, trace, framework)
    values = _trace_values(network, batch, trace)
    accumulated = accumulated_error_bounds(_error_bounds(values, framework), trace, micro_batches, framework)
    return (accumulated + _error_bounds(values, FLOAT64)).scaled(K)


@_rounded_up
def _per_example_weight_bound(
    E_delta: np.ndarray, delta: np.ndarray, a_prev: np.ndarray, E_a_prev: np.ndarray, u_a: float, precision: Precision
) -> np.ndarray:
    abs_delta, abs_a = np.abs(delta)[:, :, None], np.abs(a_prev)[:, None, :]
    E_d, E_a = E_delta[:, :, None], E_a_prev[:, None, :]
    return E_d * (abs_a + E_a) + abs_delta * E_a + (precision.u + gamma(1, u_a)) * abs_delta * abs_a + 2 * precision.eta


def per_example_gradient_bounds(bounds: ErrorBounds, trace: BackpropTrace, precision: Precision) -> Gradients:
    """Bounds on each example's own gradient, ∂C_x/∂w^l_jk = δ^l_j a^{l−1}_k and ∂C_x/∂b^l_j = δ^l_j, arrays of shape
    (B, n(l), n(l−1)) and (B, n(l)): :func:`weight_gradient_bound` and :func:`bias_gradient_bound` for a batch of one.

    ``bounds`` is the whole batch's (:func:`error_bounds`): E_δ and E_a are per example and do not depend on B, so one
    computation bounds the B gradients a per-example transform (``vmap(grad)``) returns.
    """
    layers = sorted(bounds.delta)
    w = {
        l: _per_example_weight_bound(bounds.delta[l], trace.delta[l], trace.a[l - 1], bounds.a[l - 1], precision.u_a, precision)
        for l in layers
    }
    b = {
        l: (bounds.delta[l] + (precision.u + gamma(1, precision.u_bias_sum)) * np.abs(trace.delta[l]) + precision.eta)
        * (1 + EVALUATION_MARGIN)
        for l in layers
    }
    return Gradients(w, b)


def per_example_tolerance(
    network: Network, batch: Batch, trace: BackpropTrace, framework: Precision, reference: Precision = FLOAT64, k: float = K
) -> Gradients:
    """The verdict's tolerance for each example's own gradient: K·(E(framework) + E(reference)) of
    :func:`per_example_gradient_bounds`, arrays with a leading axis of the B examples."""
    values = _trace_values(network, batch, trace)
    fw = per_example_gradient_bounds(_error_bounds(values, framework), trace, framework)
    ref = per_example_gradient_bounds(_error_bounds(values, reference), trace, reference)
    return Gradients({l: k * (fw.w[l] + ref.w[l]) for l in fw.w}, {l: k * (fw.b[l] + ref.b[l]) for l in fw.b})
