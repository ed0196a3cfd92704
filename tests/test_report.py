"""The JSON report (conformance/report.py), the Markdown summary (conformance/markdown_summary.py) and their options.

The format and the summary are tested in-process on hand-made reports (:mod:`reports`), so every
expected value is written out by hand, not produced by the code under test. The options are tested in
real runs of the suite (a subprocess, through :mod:`backprop_conformance.conformance.runner`) against
a fast numpy adapter, including one under pytest-xdist.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import CONFORMANCE_ONLY, CORRECT_ADAPTER, REPO_ROOT, run_python, suite
from hypothesis import given
from hypothesis import strategies as st
from reports import F32, F64, cell, run

from backprop_conformance.conformance import outputs, provenance, report
from backprop_conformance.conformance.markdown_summary import markdown
from backprop_conformance.conformance.runner import clean_environment

CUDA = "fake-jit-float32-cuda"


def built() -> report.Report:
    # Hand-checked figures: sorted ratios 0, 0.1, 0.3, inf; worst inf; quantiles with method="higher"
    # pick sorted[ceil(q·(n−1))]: q=0.5 → index 2 → 0.3, q=0.9 and 0.99 → index 3 → inf.
    return run(
        cell(F32, 0.3, math.inf, 0.0, 0.1, depths=[2, 5, 3, 8], zs=[0.5, 41.0, 0.0, 3.25]),
        cell(F64, 0.02, 0.01, depths=[2, 2], zs=[1.0, 2.0]),
        cell(CUDA),
    )


def cells_by_id(data: dict) -> dict[str, dict]:
    return {c["id"]: c for c in data["cells"]}


def strict_json(text: str) -> object:
    """Parse as a strict JSON reader would: Python's json accepts the non-JSON tokens Infinity and NaN; refuse them."""

    def refuse(token: str) -> object:
        raise AssertionError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


# The format.


def test_report_has_the_schema_and_provenance_fields() -> None:
    data = built().to_json()
    assert data["schema"] == "backprop-conformance/report/2"
    assert data["exitstatus"] == 0 and data["command"]["pytest_args"] == ["conformance"]
    assert data["backends"] == [
        {
            "name": "fake",
            "requested_as": "pkg:Fake",
            "framework": "Fake",
            "version": "1.0",
            "devices": ["cpu"],
            "paths": ["eager"],
            "dtypes": ["float64", "float32"],
            "accumulation": "in storage format",
            "environment": {},
        }
    ]
    assert data["baseline"] is None and data["skipped_backends"] == []


def test_a_backend_with_a_mixed_precision_policy_records_it_and_reads_back() -> None:
    entry = report.BackendEntry(
        "mixed",
        "pkg:Mixed",
        "Mixed",
        "1",
        ("cpu",),
        ("eager",),
        ("mixed-bfloat16",),
        "in storage format",
        {},
        policies={"mixed-bfloat16": "x"},
    )
    data = entry.to_json()
    assert data["policies"] == {"mixed-bfloat16": "x"}
    assert report.BackendEntry.from_json(data, "backends[0]", skipped=False) == entry


def test_provenance_of_this_machine() -> None:
    import platform

    import numpy as np

    env = provenance.environment()
    assert env["python"] == platform.python_version() and env["numpy"] == np.__version__ and env["platform"] == platform.platform()
    from importlib.metadata import version

    assert provenance.suite_version() == version("backprop-conformance")


def test_suite_commit_is_this_checkouts_head() -> None:
    """Checked against git itself; this test runs from the suite's own checkout."""
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    if head.returncode != 0:
        pytest.skip("the suite is not run from a git checkout here")
    suite = provenance.suite()
    assert suite["commit"] == head.stdout.strip()
    assert isinstance(suite["dirty"], bool)


def test_the_report_records_the_plug_in_interface_it_ran_adapters_through() -> None:
    from backprop_conformance.adapters.base import PLUGIN_INTERFACE

    assert provenance.suite()["plugin_interface"] == PLUGIN_INTERFACE


def test_suite_commit_is_null_without_git(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_git(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("git")

    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    assert provenance.suite_checkout() == {"commit": None, "dirty": None}


def test_cells_carry_their_status_statistics_and_series() -> None:
    cells = cells_by_id(built().to_json())
    c32 = cells[F32]
    assert (c32["backend"], c32["path"], c32["dtype"], c32["device"]) == ("fake", "eager", "float32", "cpu")
    assert (c32["examples"], c32["failures"], c32["status"], c32["contract"], c32["exceptions"]) == (4, 1, "failed", "passed", 0)
    assert c32["worst"] == "inf" and c32["median"] == 0.3
    assert c32["quantiles"] == {"0.5": 0.3, "0.9": "inf", "0.99": "inf"}
    assert c32["ratios"] == [0.3, "inf", 0.0, 0.1]
    assert c32["depths"] == [2, 5, 3, 8] and c32["max_abs_z"] == [0.5, 41.0, 0.0, 3.25]
    c64 = cells[F64]
    assert c64["worst"] == 0.02 and c64["median"] == 0.02 and c64["quantiles"]["0.5"] == 0.02 and c64["status"] == "passed"


def test_a_cell_that_ran_nothing_has_null_statistics() -> None:
    cuda = cells_by_id(built().to_json())[CUDA]
    assert cuda["device"] == "cuda" and cuda["status"] == "not run"
    assert (cuda["examples"], cuda["failures"], cuda["worst"], cuda["median"]) == (0, 0, None, None)
    assert cuda["quantiles"] == {"0.5": None, "0.9": None, "0.99": None}
    assert cuda["ratios"] == cuda["depths"] == cuda["max_abs_z"] == []


def test_written_report_is_valid_json_with_infinite_ratios(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    report.write(built(), path)
    data = strict_json(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    assert cells_by_id(data)[F32]["worst"] == "inf"
    back = report.read(path)
    c32 = back.cell(F32)
    assert c32 is not None and c32.worst == math.inf and c32.ratios == [0.3, math.inf, 0.0, 0.1]
    assert c32.depths == [2, 5, 3, 8] and c32.max_abs_z == [0.5, 41.0, 0.0, 3.25] and c32.status == "failed"
    assert back.cell(CUDA) is not None and back.cell(CUDA).worst is None  # type: ignore[union-attr]


def test_per_example_arrays_are_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    report.write(built(), path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert '   "ratios": [0.3, "inf", 0.0, 0.1],' in lines
    assert '   "depths": [2, 5, 3, 8],' in lines


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_floats_round_trip_through_json(value: float) -> None:
    encoded = report.encode_float(value)
    decoded = report.decode_float(strict_json(json.dumps(encoded)), "x")
    assert (math.isnan(decoded) and math.isnan(value)) or decoded == value


def test_writing_a_non_finite_float_unencoded_is_refused() -> None:
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        report.dumps({"schema": report.SCHEMA, "cells": [], "oops": math.inf})


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "out" / "report.json"
    report.write(built(), path)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        outputs.write_atomically(report.dumps({"schema": report.SCHEMA, "cells": [], "bad": math.nan}), path)
    assert path.read_bytes() == before, "a failed write must leave the previous file intact"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"], "no temporary file may remain"


def test_write_gives_the_file_ordinary_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        report.write(built(), tmp_path / "report.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o644


# Reading: every defect is named with the file and the field.


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d.update(schema="backprop-conformance/case/1"),
            "not a backprop-conformance report of this version (schema 'backprop-conformance/case/1'",
        ),
        (
            lambda d: d.update(schema="backprop-conformance/report/1"),
            "(schema 'backprop-conformance/report/1', expected 'backprop-conformance/report/2')",
        ),
        (lambda d: d.update(cells={}), "field 'cells' must be a list"),
        (lambda d: d["cells"][0].pop("ratios"), "cells[0]: missing field 'ratios'"),
        (lambda d: d["cells"][0].update(examples="4"), "cells[0]: field 'examples' has the wrong type"),
        (lambda d: d["cells"][0].update(examples=True), "cells[0]: field 'examples' has the wrong type (bool"),
        (lambda d: d["cells"][0].update(worst="infinity"), "cells[0].worst: expected a number or one of 'inf', '-inf', 'nan'"),
        (lambda d: d["cells"][0]["ratios"].append(0.5), "'examples' is 4 but 'ratios', 'depths' and 'max_abs_z' have 5, 4, 4 entries"),
        (lambda d: d["cells"][0].update(depths=[2, 5, 3, 8.5]), "field 'depths' must be a list of integers"),
        (lambda d: d["cells"][0].update(status="green"), "field 'status' is 'green'; expected one of 'passed', 'failed'"),
        (lambda d: d["cells"][0].update(failures=9), "'failures' is 9, more than its 4 examples"),
        (lambda d: d["cells"].append(d["cells"][0]), "a cell id appears twice"),
    ],
    ids=[
        "schema",
        "old-schema",
        "cells",
        "missing-field",
        "wrong-type",
        "bool-for-int",
        "bad-non-finite",
        "lengths",
        "depths",
        "status",
        "failures",
        "duplicate",
    ],
)
def test_malformed_report_is_rejected_naming_the_field(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = built().to_json()
    mutate(data)
    path = write_json(tmp_path / "r.json", data)
    with pytest.raises(report.ReportError) as info:
        report.read(path)
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)


def test_unreadable_report_files(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "nan.json").write_text('{"schema": "backprop-conformance/report/2", "x": NaN}', encoding="utf-8")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    cases = {
        tmp_path / "missing.json": "does not exist",
        tmp_path: "is a directory",
        tmp_path / "bad.json": "is not valid JSON",
        tmp_path / "nan.json": "NaN is not a JSON number",
        tmp_path / "deep.json": "is not valid JSON",
    }
    for path, message in cases.items():
        with pytest.raises(report.ReportError, match=re.escape(message)):
            report.read(path)


# The Markdown summary.


def test_markdown_has_a_row_per_cell_and_names_the_failing_evidence() -> None:
    failing = cell(
        F32, 0.3, 1.5, worst_element={"name": "w^2_11", "framework": 1.5, "reference": 1.0, "bound": 0.25, "ratio": 2.0},
        case_files=["cases/fake-eager-float32-shrunk-0123456789.json"], replay="backprop-conformance replay X --backend pkg:Fake",
    )  # fmt: skip
    text = markdown(run(failing, cell(F64, 0.02, 0.01), cell(CUDA)))
    assert text.startswith("## backprop-conformance: ❌ 1 failed of 3 cells\n"), text
    assert "| cell | examples | failures | contract | exceptions | worst ratio | median ratio | status |" in text
    assert "| `fake-eager-float32` | 2 | 1 | passed | 0 | 1.5 | 1.5 | ❌ |" in text
    assert "| `fake-eager-float64` | 2 | 0 | passed | 0 | 0.02 | 0.02 | ✅ |" in text
    assert "| `fake-jit-float32-cuda` | 0 | 0 | not run | 0 | – | – | – not run |" in text
    assert "- worst: w^2_11: framework 1.5, reference 1, bound 0.25, ratio 2" in text
    assert "- case file: `cases/fake-eager-float32-shrunk-0123456789.json`" in text
    assert "- replay: `backprop-conformance replay X --backend pkg:Fake`" in text
    assert "fake: Fake 1.0" in text and "baseline" not in text


@pytest.mark.parametrize(
    ("cells", "headline"),
    [
        ([cell(F32, 0.1), cell(F64, 0.2)], "✅ all 2 cells tested and within the bound"),
        ([cell(F32, 0.1, status="failed", contract="failed")], "❌ 1 failed of 1 cells"),
        ([cell(F32, 0.1, status="failed", exceptions=1)], "❌ 1 failed of 1 cells"),
        ([cell(F32, 0.1), cell(F64, 0.1, status="incomplete")], "❌ 1 incomplete of 2 cells"),
        ([cell(F32, 0.1), cell(F64)], "⚠️ 1 of 2 cells were not run"),
        ([cell(F32, 0.1), cell(F64, 3.0, status="known defect")], "⚠️ 1 cells within the bound, 1 failing only by known upstream defects"),
        ([], "⚠️ nothing was tested: no cell was selected"),
    ],
    ids=["green", "contract", "exception", "incomplete", "not-run", "known-defect", "empty"],
)
def test_markdown_headline_is_never_greener_than_the_cells(cells: list, headline: str) -> None:
    """A contract failure or an exception with good ratios, an unfinished or unrun cell: none of them reads as all green."""
    assert markdown(run(*cells)).startswith(f"## backprop-conformance: {headline}\n")


def test_markdown_appends(tmp_path: Path) -> None:
    path = tmp_path / "summary.md"
    path.write_text("# from an earlier step\n", encoding="utf-8")
    section = markdown(built())
    outputs.append_text(section, path)
    outputs.append_text(section, path)
    assert path.read_text(encoding="utf-8") == "# from an earlier step\n\n" + section + "\n" + section


# The options, in real runs.

CORRECT = (*CORRECT_ADAPTER, "--conformance-max-examples", "5")


def test_options_write_report_and_summary(tmp_path: Path) -> None:
    summary = tmp_path / "out" / "summary.md"
    done = suite(tmp_path, *CORRECT, "--conformance-markdown", str(summary))
    assert done.returncode == pytest.ExitCode.OK and done.report is not None, done.explain()
    data = strict_json((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict) and data["exitstatus"] == 0
    assert any(arg.startswith("--conformance-report") for arg in data["command"]["pytest_args"])
    rows = {c.id: c for c in done.report.cells}
    assert set(rows) == {"ok-stable-manual-float32", "ok-stable-manual-float64"}
    text = summary.read_text(encoding="utf-8")
    for c in rows.values():
        assert c.status == "passed" and c.examples == 5
        assert f"| `{c.id}` | 5 | 0 | passed | 0 | {c.worst:.3g} | {c.median:.3g} | ✅ |" in text, text
    assert "report written to " in done.output and "Markdown summary appended to " in done.output


def test_nothing_is_written_without_the_options(tmp_path: Path) -> None:
    args = (
        "-m",
        "pytest",
        "conformance",
        "-p",
        "no:cacheprovider",
        "-m",
        CONFORMANCE_ONLY,
        *CORRECT,
        f"--conformance-case-dir={tmp_path / 'cases'}",
    )
    done = run_python(*args, cwd=REPO_ROOT, env=clean_environment(tmp_path / "hypothesis"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "conformance report and baseline" not in done.stdout


def test_under_xdist_only_the_controller_writes(tmp_path: Path) -> None:
    """Each worker runs the same hooks; the report holds every worker's examples and the summary is appended once."""
    summary = tmp_path / "summary.md"
    done = suite(tmp_path, *CORRECT, "-n", "2", "--conformance-markdown", str(summary))
    assert done.returncode == pytest.ExitCode.OK and done.report is not None, done.explain()
    assert summary.read_text(encoding="utf-8").count("## backprop-conformance") == 1
    assert all(c.examples == 5 and c.status == "passed" and c.contract == "passed" for c in done.report.cells), done.report.cells
