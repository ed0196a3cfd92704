"""Running the suite as a subprocess and reading what it found from its JSON report, not its terminal.

The project's own tests and benchmarks drive the suite exactly as a user does -- a fresh interpreter,
``python -m pytest conformance`` from a checkout (or the installed ``backprop-conformance``), options
on the command line -- and then need its results as data. Scraping the terminal matrix with regular
expressions ties every such test to the matrix's layout; the JSON report
(:mod:`~backprop_conformance.conformance.report`) is the format made for that. This module is the one
way to do it: :func:`run_suite` runs, :class:`SuiteRun` holds the typed report, each test item's
outcome and failure text (from pytest's JUnit XML), the exit status and the output.

Every run gets a clean environment (:func:`clean_environment`): no ``CI`` or ``PYTEST_ADDOPTS`` from
the caller, and a fresh hypothesis database, so that each run has to find its failures anew.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from backprop_conformance.conformance.provenance import PACKAGE_ROOT
from backprop_conformance.conformance.report import Report, ReportError, read

HYPOTHESIS_CI_VARIABLES = ("CI", "GITHUB_ACTIONS", "TF_BUILD", "BUILDKITE", "CIRCLECI", "CIRRUS_CI", "CODEBUILD_BUILD_ID", "GITLAB_CI")
"""Variables by which Hypothesis detects CI and loads its ``ci`` profile; removed unless a run asks for them."""


def clean_environment(hypothesis_dir: Path, **extra: str) -> dict[str, str]:
    """A user's environment: no CI variables (so Hypothesis' default profile), no inherited pytest options, a fresh example database."""
    removed = (*HYPOTHESIS_CI_VARIABLES, "PYTEST_ADDOPTS", "HYPOTHESIS_PROFILE", "BACKPROP_CONFORMANCE_BACKENDS")
    env = {k: v for k, v in os.environ.items() if k not in removed}
    env["HYPOTHESIS_STORAGE_DIRECTORY"] = str(hypothesis_dir)
    env.update(extra)
    return env


@dataclass(frozen=True)
class Outcome:
    """One test item of a run: its name (``test_gradients[torch-eager-float32]``), its cell id, its outcome and failure text."""

    test: str
    cell: str
    outcome: str
    message: str

    @property
    def failed(self) -> bool:
        return self.outcome in ("failed", "error")


@dataclass(frozen=True)
class SuiteRun:
    """One run of the suite: its typed report (None if it wrote none), every item's outcome, exit status, output and time."""

    returncode: int
    output: str
    report: Report | None
    outcomes: tuple[Outcome, ...]
    workdir: Path
    seconds: float

    @property
    def case_dir(self) -> Path:
        return self.workdir / "cases"

    def explain(self) -> str:
        """For assertion messages: the exit status and the tail of the output."""
        return f"exit status {self.returncode}; output:\n{self.output[-6000:]}"

    def items(self, cell_ids: Sequence[str]) -> list[Outcome]:
        """The items of the given cells (fidelity items included: their ids start with the cell id)."""
        return [o for o in self.outcomes if any(o.cell == c or o.cell.startswith(f"{c}-") for c in cell_ids)]


def run_suite(
    args: Sequence[str],
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    installed: bool = False,
    cwd: Path | None = None,
) -> SuiteRun:
    """Run the suite once with ``args``; its report, JUnit XML, case files and hypothesis database go in ``workdir``.

    By default it runs as from a checkout, ``python -m pytest conformance`` in the repository root; with
    ``installed`` it runs the console script's entry (``backprop-conformance``) in ``cwd`` (default
    ``workdir``), as an installed user would.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    report, junit = workdir / "report.json", workdir / "junit.xml"
    for stale in (report, junit):
        stale.unlink(missing_ok=True)
    ours = [
        "-p",
        "no:cacheprovider",
        f"--conformance-report={report}",
        f"--junitxml={junit}",
        f"--conformance-case-dir={workdir / 'cases'}",
    ]
    if installed:
        command = [sys.executable, "-m", "backprop_conformance.conformance.cli", *ours, *args]
        where = cwd or workdir
    else:
        command = [sys.executable, "-m", "pytest", "conformance", *ours, *args]
        where = cwd or PACKAGE_ROOT
    environment = dict(env) if env is not None else clean_environment(workdir / "hypothesis")
    start = time.perf_counter()
    done = subprocess.run(command, cwd=where, env=environment, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    try:
        parsed: Report | None = read(report) if report.exists() else None
    except ReportError:
        parsed = None
    outcomes = read_junit(junit) if junit.exists() else ()
    return SuiteRun(done.returncode, done.stdout + done.stderr, parsed, outcomes, workdir, seconds)


def read_junit(path: Path) -> tuple[Outcome, ...]:
    """Every test case of a JUnit XML file with its outcome and full failure text."""
    outcomes = []
    for case in ET.parse(path).getroot().iter("testcase"):
        test = case.get("name", "")
        cell = test[test.index("[") + 1 : -1] if test.endswith("]") and "[" in test else ""
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = "\n".join(part for part in (element.get("message", ""), element.text or "") if part)
                break
        outcomes.append(Outcome(test, cell, outcome, message))
    return tuple(outcomes)
