"""Shared by the reference's tests: hypothesis strategies for small networks, and the agreement check.

The agreement check lives here, not in one test module, because the mutant tests
(``test_mutant_reference.py``) must run exactly the check the normal tests run
(``test_reference_agreement.py``): a check shown to fail on wrong code is only evidence for the
normal tests if it is the same check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from backprop_conformance.conformance.verdict import GradientComparison, compare_gradients
from backprop_conformance.reference import vectorized
from backprop_conformance.reference.complex_step import complex_step_gradients, underflow_allowance
from backprop_conformance.reference.error_bound import FLOAT64, K, error_bounds, tolerance
from backprop_conformance.reference.literal import literal_gradients
from backprop_conformance.reference.model import Batch, Gradients, Network
from backprop_conformance.reference.mpmath_oracle import mpmath_backprop


def _floats(bound: float) -> st.SearchStrategy[float]:
    return st.floats(-bound, bound, allow_nan=False, allow_infinity=False)


@st.composite
def cases(
    draw: st.DrawFn,
    *,
    depths: tuple[int, int] = (2, 5),
    widths: tuple[int, int] = (1, 6),
    batch_sizes: tuple[int, int] = (1, 4),
    weight_bound: float = 4.0,
    input_bound: float = 3.0,
) -> tuple[Network, Batch]:
    """A (Network, Batch) pair: L in ``depths``, every n(l) in ``widths``, B in ``batch_sizes``.

    Weights and biases are drawn from [−weight_bound, weight_bound], inputs from [−input_bound,
    input_bound], targets from [0, 1] (the range of σ). Hypothesis' float draws favour awkward values
    (0, ±bound, subnormals, repeated entries), which is the point. With weight_bound = 200, input_bound
    = 1 and widths ≤ 3, |z^l_j| reaches 800: saturated units whose σ′ underflows.
    """
    L = draw(st.integers(*depths))
    n = [draw(st.integers(*widths)) for _ in range(L)]
    B = draw(st.integers(*batch_sizes))
    w = {l: draw(hnp.arrays(np.float64, (n[l - 1], n[l - 2]), elements=_floats(weight_bound))) for l in range(2, L + 1)}
    b = {l: draw(hnp.arrays(np.float64, (n[l - 1],), elements=_floats(weight_bound))) for l in range(2, L + 1)}
    x = draw(hnp.arrays(np.float64, (B, n[0]), elements=_floats(input_bound)))
    y = draw(hnp.arrays(np.float64, (B, n[-1]), elements=st.floats(0.0, 1.0)))
    return Network(w, b), Batch(x, y)


def random_case(seed: int, widths: tuple[int, ...], batch_size: int, scale: float = 1.0) -> tuple[Network, Batch]:
    """A generic, well-conditioned (Network, Batch): normal(0, scale²) parameters, normal inputs, uniform targets.

    Used where a test needs a net with no accidental structure (no zero or repeated entries), e.g. so
    that a mutant cannot coincide with the correct code by chance.
    """
    rng = np.random.default_rng(seed)
    weights = [scale * rng.standard_normal((widths[i + 1], widths[i])) for i in range(len(widths) - 1)]
    biases = [scale * rng.standard_normal(widths[i + 1]) for i in range(len(widths) - 1)]
    return Network.from_lists(weights, biases), Batch(
        rng.standard_normal((batch_size, widths[0])), rng.uniform(size=(batch_size, widths[-1]))
    )


@dataclass(frozen=True)
class OracleVerdict:
    """One implementation's gradients against one oracle's: the suite's own comparison, with what was compared."""

    what: str
    comparison: GradientComparison

    @property
    def ok(self) -> bool:
        return self.comparison.passed

    @property
    def worst_ratio(self) -> float:
        return self.comparison.worst_ratio

    def __str__(self) -> str:
        return self.comparison.describe(self.what, "their tolerance")


def compare(got: Gradients, expected: Gradients, tol: Gradients, what: str) -> OracleVerdict:
    """Element-wise verdict with the suite's rule (:func:`backprop_conformance.conformance.verdict.compare_gradients`):
    finite/non-finite pattern identical, and |got − expected| ≤ tol everywhere."""
    return OracleVerdict(what, compare_gradients(got, expected, tol))


Oracle = Callable[[Network, Batch], Gradients]

ORACLES: dict[str, Oracle] = {
    "literal": literal_gradients,
    "complex step": complex_step_gradients,
    "mpmath": lambda network, batch: mpmath_backprop(network, batch).gradients(),
}
"""The independent computations the vectorized reference is checked against.

"literal" and "complex step" are float64 computations with rounding errors of their own, so they get
the two-sided tolerance K·(E + E); "mpmath" is exact to float64 rounding and gets K·E alone. The
complex step also loses tiny gradients to underflow (:func:`backprop_conformance.reference.complex_step.underflow_allowance`),
which is added, times K, to its tolerance."""


def reference_verdicts(network: Network, batch: Batch, oracles: tuple[str, ...] = tuple(ORACLES)) -> list[OracleVerdict]:
    """Run :func:`backprop_conformance.reference.vectorized.backprop` and compare its gradients with each named oracle.

    The tolerance is the design note's bound computed from the reference's own trace: K·(E64 + E64)
    against another float64 computation, K·E64 against mpmath. E64 is a "few ulps" per element, but
    scaled to that element's conditioning -- it grows with fan-in (γ_n), with |W||a| and |W|ᵀ|δ| (which
    exceed |z| and |∂C/∂a| when terms cancel), with depth, and it never falls below the underflow
    allowance η -- so a well-conditioned element must agree to a few ulps and an ill-conditioned one is
    allowed exactly what float64 arithmetic can lose on it.

    ``backprop`` is looked up on the module at call time, so a test that monkeypatches a function of
    :mod:`backprop_conformance.reference.vectorized` runs this same check on the mutated reference.
    """
    trace = vectorized.backprop(network, batch)
    two_sided = tolerance(network, batch, trace, FLOAT64).gradients
    tolerances = {
        "literal": two_sided,
        "complex step": _plus(two_sided, K * underflow_allowance(network, trace)),
        "mpmath": error_bounds(network, batch, trace, FLOAT64).scaled(K).gradients,
    }
    return [compare(trace.gradients, ORACLES[name](network, batch), tolerances[name], f"vectorized vs {name}") for name in oracles]


def _plus(g: Gradients, c: float) -> Gradients:
    return Gradients({l: v + c for l, v in g.w.items()}, {l: v + c for l, v in g.b.items()})


def assert_all_agree(verdicts: list[OracleVerdict]) -> None:
    """Fail with every verdict's summary when any comparison disagrees."""
    if not all(v.ok for v in verdicts):
        raise AssertionError("\n".join(str(v) for v in verdicts))
