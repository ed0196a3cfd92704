"""Baselines (conformance/baseline.py and the --baseline/--update-baseline options of conformance/report.py).

The rule under test, written out here independently of the code: a cell regresses when its worst
error/bound ratio exceeds 2 × max(baseline worst, 0.25), or when it passed in the baseline and fails
now; cells on one side only are listed, not failed. Reports are built from hand-made statistics, and
the options run in a real pytest session through ``pytester`` (tests/report_project.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from report_project import PASSING_TEST, make_report_project

from backprop_conformance.adapters.base import Capabilities
from backprop_conformance.adapters.registry import AdapterSpec
from backprop_conformance.conformance import baseline, report
from backprop_conformance.conformance.cells import Backend, Cell
from backprop_conformance.conformance.stats import CellStats

pytest_plugins = ("pytester",)

COMMAND = {"executable": "python", "argv": [], "pytest_args": [], "cwd": "."}


@pytest.fixture(autouse=True)
def _randomized_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The reports below stand for randomized runs whatever the environment: under CI=true the ci profile
    is loaded, both sides would record derandomize=True, and the comparison would use the narrow floor
    (tested on its own in test_floor_narrows_only_when_both_runs_drew_the_same_examples)."""
    monkeypatch.delenv("CI", raising=False)
    previous = settings.get_current_profile_name()
    settings.register_profile("baseline-tests-randomized", parent=settings.get_profile(previous), derandomize=False, database=None)
    settings.load_profile("baseline-tests-randomized")
    try:
        yield
    finally:
        settings.load_profile(previous)


def caps(version: str = "1.0") -> Capabilities:
    return Capabilities(
        name="fake", framework="Fake", version=version, dtypes=("float64", "float32"), paths=("eager",), default_paths=("eager",)
    )


def cell_stats(*ratios: float) -> CellStats:
    """A cell whose examples had these worst ratios; those above 1 are its failures."""
    return CellStats(len(ratios), sum(r > 1 for r in ratios), list(ratios), [3] * len(ratios), [2.0] * len(ratios))


def run(stats: dict[str, CellStats], version: str = "1.0", profile: str = "ci") -> dict:
    """A report of a run of the backend "fake" over the dtypes named in ``stats`` (keys "fake-eager-<dtype>")."""
    cells = [Cell("fake", "eager", key.rsplit("-", 1)[1]) for key in stats]
    backends = [Backend(AdapterSpec("fake", "pkg:Fake", "command line"), capabilities=caps(version))]
    data = report.build(stats, backends, cells, profile=profile, command=COMMAND, exitstatus=0)
    data["hypothesis"]["derandomize"] = False  # a randomized run, even inside a derandomized @given example
    return data


def compare(old: dict[str, CellStats], new: dict[str, CellStats]) -> baseline.Comparison:
    return baseline.compare(report.parse(run(old), "base.json"), report.parse(run(new), "this run"))


F32 = "fake-eager-float32"
F64 = "fake-eager-float64"


def test_identical_runs_pass() -> None:
    stats = {F32: cell_stats(0.1, 0.4, 0.2), F64: cell_stats(0.0, 0.01)}
    comparison = compare(stats, stats)
    assert comparison.regressions == [] and comparison.new == [] and comparison.missing == []
    assert {c.status for c in comparison.cells.values()} == {"ok"}
    assert "no regressions" in comparison.summary_lines()


def test_worse_ratio_fails_naming_the_cell_and_both_ratios() -> None:
    comparison = compare({F32: cell_stats(0.1, 0.3)}, {F32: cell_stats(0.2, 0.7)})
    assert comparison.regressions == [
        f"{F32}: worst error/bound ratio 0.3 in the baseline, 0.7 now (×2.33), beyond 2 × max(0.3, 0.25) = 0.6"
    ]
    assert comparison.cells[F32].status == "regressed"


def test_doubling_exactly_is_not_beyond_the_limit() -> None:
    assert compare({F32: cell_stats(0.3)}, {F32: cell_stats(0.6)}).regressions == []


@pytest.mark.parametrize(
    ("old", "new", "regressed"),
    [(0.001, 0.003, False), (0.001, 0.49, False), (0.001, 0.5, False), (0.001, 0.51, True), (0.0, 0.2, False), (0.0, 0.6, True)],
)
def test_floor_keeps_small_ratios_from_failing(old: float, new: float, regressed: bool) -> None:
    """Under the floor 0.25 the limit is 0.5, however small the baseline's ratio (0 included)."""
    comparison = compare({F64: cell_stats(old)}, {F64: cell_stats(new)})
    assert bool(comparison.regressions) == regressed, comparison.regressions
    if regressed:
        assert f"beyond 2 × max({old:g}, 0.25) = 0.5" in comparison.regressions[0]


def test_passing_cell_that_starts_failing_is_a_regression_even_within_the_factor() -> None:
    """Baseline worst 0.9 allows up to 1.8 by the ratio rule; a failing example is caught by the second rule."""
    comparison = compare({F32: cell_stats(0.9, 0.5)}, {F32: cell_stats(0.5, 1.5, 0.2)})
    assert comparison.regressions == [
        f"{F32}: passed in the baseline (0 of 2 examples failed, worst ratio 0.9), fails now (1 of 3 examples, worst ratio 1.5)"
    ]


def test_cell_failing_in_both_runs_is_not_a_regression() -> None:
    assert compare({F32: cell_stats(3.0, 0.1)}, {F32: cell_stats(2.0)}).regressions == []


def test_infinite_ratios() -> None:
    became_infinite = compare({F32: cell_stats(0.1)}, {F32: cell_stats(0.2, math.inf)})
    assert len(became_infinite.regressions) == 2, became_infinite.regressions
    assert "0.1 in the baseline, inf now, beyond 2 × max(0.1, 0.25) = 0.5" in became_infinite.regressions[0]
    assert compare({F32: cell_stats(math.inf)}, {F32: cell_stats(math.inf)}).regressions == []


def test_new_and_missing_cells_are_listed_not_failed() -> None:
    comparison = compare({F64: cell_stats(0.1)}, {F32: cell_stats(0.1)})
    assert comparison.regressions == []
    assert comparison.new == [F32] and comparison.missing == [F64]
    lines = comparison.summary_lines()
    assert f"new cells, not in the baseline: {F32}" in lines
    assert f"cells in the baseline that this run did not run: {F64}" in lines


def test_cell_with_no_examples_counts_as_not_run() -> None:
    comparison = compare({F64: cell_stats(0.1)}, {F64: CellStats()})
    assert comparison.missing == [F64] and comparison.regressions == []


def test_notes_say_what_differs_between_the_runs() -> None:
    old = report.parse(run({F32: cell_stats(0.1)}, version="1.0", profile="ci"), "base.json")
    new = report.parse(run({F32: cell_stats(0.1)}, version="2.0", profile="dev"), "this run")
    notes = baseline.compare(old, new).notes
    assert any("profile 'ci' → 'dev'" in note for note in notes), notes
    assert "fake: Fake 1.0 in the baseline, 2.0 now" in notes


def test_comparison_is_strict_json() -> None:
    comparison = compare({F32: cell_stats(0.1)}, {F32: cell_stats(math.inf)})

    def refuse(token: str) -> object:
        raise AssertionError(f"{token} is not JSON")

    data = json.loads(json.dumps(comparison.to_json()), parse_constant=refuse)
    assert data["passed"] is False and data["cells"][F32]["worst"] == "inf" and data["cells"][F32]["baseline_worst"] == 0.1
    assert (data["factor"], data["floor"]) == (2.0, 0.25)


ratios = st.lists(st.one_of(st.floats(0, 3), st.just(math.inf)), min_size=1, max_size=6)


@given(ratios)
def test_a_run_never_regresses_against_itself(values: list[float]) -> None:
    assert compare({F32: cell_stats(*values)}, {F32: cell_stats(*values)}).regressions == []


@given(st.floats(0, 0.99), st.floats(0, 0.99))
def test_passing_cells_regress_exactly_beyond_twice_the_floored_baseline(old: float, new: float) -> None:
    regressed = bool(compare({F32: cell_stats(old)}, {F32: cell_stats(new)}).regressions)
    assert regressed == (new > 2 * max(old, 0.25))


# The options in a pytest run.


def project(pytester: pytest.Pytester, stats: dict[str, CellStats], test: str = PASSING_TEST) -> None:
    """A pytest run of backend "fake" (Fake 1.0, ci profile), like the baselines :func:`stored` writes."""
    make_report_project(pytester, stats, test=test, framework="Fake", version="1.0", profile="ci")


def pytest_run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def stored(pytester: pytest.Pytester, stats: dict[str, CellStats], name: str = "base.json") -> Path:
    path = pytester.path / name
    report.write(run(stats), path)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            None,
            "--baseline: report file */base.json does not exist; to create a baseline, run with --baseline base.json --update-baseline*",
        ),
        ("{corrupt", "--baseline: */base.json is not valid JSON*"),
        ('{"schema": "something/else"}', "--baseline: */base.json: not a backprop-conformance report (schema 'something/else'*"),
    ],
    ids=["missing", "corrupt", "other-schema"],
)
def test_unusable_baseline_is_a_usage_error_at_start_up(pytester: pytest.Pytester, content: str | None, message: str) -> None:
    project(pytester, {F32: cell_stats(0.1)}, "def test_never_runs():\n    raise AssertionError('ran')\n")
    if content is not None:
        (pytester.path / "base.json").write_text(content, encoding="utf-8")
    result = pytest_run(pytester, "--baseline", "base.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "test_never_runs" not in result.stdout.str()


def test_regression_fails_a_passing_run(pytester: pytest.Pytester) -> None:
    project(pytester, {F32: cell_stats(0.2, 0.9), F64: cell_stats(0.01)})
    stored(pytester, {F32: cell_stats(0.3), F64: cell_stats(0.01)})
    result = pytest_run(pytester, "--baseline", "base.json", "--markdown-summary", "summary.md")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "  REGRESSION fake-eager-float32: worst error/bound ratio 0.3 in the baseline, 0.9 now (×3), beyond 2 × max(0.3, 0.25) = 0.6",
            "  the run fails: 1 regression(s) against the baseline",
        ]
    )
    summary = (pytester.path / "summary.md").read_text(encoding="utf-8")
    assert "| `fake-eager-float32` | 2 | 0 | 0.9 | 0.9 | **0.3 → 0.9 (×3)** regressed | ❌ |" in summary
    assert "| `fake-eager-float64` | 1 | 0 | 0.01 | 0.01 | 0.01 → 0.01 (×1) | ✅ |" in summary


def test_no_regression_keeps_the_run_passing(pytester: pytest.Pytester) -> None:
    project(pytester, {F32: cell_stats(0.2, 0.4)})
    stored(pytester, {F32: cell_stats(0.3)})
    result = pytest_run(pytester, "--baseline", "base.json")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["compared with baseline base.json:", "  no regressions"])


def test_update_creates_a_missing_baseline(pytester: pytest.Pytester) -> None:
    project(pytester, {F32: cell_stats(0.2, math.inf)}, PASSING_TEST)
    result = pytest_run(pytester, "--baseline", "new/base.json", "--update-baseline")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["baseline created: new/base.json"])
    written = report.read(pytester.path / "new" / "base.json")
    assert written.cell(F32) is not None and written.cell(F32).ratios == (0.2, math.inf)  # type: ignore[union-attr]


def test_update_replaces_the_baseline_and_does_not_fail_on_the_comparison(pytester: pytest.Pytester) -> None:
    project(pytester, {F32: cell_stats(0.9)})
    path = stored(pytester, {F32: cell_stats(0.1)})
    result = pytest_run(pytester, "--baseline", "base.json", "--update-baseline")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["  REGRESSION fake-eager-float32: *0.1 in the baseline, 0.9 now*", "baseline updated: base.json"])
    assert report.read(path).cell(F32).worst == 0.9  # type: ignore[union-attr]


def test_update_after_a_failing_run_keeps_the_old_baseline(pytester: pytest.Pytester) -> None:
    project(pytester, {F32: cell_stats(0.9)}, "def test_fails():\n    raise AssertionError('no')\n")
    path = stored(pytester, {F32: cell_stats(0.1)})
    before = path.read_bytes()
    result = pytest_run(pytester, "--baseline", "base.json", "--update-baseline")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["baseline base.json NOT updated: the run did not pass (exit status 1)"])
    assert path.read_bytes() == before


def test_update_never_overwrites_a_file_that_is_not_a_report(pytester: pytest.Pytester) -> None:
    project(pytester, {F32: cell_stats(0.1)})
    path = pytester.path / "base.json"
    path.write_text("precious notes, not JSON\n", encoding="utf-8")
    result = pytest_run(pytester, "--baseline", "base.json", "--update-baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --update-baseline: refusing to overwrite base.json, which is not a usable report: *"])
    assert path.read_text(encoding="utf-8") == "precious notes, not JSON\n"


def test_update_without_a_baseline_path_is_a_usage_error(pytester: pytest.Pytester) -> None:
    project(pytester, {F32: cell_stats(0.1)})
    result = pytest_run(pytester, "--update-baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --update-baseline writes the file named by --baseline PATH; give --baseline too"])


def test_floor_narrows_only_when_both_runs_drew_the_same_examples() -> None:
    """Same derandomized settings, hypothesis and suite versions: no seed noise to absorb, so the narrow floor applies."""
    from backprop_conformance.conformance.baseline import FLOOR, FLOOR_SAME_EXAMPLES, floor_for

    ci = {"profile": "ci", "max_examples": 100, "derandomize": True, "seed": None, "version": "6.170.17"}
    same = {"hypothesis": ci, "suite": {"version": "0.1.0", "commit": "abc"}}
    assert floor_for(same, {**same, "suite": {"version": "0.1.0", "commit": "def"}}) == FLOOR_SAME_EXAMPLES
    assert floor_for(same, {**same, "hypothesis": {**ci, "max_examples": 200}}) == FLOOR
    assert floor_for(same, {**same, "hypothesis": {**ci, "version": "6.171.0"}}) == FLOOR
    assert floor_for(same, {**same, "suite": {"version": "0.2.0"}}) == FLOOR
    dev = {**ci, "profile": "dev", "derandomize": False}
    assert floor_for({**same, "hypothesis": dev}, {**same, "hypothesis": dev}) == FLOOR
