"""The comparison rule of :mod:`backprop_conformance.conformance.verdict`, element by element, at its edge cases.

The ratio is computed in one pass and the rule applied element by element only where that pass gives NaN
(issue 27); both must give the rule's value everywhere: |g − g_ref| / bound, 0 where the two are equal (a zero
bound included), ∞ where either is non-finite.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from backprop_conformance.adapters.base import AdapterOutput
from backprop_conformance.conformance import coverage, problems
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.conformance.strategies import covering
from backprop_conformance.conformance.verdict import compare_arrays, judge, worst_ratio
from backprop_conformance.reference.error_bound import ErrorBounds, Precision
from backprop_conformance.reference.model import Batch, Gradients, Network

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


def test_a_large_problem_judged_lean_gives_the_verdict_and_diagnosis_of_the_full_tolerance(monkeypatch: pytest.MonkeyPatch) -> None:
    """A problem with LEAN_FROM numbers or more in its per-example bounds computes only the gradients' and cost's bounds
    unless it fails (issue 27: the large profile's peak memory). Whether it passes or fails, with intermediates exposed
    (so that the diagnosis reads the per-example bounds), its verdict and message must be those of the full tolerance."""
    rng = np.random.default_rng(5)
    widths, size = (4, 512, 512, 3), 256
    w = [rng.normal(0.0, 1.0 / math.sqrt(widths[i]), (widths[i + 1], widths[i])) for i in range(3)]
    b = [rng.normal(0.0, 0.5, widths[i + 1]) for i in range(3)]
    batch = Batch(rng.normal(0.0, 1.0, (size, widths[0])), rng.uniform(0.0, 1.0, (size, widths[-1])))
    problem = Problem.rounded(Network.from_lists(w, b), batch, "float32")
    precision = Precision.of("float32")
    trace = problem.trace
    moved = {l: g.copy() for l, g in trace.gradients.w.items()}
    moved[3][1, 7] += 1.0
    z = {l: v.copy() for l, v in trace.z.items()}
    z[3][0, 0] += 1.0  # the first divergence the diagnosis must name: z^3, from the per-example bounds
    outputs = {
        "passing": AdapterOutput(trace.gradients, trace.cost, a=trace.a, z=trace.z, delta=trace.delta),
        "failing": AdapterOutput(Gradients(moved, dict(trace.gradients.b)), trace.cost, a=trace.a, z=z, delta=trace.delta),
    }

    def verdicts() -> dict[str, tuple[bool, bool, str]]:
        judged = {}
        for name, output in outputs.items():
            fresh = Problem(problem.network, problem.batch, "float32")
            fresh.__dict__["trace"] = trace
            verdict = judge("torch-eager-float32", fresh, output, precision)
            judged[name] = (fresh.judges_lean, verdict.passed, verdict.message())
        return judged

    lean = verdicts()
    monkeypatch.setattr(problems, "LEAN_FROM", 2**62)
    full = verdicts()
    assert [judged[0] for judged in lean.values()] == [True, True] and [judged[0] for judged in full.values()] == [False, False]
    assert lean["passing"][1] and not lean["failing"][1]
    assert "z^3" in lean["failing"][2]
    assert {name: judged[1:] for name, judged in lean.items()} == {name: judged[1:] for name, judged in full.items()}
