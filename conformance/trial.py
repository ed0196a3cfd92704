"""One cell on trial: run each example through the adapter, judge it, count it, keep its reproducers.

This is the loop body of the conformance property, free of pytest so that the suite's
``test_gradients`` and the Python API's :func:`~backprop_conformance.conformance.api.check_adapter`
run exactly the same code. For every example hypothesis draws, :meth:`CellTrial.run` times the
framework's call, checks the output against the adapter contract, judges it against the reference
within the error bound, and adds it to the cell's :class:`~backprop_conformance.conformance.report.CellResult`.

What counts as an example. Hypothesis calls the test again after the first failure to shrink it, and
once more to replay the minimal example. Those calls test the same bug again, so they are counted
apart (``shrink_calls``): "examples" is the number of examples *tried*, and a run with
``--conformance-max-examples 10`` reports at most 10 of them. Two failing examples are kept: the last
(hypothesis replays the minimal one last, so it is the shrunk example) and the worst (the largest
error/bound ratio), and both become case files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hypothesis import Phase, given, reject, settings, target
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.database import ExampleDatabase

from backprop_conformance.conformance import cases, provenance
from backprop_conformance.conformance.cells import Backend, Cell
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.conformance.report import CellResult
from backprop_conformance.conformance.timing import timed
from backprop_conformance.conformance.verdict import Verdict, judge
from backprop_conformance.reference.error_bound import VacuousBound

RATIO_CAP = 1e6
"""hypothesis.target needs a finite score; ratios beyond this are failures anyway."""

STEER_FROM = 10_000
"""The examples per cell from which the property steers toward the largest error/bound ratio with ``hypothesis.target``.

Hypothesis' own documentation says targeting becomes noticeable from about 1,000 examples and "immediately obvious
by around ten thousand test cases per label". Steering is not free: with an example database, hypothesis keeps a
Pareto front of every targeted example and compares each new one against it, and it spends an optimisation pass
after generation. At the sizes of the suite's profiles (up to 2,000 examples, ``thorough``) the time steering
costs buys more unsteered examples than steering is worth, so those profiles do not steer, and a run of 10,000
examples per cell or more (``--conformance-max-examples``) does. Hypothesis' ``Phase.target`` left out of a profile's ``phases`` turns
steering off at any size."""


def steer(ratio: float, running: settings) -> None:
    """Tell hypothesis this example's worst error/bound ratio when the test runs under settings that steer (:func:`steers`)."""
    if steers(running):
        target(min(ratio, RATIO_CAP), label="error/bound")


def steers(running: settings) -> bool:
    """Whether a property test run under ``running`` steers with ``hypothesis.target`` (:data:`STEER_FROM`)."""
    return running.max_examples >= STEER_FROM and Phase.target in running.phases


@dataclass(frozen=True)
class FailingExample:
    """An example that failed: by its verdict, or by an exception the adapter raised on it."""

    problem: Problem
    ratio: float
    message: str


class AdapterRaised(Exception):
    """The adapter raised while computing an example; the message names the cell, the exception and the case."""


class CellTrial:
    """The property test of one cell in progress: its examples, their verdicts, and the failing examples to keep."""

    def __init__(self, backend: Backend, cell: Cell, result: CellResult) -> None:
        """``result`` is the record the trial adds its examples to: the cell's own, or, in an xdist worker, one that
        the worker sends to the controller on the test's report."""
        assert backend.adapter is not None and backend.capabilities is not None
        self.backend = backend
        self.adapter = backend.adapter
        self.cell = cell
        self.precision = backend.capabilities.precision(cell.dtype, cell.path)
        self.result = result
        self.shrunk: FailingExample | None = None
        self.worst: FailingExample | None = None
        self.with_cost = True
        """Whether the cost is judged beside the gradients: false only for a plain function that returns none
        (the Python API's ``check_function``); every adapter returns one."""

    @property
    def failed(self) -> bool:
        return self.shrunk is not None

    def run(self, problem: Problem) -> Verdict | None:
        """Compute, check and judge one example, and record it; an adapter exception is recorded and re-raised as :class:`AdapterRaised`.

        None for an example no bound can judge (:meth:`_unjudgeable`): neither a pass nor a failure.
        """
        try:
            with timed("framework"):
                output = self.adapter.compute(
                    problem.network, problem.batch, dtype=self.cell.dtype, path=self.cell.path, device=self.cell.device
                )
        except Exception as exc:  # the adapter is the code on trial: whatever it raises is a result, recorded and reported
            message = f"{self.cell.id}: the adapter raised {type(exc).__name__}: {exc}\n  case: {problem.describe()}"
            if not self.failed:
                self.result.exceptions += 1
                self.result.problems.append(f"adapter raised {type(exc).__name__}: {str(exc)[:300]}")
            else:
                self.result.shrink_calls += 1
            self._keep(FailingExample(problem, float("inf"), message))
            raise AdapterRaised(message) from exc
        with timed("reference"):
            problem.trace  # noqa: B018 (computed here so that its time is the reference's, not the bound's)
        with timed("bound"):
            try:
                partial_sums = self.backend.capabilities.partial_sums(self.cell.path, problem.batch)  # type: ignore[union-attr]
                verdict = judge(self.cell.id, problem, output, self.precision, with_cost=self.with_cost, partial_sums=partial_sums)
            except VacuousBound as exc:
                self._unjudgeable(exc)
                return None

        if self.failed:
            self.result.shrink_calls += 1
        else:
            self.result.add_example(verdict.worst_ratio, problem.network.depth, problem.max_abs_z, not verdict.passed)
        if not verdict.passed:
            worst = verdict.worst
            if worst is not None and (self.result.worst_element is None or worst.ratio > self.result.worst_element["ratio"]):
                self.result.worst_element = worst.to_json()
            self._keep(FailingExample(problem, verdict.worst_ratio, verdict.message()))
        return verdict

    def _unjudgeable(self, exc: VacuousBound) -> None:
        """Say once, in the cell's problems, that some examples could not be judged (hypothesis then draws another).

        A bfloat16 sum of 256 terms accumulated in bfloat16 (JAX's bias gradient) has no finite bound: such
        an example says nothing about the framework, in either direction, so it is neither a pass nor a failure
        (hypothesis draws another in its place, :func:`check_cell`).
        """
        note = f"examples beyond what the declared accumulation can bound were skipped: {exc}"
        if note not in self.result.problems:
            self.result.problems.append(note)

    def record_hang(self, problem: Problem, message: str) -> None:
        """Keep ``problem`` as the failing example of a framework call that never returned (a timeout)."""
        self.result.problems.append(message)
        self._keep(FailingExample(problem, float("inf"), f"{message}\n  case: {problem.describe()}"))

    def _keep(self, example: FailingExample) -> None:
        self.shrunk = example
        if self.worst is None or example.ratio > self.worst.ratio:
            self.worst = example

    def write_cases(self, directory: Path, environment: dict[str, str | None], configuration: Mapping[str, str]) -> list[Path]:
        """Write the shrunk and the worst failing example as case files (one file when they are the same), with the
        environment and dispatch configuration they failed in."""
        caps = self.backend.capabilities
        assert caps is not None
        versions = provenance.versions(caps.framework, caps.version)
        written = []
        for kind, example in (("shrunk", self.shrunk), ("worst", self.worst)):
            if example is None or (kind == "worst" and example is self.shrunk):
                continue
            case = cases.Case(
                example.problem, self.cell, self.backend.spec.requested_as, versions, example.message, environment, kind, configuration
            )
            written.append(cases.write(case, directory))
        self.result.case_files += [str(p) for p in written if str(p) not in self.result.case_files]
        return written


MIN_GENERATED_SHARE = 4
"""At least one example in this many of a cell is generated by hypothesis, however long the covering design."""


def split_budget(examples: int, designed: int) -> tuple[int, int]:
    """(generated, covering): how a cell's ``examples`` divide between hypothesis and a covering design of ``designed`` shapes.

    The design takes what is left after hypothesis' share, all of it when there is room (100 examples: 28 generated
    and the 72 shapes of :data:`~backprop_conformance.conformance.coverage.COVERING`), so that a cell runs the number
    of examples its profile says, and ``--conformance-max-examples 10`` still means ten (three generated, then the
    design's first seven shapes).
    """
    generated = max(examples - designed, -(-examples // MIN_GENERATED_SHARE))
    return generated, examples - generated


class KeyedDatabase(ExampleDatabase):
    """Hypothesis' example database, with every key prefixed by a cell's id.

    Every cell's property is the same function; keyed by the function alone, examples saved by one cell would be
    replayed in every other (hypothesis' own pytest plug-in keys a parametrized test by its node id the same way).
    """

    def __init__(self, database: ExampleDatabase, prefix: str) -> None:
        super().__init__()
        self.database = database
        self.prefix = prefix.encode() + b":"

    def save(self, key: bytes, value: bytes) -> None:
        self.database.save(self.prefix + key, value)

    def fetch(self, key: bytes) -> Iterable[bytes]:
        return self.database.fetch(self.prefix + key)

    def delete(self, key: bytes, value: bytes) -> None:
        self.database.delete(self.prefix + key, value)

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        self.database.move(self.prefix + src, self.prefix + dest, value)


COVERING_NOTE = (
    "found by the covering design, after every generated example had passed: this example's shape was chosen for the "
    "kernel classes it reaches (conformance/coverage.py), not drawn, so it was not shrunk"
)


def check_cell(
    key: str,
    run: Callable[[Problem], Verdict | None],
    draw: Callable[[st.DataObject], Problem],
    running: settings,
    designed: Sequence[Problem],
    fail: Callable[[str], None],
    *,
    seed: int | None = None,
) -> None:
    """The conformance property of one cell: hypothesis' generated examples first, then the covering design's.

    Generated first, so that a bug both find is reported shrunk to the smallest failing network; the design then
    reaches, in every run, each class of each role a dimension plays in the kernels (:mod:`~backprop_conformance.conformance.coverage`),
    which drawn shapes reach only by chance. ``run`` computes and judges one example (None: no bound can judge it,
    and hypothesis draws another); ``fail`` raises with a failing verdict's message; ``key`` (the cell's id) keys
    hypothesis' example database. ``running.max_examples`` is the whole cell's budget (:func:`split_budget`); ``seed``
    fixes hypothesis' draws (``--hypothesis-seed`` does it for a whole run).
    """
    generated, covered = split_budget(running.max_examples, len(designed))
    database = None if running.database is None else KeyedDatabase(running.database, key)
    inner = settings(running, max_examples=generated, database=database)

    @inner
    @given(data=st.data())
    def generated_examples(data: st.DataObject) -> None:
        verdict = run(draw(data))
        if verdict is None:
            reject()
        steer(verdict.worst_ratio, inner)
        if not verdict.passed:
            fail(verdict.message())

    (generated_examples if seed is None else hypothesis_seed(seed)(generated_examples))()
    for problem in designed[:covered]:
        verdict = run(problem)
        if verdict is not None and not verdict.passed:
            fail(f"{verdict.message()}\n  {COVERING_NOTE}")
