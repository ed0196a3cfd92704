"""The suite's shape strategies reach the sizes they promise and never leave the limits.

The conformance cells trust :mod:`backprop_conformance.conformance.strategies` to put widths and batches on
both sides of every kernel block; a strategy that silently stopped reaching 65 would turn the block
mutants' catches into luck. These tests check the promise on the tables themselves, for every ``high`` a
user's limits can set, including limits too small for any block.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backprop_conformance.conformance.strategies import BLOCKS, DEFAULT_LIMITS, Limits, dimension, problems, sizes


@pytest.mark.parametrize("high", [*range(1, 70), 96, 512, 1024])
def test_sizes_cover_exactly_one_to_high_with_no_empty_kind(high: int) -> None:
    kinds = sizes(high)
    assert all(kinds.values()), f"an empty kind for high={high}: {kinds}"
    every = set().union(*kinds.values())
    assert every == set(range(1, high + 1)), f"sizes({high}) misses {sorted(set(range(1, high + 1)) - every)} or exceeds the range"
    for kind, values in kinds.items():
        assert list(values) == sorted(set(values)), f"{kind!r} is not sorted small to large, so shrinking would not go to small sizes"


@pytest.mark.parametrize("high", [96, 24, 1024])
def test_both_sides_of_every_block_that_fits_are_a_kind_of_their_own(high: int) -> None:
    around = set(sizes(high)["around a block"])
    for block in BLOCKS:
        for q in range(1, high // block + 1):
            wanted = {q * block - 1, q * block, q * block + 1} & set(range(1, high + 1))
            assert wanted <= around, f"block {block}×{q}: {sorted(wanted - around)} missing from 'around a block' for high={high}"


def test_beyond_a_block_starts_past_one_32_wide_block_when_the_limit_allows() -> None:
    assert min(sizes(96)["beyond a block"]) == 33
    assert max(sizes(96)["beyond a block"]) == 96


@pytest.mark.parametrize("high", [1, 2, 3, 4, 9, 96])
@settings(max_examples=60, database=None, deadline=None)
@given(data=st.data())
def test_dimension_stays_in_range_for_any_high(high: int, data: st.DataObject) -> None:
    value = data.draw(dimension(high, "n"))
    assert 1 <= value <= high


@settings(max_examples=25, database=None, deadline=None)
@given(data=st.data())
def test_problems_respect_the_smallest_limits(data: st.DataObject) -> None:
    tiny = Limits(max_depth=2, max_width=1, max_batch=1, pool=(((1, 1), 1),))
    problem = data.draw(problems("float64", tiny, pooled=False))
    assert problem.network.widths == (1, 1)
    assert problem.batch.x.shape == (1, 1)


@settings(max_examples=40, database=None, deadline=None)
@given(data=st.data())
def test_free_problems_respect_the_default_limits(data: st.DataObject) -> None:
    problem = data.draw(problems("float32", DEFAULT_LIMITS, pooled=False))
    widths = problem.network.widths
    assert 2 <= len(widths) <= DEFAULT_LIMITS.max_depth
    assert all(1 <= n <= DEFAULT_LIMITS.max_width for n in widths)
    assert 1 <= problem.batch.x.shape[0] <= DEFAULT_LIMITS.max_batch


@pytest.mark.parametrize(("odds", "free_at_least", "free_at_most"), [(None, 0, 0), (4, 1, 399), (512, 0, 60)])
def test_compiling_paths_draw_from_the_pool_but_now_and_then_freely(odds: int | None, free_at_least: int, free_at_most: int) -> None:
    """With ``free_odds`` None every pooled draw is a pool shape; with odds, some draws are free, and at the thorough
    profile's odds few enough for a compiling path to afford (each free shape is a compilation)."""
    from dataclasses import replace

    from backprop_conformance.conformance.strategies import THOROUGH_LIMITS

    limits = replace(THOROUGH_LIMITS, free_odds=odds)
    pool = set(limits.pool)
    free: list[tuple[tuple[int, ...], int]] = []

    @settings(max_examples=400, database=None, deadline=None)
    @given(data=st.data())
    def draw(data: st.DataObject) -> None:
        problem = data.draw(problems("float32", limits, pooled=True))
        shape = (problem.network.widths, problem.batch.size)
        if shape not in pool:
            free.append(shape)

    draw()
    assert free_at_least <= len(set(free)) <= free_at_most, f"{len(set(free))} distinct free shapes in 400 draws at odds {odds}"
