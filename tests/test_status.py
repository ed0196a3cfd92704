"""What status a cell gets: no false green, ``incomplete`` for what never finished, a failure for a hung call, Ctrl-C honoured.

A cell passes only when all of it passes: a failed contract or an adapter that raised fails the cell in
the report, the terminal matrix, the Markdown summary and the exit status alike. A cell whose worker
died is ``incomplete``, not "0 examples, passed". A hung framework call ends at the time limit, once,
and fails its cell; Ctrl-C ends a run with pytest's interrupted status and keeps the report. Each check
runs the suite with the misbehaving adapters of :mod:`tests.hostile_adapters`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import CONFORMANCE_ONLY, DEFAULT_SIGINT, INTERRUPTED, PLAIN_ASSERT, REPO_ROOT, TESTS_FAILED, suite
from hostile_adapters import HERE, MARKER_VARIABLE, RaisesFromTheThirdExample

from backprop_conformance.conformance.runner import SuiteRun, clean_environment

# No false green: a failed contract or an adapter exception fails the cell in the report, the summary and the exit status.


@pytest.fixture(scope="module")
def no_false_green(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    """A contract mutant (right gradients, scrambled layout) and an adapter that raises from its third example, with a Markdown summary."""
    tmp = tmp_path_factory.mktemp("no-false-green")
    return suite(
        tmp,
        "--conformance-backend",
        "tests.mutants:TransposedLayout",
        "--conformance-backend",
        f"{HERE}:RaisesFromTheThirdExample",
        "--conformance-max-examples=10",
        "--conformance-markdown",
        str(tmp / "summary.md"),
    )


def assert_failed_everywhere(run: SuiteRun, cell_ids: list[str]) -> None:
    """The cells are ``failed`` in the report, the terminal matrix and the Markdown summary, and the run exits 1."""
    assert run.returncode == TESTS_FAILED and "INTERNALERROR" not in run.output, run.explain()
    summary = (run.workdir / "summary.md").read_text(encoding="utf-8")
    headline = summary.splitlines()[0]
    assert headline.startswith("## backprop-conformance: ❌ ") and "within the bound" not in headline, headline
    for cell_id in cell_ids:
        assert re.search(rf"^{re.escape(cell_id)} +failed ", run.output, re.MULTILINE), (
            f"{cell_id} not failed in the matrix:\n{run.explain()}"
        )
        (row,) = [line for line in summary.splitlines() if line.startswith(f"| `{cell_id}` |")]
        assert row.endswith("| ❌ |"), row


def test_a_failed_contract_fails_the_cell_everywhere(no_false_green: SuiteRun) -> None:
    """TransposedLayout's gradients are right: only its contract fails, and that alone must fail the cell."""
    assert no_false_green.report is not None, no_false_green.explain()
    cells = [c for c in no_false_green.report.cells if c.backend == "mut-transposed-layout"]
    assert {c.id for c in cells} == {"mut-transposed-layout-manual-float64", "mut-transposed-layout-manual-float32"}
    for c in cells:
        assert (c.status, c.contract, c.failures) == ("failed", "failed", 0), c
        assert c.examples == 10 and "the adapter contract failed (test_contract)" in c.problems, c
    assert_failed_everywhere(no_false_green, [c.id for c in cells])


def test_an_adapter_exception_fails_the_cell_everywhere(no_false_green: SuiteRun) -> None:
    """Two good examples, then an exception: counted as such (and "examples" still counts only examples tried)."""
    assert no_false_green.report is not None, no_false_green.explain()
    cells = [c for c in no_false_green.report.cells if c.backend == RaisesFromTheThirdExample.name]
    assert len(cells) == 2, no_false_green.explain()
    for c in cells:
        assert (c.status, c.contract, c.examples, c.failures) == ("failed", "passed", 2, 0), c
        assert c.exceptions >= 1 and c.exceptions + c.shrink_calls >= 2, c
        assert any(p.startswith("adapter raised RuntimeError: the framework gave up") for p in c.problems), c.problems
    assert_failed_everywhere(no_false_green, [c.id for c in cells])


# A worker that dies leaves its cell incomplete, not "0 examples", and fails the run.


def test_a_dead_xdist_worker_leaves_its_cell_incomplete(tmp_path: Path) -> None:
    """The cell whose worker died did not run 0 examples and pass: it is ``incomplete``, the matrix still shows, the run fails."""
    run = suite(
        tmp_path,
        "--conformance-backend",
        f"{HERE}:DiesOnAnExample",
        "--conformance-backend",
        "tests.mutants:ManualBackprop",
        "--conformance-dtype=float64",
        "--conformance-max-examples=3",
        "-n",
        "2",
    )
    assert run.returncode == TESTS_FAILED, run.explain()
    assert run.report is not None, run.explain()
    cells = {c.id: c for c in run.report.cells}
    dead = cells["hostile-dies-manual-float64"]
    assert (dead.status, dead.contract) == ("incomplete", "passed"), dead
    assert any("crashed" in p for p in dead.problems), dead.problems
    assert cells["ok-stable-manual-float64"].status == "passed"
    assert re.search(r"^hostile-dies-manual-float64 +incomplete ", run.output, re.MULTILINE), run.explain()


# Ctrl-C ends a run with pytest's status 2, not a traceback, and keeps the report.


def test_ctrl_c_ends_a_run_with_status_2_and_no_traceback(tmp_path: Path) -> None:
    """SIGINT to the run's process group (Ctrl-C) while an adapter computes: pytest's interrupted summary, exit 2, the report kept."""
    marker = tmp_path / "waiting"
    command = [
        sys.executable,
        "-c",
        DEFAULT_SIGINT,
        "-m",
        "pytest",
        "conformance",
        "-p",
        "no:cacheprovider",
        PLAIN_ASSERT,
        f"--conformance-report={tmp_path / 'report.json'}",
        f"--conformance-case-dir={tmp_path / 'cases'}",
        "-m",
        CONFORMANCE_ONLY,
        "--conformance-backend",
        f"{HERE}:WaitsForCtrlC",
        "--conformance-dtype=float64",
        "--conformance-max-examples=3",
    ]
    env = clean_environment(tmp_path / "hypothesis", **{MARKER_VARIABLE: str(marker)})
    run = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the adapter was never called"
        os.killpg(run.pid, signal.SIGINT)
        try:
            output, _ = run.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the run was still going 60 s after Ctrl-C")
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode == INTERRUPTED, f"exit {run.returncode}\n{output[-6000:]}"
    assert "KeyboardInterrupt" in output, output[-6000:]
    assert "Traceback (most recent call last)" not in output and "INTERNALERROR" not in output, output[-6000:]
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert [(c["id"], c["status"]) for c in report["cells"]] == [("hostile-waits-manual-float64", "incomplete")], report["cells"]


# A hung framework call ends the test, names the cell, fails the run, and is never retried.


def item_seconds(run: SuiteRun, test: str) -> float:
    """The time pytest recorded for one test item (its JUnit XML), start-up excluded."""
    (case,) = [c for c in ET.parse(run.workdir / "junit.xml").getroot().iter("testcase") if c.get("name") == test]
    return float(case.get("time", "nan"))


HUNG_CELL = "hostile-hangs-manual-float64"


@pytest.mark.timeout(90)  # a retried hung call would hang this test: end it, and the suite's subprocess with it
@pytest.mark.parametrize(
    ("limit", "args"),
    [(5.0, ["--conformance-timeout=5"]), (3.0, ["--conformance-timeout=60", "--timeout=3"])],
    ids=["conformance-timeout", "pytest-timeout-overrides"],
)
def test_a_hung_framework_call_ends_the_test_and_is_not_retried(tmp_path: Path, limit: float, args: list[str]) -> None:
    """The limit is ``--conformance-timeout``, or pytest-timeout's own ``--timeout`` when given; either ends the call once, for good."""
    run = suite(
        tmp_path, "--conformance-backend", f"{HERE}:HangsOnAnExample", "--conformance-dtype=float64", "--conformance-max-examples=3", *args
    )
    assert run.returncode == TESTS_FAILED, run.explain()
    assert f"{HUNG_CELL}: Timeout (>{limit:.1f}s)" in run.output and "while the framework computed an example" in run.output, run.explain()
    assert run.report is not None
    (cell,) = run.report.cells
    assert cell.status == "failed" and any(f"Timeout (>{limit:.1f}s)" in p for p in cell.problems), cell
    seconds = item_seconds(run, f"test_gradients[{HUNG_CELL}]")
    assert seconds > 0.9 * limit, f"the test took {seconds:.2f} s: it did not wait for the limit of {limit:g} s"
    assert seconds < 1.5 * limit, f"the test took {seconds:.1f} s with a limit of {limit:g} s: the hung call was retried"
