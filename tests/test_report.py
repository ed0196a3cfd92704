"""The JSON report and the Markdown summary (conformance/report.py), in-process, on synthetic statistics.

The report is built from hand-made :class:`backprop_conformance.conformance.stats.CellStats` and fake backends, so every
expected value below is written out by hand, not produced by the code under test. The options are
exercised through pytest's own ``pytester``: a throwaway project (tests/report_project.py) whose conftest wires the functions
of :mod:`backprop_conformance.conformance.report` into the hooks exactly as ``conformance/plugin.py`` does, with
statistics read from a file, so that the options, the exit status and the printed summary are those of
a real pytest run (including one under pytest-xdist) without the cost of running adapters.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from report_project import make_report_project

from backprop_conformance.adapters.base import Capabilities
from backprop_conformance.adapters.registry import AdapterSpec
from backprop_conformance.conformance import report
from backprop_conformance.conformance.cells import Backend, Cell
from backprop_conformance.conformance.stats import CellStats

pytest_plugins = ("pytester",)

REPO_ROOT = Path(__file__).resolve().parents[1]

FAKE = Capabilities(
    name="fake",
    framework="FakeFramework",
    version="9.8.7",
    dtypes=("float64", "float32"),
    paths=("eager", "jit"),
    default_paths=("eager",),
    devices=("cpu", "cuda"),
)
BACKENDS = [
    Backend(AdapterSpec("fake", "fakepkg.adapter:Fake", "command line"), capabilities=FAKE),
    Backend(AdapterSpec("gone", "gonepkg.adapter:Gone", "built-in", ("gonepkg",)), unavailable="skipped: gonepkg not installed"),
]
CELLS = [Cell("fake", "eager", "float64"), Cell("fake", "eager", "float32"), Cell("fake", "jit", "float32", "cuda")]
STATS = {
    # Hand-checked figures: sorted ratios 0, 0.1, 0.3, inf; worst inf; quantiles with method="higher"
    # pick sorted[ceil(q·(n−1))]: q=0.5 → index 2 → 0.3, q=0.9 and 0.99 → index 3 → inf.
    "fake-eager-float32": CellStats(4, 1, [0.3, math.inf, 0.0, 0.1], [2, 5, 3, 8], [0.5, 41.0, 0.0, 3.25]),
    "fake-eager-float64": CellStats(2, 0, [0.02, 0.01], [2, 2], [1.0, 2.0]),
}
COMMAND = {"executable": "python", "argv": ["pytest", "conformance"], "pytest_args": ["conformance"], "cwd": "/somewhere"}


def built(**overrides: object) -> dict:
    arguments = {"profile": "dev", "command": COMMAND, "exitstatus": 0, **overrides}
    return report.build(STATS, BACKENDS, CELLS, **arguments)  # type: ignore[arg-type]


def cells_by_id(data: dict) -> dict[str, dict]:
    return {c["id"]: c for c in data["cells"]}


# Building the report.


def test_report_has_the_schema_and_provenance_fields() -> None:
    data = built()
    assert data["schema"] == "backprop-conformance/report/1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", data["timestamp"]), data["timestamp"]
    assert data["exitstatus"] == 0 and data["command"] == COMMAND
    assert data["environment"]["python"] == platform.python_version()
    assert data["environment"]["numpy"] == np.__version__
    assert data["environment"]["platform"] == platform.platform()
    from importlib.metadata import version

    assert data["suite"]["version"] == version("backprop-conformance")
    hyp = data["hypothesis"]
    assert hyp["profile"] == "dev" and set(hyp) == {"version", "profile", "max_examples", "derandomize", "seed", "database"}
    assert data["backends"] == [
        {
            "name": "fake",
            "requested_as": "fakepkg.adapter:Fake",
            "framework": "FakeFramework",
            "version": "9.8.7",
            "devices": ["cpu", "cuda"],
            "paths": ["eager", "jit"],
            "dtypes": ["float64", "float32"],
        }
    ]
    assert data["skipped_backends"] == [{"name": "gone", "requested_as": "gone", "reason": "skipped: gonepkg not installed"}]
    assert data["baseline"] is None


def test_suite_commit_is_this_checkouts_head() -> None:
    """Checked against git itself; this test runs from the suite's own checkout."""
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    if head.returncode != 0:
        pytest.skip("the suite is not run from a git checkout here")
    suite = built()["suite"]
    assert suite["commit"] == head.stdout.strip()
    assert isinstance(suite["dirty"], bool)


def test_suite_commit_is_null_without_git(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_git(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("git")

    monkeypatch.setattr(report.subprocess, "run", no_git)
    assert report.suite_checkout() == {"commit": None, "dirty": None}


def test_cells_carry_their_statistics_and_series() -> None:
    cells = cells_by_id(built())
    assert list(cells) == ["fake-eager-float32", "fake-eager-float64", "fake-jit-float32-cuda"], "cells in id order"
    c32 = cells["fake-eager-float32"]
    assert (c32["backend"], c32["path"], c32["dtype"], c32["device"]) == ("fake", "eager", "float32", "cpu")
    assert (c32["examples"], c32["failures"]) == (4, 1)
    assert c32["worst"] == "inf" and c32["median"] == 0.3
    assert c32["quantiles"] == {"0.5": 0.3, "0.9": "inf", "0.99": "inf"}
    assert c32["ratios"] == [0.3, "inf", 0.0, 0.1]
    assert c32["depths"] == [2, 5, 3, 8] and c32["max_abs_z"] == [0.5, 41.0, 0.0, 3.25]
    c64 = cells["fake-eager-float64"]
    assert c64["worst"] == 0.02 and c64["median"] == 0.02 and c64["quantiles"]["0.5"] == 0.02


def test_a_cell_that_ran_nothing_has_null_statistics() -> None:
    cuda = cells_by_id(built())["fake-jit-float32-cuda"]
    assert cuda["device"] == "cuda"
    assert (cuda["examples"], cuda["failures"], cuda["worst"], cuda["median"]) == (0, 0, None, None)
    assert cuda["quantiles"] == {"0.5": None, "0.9": None, "0.99": None}
    assert cuda["ratios"] == cuda["depths"] == cuda["max_abs_z"] == []


def strict_json(text: str) -> object:
    """Parse as a strict JSON reader would: Python's json accepts the non-JSON tokens Infinity and NaN; refuse them."""

    def refuse(token: str) -> object:
        raise AssertionError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_written_report_is_valid_json_with_infinite_ratios(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    report.write(built(), path)
    data = strict_json(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    assert cells_by_id(data)["fake-eager-float32"]["worst"] == "inf"
    back = report.read(path)
    cell = back.cell("fake-eager-float32")
    assert cell is not None and cell.worst == math.inf and cell.ratios == (0.3, math.inf, 0.0, 0.1)
    assert cell.depths == (2, 5, 3, 8) and cell.max_abs_z == (0.5, 41.0, 0.0, 3.25)
    assert back.cell("fake-jit-float32-cuda") is not None and back.cell("fake-jit-float32-cuda").worst is None  # type: ignore[union-attr]


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
        report.write({"schema": report.SCHEMA, "cells": [], "bad": math.nan}, path)
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
            "not a backprop-conformance report (schema 'backprop-conformance/case/1'",
        ),
        (lambda d: d.update(cells={}), "field 'cells' must be a list"),
        (lambda d: d["cells"][0].pop("ratios"), "cells[0]: missing field 'ratios'"),
        (lambda d: d["cells"][0].update(examples="4"), "cells[0]: field 'examples' has the wrong type"),
        (lambda d: d["cells"][0].update(worst="infinity"), "cells[0].worst: expected a number or one of 'inf', '-inf', 'nan'"),
        (lambda d: d["cells"][0]["ratios"].append(0.5), "'examples' is 4 but 'ratios', 'depths' and 'max_abs_z' have 5, 4, 4 entries"),
        (lambda d: d["cells"][0].update(depths=[2, 5, 3, 8.5]), "field 'depths' must be a list of integers"),
    ],
    ids=["schema", "cells", "missing-field", "wrong-type", "bad-non-finite", "lengths", "depths"],
)
def test_malformed_report_is_rejected_naming_the_field(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = built()
    mutate(data)
    path = write_json(tmp_path / "r.json", data)
    with pytest.raises(report.ReportError) as info:
        report.read(path)
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)


def test_unreadable_report_files(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    cases = {tmp_path / "missing.json": "does not exist", tmp_path: "is a directory", tmp_path / "bad.json": "is not valid JSON"}
    for path, message in cases.items():
        with pytest.raises(report.ReportError, match=re.escape(message)):
            report.read(path)


# The Markdown summary.


def test_markdown_has_a_row_per_cell() -> None:
    text = report.markdown(report.parse(built(), "run"))
    assert text.startswith("## backprop-conformance: ❌ failures\n")
    assert "| cell | examples | failures | worst ratio | median ratio | verdict |" in text
    assert "| `fake-eager-float32` | 4 | 1 | ∞ | 0.3 | ❌ |" in text
    assert "| `fake-eager-float64` | 2 | 0 | 0.02 | 0.02 | ✅ |" in text
    assert "| `fake-jit-float32-cuda` | 0 | 0 | – | – | – |" in text
    assert "fake: FakeFramework 9.8.7" in text and "- gone: skipped: gonepkg not installed" in text
    assert "baseline" not in text


def test_markdown_appends(tmp_path: Path) -> None:
    path = tmp_path / "summary.md"
    path.write_text("# from an earlier step\n", encoding="utf-8")
    section = report.markdown(report.parse(built(), "run"))
    report.append_text(section, path)
    report.append_text(section, path)
    assert path.read_text(encoding="utf-8") == "# from an earlier step\n\n" + section + "\n" + section


# The options, in a real pytest run (pytester), with the plugin's wiring in a conftest.


def test_options_write_report_and_summary(pytester: pytest.Pytester) -> None:
    make_report_project(pytester, STATS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--conformance-report", "out/r.json", "--markdown-summary", "summary.md")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    data = strict_json((pytester.path / "out" / "r.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict) and data["exitstatus"] == 0
    assert "--conformance-report" in data["command"]["pytest_args"]
    assert cells_by_id(data)["fake-eager-float32"]["worst"] == "inf"
    assert "| `fake-eager-float32` | 4 | 1 | ∞ | 0.3 | ❌ |" in (pytester.path / "summary.md").read_text(encoding="utf-8")
    result.stdout.fnmatch_lines(
        ["*conformance report and baseline*", "report written to out/r.json", "Markdown summary appended to summary.md"]
    )


def test_nothing_is_written_without_the_options(pytester: pytest.Pytester) -> None:
    make_report_project(pytester, STATS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK
    assert "conformance report and baseline" not in result.stdout.str()
    assert sorted(p.name for p in pytester.path.iterdir() if p.suffix in (".json", ".md")) == ["run.json"]


def test_a_directory_as_report_path_is_a_usage_error(pytester: pytest.Pytester) -> None:
    make_report_project(pytester, STATS)
    (pytester.path / "adir").mkdir()
    result = pytester.runpytest("-p", "no:cacheprovider", "--conformance-report", "adir")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--conformance-report adir: is a directory; give a file name*"])


def test_an_unwritable_report_fails_a_passing_run(pytester: pytest.Pytester) -> None:
    make_report_project(pytester, STATS)
    (pytester.path / "afile").write_text("", encoding="utf-8")
    result = pytester.runpytest("-p", "no:cacheprovider", "--conformance-report", "afile/r.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stdout.fnmatch_lines(["ERROR: cannot write the report to afile/r.json: *"])


def test_under_xdist_only_the_controller_writes(pytester: pytest.Pytester) -> None:
    """Each of the two workers runs the same hooks; the summary must still be appended once."""
    make_report_project(pytester, STATS, test="import pytest\n\n@pytest.mark.parametrize('i', range(4))\ndef test_passes(i):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--markdown-summary", "summary.md")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    assert (pytester.path / "summary.md").read_text(encoding="utf-8").count("## backprop-conformance") == 1


def test_real_run_writes_report_summary_and_passes_its_own_baseline(tmp_path: Path) -> None:
    """End to end through the plugin: ``pytest conformance`` with the report, Markdown and baseline options."""
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"CI": "true", "HYPOTHESIS_STORAGE_DIRECTORY": str(tmp_path / "hyp")}
    common = [
        sys.executable, "-m", "pytest", "conformance", "-p", "no:cacheprovider", "-q", "--backend", "tests.mutants:ManualBackprop",
        "--max-examples", "15", "--case-dir", str(tmp_path / "cases"),
    ]  # fmt: skip
    base = tmp_path / "baseline.json"
    first = subprocess.run(
        [*common, "--baseline", str(base), "--update-baseline", "--markdown-summary", str(tmp_path / "summary.md")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    data = json.loads(base.read_text())
    assert data["schema"] == "backprop-conformance/report/1"
    assert {c["id"] for c in data["cells"]} == {"ok-stable-manual-float64", "ok-stable-manual-float32"}
    assert all(c["examples"] >= 15 and c["failures"] == 0 for c in data["cells"])
    assert "| `ok-stable-manual-float32` |" in (tmp_path / "summary.md").read_text()
    second = subprocess.run(
        [*common, "--baseline", str(base), "--conformance-report", str(tmp_path / "report.json")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert second.returncode == 0 and "no regressions" in second.stdout, second.stdout + second.stderr
    assert json.loads((tmp_path / "report.json").read_text())["baseline"]["passed"] is True
