"""What the suite's test functions call: the contract, a fidelity case and the conformance property of one cell.

The test modules (``test_contract.py``, ``test_fidelity.py``, ``test_gradients.py``) are one line each; the work is
here, where it reaches the run's backends, limits and cells through the ``conformance`` fixture
(:mod:`~backprop_conformance.conformance.plugin`). The property's loop body is
:class:`~backprop_conformance.conformance.trial.CellTrial`, shared with the Python API.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import settings
from hypothesis import strategies as st

from backprop_conformance.adapters.selfcheck import check_contract
from backprop_conformance.conformance import fidelity, timing
from backprop_conformance.conformance.cells import Backend, Cell
from backprop_conformance.conformance.problems import Problem, contract_problem
from backprop_conformance.conformance.report import CellResult
from backprop_conformance.conformance.strategies import Limits, design, problems
from backprop_conformance.conformance.trial import CellTrial, check_cell
from backprop_conformance.conformance.verdict import Verdict

TRIAL_KEY = pytest.StashKey[CellTrial]()


class ExampleTimeout(BaseException):
    """A framework call outlived the per-test limit.

    A ``BaseException`` on purpose: pytest-timeout's own failure is an ordinary test failure to
    hypothesis, which would then try to shrink it -- calling the hung framework again, with no time
    limit left. Hypothesis lets a ``BaseException`` through at once, and pytest reports it as the
    test's failure.
    """


class Checks:
    """The tests' side of the run: ``backend`` finds the backend that tests a cell, ``record`` the result a cell's
    examples are added to, ``limits`` sizes the networks."""

    def __init__(self, backend: Callable[[Cell], Backend], record: Callable[[Cell], CellResult], limits: Limits) -> None:
        self.backend = backend
        self.record = record
        self.limits = limits

    def draw(self, data: st.DataObject, cell: Cell) -> Problem:
        """A network and batch for ``cell``, drawn by hypothesis in its format at the profile's size limits."""
        caps = self.backend(cell).capabilities
        assert caps is not None
        with timing.timed("generation"):
            drawn = problems(
                cell.dtype,
                self.limits,
                pooled=cell.path in caps.shape_compiled_paths,
                split=cell.path in caps.micro_batch_paths,
                scanned=cell.path in caps.layer_scan_paths,
            )
            return data.draw(drawn, label="problem")

    def check_contract(self, cell: Cell) -> None:
        """The adapter contract, once per cell (:mod:`~backprop_conformance.adapters.selfcheck`)."""
        adapter = self.backend(cell).adapter
        assert adapter is not None
        problem = contract_problem(cell.dtype)
        with timing.timed("framework"):
            check_contract(adapter, cell.path, cell.dtype, cell.device, problem.network, problem.batch)

    def check_fidelity(self, test: str, cell: Cell, case: str) -> None:
        """One fidelity case of ``cell``: its gradients against the mpmath oracle within the exactness bound."""
        __tracebackhide__ = True
        backend = self.backend(cell)
        assert backend.adapter is not None and backend.capabilities is not None
        problem = fidelity.problem_of(test, case, cell.dtype)
        with timing.timed("framework"):
            output = backend.adapter.compute(problem.network, problem.batch, dtype=cell.dtype, path=cell.path, device=cell.device)
        verdict = fidelity.judge(test, cell.id, problem, output, backend.capabilities.precision(cell.dtype, cell.path))
        if not verdict.passed:
            raise AssertionError(verdict.message())

    def check_gradients(self, item: pytest.Item, cell: Cell) -> None:
        """The conformance property of ``cell`` (``test_gradients``): hypothesis' generated examples, then the covering design.

        A path that draws its shapes freely runs the design of :attr:`Limits.covering`, one that compiles per shape its
        pool, each shape once (:func:`~backprop_conformance.conformance.trial.check_cell`); together with the generated
        ones, the run's profile's number of examples. Limits without a design (the ``large`` profile, whose point is
        size) run generated examples only.
        """
        __tracebackhide__ = True
        caps = self.backend(cell).capabilities
        assert caps is not None
        pooled = cell.path in caps.shape_compiled_paths
        with timing.timed("generation"):
            shapes = self.limits.pool if pooled and self.limits.covering else self.limits.covering
            designed = design(cell.dtype, shapes, split=cell.path in caps.micro_batch_paths, scanned=cell.path in caps.layer_scan_paths)

        def fail(message: str) -> None:
            raise AssertionError(message)  # the message alone: no introspection of the Verdict object

        check_cell(
            cell.id,
            lambda problem: self.run_example(item, cell, problem),
            lambda data: self.draw(data, cell),
            settings.default,
            designed,
            fail,
        )

    def run_example(self, item: pytest.Item, cell: Cell, problem: Problem) -> Verdict | None:
        """Run, judge and record one example of ``cell`` in ``item``'s trial; a timeout ends the test at once."""
        trial = item.stash.get(TRIAL_KEY, None)
        if trial is None:
            trial = item.stash[TRIAL_KEY] = CellTrial(self.backend(cell), cell, self.record(cell))
        try:
            return trial.run(problem)
        except pytest.fail.Exception as exc:
            if "Timeout" not in str(exc):
                raise
            message = f"{cell.id}: {exc} while the framework computed an example; see the stack dump above"
            trial.record_hang(problem, message)
            raise ExampleTimeout(f"{message}\n  case: {problem.describe()}") from None
