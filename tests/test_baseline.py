"""Baselines: the comparison rule (conformance/baseline.py) and the ``--conformance-baseline`` options in real runs.

The rule under test, written out here independently of the code: a cell regresses when its worst
error/bound ratio exceeds 2 × max(baseline worst, floor) (floor 0.25, or 0.02 when both runs drew the
same examples), or when it passed in the baseline and does not pass now; cells on one side only are
listed, not failed, unless the two runs share no cell at all. The rule is tested on hand-made reports
(:mod:`reports`); the options run the real suite in a subprocess against a fast numpy adapter, with
baselines made from that run's own report and edited by hand. A baseline that cannot be compared
(malformed, NaN among its ratios, a number beyond float64) is refused at start-up, naming the file and
the field, before any test runs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CORRECT_ADAPTER, assert_usage_error, suite
from hypothesis import given
from hypothesis import strategies as st
from reports import F32, F64, cell, run

from backprop_conformance.conformance import baseline, report
from backprop_conformance.conformance.baseline import FLOOR, FLOOR_SAME_EXAMPLES, floor_for
from backprop_conformance.conformance.runner import SuiteRun

C32, C64 = "ok-stable-manual-float32", "ok-stable-manual-float64"


def compare(old: list, new: list) -> baseline.Comparison:
    return baseline.compare(run(*old, source="base.json"), run(*new))


def test_identical_runs_pass() -> None:
    cells = [cell(F32, 0.1, 0.4, 0.2), cell(F64, 0.0, 0.01)]
    comparison = compare(cells, cells)
    assert comparison.regressions == [] and comparison.new == [] and comparison.missing == []
    assert {c.status for c in comparison.cells.values()} == {"ok"}
    assert "no regressions" in comparison.summary_lines()


def test_worse_ratio_fails_naming_the_cell_and_both_ratios() -> None:
    comparison = compare([cell(F32, 0.1, 0.3)], [cell(F32, 0.2, 0.7)])
    assert comparison.regressions == [
        f"{F32}: worst error/bound ratio 0.3 in the baseline, 0.7 now (×2.33), beyond 2 × max(0.3, 0.25) = 0.6"
    ]
    assert comparison.cells[F32].status == "regressed"


def test_doubling_exactly_is_not_beyond_the_limit() -> None:
    assert compare([cell(F32, 0.3)], [cell(F32, 0.6)]).regressions == []


@pytest.mark.parametrize(
    ("old", "new", "regressed"),
    [(0.001, 0.003, False), (0.001, 0.49, False), (0.001, 0.5, False), (0.001, 0.51, True), (0.0, 0.2, False), (0.0, 0.6, True)],
)
def test_floor_keeps_small_ratios_from_failing(old: float, new: float, regressed: bool) -> None:
    """Under the floor 0.25 the limit is 0.5, however small the baseline's ratio (0 included)."""
    comparison = compare([cell(F64, old)], [cell(F64, new)])
    assert bool(comparison.regressions) == regressed, comparison.regressions
    if regressed:
        assert f"beyond 2 × max({old:g}, 0.25) = 0.5" in comparison.regressions[0]


def test_passing_cell_that_starts_failing_is_a_regression_even_within_the_factor() -> None:
    """Baseline worst 0.9 allows up to 1.8 by the ratio rule; a failing example is caught by the second rule."""
    comparison = compare([cell(F32, 0.9, 0.5)], [cell(F32, 0.5, 1.5, 0.2)])
    assert comparison.regressions == [
        f"{F32}: passed in the baseline (0 of 2 examples failed, worst ratio 0.9), failed now "
        "(1 of 3 examples failed, contract passed, 0 exception(s), worst ratio 1.5)"
    ]


def test_a_contract_failure_is_a_regression_even_with_good_ratios() -> None:
    """A cell whose ratios are fine but whose contract now fails no longer passes: the second rule catches it."""
    broken = cell(F32, 0.1, status="failed", contract="failed")
    comparison = compare([cell(F32, 0.1)], [broken])
    assert len(comparison.regressions) == 1 and "contract failed" in comparison.regressions[0], comparison.regressions


def test_cell_failing_in_both_runs_is_not_a_regression() -> None:
    assert compare([cell(F32, 3.0, 0.1)], [cell(F32, 2.0)]).regressions == []


def test_infinite_ratios() -> None:
    became_infinite = compare([cell(F32, 0.1)], [cell(F32, 0.2, math.inf)])
    assert len(became_infinite.regressions) == 2, became_infinite.regressions
    assert "0.1 in the baseline, inf now, beyond 2 × max(0.1, 0.25) = 0.5" in became_infinite.regressions[0]
    assert compare([cell(F32, math.inf)], [cell(F32, math.inf)]).regressions == []


def test_new_and_missing_cells_are_listed_not_failed() -> None:
    comparison = compare([cell(F64, 0.1), cell(F32, 0.1)], [cell(F32, 0.1), cell("fake-eager-float16", 0.1)])
    assert comparison.regressions == []
    assert comparison.new == ["fake-eager-float16"] and comparison.missing == [F64]
    lines = comparison.summary_lines()
    assert "new cells, not in the baseline: fake-eager-float16" in lines
    assert f"cells in the baseline that this run did not run: {F64}" in lines


def test_a_run_sharing_no_cell_with_the_baseline_is_not_no_regressions() -> None:
    """Comparing nothing proves nothing: it is reported, and it fails the comparison."""
    comparison = compare([cell(F64, 0.1)], [cell(F32, 0.1)])
    assert comparison.compared == 0
    assert len(comparison.regressions) == 1 and "shares no cell with the baseline" in comparison.regressions[0]
    assert "no regressions" not in comparison.summary_lines()


def test_cell_with_no_examples_counts_as_not_run() -> None:
    comparison = compare([cell(F64, 0.1), cell(F32, 0.2)], [cell(F64), cell(F32, 0.2)])
    assert comparison.missing == [F64] and comparison.regressions == []


def test_notes_say_what_differs_between_the_runs() -> None:
    old = run(cell(F32, 0.1), version="1.0", profile="ci", source="base.json")
    new = run(cell(F32, 0.1), version="2.0", profile="default")
    notes = baseline.compare(old, new).notes
    assert any("profile 'ci' → 'default'" in note for note in notes), notes
    assert "fake: Fake 1.0 in the baseline, 2.0 now" in notes


def test_comparison_is_strict_json() -> None:
    comparison = compare([cell(F32, 0.1)], [cell(F32, math.inf)])

    def refuse(token: str) -> object:
        raise AssertionError(f"{token} is not JSON")

    data = json.loads(json.dumps(comparison.to_json()), parse_constant=refuse)
    assert data["passed"] is False and data["cells"][F32]["worst"] == "inf" and data["cells"][F32]["baseline_worst"] == 0.1
    assert (data["factor"], data["floor"]) == (2.0, 0.25)


ratios = st.lists(st.one_of(st.floats(0, 3), st.just(math.inf)), min_size=1, max_size=6)


@given(ratios)
def test_a_run_never_regresses_against_itself(values: list[float]) -> None:
    assert compare([cell(F32, *values)], [cell(F32, *values)]).regressions == []


@given(st.floats(0, 0.99), st.floats(0, 0.99))
def test_passing_cells_regress_exactly_beyond_twice_the_floored_baseline(old: float, new: float) -> None:
    regressed = bool(compare([cell(F32, old)], [cell(F32, new)]).regressions)
    assert regressed == (new > 2 * max(old, 0.25))


def test_floor_narrows_only_when_both_runs_drew_the_same_examples() -> None:
    """Same derandomized settings, hypothesis and suite versions: no seed noise to absorb, so the narrow floor applies."""
    same = run(cell(F32, 0.1), derandomize=True)
    assert floor_for(same, run(cell(F32, 0.1), derandomize=True)) == FLOOR_SAME_EXAMPLES
    other_budget = run(cell(F32, 0.1), derandomize=True)
    other_budget.hypothesis = {**other_budget.hypothesis, "max_examples": 200}
    assert floor_for(same, other_budget) == FLOOR
    other_hypothesis = run(cell(F32, 0.1), derandomize=True)
    other_hypothesis.hypothesis = {**other_hypothesis.hypothesis, "version": "6.171.0"}
    assert floor_for(same, other_hypothesis) == FLOOR
    other_suite = run(cell(F32, 0.1), derandomize=True)
    other_suite.suite = {"version": "0.2.0"}
    assert floor_for(same, other_suite) == FLOOR
    assert floor_for(run(cell(F32, 0.1)), run(cell(F32, 0.1))) == FLOOR, "randomized runs keep the wide floor"


# The options, in real runs of the suite.


def correct_run(tmp: Path, *args: str, ci: bool = False) -> SuiteRun:
    """A run of the correct numpy adapter, 5 examples a cell, under CI (derandomized) if ``ci``."""
    return suite(tmp, *CORRECT_ADAPTER, "--conformance-max-examples", "5", *args, **({"CI": "true"} if ci else {}))


def edited(recorded: Path, path: Path, edit: object) -> Path:
    data = json.loads(recorded.read_text(encoding="utf-8"))
    edit(data)  # type: ignore[operator]
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def claim_worst(data: dict, cell_id: str, ratio: float) -> None:
    """Edit a report so that ``cell_id``'s every example had the worst ratio ``ratio``."""
    for c in data["cells"]:
        if c["id"] == cell_id:
            c["ratios"] = [ratio] * c["examples"]
            c["worst"] = c["median"] = ratio
            c["quantiles"] = dict.fromkeys(c["quantiles"], ratio)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "--conformance-baseline: report file {path} does not exist; to create a baseline, run with --conformance-baseline"),
        ("{corrupt", "is not valid JSON"),
        ('{"schema": "something/else"}', "not a backprop-conformance report of this version (schema 'something/else'"),
        (lambda d: d["cells"][0].update(worst=None), "'worst' is None for a cell with 5 examples"),
        (lambda d: d["cells"][0].update(worst="nan"), "'worst' is NaN"),
        (lambda d: d.update(backends={"torch": "2.13"}), "field 'backends' must be a list"),
        (lambda d: d.update(hypothesis=["ci"]), "field 'hypothesis' has the wrong type"),
        (lambda d: [c.update(id=c["id"].replace("ok-stable", "other")) for c in d["cells"]], "shares no cell with this run's selection"),
    ],
    ids=[
        "missing",
        "corrupt",
        "other-schema",
        "null-worst",
        "nan-worst",
        "backends-not-a-list",
        "hypothesis-not-an-object",
        "no-shared-cell",
    ],
)
def test_unusable_baseline_is_a_usage_error_at_start_up(tmp_path: Path, recorded: Path, content: object, message: str) -> None:
    """Refused before any test runs, naming the file and the field; a comparison that cannot be made must not cost a run."""
    path = tmp_path / "base.json"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif content is not None:
        edited(recorded, path, content)
    done = correct_run(tmp_path / "run", "--conformance-baseline", str(path))
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.explain()
    assert message.format(path=path) in done.output, done.explain()
    assert done.report is None and "passed" not in done.output, "no test may run"


def test_regression_fails_a_passing_run(tmp_path: Path, recorded: Path) -> None:
    """The same derandomized examples (floor 0.02): a baseline claiming a worst ratio of 0.001 makes today's real ratio a regression."""
    base = edited(recorded, tmp_path / "base.json", lambda d: claim_worst(d, C32, 0.001))
    done = correct_run(
        tmp_path / "run", "--conformance-baseline", str(base), "--conformance-markdown", str(tmp_path / "summary.md"), ci=True
    )
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.explain()
    assert done.report is not None and done.report.cell(C32) is not None
    now = done.report.cell(C32).worst  # type: ignore[union-attr]
    assert f"REGRESSION {C32}: worst error/bound ratio 0.001 in the baseline, {now:.3g} now" in done.output, done.explain()
    assert "beyond 2 × max(0.001, 0.02) = 0.04" in done.output and "the run fails: 1 regression(s) against the baseline" in done.output
    assert done.report.baseline is not None and done.report.baseline["passed"] is False
    summary = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert f"**0.001 → {now:.3g}" in summary and "❌ regressed" in summary, summary


def test_no_regression_keeps_the_run_passing(tmp_path: Path, recorded: Path) -> None:
    done = correct_run(tmp_path, "--conformance-baseline", str(recorded), ci=True)
    assert done.returncode == pytest.ExitCode.OK, done.explain()
    assert "compared with baseline" in done.output and "  no regressions" in done.output
    assert done.report is not None and done.report.baseline is not None and done.report.baseline["compared"] == 2


def test_update_creates_a_missing_baseline(tmp_path: Path) -> None:
    path = tmp_path / "new" / "base.json"
    done = correct_run(tmp_path / "run", "--conformance-baseline", str(path), "--conformance-update-baseline")
    assert done.returncode == pytest.ExitCode.OK, done.explain()
    assert "baseline created: " in done.output
    written = report.read(path)
    assert {c.id for c in written.cells} == {C32, C64} and all(c.status == "passed" and c.examples == 5 for c in written.cells)


def test_update_replaces_the_baseline_and_does_not_fail_on_the_comparison(tmp_path: Path, recorded: Path) -> None:
    base = edited(recorded, tmp_path / "base.json", lambda d: claim_worst(d, C32, 0.001))
    done = correct_run(tmp_path / "run", "--conformance-baseline", str(base), "--conformance-update-baseline", ci=True)
    assert done.returncode == pytest.ExitCode.OK, done.explain()
    assert f"REGRESSION {C32}: worst error/bound ratio 0.001 in the baseline" in done.output and "baseline updated: " in done.output
    assert report.read(base).cell(C32).worst != 0.001  # type: ignore[union-attr]


def test_update_after_a_failing_run_keeps_the_old_baseline(tmp_path: Path, recorded: Path) -> None:
    base = tmp_path / "base.json"
    base.write_bytes(recorded.read_bytes())
    args = [
        "--conformance-backend",
        "tests.mutants:CrossEntropyShortcut",
        "--conformance-baseline",
        str(base),
        "--conformance-update-baseline",
    ]
    done = correct_run(tmp_path / "run", *args)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.explain()
    assert f"baseline {base} NOT updated: the run did not pass (exit status 1)" in done.output, done.explain()
    assert base.read_bytes() == recorded.read_bytes()


def test_update_never_overwrites_a_file_that_is_not_a_report(tmp_path: Path) -> None:
    path = tmp_path / "base.json"
    path.write_text("precious notes, not JSON\n", encoding="utf-8")
    done = correct_run(tmp_path / "run", "--conformance-baseline", str(path), "--conformance-update-baseline")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.explain()
    assert f"--conformance-update-baseline: refusing to overwrite {path}, which is not a usable report: " in done.output
    assert path.read_text(encoding="utf-8") == "precious notes, not JSON\n"


def test_update_without_a_baseline_path_is_a_usage_error(tmp_path: Path) -> None:
    done = correct_run(tmp_path, "--conformance-update-baseline")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.explain()
    assert (
        "--conformance-update-baseline writes the file named by --conformance-baseline PATH; give --conformance-baseline too" in done.output
    )


def test_committed_baselines_are_reports_this_version_reads() -> None:
    """Every baseline the repository ships (the example workflow compares with one) is a passing report of the current schema.

    A schema change leaves an old baseline behind that the reader refuses; nothing else would notice until the
    workflow's comparison step ran.
    """
    found = sorted((Path(__file__).resolve().parents[1] / "baselines").glob("*.json"))
    assert found, "the example workflow compares with baselines/all-cpu.json"
    for path in found:
        stored = report.read(path)
        assert stored.exitstatus == 0, f"{path.name} records a failing run"
        unpassed = [(c.id, c.status) for c in stored.cells if c.status not in ("passed", "known defect")]
        assert stored.cells and not unpassed, f"{path.name} holds cells that did not pass: {unpassed}"


def first_cell(change: Callable[[dict], None]) -> Callable[[str], str]:
    def apply(text: str) -> str:
        data = json.loads(text)
        change(data["cells"][0])
        return json.dumps(data)

    return apply


UNCOMPARABLE_BASELINES: dict[str, tuple[Callable[[str], str], str]] = {
    "nan-among-the-ratios": (first_cell(lambda c: c["ratios"].__setitem__(0, "nan")), "cells[0].ratios[0]: NaN"),
    "worst-that-is-not-the-ratios-worst": (
        first_cell(lambda c: c.update(worst=0.0001)),
        "cells[0]: 'worst' is 0.0001, but the largest of its 'ratios' is",
    ),
    "number-beyond-float64": (lambda t: re.sub(r'"worst": [^,]+,', '"worst": 1' + "0" * 400 + ",", t, count=1), "cells[0].worst: "),
    "integer-of-5000-digits": (lambda t: re.sub(r'"worst": [^,]+,', '"worst": 1' + "0" * 5000 + ",", t, count=1), "is not valid JSON"),
    "cell-not-an-object": (
        lambda t: json.dumps({**json.loads(t), "cells": ["ok-stable-manual-float64"]}),
        "cells[0] must be an object, got str",
    ),
}


@pytest.mark.parametrize("breakage", UNCOMPARABLE_BASELINES.values(), ids=UNCOMPARABLE_BASELINES.keys())
def test_uncomparable_baseline_is_refused_at_start_up(tmp_path: Path, recorded: Path, breakage: tuple[Callable[[str], str], str]) -> None:
    """Refused before any test, naming the file and the field: a comparison that cannot be made must neither cost a run nor pass."""
    make, wanted = breakage
    base = tmp_path / "base.json"
    base.write_text(make(recorded.read_text(encoding="utf-8")), encoding="utf-8")
    run = suite(tmp_path / "run", *CORRECT_ADAPTER, "--conformance-max-examples=3", "--conformance-baseline", str(base))
    assert_usage_error(run, f"--conformance-baseline: {base}", wanted)
