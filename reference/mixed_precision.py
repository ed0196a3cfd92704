"""Mixed precision: a policy declared per operation, the error bound it implies, and an exact simulation of it.

Most training runs neither in one format end to end nor in float32: parameters are kept in float32 (the *storage*
format), and matrix products and most elementwise work run in bfloat16 or float16 (the *compute* format), with some
operations kept wider by the framework's policy (torch's autocast keeps the cost in float32; XLA accumulates bfloat16
products in float32). One storage format and one accumulation cannot describe that, so a mixed-precision cell is
judged by a :class:`MixedPolicy`: for each operation of the page's network, the format its result (or its operand) is
rounded to. The bound follows those roundings operation by operation (:func:`mixed_error_bounds`), reusing the
equations of :mod:`backprop_conformance.reference.error_bound` with each one's own unit roundoff, plus the casts between
formats, which the single-format bound never has (docs/error-bound.md, "Mixed precision").

:func:`simulate` computes the network exactly as a policy says, in numpy, rounding through the formats at every
operation and accumulating sums term by term in the declared accumulation format. It is the model a declared policy is
tested against (the bound must cover it, and not by much), and the correct adapter the planted mixed-precision bugs of
``tests/mutants.py`` start from.

Why a policy may not be declared freely: a declaration coarser than the framework's arithmetic loosens the bound it is
judged by. Every format of a policy lies between its storage and its compute format (:func:`check_policy`), and the
declared formats are checked against the intermediates a framework returns (``conformance/policy_probe.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from backprop_conformance.reference.dtypes import FORMATS, MIXED, float_format, round_to
from backprop_conformance.reference.error_bound import (
    ErrorBounds,
    Precision,
    _rounded_up,
    activation_bound,
    bias_gradient_bound,
    cost_bound,
    error_bounds,
    hidden_activation_gradient_bound,
    hidden_error_bound,
    input_bound,
    output_activation_gradient_bound,
    output_error_bound,
    sigma_prime_bound,
    weight_gradient_bound,
    weighted_input_bound,
)
from backprop_conformance.reference.model import Batch, Gradients, Network
from backprop_conformance.reference.sigmoid import sigmoid, sigmoid_prime
from backprop_conformance.reference.vectorized import BackpropTrace

POLICY_OPERATIONS: dict[str, str] = {
    "inputs": "x and a^{l−1} as a matrix product reads them",
    "weights": "w^l and b^l as a layer reads them (the cast of the stored parameters)",
    "dot": "the accumulation of every matrix product",
    "matmul": "the results of the matrix products: z^l and ∂C/∂a^l for l < L",
    "sigma": "σ(z^l), σ′ = a(1 − a) and δ^l = ∂C/∂a^l σ′",
    "cost": "a^L − y and the squares of the cost, hence ∂C/∂a^L",
    "batch_sum": "the accumulation of ∂C/∂b's sum over the batch",
    "cost_sum": "the accumulation of the cost's sum",
    "gradient": "∂C/∂w^l and ∂C/∂b^l before their cast to the storage format",
}
"""The operations a policy names a format for, and what each format applies to."""

ACCUMULATIONS = ("dot", "batch_sum", "cost_sum")
"""The operations that are sums' accumulators, not roundings of a result."""


class PolicyError(ValueError):
    """A mixed-precision policy that cannot be used as declared; the message says what and what is allowed."""


@dataclass(frozen=True)
class MixedPolicy:
    """A mixed-precision computation: parameters, data and gradients stored in ``storage``, each operation in its format.

    ``name`` is the policy a cell is named by (``mixed-bfloat16``: :data:`~backprop_conformance.reference.dtypes.MIXED`
    gives its storage and compute formats). ``formats`` maps every operation of :data:`POLICY_OPERATIONS` to a format
    name; :meth:`of` fills the ones not named with the compute format (the accumulations with the compute format too:
    a framework that accumulates wider says so). Validated when built (:func:`check_policy`).
    """

    name: str
    formats: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", check_policy(self.name, self.formats))

    @classmethod
    def of(cls, name: str, **formats: str) -> MixedPolicy:
        """The policy ``name`` with the operations given as keywords and every other one in the compute format."""
        if name not in MIXED:
            raise PolicyError(f"unknown mixed-precision policy {name!r}; the suite knows {', '.join(MIXED)}")
        compute = MIXED[name][1]
        return cls(name, {op: formats.pop(op, compute) for op in POLICY_OPERATIONS} | formats)

    @property
    def storage(self) -> str:
        """The format of the parameters, the data and the returned gradients (float32)."""
        return MIXED[self.name][0]

    @property
    def compute(self) -> str:
        """The format the policy is named by: the coarsest any operation may be declared in."""
        return MIXED[self.name][1]

    def u(self, operation: str) -> float:
        """Unit roundoff of ``operation``'s format."""
        return FORMATS[self.formats[operation]].u

    def cast(self, source: str, target: str) -> float:
        """The unit roundoff charged for converting a value of ``source``'s format to ``target``'s: 0 unless it narrows.

        ``source`` and ``target`` are operations, or ``"storage"``. A widening conversion (bfloat16 to float32) is
        exact; a narrowing one rounds once.
        """
        u_from = FORMATS[self.storage].u if source == "storage" else self.u(source)
        u_to = FORMATS[self.storage].u if target == "storage" else self.u(target)
        return u_to if u_to > u_from else 0.0

    @property
    def eta(self) -> float:
        """The underflow allowance: the largest ``tiny`` of the formats the policy computes in (float16's 6.1e-5)."""
        return max(FORMATS[f].tiny for f in (self.storage, *self.formats.values()))

    def constants(self) -> tuple[object, ...]:
        """A key equal for two policies that give equal bounds (as :meth:`Precision.constants` is for one format)."""
        return (self.name, *sorted(self.formats.items()))

    def describe(self) -> str:
        """The policy in one phrase for headers and reports: ``float32 storage; bfloat16 inputs/weights/...; float32 dot/...``."""
        by_format: dict[str, list[str]] = {}
        for op in POLICY_OPERATIONS:
            by_format.setdefault(self.formats[op], []).append(op)
        parts = [f"{fmt} {'/'.join(ops)}" for fmt, ops in sorted(by_format.items(), key=lambda kv: -FORMATS[kv[0]].u)]
        return f"{self.storage} storage; " + "; ".join(parts)


def check_policy(name: object, formats: object) -> dict[str, str]:
    """``formats`` validated and copied: every operation named once, each the policy's storage or compute format.

    A format coarser than the compute format would loosen the bound beyond what the policy's name says, one finer than
    storage is not what mixed precision is, and one in between of another range (float16 in a bfloat16 policy) could
    overflow where neither of the policy's formats does.
    """
    if not isinstance(name, str) or name not in MIXED:
        raise PolicyError(f"unknown mixed-precision policy {name!r}; the suite knows {', '.join(MIXED)}")
    if not isinstance(formats, Mapping):
        raise PolicyError(f"policy {name}: formats must be a mapping from operation to format, got {type(formats).__name__}")
    unknown = [op for op in formats if op not in POLICY_OPERATIONS]
    if unknown:
        raise PolicyError(
            f"policy {name}: unknown operation(s) {', '.join(map(repr, unknown))}; the operations are {', '.join(POLICY_OPERATIONS)}"
        )
    missing = [op for op in POLICY_OPERATIONS if op not in formats]
    if missing:
        raise PolicyError(
            f"policy {name}: no format for {', '.join(missing)}; every operation needs one (MixedPolicy.of fills the compute format)"
        )
    storage, compute = (float_format(f) for f in MIXED[name])
    for op, fmt in formats.items():
        if not isinstance(fmt, str) or fmt not in FORMATS:
            raise PolicyError(f"policy {name}: {op} is {fmt!r}; the formats are {', '.join(FORMATS)}")
        if FORMATS[fmt].u > compute.u:
            raise PolicyError(
                f"policy {name}: {op} in {fmt} is coarser than the compute format {compute.name}; "
                "a declaration may not loosen the bound beyond the policy it names"
            )
        if FORMATS[fmt].u < storage.u:
            raise PolicyError(f"policy {name}: {op} in {fmt} is finer than the storage format {storage.name}; formats lie between the two")
        if fmt not in (storage.name, compute.name):
            raise PolicyError(
                f"policy {name}: {op} in {fmt}, whose range differs from both; the policy computes in {storage.name} and {compute.name}"
            )
    return dict(formats)


def _precision(policy: MixedPolicy, rounding: str, accumulation: str = "dot", **sums: str) -> Precision:
    """The :class:`Precision` one equation of the single-format bound is evaluated with: ``rounding``'s u, the accumulation's."""
    per_sum = {f"u_{k}": policy.u(op) for k, op in sums.items()}
    return Precision(u=policy.u(rounding), u_a=policy.u(accumulation), eta=policy.eta, **per_sum)


@_rounded_up
def rounding_error(u: float, value: np.ndarray | float) -> np.ndarray | float:
    """u·|value|: what one conversion to a format of unit roundoff u can change ``value`` by, to first order.

    As in the single-format bound, the u·E products (the rounding of a value's own error) are dropped and left to K
    (docs/error-bound.md, "Mixed precision"). Raised by the evaluation margin like every equation of the chain, so that
    each term :func:`mixed_error_bounds` adds stays an upper bound after its own float64 rounding (the margin's proof
    also covers a few additions of raised values: docs/error-bound.md, "The bound's own rounding").
    """
    return u * np.abs(value)


@_rounded_up
def cast_parameters_error(u_w: float, operand: np.ndarray, error: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """u_w·((|operand| + error)|w| + |b|): a product's error from reading w (and b) rounded to the weights' format.

    ŵ â − w a = (ŵ − w) â + w (â − a) with |ŵ − w| ≤ u_w|w| and |â| ≤ |a| + E: the first term, exactly (the second is
    the equation's own). ``w`` (and ``b``) are magnitudes, oriented as the product reads them.
    """
    reads = (np.abs(operand) + error) @ w
    if b is not None:
        reads += b
    reads *= u_w
    return reads


def mixed_error_bounds(network: Network, batch: Batch, trace: BackpropTrace, policy: MixedPolicy) -> ErrorBounds:
    """Bounds E on the error of every quantity of a computation done as ``policy`` says (docs/error-bound.md, "Mixed precision").

    The chain of :func:`~backprop_conformance.reference.error_bound.error_bounds`, each equation evaluated at the unit
    roundoff of the operation it describes, plus a term for each conversion that narrows a value: the inputs and the
    activations to the matrix products' operand format, the weights and biases to theirs, a^L and y to the cost's
    format, ∂C/∂a^L back to σ's, and ∂C/∂a^l from the products' format to σ's. A conversion that widens is exact and
    charged nothing (:meth:`MixedPolicy.cast`): so is the one of the gradients and the cost to storage.
    """
    L = network.depth
    w, b = ({l: np.abs(p.astype(np.float64)) for l, p in params.items()} for params in (network.w, network.b))
    a, z = ({l: np.asarray(v, dtype=np.float64) for l, v in values.items()} for values in (trace.a, trace.z))
    sp = {l: sigmoid_prime(z[l]) for l in network.layers}
    u_w = policy.u("weights")
    matmul, sigma = _precision(policy, "matmul"), _precision(policy, "sigma")

    # E_in[l − 1]: a^{l−1} as layer l's product reads it (the input rounded to the operand format, or σ's output converted).
    E_in: dict[int, np.ndarray] = {1: input_bound(a[1], _precision(policy, "inputs"))}
    E_a: dict[int, np.ndarray] = {1: E_in[1]}
    E_z: dict[int, np.ndarray] = {}
    E_s: dict[int, np.ndarray] = {}
    for l in network.layers:
        reads = cast_parameters_error(u_w, a[l - 1], E_in[l - 1], w[l].T, b[l])
        E_z[l] = weighted_input_bound(w[l], b[l], a[l - 1], E_in[l - 1], matmul) + reads
        E_a[l] = activation_bound(z[l], a[l], E_z[l], sigma)
        E_s[l] = sigma_prime_bound(a[l], E_a[l], sp[l], sigma)
        E_in[l] = E_a[l] + rounding_error(policy.cast("sigma", "inputs"), a[l])

    y = np.asarray(batch.y, dtype=np.float64)
    h = {l: np.asarray(v, dtype=np.float64) for l, v in trace.dC_da.items()}
    delta = {l: np.asarray(v, dtype=np.float64) for l, v in trace.delta.items()}
    to_cost = E_a[L] + rounding_error(policy.cast("sigma", "cost"), a[L]) + rounding_error(policy.cast("storage", "cost"), y)
    E_r = output_activation_gradient_bound(to_cost, h[L], y, _precision(policy, "cost"))
    E_h: dict[int, np.ndarray] = {L: E_r + rounding_error(policy.cast("cost", "sigma"), h[L])}
    E_d: dict[int, np.ndarray] = {L: output_error_bound(E_h[L], h[L], sp[L], E_s[L], delta[L], sigma)}
    for l in range(L - 1, 1, -1):
        product = hidden_activation_gradient_bound(w[l + 1], E_d[l + 1], delta[l + 1], matmul)
        product = product + cast_parameters_error(u_w, delta[l + 1], E_d[l + 1], w[l + 1])
        E_h[l] = product + rounding_error(policy.u("matmul") + policy.cast("matmul", "sigma"), h[l])
        E_d[l] = hidden_error_bound(E_h[l], h[l], sp[l], E_s[l], delta[l], sigma)

    # The gradients and the cost go to storage by a widening conversion (check_policy keeps every format between storage
    # and compute), which is exact: nothing is charged for it.
    gradient = _precision(policy, "gradient", batch="batch_sum")
    E_w = {l: weight_gradient_bound(E_d[l], delta[l], a[l - 1], E_in[l - 1], gradient) for l in network.layers}
    E_b = {l: bias_gradient_bound(E_d[l], delta[l], gradient) for l in network.layers}
    E_C = cost_bound(h[L], E_r, _precision(policy, "cost", cost="cost_sum"))
    return ErrorBounds(z=E_z, a=E_a, sigma_prime=E_s, dC_da=E_h, delta=E_d, gradients=Gradients(E_w, E_b), cost=E_C)


def mixed_tolerance(network: Network, batch: Batch, trace: BackpropTrace, policy: MixedPolicy, k: float) -> ErrorBounds:
    """The verdict's tolerance for a mixed-precision cell: K·(E(policy) + E(float64))."""
    reference = error_bounds(network, batch, trace, Precision.of("float64"))
    return (mixed_error_bounds(network, batch, trace, policy) + reference).scaled(k)


@dataclass(frozen=True)
class Simulated:
    """What :func:`simulate` computed: gradients and cost in the storage format, and the intermediates (float64 arrays)."""

    gradients: Gradients
    cost: float
    a: dict[int, np.ndarray]
    z: dict[int, np.ndarray]
    delta: dict[int, np.ndarray]


def _to(fmt: str, values: np.ndarray) -> np.ndarray:
    """``values`` rounded to ``fmt`` and held in float64."""
    return round_to(fmt, np.asarray(values, dtype=np.float64)).astype(np.float64)


def accumulate(fmt: str, terms: np.ndarray, axis: int) -> np.ndarray:
    """Σ of ``terms`` along ``axis``, added one term at a time in order, each partial sum rounded to ``fmt``.

    Recursive summation, the order whose worst case Higham's γ_n is, and the one a plain loop in the format computes.
    """
    moved = np.moveaxis(np.asarray(terms, dtype=np.float64), axis, 0)
    total = np.zeros(moved.shape[1:])
    for term in moved:
        total = _to(fmt, total + term)
    return total


class Simulation:
    """The page's gradients computed exactly as a policy rounds them, in numpy: float64 arithmetic, rounded at each step.

    Each product of two values of a format fits exactly in float64; each sum is accumulated term by term in its declared
    accumulation format (:meth:`sum`); each result is rounded to its operation's format (:meth:`to`); σ is evaluated in
    float64 and rounded once (correctly rounded), σ′ as a(1 − a) from the rounded a, as frameworks compute it. One step
    per method, so that a planted bug (``tests/mutants.py``) is a subclass overriding one.

    ``loss_scale`` multiplies the cost before the backward pass and divides the gradients after it, as torch's
    ``GradScaler`` and Keras' ``LossScaleOptimizer`` do: a power of two changes no rounding unless a scaled value
    overflows the compute format (:func:`largest_exact_loss_scale`).
    """

    def __init__(self, policy: MixedPolicy, loss_scale: float = 1.0) -> None:
        self.policy = policy
        self.loss_scale = loss_scale

    def to(self, operation: str, values: np.ndarray) -> np.ndarray:
        """``values`` rounded to ``operation``'s format (``"storage"`` for the storage format), held in float64."""
        return _to(self.policy.storage if operation == "storage" else self.policy.formats[operation], values)

    def sum(self, accumulation: str, terms: np.ndarray, axis: int) -> np.ndarray:
        """Σ along ``axis`` accumulated in the format of ``accumulation`` (one of :data:`ACCUMULATIONS`)."""
        return accumulate(self.policy.formats[accumulation], terms, axis)

    def sigma_prime(self, a: np.ndarray) -> np.ndarray:
        """σ′ = a(1 − a) from the activation as the policy holds it."""
        return self.to("sigma", a * self.to("sigma", 1 - a))

    def unscale(self, gradient: np.ndarray) -> np.ndarray:
        """The gradient of the scaled cost divided by the loss scale, in the storage format."""
        return self.to("storage", gradient / self.loss_scale)

    def run(self, network: Network, batch: Batch) -> Simulated:
        """Forward, cost and backward pass of ``network`` on ``batch``; gradients in the storage format's carrier."""
        L = network.depth
        w = {l: self.to("weights", network.w[l]) for l in network.layers}
        bias = {l: self.to("weights", network.b[l]) for l in network.layers}
        a = {1: self.to("inputs", batch.x)}
        reads = {1: a[1]}
        z: dict[int, np.ndarray] = {}
        sp: dict[int, np.ndarray] = {}
        for l in network.layers:
            products = reads[l - 1][:, None, :] * w[l][None, :, :]  # (B, n(l), n(l−1)), exact in float64
            z[l] = self.to("matmul", self.to("dot", self.sum("dot", products, axis=2) + bias[l]))
            a[l] = self.to("sigma", sigmoid(z[l]))
            sp[l] = self.sigma_prime(a[l])
            reads[l] = self.to("inputs", a[l])
        r = self.to("cost", self.to("cost", a[L]) - self.to("cost", batch.y))
        halves = self.to("cost", 0.5 * self.to("cost", r * r))
        cost = float(self.to("storage", self.to("cost", self.sum("cost_sum", halves.ravel(), axis=0))))
        delta = {L: self.to("sigma", self.to("sigma", self.to("cost", self.loss_scale * r)) * sp[L])}
        for l in range(L - 1, 1, -1):
            products = delta[l + 1][:, :, None] * w[l + 1][None, :, :]  # (B, n(l+1), n(l))
            h = self.to("sigma", self.to("matmul", self.sum("dot", products, axis=1)))
            delta[l] = self.to("sigma", h * sp[l])
        carrier = FORMATS[self.policy.storage].carrier
        grad_w, grad_b = {}, {}
        for l in network.layers:
            products = delta[l][:, :, None] * reads[l - 1][:, None, :]  # (B, n(l), n(l−1))
            grad_w[l] = self.unscale(self.to("gradient", self.sum("dot", products, axis=0))).astype(carrier)
            grad_b[l] = self.unscale(self.to("gradient", self.sum("batch_sum", delta[l], axis=0))).astype(carrier)
        unscaled = {l: d / self.loss_scale for l, d in delta.items()}
        return Simulated(Gradients(grad_w, grad_b), cost, a, z, unscaled)


def simulate(network: Network, batch: Batch, policy: MixedPolicy) -> Simulated:
    """:class:`Simulation` of ``policy`` without loss scaling."""
    return Simulation(policy).run(network, batch)


def largest_exact_loss_scale(network: Network, trace: BackpropTrace, bounds: ErrorBounds, policy: MixedPolicy | str) -> float:
    """The largest power of two S by which the cost can be scaled with no rounding changed: every scaled value stays finite.

    Multiplying by a power of two is exact in binary floating point unless the product leaves the format's range, and
    rounding commutes with it there: rnd(S·x) = S·rnd(x). So a backward pass of the cost scaled by S rounds exactly as
    the unscaled one does, except (i) where a scaled value exceeds the largest finite value of its format, which
    overflows to infinity (torch's ``GradScaler`` then skips the step and halves S), and (ii) where an unscaled value was
    below the smallest normal number and lost digits the scaled one keeps, which only makes the scaled computation more
    accurate, within the underflow allowance η the bound already charges. Dividing by S at the end, in float32, is exact
    unless the quotient falls below float32's smallest normal number, η again. The scaled values, bounded by their
    magnitudes plus their errors, are the residual in the cost's format (and σ's), δ^l in σ's, ∂C/∂a^l in the products' (with
    the cast weights), and the gradients' sums, whose partial sums are at most Σ_x |δ||a| and Σ_x |δ|, in the
    gradient's format; the residual is held in σ's format too, once autograd casts it back. S beyond the returned value
    may overflow one of them. ``policy`` is a mixed-precision policy, or the name of the one format a computation runs
    in end to end (a float32 model under ``GradScaler``).
    """
    L = network.depth

    def format_of(operation: str) -> str:
        return policy.formats[operation] if isinstance(policy, MixedPolicy) else policy

    w = {l: np.abs(network.w[l].astype(np.float64)) * (1 + FORMATS[format_of("weights")].u) for l in network.layers}
    a = {l: np.abs(np.asarray(v, dtype=np.float64)) for l, v in trace.a.items()}
    d = {l: np.abs(np.asarray(trace.delta[l], dtype=np.float64)) + bounds.delta[l] for l in network.layers}
    residual = float(np.max(np.abs(trace.dC_da[L]) + bounds.dC_da[L]))
    reaches: list[tuple[float, str]] = [(residual, "cost"), (residual, "sigma")]
    for l in network.layers:
        reaches.append((float(np.max(d[l])), "sigma"))
        reaches.append((float(np.max(d[l].T @ (a[l - 1] + bounds.a[l - 1]))), "gradient"))
        reaches.append((float(np.max(d[l].sum(axis=0))), "gradient"))
        if l > 2:
            reaches.append((float(np.max(d[l] @ w[l])), "matmul"))
    scale = min((FORMATS[format_of(op)].largest / m for m, op in reaches if m > 0), default=np.inf)
    return float(2.0 ** np.floor(np.log2(scale))) if np.isfinite(scale) else float("inf")
