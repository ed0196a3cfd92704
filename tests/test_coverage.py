"""Shape coverage by design (conformance/coverage.py, the covering phase of conformance/trial.py, tests/shape_mutants.py).

The covering design must reach every class of every role a dimension plays in the kernels, within the default limits,
and hold a problem of every format; the pool must be bounded, ordered for shrinking, and keep the classic corners; a
cell must run generated examples first (so that a bug found both ways is reported shrunk), then the design, within
the profile's number of examples; and the mutant family must be what it says: correct where not triggered, wrong
where triggered.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import shape_mutants
from hypothesis.database import DirectoryBasedExampleDatabase, InMemoryExampleDatabase
from mutants import ManualBackprop, SigmaTypo

import backprop_conformance as bc
from backprop_conformance.conformance import coverage
from backprop_conformance.conformance.strategies import DEFAULT_LIMITS, LARGE_LIMITS, POOL_SIZE, SHAPE_POOL, covering
from backprop_conformance.conformance.trial import COVERING_NOTE, KeyedDatabase, split_budget
from backprop_conformance.reference.dtypes import FORMATS
from backprop_conformance.reference.model import Batch, Network


def test_role_values_name_each_dimension_by_the_kernel_it_feeds() -> None:
    values = coverage.role_values(((5, 2, 9, 3), 7))
    assert values["fan-in"] == {5, 2, 9} and values["fan-out"] == {2, 9, 3}
    assert values["batch"] == {7} and values["elements"] == {14, 63, 21}
    assert values["narrow"] == {2}, "layer 2 (2 wide) is narrower than both neighbours; layer 3 (9) is not"
    assert values["depth"] == {2, 3, 4}


def test_a_size_in_its_third_block_reaches_the_first_two_of_its_residue() -> None:
    reached = coverage.covered([((1, 1), 133)])
    assert {("batch", 64, 5, b) for b in (1, 2, 3)} <= reached
    assert ("batch", 64, 6, 1) not in reached
    assert coverage.class_of(133, 64) == (5, 3) and coverage.class_of(64, 64) == (0, 1) and coverage.class_of(65, 64) == (1, 2)


def test_the_covering_design_reaches_every_class_within_the_default_limits() -> None:
    space = coverage.reachable(DEFAULT_LIMITS.max_depth, coverage.LARGEST, coverage.LARGEST)
    assert len(space) > 1500, "every residue modulo 4 ... 64 of four roles, in up to three blocks, and narrow and depth"
    assert coverage.missing(DEFAULT_LIMITS.covering, DEFAULT_LIMITS.max_depth, coverage.LARGEST, coverage.LARGEST) == set()
    assert len(DEFAULT_LIMITS.covering) == 72
    batches = [batch for _, batch in DEFAULT_LIMITS.covering]
    assert sorted(batches[:64]) == list(range(129, 193)), "every batch size of the third 64-row block: batches beyond two tiles"
    assert max(max(widths) for widths, _ in DEFAULT_LIMITS.covering) == 192, "widths beyond two 64-wide blocks"


def test_every_covering_product_has_one_small_side() -> None:
    """One large dimension per product, so the design costs about what generated examples do."""
    for widths, batch in DEFAULT_LIMITS.covering:
        assert all(min(a, b) <= 24 for a, b in itertools.pairwise(widths)), widths
        assert batch == 1 or max(a * b for a, b in itertools.pairwise(widths)) <= 2 * 192, (widths, batch)
    largest_generated = DEFAULT_LIMITS.max_batch * DEFAULT_LIMITS.max_width**2 * (DEFAULT_LIMITS.max_depth - 1)
    assert max(coverage._cost(s) for s in DEFAULT_LIMITS.covering) < largest_generated / 10


@pytest.mark.parametrize("dtype", list(FORMATS))
def test_every_format_holds_the_covering_design_and_the_pool(dtype: str) -> None:
    for shapes in (DEFAULT_LIMITS.covering, SHAPE_POOL):
        problems = covering(dtype, shapes)
        assert [(p.network.widths, p.batch.size) for p in problems] == list(shapes)
        assert all(np.all(np.isfinite(p.trace.gradients.w[2])) for p in problems)
        assert all(p.trace.cost > 0 for p in problems), "informative targets: never the outputs themselves"


def test_the_pool_is_bounded_keeps_the_corners_and_is_ordered_for_shrinking() -> None:
    assert len(SHAPE_POOL) == POOL_SIZE
    assert set(coverage.CORNERS) <= set(SHAPE_POOL)
    costs = [coverage._cost(s) for s in SHAPE_POOL]
    assert costs == sorted(costs) and SHAPE_POOL[0] == ((1, 1), 1)
    assert set(SHAPE_POOL) - set(coverage.CORNERS) <= set(coverage.dense_design() + coverage.COVERING)
    reached = coverage.covered(SHAPE_POOL)
    assert all((role, m, r, 3) in reached for role in ("batch", "fan-in", "fan-out") for m in (4, 8, 16) for r in range(m))
    assert coverage.missing(coverage.dense_design(), DEFAULT_LIMITS.max_depth, coverage.LARGEST, coverage.LARGEST) == set()
    assert LARGE_LIMITS.covering == (), "the large profile tests sizes, not classes: no covering phase"


@pytest.mark.parametrize(
    ("examples", "designed", "split"),
    [(100, 72, (28, 72)), (100, 28, (72, 28)), (10, 72, (3, 7)), (2000, 72, (1928, 72)), (100, 0, (100, 0)), (1, 72, (1, 0))],
)
def test_a_cells_examples_divide_between_hypothesis_and_the_design(examples: int, designed: int, split: tuple[int, int]) -> None:
    assert split_budget(examples, designed) == split
    assert sum(split) == examples


def test_each_cell_keys_its_own_examples_in_hypothesis_database(tmp_path: Path) -> None:
    shared = DirectoryBasedExampleDatabase(str(tmp_path))
    KeyedDatabase(shared, "torch-eager-float32").save(b"key", b"value")
    assert list(KeyedDatabase(shared, "torch-eager-float32").fetch(b"key")) == [b"value"]
    assert list(KeyedDatabase(shared, "jax-jit-float32").fetch(b"key")) == []
    keyed = KeyedDatabase(InMemoryExampleDatabase(), "c")
    keyed.save(b"a", b"v")
    keyed.move(b"a", b"b", b"v")
    assert list(keyed.fetch(b"b")) == [b"v"] and list(keyed.fetch(b"a")) == []
    keyed.delete(b"b", b"v")
    assert list(keyed.fetch(b"b")) == []


def test_a_bug_every_example_shows_is_reported_shrunk_not_from_the_design() -> None:
    check = bc.check_adapter(SigmaTypo, dtypes=["float64"], max_examples=100)
    (failure,) = check.failures.values()
    assert COVERING_NOTE not in failure
    assert "widths (1, 1)" in failure, "hypothesis shrank it to one neuron before the design ran"
    (cell,) = check.cells
    assert cell.examples <= 28, "the generated share of the 100, stopped at the first failure"


def test_a_bug_only_the_design_reaches_is_caught_within_the_profiles_examples() -> None:
    """A batch kernel that drops the last example when B ≡ 37 (mod 64) and B ≥ 129: only B = 165 shows it."""
    mutant = shape_mutants.make("Mutant__batch__m64__r37__b3__dropped")
    check = bc.check_adapter(mutant, dtypes=["float64"], max_examples=100)
    (failure,) = check.failures.values()
    assert COVERING_NOTE in failure and "batch B = 165" in failure
    (cell,) = check.cells
    assert cell.examples == 28 + 37, "every generated example, then the design up to B = 165 (its 37th shape)"


def test_a_correct_adapter_runs_the_profiles_number_of_examples_design_included() -> None:
    check = bc.check_adapter(ManualBackprop, dtypes=["float32"], max_examples=100, raise_on_failure=True)
    (cell,) = check.cells
    assert cell.examples == 100 and cell.failures == 0


@pytest.mark.parametrize("kind", shape_mutants.KINDS)
@pytest.mark.parametrize("role", coverage.ROLES)
def test_a_shape_mutant_is_wrong_exactly_where_it_is_triggered(role: str, kind: str) -> None:
    """Each (role, kind) on a network where it triggers changes a gradient; where it does not trigger, it changes nothing."""
    mutant, correct = shape_mutants.make(shape_mutants.name_of(role, 4, 3, 1, kind))(), ManualBackprop()
    rng = np.random.default_rng(3)
    triggering = {  # a size ≡ 3 (mod 4) in the role: fan-in 7, fan-out 7, B = 7, B·n(2) = 7, a 7-wide narrow layer, layer 3
        "fan-in": ((7, 5), 4),
        "fan-out": ((5, 7), 4),
        "batch": ((5, 6), 7),
        "elements": ((5, 7), 1),
        "narrow": ((9, 7, 9), 4),
        "depth": ((5, 6, 6), 4),
    }[role]
    quiet = ((4, 8), 4)  # every size of every role ≡ 0 (mod 4), or 2: layer 2
    for (widths, batch), expected in ((triggering, True), (quiet, False)):
        ws = [rng.standard_normal((n_out, n_in)) for n_in, n_out in itertools.pairwise(widths)]
        network = Network.from_lists(ws, [rng.standard_normal(n) for n in widths[1:]])
        data = Batch(rng.standard_normal((batch, widths[0])), rng.uniform(size=(batch, widths[-1])))
        got = mutant.run(network, data, dtype="float64", path="manual")
        want = correct.run(network, data, dtype="float64", path="manual")
        differs = any(not np.allclose(got.gradients.w[l], want.gradients.w[l], rtol=1e-12, atol=0) for l in network.layers)
        differs |= any(not np.allclose(got.gradients.b[l], want.gradients.b[l], rtol=1e-12, atol=0) for l in network.layers)
        assert differs == expected, (role, kind, widths, batch)


def test_the_sample_is_fixed_by_its_seed_and_names_build_their_classes() -> None:
    first = shape_mutants.sample(20, 23)
    assert first == shape_mutants.sample(20, 23) and len(set(first)) == 20
    assert first != shape_mutants.sample(20, 1206)
    for name in first:
        cls = shape_mutants.make(name)
        assert cls.role in coverage.ROLES and cls.kind in shape_mutants.KINDS
        assert shape_mutants.make(name + "__pooled").compiles_per_shape
    with pytest.raises(AttributeError, match="not a shape mutant"):
        shape_mutants.make("Mutant__batch")
