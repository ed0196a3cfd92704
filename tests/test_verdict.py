"""The comparison rule of :mod:`backprop_conformance.conformance.verdict`, element by element, at its edge cases.

The ratio is computed in one pass and the rule applied element by element only where that pass gives NaN
(issue 27); both must give the rule's value everywhere: |g − g_ref| / bound, 0 where the two are equal (a zero
bound included), ∞ where either is non-finite.
"""

from __future__ import annotations

import math

import numpy as np

from backprop_conformance.conformance.verdict import compare_arrays, worst_ratio

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
