"""Sharding a run (``--conformance-shard``, conformance/shards.py) and merging reports (conformance/merge.py).

The central claim is tested on real runs of the suite: the shards of a run, merged, equal the unsharded run with the
same (derandomized) examples, cell for cell, failing cells and their case files included; and the merged report is
an ordinary one, which the baseline comparison, the plots and the Markdown summary read. The refusals are tested on
real reports edited the way a wrong input would differ.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import CORRECT_ADAPTER, assert_usage_error, suite

from backprop_conformance.conformance import merge, report, shards
from backprop_conformance.conformance.__main__ import main as commands
from backprop_conformance.conformance.cells import Cell
from backprop_conformance.conformance.markdown_summary import markdown

EXAMPLE = "backprop_conformance.adapters.example_numpy:NumpyAdapter"
BACKENDS = ("--conformance-backend", EXAMPLE, *CORRECT_ADAPTER, "--conformance-backend", "tests.mutants:ZeroBiasGradient")
"""Three backends, seven cells: the example plug-in (3), the correct numpy adapter (2) and a mutant whose cells fail
(2), so that failing cells, their case files and replay commands go through the split and the merge."""
RUN = (*BACKENDS, "--conformance-max-examples", "4")
PER_RUN = ("timing",)
"""What a cell may differ in between a shard and the unsharded run: the seconds it took."""


def cell_ids(n: int) -> list[Cell]:
    return [Cell("b", "p", f"d{i:02d}") for i in range(n)]


# The split.


@pytest.mark.parametrize("count", [1, 2, 3, 4, 11])
def test_shards_partition_the_cells_in_blocks_differing_by_at_most_one(count: int) -> None:
    cells = cell_ids(11)[::-1]  # the split sorts by id: the table's order does not change it
    slices = [shards.select(cells, shards.Shard(i, count), "--opt")[0] for i in range(1, count + 1)]
    ids = [[c.id for c in s] for s in slices]
    assert sorted(i for s in ids for i in s) == sorted(c.id for c in cells)
    assert max(map(len, ids)) - min(map(len, ids)) <= 1
    assert [i for s in ids for i in sorted(s)] == sorted(c.id for c in cells)  # contiguous blocks in id order


def test_the_shard_records_the_whole_selection() -> None:
    mine, shard = shards.select(cell_ids(3), shards.parse("2/2", "--opt"), "--opt")
    assert [c.id for c in mine] == ["b-p-d01", "b-p-d02"]
    assert shard.to_json() == {"index": 2, "count": 2, "selection": ["b-p-d00", "b-p-d01", "b-p-d02"]}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2", "takes INDEX/COUNT, two whole numbers with 1 ≤ INDEX ≤ COUNT (e.g. 2/4); got '2'"),
        ("a/b", "got 'a/b'"),
        ("-1/2", "got '-1/2'"),
        ("0/2", "--conformance-shard 0/2: INDEX must be between 1 and COUNT"),
        ("3/2", "--conformance-shard 3/2: INDEX must be between 1 and COUNT"),
        ("1/0", "--conformance-shard 1/0: INDEX must be between 1 and COUNT, and COUNT at least 1"),
        (
            "1/8",
            "--conformance-shard 1/8: the selection has 7 cell(s), fewer than 8 shards, so some shard would test nothing; use at most 7",
        ),
    ],
)
def test_bad_shard_is_a_usage_error_naming_what_is_allowed(tmp_path: Path, value: str, message: str) -> None:
    run = suite(tmp_path, *BACKENDS, f"--conformance-shard={value}")
    assert_usage_error(run, message)


# Shards merged equal the unsharded run.


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real reports: the unsharded run and its three shards, derandomized (CI), case files in one directory."""
    tmp = tmp_path_factory.mktemp("split")
    cases = f"--conformance-case-dir={tmp / 'cases'}"
    paths = {}
    for name, extra in [("whole", ()), *[(f"shard{i}", (f"--conformance-shard={i}/3",)) for i in (1, 2, 3)]]:
        run = suite(tmp / name, *RUN, *extra, cases, CI="true")
        assert run.report is not None, run.explain()
        assert run.returncode == int(any(c.status == "failed" for c in run.report.cells)), run.explain()
        paths[name] = tmp / name / "report.json"
    return paths


def comparable(cell: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cell.items() if k not in (*PER_RUN, "configuration")}


def test_three_shards_merged_equal_the_unsharded_run_cell_for_cell(split: dict[str, Path], tmp_path: Path) -> None:
    shard_reports = [report.read(split[f"shard{i}"]) for i in (1, 2, 3)]
    assert [len(r.cells) for r in shard_reports] == [2, 2, 3]
    assert [c.status for c in shard_reports[0].cells] == ["failed", "failed"]  # the mutant's cells, first in id order
    assert not set.intersection(*({c.id for c in r.cells} for r in shard_reports))
    merged = merge.merge(shard_reports)
    whole = report.read(split["whole"])
    assert [c.id for c in merged.cells] == [c.id for c in whole.cells] and len(whole.cells) == 7
    for ours, theirs in zip(merged.cells, whole.cells, strict=True):
        assert comparable(ours.to_json()) == comparable(theirs.to_json()), ours.id
    failing = [c for c in merged.cells if c.status == "failed"]
    assert len(failing) == 2 and all(c.case_files and c.replay and c.worst_element for c in failing)
    assert merged.exitstatus == 1 and merged.shard is None
    assert [source["shard"] for source in merged.merged_from] == ["1/3", "2/3", "3/3"]
    # Written and read back: an ordinary report of the same schema.
    out = tmp_path / "merged.json"
    assert commands(["merge", *map(str, (split[f"shard{i}"] for i in (1, 2, 3))), "--out", str(out)]) == 1
    again = report.read(out)
    assert [comparable(c.to_json()) for c in again.cells] == [comparable(c.to_json()) for c in whole.cells]


def test_a_merged_report_is_a_baseline_a_summary_and_a_plot(split: dict[str, Path], tmp_path: Path) -> None:
    passing = tmp_path / "passing"
    for i in (1, 2):  # the correct adapters only, in two shards: a passing matrix
        run = suite(passing / str(i), *RUN[:4], "--conformance-max-examples", "4", f"--conformance-shard={i}/2", CI="true")
        assert run.returncode == 0, run.explain()
    merged, summary = tmp_path / "merged.json", tmp_path / "summary.md"
    reports = [str(passing / str(i) / "report.json") for i in (1, 2)]
    assert commands(["merge", *reports, "--out", str(merged), "--markdown", str(summary)]) == 0
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("## backprop-conformance: ✅ all 5 cells tested and within the bound")
    assert "`numpy-example-manual-float16`" in text and "`ok-stable-manual-float32`" in text
    # The merged report as the baseline of an unsharded run with the same examples: compared cell for cell.
    run = suite(tmp_path / "checked", *RUN[:4], "--conformance-max-examples", "4", f"--conformance-baseline={merged}", CI="true")
    assert run.returncode == 0, run.explain()
    assert "5 cell(s) compared with the baseline" in run.output and "no regressions" in run.output
    # ... and the merge compares with a baseline itself: the unsharded run as baseline of the merged shards.
    assert (
        commands(["merge", *reports, "--out", str(tmp_path / "again.json"), "--baseline", str(tmp_path / "checked" / "report.json")]) == 0
    )
    assert report.read(tmp_path / "again.json").baseline["compared"] == 5  # type: ignore[index]
    pytest.importorskip("matplotlib")
    assert commands(["plot", str(merged), "--out", str(tmp_path / "plots")]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "ratio_distribution.png",
        "ratio_vs_depth.png",
        "ratio_vs_max_abs_z.png",
    ]


# Combining the same cell, and keeping configurations apart.


def edited(source: Path, target: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    data = json.loads(source.read_text(encoding="utf-8"))
    edit(data)
    target.write_text(json.dumps(data), encoding="utf-8")
    return target


def test_the_same_cell_from_two_reports_combines(split: dict[str, Path], tmp_path: Path) -> None:
    """A cell in two reports of the same configuration: examples add up, the worst is the maximum, the status the worse."""
    first = report.read(split["whole"])
    cell_id = "numpy-example-manual-float16"
    assert first.cell(cell_id) is not None and first.cell(cell_id).status == "passed"  # type: ignore[union-attr]

    def worse(data: dict[str, Any]) -> None:
        cell = next(c for c in data["cells"] if c["id"] == cell_id)
        cell.update(ratios=[*cell["ratios"][:-1], 7.5], status="failed", failures=1, worst=7.5, case_files=["other/case.json"])

    second = report.read(edited(split["whole"], tmp_path / "rerun.json", worse))
    merged = merge.merge([first, second])
    ours, theirs, combined = first.cell(cell_id), second.cell(cell_id), merged.cell(cell_id)
    assert ours is not None and theirs is not None and combined is not None
    assert combined.examples == ours.examples + theirs.examples == 8
    assert combined.ratios == ours.ratios + theirs.ratios and combined.depths == ours.depths + theirs.depths
    assert combined.worst == 7.5 and combined.failures == 1 and combined.status == "failed"
    assert combined.case_files == ["other/case.json"]
    assert len(merged.cells) == len(first.cells)


def test_another_framework_version_is_another_cell(split: dict[str, Path], tmp_path: Path) -> None:
    def older(data: dict[str, Any]) -> None:
        for backend in data["backends"]:
            backend["version"] = "0.9"

    other = edited(split["whole"], tmp_path / "older.json", older)
    out = tmp_path / "merged.json"
    assert commands(["merge", str(split["whole"]), str(other), "--out", str(out)]) == 1
    merged = report.read(out)
    ids = [c.id for c in merged.cells]
    assert "numpy-example-manual-float16@v0.9" in ids  # the suffix names what differs: the framework's version
    versions = {c.configuration["version"] for c in merged.cells if c.id.startswith("numpy-example-manual-float16@")}
    assert len(versions) == 2 and "0.9" in versions
    assert len(ids) == 2 * len(report.read(split["whole"]).cells) and len(set(ids)) == len(ids)
    assert all("@" in i for i in ids)


def test_another_dispatch_configuration_is_another_cell(split: dict[str, Path], tmp_path: Path) -> None:
    def other_cpu(data: dict[str, Any]) -> None:
        for cell in data["cells"]:
            cell["dispatch"] = {**cell["dispatch"], "cpu.model": "Some Other CPU"}

    merged = merge.merge([report.read(split["whole"]), report.read(edited(split["whole"], tmp_path / "cpu.json", other_cpu))])
    ids = [c.id for c in merged.cells]
    assert len(ids) == 2 * 7 and all("@dispatch-" in i for i in ids)
    assert {c.dispatch["cpu.model"] for c in merged.cells} >= {"Some Other CPU"}


# Refusals, each naming the file.


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(schema="backprop-conformance/report/1"), "not a backprop-conformance report of this version"),
        (lambda d: d.update(exitstatus=2), "the report of an interrupted run (exit status 2)"),
        (lambda d: d["suite"].update(version="0.0.9"), "ran with suite version 0.0.9 here and 0.1.0 in"),
    ],
    ids=["schema", "interrupted", "suite-version"],
)
def test_incompatible_reports_are_refused_naming_the_file(
    split: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    bad = edited(split["whole"], tmp_path / "bad.json", edit)
    out = tmp_path / "merged.json"
    assert commands(["merge", str(split["whole"]), str(bad), "--out", str(out)]) == merge.USAGE
    err = capsys.readouterr().err
    assert message in err and str(bad) in err and not out.exists()


def test_a_missing_shard_is_refused_naming_it(split: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert commands(["merge", str(split["shard1"]), str(split["shard3"]), "--out", str(tmp_path / "m.json")]) == merge.USAGE
    err = capsys.readouterr().err
    assert "shard(s) 2/3 of a split of 7 cells are missing" in err and str(split["shard3"]) in err


def test_the_same_file_twice_and_an_input_as_output_are_refused(
    split: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = str(split["whole"])
    spelt_twice = str(split["whole"].parent / ".." / split["whole"].parent.name / "report.json")
    for again in (whole, spelt_twice):
        assert commands(["merge", whole, again, "--out", str(tmp_path / "m.json")]) == merge.USAGE
        assert "given twice" in capsys.readouterr().err
    assert commands(["merge", whole, "--out", whole]) == merge.USAGE
    assert "name the same location" in capsys.readouterr().err


def test_the_merged_summary_names_the_failing_cells(split: dict[str, Path]) -> None:
    merged = merge.merge([report.read(split[f"shard{i}"]) for i in (1, 2, 3)])
    text = markdown(merged)
    assert text.startswith("## backprop-conformance: ❌ 2 failed of 7 cells") and "replay: `" in text
