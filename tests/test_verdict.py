"""The comparison rule of :mod:`backprop_conformance.conformance.verdict`, element by element, at its edge cases.

The ratio is computed in one pass and the rule applied element by element only where that pass gives NaN
(issue 27); both must give the rule's value everywhere: |g − g_ref| / bound, 0 where the two are equal (a zero
bound included), ∞ where either is non-finite.
"""

from __future__ import annotations

import math

import numpy as np

from backprop_conformance.conformance import coverage
from backprop_conformance.conformance.strategies import covering
from backprop_conformance.conformance.verdict import compare_arrays, worst_ratio
from backprop_conformance.reference.error_bound import ErrorBounds, Precision

INF, NAN = math.inf, math.nan

CASES = (
    # (framework, reference, bound, ratio)
    (1.5, 1.0, 0.25, 2.0),
    (1.0, 1.5, 1.0, 0.5),
    (2.0, 2.0, 0.0, 0.0),  # equal over a zero bound: exact, not 0/0
    (2.0, 2.0, 1e-300, 0.0),
    (2.0, 1.0, 0.0, INF),
    (NAN, 1.0, 1.0, INF),
    (INF, 1.0, 1.0, INF),
    (INF, INF, 1.0, INF),  # equal infinities still fail: the reference is finite, any infinity is wrong
    (-INF, INF, 1.0, INF),
    (1e308, -1e308, 1.0, INF),  # the difference overflows
    (0.0, 3.0, 1.0, 3.0),
)


def _name(idx: tuple[int, ...]) -> str:
    return f"element {idx[0]}"


def test_ratio_rule_at_every_edge_case_alone_and_together() -> None:
    got, want, bound, expected = (np.array(column) for column in zip(*CASES, strict=True))
    for i in range(len(CASES)):  # alone: the one-pass ratio where it has no NaN, the rule where it has
        worst, _ = compare_arrays(_name, got[i : i + 1], want[i : i + 1], bound[i : i + 1])
        assert worst == expected[i], f"case {CASES[i]}: ratio {worst}"
    worst, bad = compare_arrays(_name, got, want, bound)
    assert worst == INF
    assert [m.name for m in bad] == [_name((i,)) for i in range(len(CASES)) if expected[i] > 1]
    assert [m.ratio for m in bad] == [r for r in expected if r > 1]


def test_finite_ratios_are_the_quotient_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    want = rng.normal(size=(7, 5))
    got = want + rng.normal(scale=1e-9, size=want.shape)
    got[0, 0] = want[0, 0]
    bound = rng.uniform(1e-10, 1e-8, size=want.shape)
    expected = np.abs(got - want) / bound
    assert worst_ratio({2: got}, {2: want}, {2: bound}) == np.max(expected)
    worst, bad = compare_arrays(_name, got, want, bound)
    assert worst == np.max(expected)
    assert sorted(m.ratio for m in bad) == sorted(expected[expected > 1])


def test_a_shared_problem_keeps_the_bounds_a_passing_verdict_reads_and_no_per_example_bound() -> None:
    """A covering design's problems live for the whole run: each keeps its gradients' and cost's bounds per precision,
    bit for bit those of the full tolerance, and not the per-example bounds, which are computed again for a diagnosis."""
    problem = covering("float32", coverage.COVERING[:2])[1]
    assert problem.shared
    for precision in (Precision.of("float32"), Precision.of("float32", "float64")):
        gradients, cost = problem.judged_bounds(precision)
        full = problem.tolerance(precision)
        for kind, l, bound in full.gradients.items():
            assert np.array_equal(getattr(gradients, kind)[l], bound), (kind, l)
        assert cost == full.cost
        assert problem.judged_bounds(precision)[0] is gradients, "kept, not computed again"
        assert problem.tolerance(precision) is not full, "the per-example bounds are not kept"
    kept = [value for value in vars(problem).values() if isinstance(value, ErrorBounds)]
    assert kept == [] and len(problem._judged) == 2
