"""One run of the suite: its state, and the pytest hooks that act on it.

:class:`ConformanceSession` is the whole run in one object, as pytest-benchmark's ``BenchmarkSession``
is: the options, the backends and their cells, the known defects, the network limits, every cell's
result, the time spent, the baseline and the outputs. :mod:`~backprop_conformance.conformance.plugin`
creates it at configure time and registers it as a pytest plug-in; its ``pytest_*`` methods are the
hooks, and the test modules reach it through the ``conformance`` fixture.

How one example flows (``test_gradients[torch-eager-float32]``): hypothesis draws a problem from
:meth:`ConformanceSession.problems`; :meth:`ConformanceSession.run_example` hands it to the item's
:class:`~backprop_conformance.conformance.trial.CellTrial`, which runs the adapter (contract-checked by
:meth:`~backprop_conformance.adapters.base.Adapter.compute`), judges it
(:func:`~backprop_conformance.conformance.verdict.judge`) and records it in the cell's
:class:`~backprop_conformance.conformance.report.CellResult`. When the test ends, the result travels on
the test's report (``report.conformance``, the pytest/xdist idiom, so a worker's results reach the
controller the same way a serial run's do), together with the case files of a failure. The controller
merges every report into its results (:meth:`pytest_runtest_logreport`), gives each cell its status at
the end, builds the typed report once, compares it with the baseline and writes it
(:meth:`pytest_sessionfinish`).

A green run must mean "every selected cell was tested and passed": a cell's status is ``passed`` only
when its property test ran examples and every test of it passed; a failed contract, an exception, a
timeout, a fidelity failure or a crashed worker shows in the matrix, the JSON report and the Markdown
summary alike.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from time import perf_counter
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from backprop_conformance.adapters import dispatch
from backprop_conformance.adapters.at_level import AtLevel
from backprop_conformance.adapters.base import AdapterError, Capabilities
from backprop_conformance.adapters.selfcheck import check_contract
from backprop_conformance.conformance import baseline as baselines
from backprop_conformance.conformance import cases, fidelity, known_defects, options, outputs, provenance, report, timing
from backprop_conformance.conformance.cells import EVERY_LEVEL, NATIVE, Backend, Cell, SelectionError, load_backends, select_cells
from backprop_conformance.conformance.github_annotations import on_github_actions, workflow_commands
from backprop_conformance.conformance.markdown_summary import markdown
from backprop_conformance.conformance.problems import Problem, contract_problem
from backprop_conformance.conformance.report import BackendEntry, CellResult, Report
from backprop_conformance.conformance.strategies import DEFAULT_LIMITS, LARGE_LIMITS, THOROUGH_LIMITS, Limits, covering, problems
from backprop_conformance.conformance.trial import STEER_FROM, CellTrial, check_cell, steers
from backprop_conformance.conformance.verdict import Verdict, judge_exactness

LIMITS_BY_PROFILE = {"large": LARGE_LIMITS, "thorough": THOROUGH_LIMITS}
"""Profiles that change the size of the networks, not only the number of examples (default: DEFAULT_LIMITS)."""

CONFORMANCE_TESTS = known_defects.CONFORMANCE_TESTS
REPLAY = "backprop-conformance replay"
"""How a failure tells the user to replay its case: the console script, which (unlike ``python -m``) does not put
the working directory on the import path, so a module left beside a case file cannot be imported in its place.
An adapter named as ``module:Attribute`` may need the working directory on the path, so its case is replayed
with :data:`REPLAY_FROM_HERE`."""
REPLAY_FROM_HERE = "python -m backprop_conformance replay"
TRIAL_KEY = pytest.StashKey[CellTrial]()
TIME_KEY = pytest.StashKey[tuple[float, dict[str, float]]]()


class ExampleTimeout(BaseException):
    """A framework call outlived the per-test limit.

    A ``BaseException`` on purpose: pytest-timeout's own failure is an ordinary test failure to
    hypothesis, which would then try to shrink it -- calling the hung framework again, with no time
    limit left. Hypothesis lets a ``BaseException`` through at once, and pytest reports it as the
    test's failure.
    """


@dataclass
class _Outcome:
    """What the tests of one cell came to, as the controller sees their reports."""

    contract: str = "not run"
    gradients: str | None = None
    fidelity_failures: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def item_key(nodeid: str) -> str:
    """``test_gradients[torch-eager-float32]`` from any node id of the suite (clone or installed, any directory)."""
    return nodeid.rsplit("::", 1)[-1]


class ConformanceSession:
    """The run: what was asked, what is tested, what was found, and where it goes. Registered as a pytest plug-in."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.controller = not hasattr(config, "workerinput")
        self.started = perf_counter()
        self.options = options.RunOptions()
        self.profile = "default"
        self.backends: list[Backend] = []
        self.cells: list[Cell] = []
        self.empty: dict[str, str] = {}
        self.defects: list[known_defects.Defect] = []
        self.notes: list[str] = []
        self.limits: Limits = DEFAULT_LIMITS
        self.results: dict[str, CellResult] = {}
        self.outcomes: dict[str, _Outcome] = {}
        self.items: dict[str, tuple[str, str]] = {}
        self.timing: dict[str, float] = {}
        self.baseline: Report | None = None
        self.report: Report | None = None
        self.finished: list[str] = []
        self.at_level: dict[tuple[str, str], Backend] = {}
        self.configurations: dict[tuple[str, str, str | None], dict[str, str]] = {}

    # Start-up: everything that can be wrong with the options is found here, before the first test.

    def configure(self) -> None:
        """Read the options, load the backends, build the cell table, check known defects and outputs.

        Raises :class:`pytest.UsageError` (exit status 4) for anything the user must fix first.
        """
        try:
            self.options = options.from_config(self.config)
            with timing.timed("framework"):  # importing the frameworks is the frameworks' time, not the harness's
                self.backends = load_backends(self.options.backends)
            opts = self.options
            self.cells, self.empty = select_cells(self.backends, opts.paths, opts.dtypes, opts.devices, opts.all_paths, opts.dispatch)
            self.defects = known_defects.load_all(opts.known_defects)
            loaded = {b.name: b.capabilities for b in self.backends if b.capabilities is not None}
            tests = {**dict.fromkeys(CONFORMANCE_TESTS, ()), **fidelity.FIDELITY_TESTS}
            self.notes += known_defects.validate(self.defects, tests, loaded)
        except (AdapterError, SelectionError, options.OptionError, known_defects.KnownDefectsError) as exc:
            raise pytest.UsageError(str(exc)) from None
        missing = [b for b in self.backends if b.unavailable]
        if self.options.require and (missing or self.empty):
            reasons = [f"{b.spec.name}: {b.unavailable}" for b in missing] + [f"{name}: {why}" for name, why in self.empty.items()]
            raise pytest.UsageError(f"{options.PREFIX}require: " + "; ".join(reasons))
        self.notes += [f"{name}: {why}" for name, why in self.empty.items()]
        if self.options.cache_dir is not None:
            self.notes += [
                note
                for b in self.backends
                if b.adapter is not None
                for note in [b.adapter.use_cache(self.options.cache_dir / b.name)]
                if note
            ]
        self.profile = settings.get_current_profile_name()
        self._load_profile()
        self.limits = LIMITS_BY_PROFILE.get(self.profile, DEFAULT_LIMITS)
        self.results = {c.id: CellResult(c.id, c.backend, c.path, c.dtype, c.device, level=c.level) for c in self.cells}
        self.outcomes = {c.id: _Outcome() for c in self.cells}
        # Every test item the table makes, by name: known here, not at collection, because under xdist the
        # controller, which merges the results, never collects.
        for c in self.cells:
            self.items.update({f"{test}[{c.id}]": (c.id, test) for test in CONFORMANCE_TESTS})
            self.items.update(
                {f"{test}[{c.id}-{case}]": (c.id, test) for test, cases_ in fidelity.FIDELITY_TESTS.items() for case in cases_}
            )
        self.timing = timing.take()
        if self.controller:
            self._check_outputs()

    def _load_profile(self) -> None:
        """The profile in force, with what every conformance test needs on top: no deadline (a framework's first
        call compiles), no too-slow health check, one bug per cell (so that "examples" counts examples tried:
        :mod:`~backprop_conformance.conformance.trial`), and ``--conformance-max-examples`` if given."""
        extra: dict[str, Any] = {
            "deadline": None,
            "report_multiple_bugs": False,
            "suppress_health_check": [*settings.default.suppress_health_check, HealthCheck.too_slow],
        }
        if self.options.max_examples is not None:
            extra["max_examples"] = self.options.max_examples
        settings.register_profile("backprop-conformance-run", parent=settings.default, **extra)
        settings.load_profile("backprop-conformance-run")

    def _check_outputs(self) -> None:
        """Every output location, and every pair of them, before the first test: a bad one must not cost a run."""
        opts = self.options
        files = {f"{options.PREFIX}report": opts.report, f"{options.PREFIX}markdown": opts.markdown}
        junit = self.config.getoption("xmlpath", None)
        if junit:
            files["--junitxml"] = Path(self.config.invocation_params.dir) / junit
        read_only: dict[str, Path] = {}
        if opts.baseline is not None:  # written only with --conformance-update-baseline; else it may be read-only
            (files if opts.update_baseline else read_only)[f"{options.PREFIX}baseline"] = opts.baseline
        chosen = {option: path for option, path in files.items() if path is not None}
        longest = max((cases.file_name_length(c.id) for c in self.cells), default=0)
        try:
            outputs.check_locations(chosen, {f"{options.PREFIX}case-dir": opts.case_dir}, longest, read_only)
        except outputs.OutputError as exc:
            raise pytest.UsageError(str(exc)) from None
        if opts.baseline is None or (opts.update_baseline and not opts.baseline.exists()):
            return
        try:
            self.baseline = report.read(opts.baseline)
        except report.ReportError as exc:
            if opts.update_baseline:
                raise pytest.UsageError(
                    f"{options.PREFIX}update-baseline: refusing to overwrite {opts.baseline}, which is not a usable report: {exc}; "
                    "delete it or name another file to write a new baseline"
                ) from None
            raise pytest.UsageError(
                f"{options.PREFIX}baseline: {exc}; to create a baseline, run with {options.PREFIX}baseline {opts.baseline} "
                f"{options.PREFIX}update-baseline (on a passing run)"
            ) from None
        if not opts.update_baseline and not {c.id for c in self.baseline.cells if c.examples} & {c.id for c in self.cells}:
            raise pytest.UsageError(
                f"{options.PREFIX}baseline {opts.baseline}: shares no cell with this run's selection "
                f"({', '.join(c.id for c in self.cells) or 'none'}); nothing could be compared"
            )

    def backend(self, cell: Cell) -> Backend:
        """The loaded backend that tests ``cell``: the adapter itself, or, for a cell at a forced dispatch level, the
        adapter hosted in that level's worker process (:class:`~backprop_conformance.adapters.at_level.AtLevel`), one per
        (backend, level), created on first use without starting anything."""
        native = next(b for b in self.backends if b.capabilities is not None and b.name == cell.backend)
        if cell.level is None:
            return native
        key = (cell.backend, cell.level)
        if key not in self.at_level:
            assert native.adapter is not None and native.capabilities is not None
            level = next(lv for lv in native.capabilities.levels_of(cell.path) if lv.name == cell.level)
            cache = None if self.options.cache_dir is None else self.options.cache_dir / native.name
            self.at_level[key] = Backend(native.spec, AtLevel(native.adapter, native.spec.target, level, cache))
        return self.at_level[key]

    def configuration(self, cell: Cell) -> dict[str, str]:
        """The dispatch configuration ``cell`` runs with: the machine's, and what its framework reports for its path and
        level (:meth:`~backprop_conformance.adapters.base.Adapter.dispatch`), asked once per (backend, path, level).

        Asked of the framework as the cell's first test starts, in the process (or level worker) that computes it: a
        framework decides its kernels when it starts, and only it can say what it decided.
        """
        key = (cell.backend, cell.path, cell.level)
        if key not in self.configurations:
            with timing.timed("framework"):
                self.configurations[key] = dispatch.configuration(self.backend(cell).adapter, cell.path)
        return self.configurations[key]

    # Collection: one test per cell (and per fidelity case), known defects as strict xfails.

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        current = settings.default
        overridden = f" ({options.PREFIX}max-examples)" if self.options.max_examples is not None else ""
        lines = [
            f"backprop-conformance {provenance.suite_version()}: hypothesis profile {self.profile}, "
            f"max_examples={current.max_examples}{overridden}, "
            + (
                "steering toward the worst ratio with target()" if steers(current) else f"no target() steering (from {STEER_FROM} examples)"
            ),
            "  dispatch: " + dispatch.describe(dispatch.machine()),
        ]
        for backend in self.backends:
            caps = backend.capabilities
            if caps is None:
                lines.append(f"  {backend.spec.name}: {backend.unavailable}")
                continue
            opt_in = [p for p in caps.paths if p not in caps.default_paths]
            lines.append(
                f"  {caps.name}: {caps.framework} {caps.version}; devices {', '.join(caps.devices)}; paths {', '.join(caps.default_paths)}"
                + (f" (opt-in: {', '.join(opt_in)})" if opt_in else "")
                + f"; dtypes {', '.join(caps.dtypes)}; accumulation {caps.describe_accumulation()}"
                + "".join(f"; {path} {count} ranks" for path, count in caps.ranks.items())
                + _describe_levels(caps, self.options.dispatch)
            )
        lines += [f"  note: {note}" for note in self.notes]
        return lines

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "cell" not in metafunc.fixturenames:
            return
        name = metafunc.definition.originalname
        arity = 2 if name in fidelity.FIDELITY_TESTS else 1
        # A backend that cannot run here stays in the run, as one skipped test with the reason.
        skipped = [
            pytest.param(*[None] * arity, id=b.spec.name, marks=pytest.mark.skip(reason=b.unavailable))
            for b in self.backends
            if b.unavailable
        ]
        if name in fidelity.FIDELITY_TESTS:
            params = [
                pytest.param(cell, case, id=f"{cell.id}-{case}", marks=self._known_defect(name, cell, case))
                for cell in self.cells
                for case in fidelity.FIDELITY_TESTS[name]
            ]
            metafunc.parametrize(("cell", "fidelity_case"), params + skipped)
        elif name in CONFORMANCE_TESTS:
            params = [pytest.param(cell, id=cell.id, marks=self._known_defect(name, cell, None)) for cell in self.cells]
            metafunc.parametrize("cell", params + skipped)
        else:
            raise pytest.UsageError(
                f"{name} takes a cell but is neither a conformance test nor listed in conformance.fidelity.FIDELITY_TESTS"
            )

    def _known_defect(
        self, test: str, cell: Cell, case: str | None, configuration: dict[str, str] | None = None
    ) -> list[pytest.MarkDecorator]:
        """The strict xfail of the first known-defect entry covering the test; entries limited to dispatch configurations
        are considered once ``configuration`` is known (:meth:`pytest_runtest_setup`)."""
        caps = self.backend(cell).capabilities
        assert caps is not None
        defect = known_defects.find(self.defects, test, cell.backend, caps.version, cell.path, cell.dtype, case, configuration)
        return [pytest.mark.xfail(strict=True, reason=defect.reason)] if defect else []

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """Before each test of the suite: its cell's dispatch configuration, and the known defects that depend on it.

        First among the setup hooks, so that an xfail added here is the one pytest's own xfail handling evaluates.
        """
        known = self.items.get(item_key(item.nodeid))
        callspec = getattr(item, "callspec", None)
        if known is None or callspec is None or not isinstance(callspec.params.get("cell"), Cell):
            return
        cell: Cell = callspec.params["cell"]
        configuration = self.configuration(cell)
        if item.get_closest_marker("xfail") is None:
            for mark in self._known_defect(known[1], cell, callspec.params.get("fidelity_case"), configuration):
                item.add_marker(mark)

    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        self._by_backend_compiled_last(items)
        self._add_timeouts(config, items)

    def _by_backend_compiled_last(self, items: list[pytest.Item]) -> None:
        """The tests grouped by backend, and the tests of cells whose path compiles per shape after all others.

        Both orders give the work adapters start ahead of need (:meth:`pytest_collection_finish`,
        :meth:`~backprop_conformance.adapters.base.Adapter.prepare`) time to finish on the second core while the
        first runs other backends' tests: JAX compiles its shapes in another process, and Keras imports its
        backends in its worker processes (5-7 s each), so their first tests find the work done, or nearly.
        Within a group the order is pytest's: contract, fidelity, then the property, cell by cell.
        """
        cells = {c.id: c for c in self.cells}
        backends = {b.name: position for position, b in enumerate(self.backends)}

        def key(item: pytest.Item) -> tuple[bool, int]:
            known = self.items.get(item_key(item.nodeid))
            if known is None:
                return (False, -1)
            cell = cells[known[0]]
            caps = self.backend(cell).capabilities
            return (caps is not None and cell.path in caps.shape_compiled_paths, backends[cell.backend])

        items[:] = sorted(items, key=key)

    def _add_timeouts(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """The per-test time limit: pytest-timeout's own settings when the user gave any, else ours."""
        if not self.options.timeout or not config.pluginmanager.hasplugin("timeout"):
            return
        import pytest_timeout

        if pytest_timeout.get_env_settings(config).timeout is not None:
            return
        for item in items:
            if item_key(item.nodeid) in self.items and item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(self.options.timeout))

    # The tests' side: what the test modules call through the ``conformance`` fixture.

    def draw(self, data: st.DataObject, cell: Cell) -> Problem:
        """A network and batch for ``cell``, drawn by hypothesis in its format at the profile's size limits."""
        caps = self.backend(cell).capabilities
        assert caps is not None
        with timing.timed("generation"):
            return data.draw(problems(cell.dtype, self.limits, pooled=cell.path in caps.shape_compiled_paths), label="problem")

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
        if test == "test_sigmoid_prime_fidelity":
            problem = fidelity.unit_problem(cell.dtype, next(r for r in fidelity.regions(cell.dtype) if r.name == case))
        else:
            problem = fidelity.network_problem(cell.dtype, case)
        with timing.timed("reference"):
            exact = fidelity.exact_gradients(problem)
            if test == "test_sigmoid_prime_fidelity":
                bound = fidelity.unit_tolerance(cell.dtype, exact)
            else:
                bound = fidelity.network_tolerance(problem, backend.capabilities.precision(cell.dtype, cell.path))
        with timing.timed("framework"):
            output = backend.adapter.compute(problem.network, problem.batch, dtype=cell.dtype, path=cell.path, device=cell.device)
        verdict = judge_exactness(cell.id, problem, output, exact, bound)
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
            designed = covering(cell.dtype, shapes)

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
            trial = item.stash[TRIAL_KEY] = CellTrial(self.backend(cell), cell)
        try:
            return trial.run(problem)
        except pytest.fail.Exception as exc:
            if "Timeout" not in str(exc):
                raise
            message = f"{cell.id}: {exc} while the framework computed an example; see the stack dump above"
            trial.record_hang(problem, message)
            raise ExampleTimeout(f"{message}\n  case: {problem.describe()}") from None

    # Per test: time it, carry its results on its report, and merge the reports (on the controller).

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        if item_key(item.nodeid) not in self.items:
            return (yield)
        timing.take()
        start = perf_counter()
        try:
            return (yield)
        finally:
            item.stash[TIME_KEY] = (perf_counter() - start, timing.take())

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        rep = yield
        key = item_key(item.nodeid)
        if key not in self.items or call.when != "call":
            return rep
        wall, seconds = item.stash.get(TIME_KEY, (0.0, {}))
        data: dict[str, Any] = {"wall": wall, "seconds": seconds}
        callspec = getattr(item, "callspec", None)
        cell = callspec.params.get("cell") if callspec is not None else None
        if isinstance(cell, Cell) and (cell.backend, cell.path, cell.level) in self.configurations:
            data["dispatch"] = self.configurations[(cell.backend, cell.path, cell.level)]
        trial = item.stash.get(TRIAL_KEY, None)
        if trial is not None:
            trial.result.add_time({"wall": wall, **seconds})
            if trial.failed and (rep.failed or hasattr(rep, "wasxfail")):
                self._write_reproducers(trial, rep)
            data["result"] = trial.result.to_json()
        rep.conformance = data  # type: ignore[attr-defined]
        return rep

    def _write_reproducers(self, trial: CellTrial, rep: pytest.TestReport) -> None:
        caps = trial.backend.capabilities
        assert caps is not None
        forced = trial.backend.adapter.level.environment if isinstance(trial.backend.adapter, AtLevel) else {}
        environment = {name: forced.get(name, os.environ.get(name)) for name in [*caps.environment, *forced]}
        configuration = self.configurations.get((trial.cell.backend, trial.cell.path, trial.cell.level), dispatch.machine())
        try:
            written = trial.write_cases(self.options.case_dir, environment, configuration)
        except OSError as exc:
            trial.result.problems.append(f"could not write the case files to {self.options.case_dir}: {exc}")
            return
        start = Path(self.config.invocation_params.dir)
        shown = [_relative(p, start) for p in written]
        requested = trial.backend.spec.requested_as
        replay = REPLAY if requested == trial.backend.spec.name else REPLAY_FROM_HERE
        command = f"{replay} {shlex.quote(shown[0])} --backend {shlex.quote(requested)}"
        trial.result.replay = command
        labels = ["shrunk (smallest failing)", "worst (largest error/bound ratio)"] if len(shown) == 2 else ["shrunk and worst"]
        text = "".join(f"case file, {label}: {path}\n" for label, path in zip(labels, shown, strict=True))
        text += f"replay it (any adapter, no hypothesis): {command}\n"
        if environment:
            text += "recorded environment: " + ", ".join(f"{k}={v}" for k, v in environment.items()) + "\n"
        # On the failure's own text too, so that JUnit XML (which carries only that) shows the reproducer.
        if hasattr(rep.longrepr, "addsection"):
            rep.longrepr.addsection("conformance reproducer", text)
        else:
            rep.sections.append(("conformance reproducer", text))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Merge one test's results into the run's (on the controller, serial or under xdist alike)."""
        if not self.controller:
            return
        found = self.items.get(item_key(report.nodeid))
        if found is None:
            return
        cell_id, test = found
        data = getattr(report, "conformance", None)
        outcome = self.outcomes[cell_id]
        if data is not None:
            self._add_time(data)
            if "result" in data:
                self.results[cell_id].merge(CellResult.from_json({**data["result"]}, f"the report of {report.nodeid}"))
            if data.get("dispatch") and not self.results[cell_id].dispatch:
                self.results[cell_id].dispatch = dict(data["dispatch"])
        if report.when not in ("call", "???") and not report.failed:
            return
        result = _outcome_of(report, crashed=data is None)
        if test == "test_contract":
            outcome.contract = "passed" if result in ("passed", "xfailed") else "failed"
            if result == "xfailed":
                outcome.problems.append(f"contract: known upstream defect ({report.wasxfail})")
        elif test == "test_gradients":
            outcome.gradients = result
        elif result in ("failed", "xpassed", "crashed"):
            outcome.fidelity_failures.append(item_key(report.nodeid))
        if result == "xpassed":
            outcome.problems.append(
                f"{item_key(report.nodeid)} passed although a known-defect entry says it fails: remove or narrow the entry"
            )
        elif result == "crashed":
            outcome.problems.append(f"{item_key(report.nodeid)}: {report.longrepr}")
        elif result == "error":
            outcome.problems.append(f"{item_key(report.nodeid)}: error in {report.when}: {str(report.longrepr).splitlines()[-1][:300]}")

    def _add_time(self, data: dict[str, Any]) -> None:
        self.timing["tests"] = self.timing.get("tests", 0.0) + float(data.get("wall", 0.0))
        for category, value in data.get("seconds", {}).items():
            self.timing[category] = self.timing.get(category, 0.0) + float(value)

    # The end: statuses, the typed report built once, compared, written.

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Tell each adapter which cells this process will test, before the first test (:meth:`Adapter.prepare`).

        Only in a run without xdist workers: there, each worker tests some of the cells, and preparing all of them
        in every worker would double the work the hint is meant to hide.
        """
        if not self.controller or self.config.getoption("numprocesses", None):
            return
        selected = {item_key(item.nodeid) for item in session.items}
        for cell in self.cells:
            if f"test_gradients[{cell.id}]" not in selected:
                continue
            backend = self.backend(cell)
            assert backend.adapter is not None and backend.capabilities is not None
            pooled = cell.path in backend.capabilities.shape_compiled_paths
            try:
                backend.adapter.prepare(cell.path, cell.dtype, cell.device, self.limits.pool if pooled else ())
            except Exception as exc:  # a hint that failed costs time, never a verdict: the cell's own requests meet the error
                self.notes.append(f"{cell.id}: the adapter's prepare() raised {type(exc).__name__}: {exc}")

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        for backend in [*self.backends, *self.at_level.values()]:
            if backend.adapter is not None:
                try:
                    backend.adapter.finish()
                except Exception as exc:  # the run's results matter more than a hint's clean-up
                    self.notes.append(f"{backend.name}: the adapter's finish() raised {type(exc).__name__}: {exc}")
        if not self.controller:
            return
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED or session.shouldstop or session.shouldfail
        for cell in self.cells:
            self._settle(self.results[cell.id], self.outcomes[cell.id], bool(interrupted))
        rep = self._build(int(exitstatus))
        opts = self.options
        comparison = baselines.compare(self.baseline, rep) if self.baseline is not None else None
        if comparison is not None:
            rep.baseline = comparison.to_json()
            self.finished.append(f"compared with baseline {opts.baseline}:")
            self.finished += [f"  {line}" for line in comparison.summary_lines()]
            if comparison.regressions and not opts.update_baseline and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
                self.finished.append(f"  the run fails: {len(comparison.regressions)} regression(s) against the baseline")
        rep.exitstatus = int(session.exitstatus)
        self.report = rep
        if opts.report is not None:
            self._save(session, "report", "written to", opts.report, lambda path: report.write(rep, path))
        if opts.markdown is not None:
            self._save(
                session, "Markdown summary", "appended to", opts.markdown, lambda path: outputs.append_text(markdown(rep, comparison), path)
            )
        if opts.update_baseline:
            assert opts.baseline is not None
            if session.exitstatus != pytest.ExitCode.OK:
                self.finished.append(f"baseline {opts.baseline} NOT updated: the run did not pass (exit status {int(session.exitstatus)})")
            elif not any(c.status == "passed" for c in rep.cells) or any(c.status not in ("passed", "known defect") for c in rep.cells):
                self.finished.append(f"baseline {opts.baseline} NOT updated: not every selected cell ran and passed")
            else:
                verb = "updated:" if self.baseline is not None else "created:"
                self._save(session, "baseline", verb, opts.baseline, lambda path: report.write(rep, path))

    def _settle(self, result: CellResult, outcome: _Outcome, interrupted: bool) -> None:
        """The cell's contract and status from its tests' outcomes (see :data:`~backprop_conformance.conformance.report.STATUSES`)."""
        result.contract = outcome.contract
        if outcome.contract == "failed":
            outcome.problems.insert(0, "the adapter contract failed (test_contract)")
        outcome.problems += [f"fidelity: {name} failed" for name in outcome.fidelity_failures]
        result.problems += [p for p in outcome.problems if p not in result.problems]
        gradients = outcome.gradients
        failed = gradients in ("failed", "error", "xpassed") or outcome.contract == "failed" or outcome.fidelity_failures
        failed = failed or result.failures or result.exceptions
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

    def _build(self, exitstatus: int) -> Report:
        loaded, skipped = [], []
        for b in self.backends:
            caps = b.capabilities
            if caps is None:
                skipped.append(BackendEntry(b.spec.name, b.spec.requested_as, reason=b.unavailable))
                continue
            loaded.append(
                BackendEntry(
                    caps.name,
                    b.spec.requested_as,
                    caps.framework,
                    caps.version,
                    caps.devices,
                    caps.paths,
                    caps.dtypes,
                    caps.describe_accumulation(),
                    {name: os.environ.get(name) for name in caps.environment},
                )
            )
        run_timing = {"wall": perf_counter() - self.started, **self.timing}
        return Report(
            cells=[self.results[c.id] for c in sorted(self.cells, key=lambda c: c.id)],
            backends=loaded,
            skipped_backends=skipped,
            exitstatus=exitstatus,
            timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            command={
                "executable": sys.executable,
                "argv": list(sys.argv),
                "pytest_args": list(self.config.invocation_params.args),
                "cwd": str(self.config.invocation_params.dir),
            },
            suite=provenance.suite(),
            environment=provenance.environment(),
            dispatch=dispatch.machine(),
            hypothesis=provenance.hypothesis_settings(self.profile, self.config.getoption("hypothesis_seed", None)),
            notes=list(self.notes),
            timing=run_timing,
        )

    def _save(self, session: pytest.Session, what: str, done: str, path: Path, writer: Any) -> None:
        # An output that cannot be written fails a run that passed: CI would otherwise go green without its artifact.
        shown = _relative(path, Path(self.config.invocation_params.dir))
        try:
            writer(path)
        except OSError as exc:
            self.finished.append(f"ERROR: cannot write the {what} to {shown}: {exc.strerror or exc}")
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.USAGE_ERROR
        else:
            self.finished.append(f"{what} {done} {shown}")

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.controller:
            return
        rep = self.report
        if rep is not None and (rep.cells or self.backends):
            _write_matrix(terminalreporter, rep, self.options.case_dir)
        if self.finished:
            terminalreporter.section("conformance report and baseline")
            for line in self.finished:
                terminalreporter.write_line(line)
        if rep is not None and on_github_actions():
            for command in workflow_commands(rep):
                terminalreporter.write_line(command)


def _outcome_of(report: pytest.TestReport, crashed: bool) -> str:
    """passed, failed, error, xfailed, xpassed, skipped, or crashed (a worker died while running it)."""
    if report.when == "???" or (report.failed and crashed and "crashed" in str(report.longrepr)):
        return "crashed"
    if report.skipped:
        return "xfailed" if hasattr(report, "wasxfail") else "skipped"
    if report.failed:
        if report.when != "call":
            return "error"
        return "xpassed" if "XPASS(strict)" in str(report.longrepr) else "failed"
    return "passed"


def _relative(path: Path, start: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(start.resolve()))
    except ValueError:
        return str(path)


def _describe_levels(caps: Capabilities, requested: Sequence[str]) -> str:
    """The header's note of a backend's dispatch levels: which run in this session, or how to run them."""
    names = list(dict.fromkeys(level.name for levels in caps.levels.values() for level in levels))
    if not names:
        return ""
    chosen = [n for n in names if EVERY_LEVEL in requested or n in requested]
    if chosen:
        return f"; dispatch levels {', '.join(chosen)}" + (f" and {NATIVE}" if NATIVE in requested else "")
    return f"; dispatch {NATIVE} (levels {', '.join(names)}: {options.PREFIX}dispatch)"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _cells(ids: Sequence[str]) -> str:
    """Cell ids in a line; beyond four, the first three and how many more."""
    return ", ".join(ids) if len(ids) <= 4 else f"{', '.join(ids[:3])} and {len(ids) - 3} more"


def _write_matrix(tr: pytest.TerminalReporter, rep: Report, case_dir: Path) -> None:
    """One row per cell: status, examples, failures, contract, exceptions, worst and median ratio."""
    tr.section("conformance matrix (error/bound ratio per example: ≤ 1 passes)")
    names: Sequence[str] = [c.id for c in rep.cells] + [b.name for b in rep.skipped_backends] + ["cell"]
    width = max(len(name) for name in names)
    tr.write_line(
        f"{'cell':<{width}} {'status':>12} {'examples':>8} {'failures':>8} {'contract':>8} {'raised':>6} {'worst':>10} {'median':>10}"
    )
    for c in rep.cells:
        tr.write_line(
            f"{c.id:<{width}} {c.status:>12} {c.examples:>8} {c.failures:>8} {c.contract:>8} {c.exceptions:>6} "
            f"{_ratio(c.worst):>10} {_ratio(c.median):>10}"
        )
        if c.status in ("known defect", "failed", "incomplete") and c.worst_element is not None:
            e = c.worst_element
            tr.write_line(
                f"{'':<{width}}   worst {e['name']}: framework {e['framework']:.17g}, reference {e['reference']:.17g}, "
                f"ratio {_ratio(e['ratio'])}"
            )
    for b in rep.skipped_backends:
        tr.write_line(f"{b.name:<{width}} {b.reason}")
    machine = set(rep.dispatch)
    groups: dict[str, list[str]] = {}
    for c in rep.cells:
        own = {k: v for k, v in c.dispatch.items() if k not in machine}
        if own:
            groups.setdefault(dispatch.describe(own), []).append(c.id)
    for described, ids in groups.items():
        tr.write_line(f"dispatch: {described}: {_cells(ids)}")
    for note in rep.notes:
        tr.write_line(f"note: {note}")
    counts = rep.counts
    tr.write_line(", ".join(f"{n} {status}" for status, n in counts.items() if n) or "no cell was selected: nothing was tested")
    if any(c.case_files for c in rep.cells):
        tr.write_line(f"reproducers written to {case_dir}/; replay one with: {REPLAY} CASE.json --backend NAME")
