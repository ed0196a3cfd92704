"""A cell's ledger: its one result, what each of its tests came to, and the status they add up to.

The status policy of the suite, in one place and free of pytest, so that the plug-in
(:mod:`~backprop_conformance.conformance.session`) and the Python API (:mod:`~backprop_conformance.conformance.api`)
give a cell the same status for the same outcomes, and so that the policy is tested in-process. The statuses are
those of :data:`~backprop_conformance.conformance.report.STATUSES`; the rules, in the order :meth:`CellLedger.settle`
applies them, first match wins:

* ``incomplete``: the property test crashed (its worker died), or the run was interrupted before the property
  test reported and nothing had failed yet;
* ``known defect``: the property test failed where a known-defect entry says it must (``xfailed``),
  whatever else of the cell failed;
* ``failed``: the property test failed, errored (in setup or teardown) or XPASSed a strict known-defect entry,
  the contract failed, a fidelity test failed, crashed or XPASSed, or an example failed or raised (a fidelity
  test's error in setup or teardown is only a problem of the cell);
* ``passed``: the property test passed and ran examples;
* ``not run``: anything else (deselected, skipped, or a property test that judged no example).

A green run must mean "every selected cell was tested and passed": whatever is not positively a pass is
something else, named.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backprop_conformance.conformance.cells import Cell
from backprop_conformance.conformance.report import CellResult

CONTRACT_TEST = "test_contract"
PROPERTY_TEST = "test_gradients"

OUTCOMES = ("passed", "failed", "error", "xfailed", "xpassed", "skipped", "crashed")
"""What one test came to (:func:`classify`)."""


def classify(when: str, *, failed: bool, skipped: bool, xfail: bool, longrepr: str, carried: bool) -> str:
    """One of :data:`OUTCOMES` for a test report's phase ``when`` (``setup``, ``call``, ``teardown``, or ``???``).

    ``crashed``: a worker died while running it -- xdist reports that as phase ``???``, or as a failure that says
    "crashed" on a report that carries none of the suite's data (``carried`` false). ``xfail``: the report marks an
    expected failure (pytest's ``wasxfail``); a strict one that passed is a failure whose text says ``XPASS(strict)``.
    """
    if when == "???" or (failed and not carried and "crashed" in longrepr):
        return "crashed"
    if skipped:
        return "xfailed" if xfail else "skipped"
    if failed:
        if when != "call":
            return "error"
        return "xpassed" if "XPASS(strict)" in longrepr else "failed"
    return "passed"


@dataclass
class CellLedger:
    """One cell: its result, which examples are added to as they are judged, and its tests' outcomes until it settles."""

    result: CellResult
    contract: str = "not run"
    gradients: str | None = None
    contract_failure: str = "the adapter contract failed (test_contract)"
    fidelity_failures: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def for_cell(cls, cell: Cell) -> CellLedger:
        """An empty ledger for ``cell``: no test has reported."""
        return cls(CellResult(cell.id, cell.backend, cell.path, cell.dtype, cell.device, level=cell.level))

    def merge(self, carried: CellResult) -> None:
        """Add a result recorded elsewhere (an xdist worker's, carried on its test report) to the cell's own."""
        self.result.merge(carried)

    def record(self, test: str, item: str, when: str, outcome: str, *, xfail_reason: str = "", longrepr: str = "") -> None:
        """What test item ``item`` (of test function ``test``) came to in phase ``when``: ``outcome`` from :func:`classify`.

        A phase other than the call counts only when it failed: a passing setup says nothing about the cell.
        """
        if when not in ("call", "???") and outcome not in ("error", "crashed"):
            return
        if test == CONTRACT_TEST:
            self.contract = "passed" if outcome in ("passed", "xfailed") else "failed"
            if outcome == "xfailed":
                self.problems.append(f"contract: known upstream defect ({xfail_reason})")
        elif test == PROPERTY_TEST:
            self.gradients = outcome
            if outcome == "xfailed":  # the reason names the entry's upstream issue: reports and the page link it
                self.problems.append(f"{item}: {xfail_reason}")
        elif outcome in ("failed", "xpassed", "crashed"):
            self.fidelity_failures.append(item)
        if outcome == "xpassed":
            self.problems.append(f"{item} passed although a known-defect entry says it fails: remove or narrow the entry")
        elif outcome == "crashed":
            self.problems.append(f"{item}: {longrepr}")
        elif outcome == "error":
            last = (longrepr.splitlines() or [""])[-1]
            self.problems.append(f"{item}: error in {when}: {last[:300]}")

    def contract_failed(self, problem: str) -> None:
        """The contract failed for the reason ``problem`` gives (the Python API, which checks it outside pytest)."""
        self.contract = "failed"
        self.contract_failure = problem

    def settle(self, interrupted: bool = False) -> CellResult:
        """The cell's contract, problems and status from its tests' outcomes (the rules in this module's docstring).

        ``interrupted``: the run stopped early (Ctrl-C, ``-x``, ``--maxfail``), so a property test that never
        reported may simply not have had its turn.
        """
        result = self.result
        result.contract = self.contract
        problems = [self.contract_failure] if self.contract == "failed" else []
        problems += self.problems + [f"fidelity: {name} failed" for name in self.fidelity_failures]
        result.problems += [p for p in problems if p not in result.problems]
        gradients = self.gradients
        failed = gradients in ("failed", "error", "xpassed") or self.contract == "failed" or bool(self.fidelity_failures)
        failed = failed or bool(result.failures or result.exceptions)
        if gradients == "crashed" or (gradients is None and interrupted and not failed):
            result.status = "incomplete"
        elif failed and gradients != "xfailed":
            result.status = "failed"
        elif gradients == "xfailed":
            result.status = "known defect"
        elif gradients == "passed" and result.examples:
            result.status = "passed"
        else:
            result.status = "not run"
        return result
