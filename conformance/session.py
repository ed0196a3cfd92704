"""One run of the suite: its state, and the pytest hooks that act on it, each handing its work to the module that holds it.

:class:`ConformanceSession` holds what the run knows: the options, the backends and their cells, the known defects,
the network limits, each cell's ledger, the time spent, the baseline and the report.
:mod:`~backprop_conformance.conformance.plugin` creates it at configure time and registers it as a pytest plug-in;
its ``pytest_*`` methods are the hooks, kept thin as pytest-benchmark's are. The work is elsewhere:

* start-up checks of the outputs and the baseline: :mod:`~backprop_conformance.conformance.startup`;
* the test items, their known-defect xfails, order and time limit: :mod:`~backprop_conformance.conformance.collection`;
* what the test functions call: :mod:`~backprop_conformance.conformance.checks`;
* a failure's case files and replay command: :mod:`~backprop_conformance.conformance.reproducers`;
* a cell's status: :mod:`~backprop_conformance.conformance.ledger`;
* the report built, compared and written: :mod:`~backprop_conformance.conformance.end_of_run`;
* the header and the matrix: :mod:`~backprop_conformance.conformance.terminal`.

Results travel on the test report (``report.conformance``, the pytest/xdist idiom): an xdist worker sends the
result its trial recorded, and the controller merges it into the cell's ledger; in a run without workers the trial
records straight into the ledger's result, so each cell has one result from its first example to the file.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from time import perf_counter
from typing import Any

import pytest
from hypothesis import settings

from backprop_conformance.adapters import dispatch
from backprop_conformance.adapters.at_level import AtLevel
from backprop_conformance.adapters.base import AdapterError
from backprop_conformance.conformance import collection, end_of_run, fidelity, known_defects, options, shards, startup, terminal, timing
from backprop_conformance.conformance.cells import Backend, Cell, SelectionError, load_backends, select_cells
from backprop_conformance.conformance.checks import TRIAL_KEY, Checks
from backprop_conformance.conformance.collection import CONFORMANCE_TESTS, item_key
from backprop_conformance.conformance.ledger import CellLedger, classify
from backprop_conformance.conformance.report import CellResult, Report
from backprop_conformance.conformance.reproducers import write_reproducers
from backprop_conformance.conformance.strategies import DEFAULT_LIMITS, LARGE_LIMITS, THOROUGH_LIMITS, Limits

LIMITS_BY_PROFILE = {"large": LARGE_LIMITS, "thorough": THOROUGH_LIMITS}
"""Profiles that change the size of the networks, not only the number of examples (default: DEFAULT_LIMITS)."""

TIME_KEY = pytest.StashKey[tuple[float, dict[str, float]]]()


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
        self.shard: shards.Shard | None = None
        self.defects: list[known_defects.Defect] = []
        self.notes: list[str] = []
        self.limits: Limits = DEFAULT_LIMITS
        self.ledgers: dict[str, CellLedger] = {}
        self.items: dict[str, tuple[str, str]] = {}
        self.timing: dict[str, float] = {}
        self.baseline: Report | None = None
        self.report: Report | None = None
        self.finished: list[str] = []
        self.at_level: dict[tuple[str, str], Backend] = {}
        self.configurations: dict[tuple[str, str, str | None], dict[str, str]] = {}
        self.checks = Checks(self.backend, self._record, self.limits)

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
            if opts.shard is not None:
                option = f"{options.PREFIX}shard"
                selected = len(self.cells)
                self.cells, self.shard = shards.select(self.cells, shards.parse(opts.shard, option), option)
                self.notes.append(f"shard {self.shard.name}: {len(self.cells)} of the {selected} selected cells")
            self.defects = known_defects.load_all(opts.known_defects, opts.builtin_defects)
            loaded = {b.name: b.capabilities for b in self.backends if b.capabilities is not None}
            tests = {**dict.fromkeys(CONFORMANCE_TESTS, ()), **fidelity.FIDELITY_TESTS}
            self.notes += known_defects.validate(self.defects, tests, loaded)
            self.notes += filter(None, [known_defects.describe_modes(opts.builtin_defects)])
        except (AdapterError, SelectionError, options.OptionError, shards.ShardError, known_defects.KnownDefectsError) as exc:
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
        startup.load_profile(self.options.max_examples)
        self.limits = self.checks.limits = LIMITS_BY_PROFILE.get(self.profile, DEFAULT_LIMITS)
        if self.controller:  # only the controller merges results; a worker's trials record into results of their own
            self.ledgers = {c.id: CellLedger.for_cell(c) for c in self.cells}
        self.items = collection.item_names(self.cells)
        self.timing = timing.take()
        if self.controller:
            self.baseline = startup.check_outputs(self.config, self.options, self.cells)

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

    def _record(self, cell: Cell) -> CellResult:
        """The result a trial of ``cell`` records into: the cell's own, or, in an xdist worker, a new one it sends on."""
        ledger = self.ledgers.get(cell.id)
        return ledger.result if ledger is not None else CellLedger.for_cell(cell).result

    def _known_defect(
        self, test: str, cell: Cell, case: str | None, configuration: dict[str, str] | None = None
    ) -> list[pytest.MarkDecorator]:
        caps = self.backend(cell).capabilities
        assert caps is not None
        return collection.known_defect_marks(self.defects, test, cell, caps.version, case, configuration)

    def _compiled_per_shape(self, cell: Cell) -> bool:
        caps = self.backend(cell).capabilities
        return caps is not None and cell.path in caps.shape_compiled_paths

    # Collection and the start of each test.

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        return terminal.header(self.options, self.profile, self.backends, self.notes)

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "cell" in metafunc.fixturenames:
            collection.parametrize(metafunc, self.cells, self.backends, self._known_defect)

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
        collection.by_backend_compiled_last(items, self.items, self.cells, self.backends, self._compiled_per_shape)
        collection.add_timeouts(config, items, self.items, self.options.timeout)

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
            assert backend.adapter is not None
            pool = self.limits.pool if self._compiled_per_shape(cell) else ()
            try:
                backend.adapter.prepare(cell.path, cell.dtype, cell.device, pool)
            except Exception as exc:  # a hint that failed costs time, never a verdict: the cell's own requests meet the error
                self.notes.append(f"{cell.id}: the adapter's prepare() raised {type(exc).__name__}: {exc}")

    # Per test: time it, carry its results on its report, and enter the reports in the ledgers (on the controller).

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
        if item_key(item.nodeid) not in self.items or call.when != "call":
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
                configuration = self.configurations.get((trial.cell.backend, trial.cell.path, trial.cell.level), dispatch.machine())
                text = write_reproducers(trial, self.options.case_dir, Path(self.config.invocation_params.dir), configuration)
                if text is not None:  # on the failure's own text too, so that JUnit XML (which carries only that) shows it
                    if hasattr(rep.longrepr, "addsection"):
                        rep.longrepr.addsection("conformance reproducer", text)
                    else:
                        rep.sections.append(("conformance reproducer", text))
            if not self.controller:
                data["result"] = trial.result.to_json()
        rep.conformance = data  # type: ignore[attr-defined]
        return rep

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Enter one test's report in its cell's ledger (on the controller, serial or under xdist alike)."""
        if not self.controller:
            return
        found = self.items.get(item_key(report.nodeid))
        if found is None:
            return
        cell_id, test = found
        ledger = self.ledgers[cell_id]
        data = getattr(report, "conformance", None)
        if data is not None:
            self.timing["tests"] = self.timing.get("tests", 0.0) + float(data.get("wall", 0.0))
            for category, value in data.get("seconds", {}).items():
                self.timing[category] = self.timing.get(category, 0.0) + float(value)
            if "result" in data:
                ledger.merge(CellResult.from_json({**data["result"]}, f"the report of {report.nodeid}"))
            if data.get("dispatch") and not ledger.result.dispatch:
                ledger.result.dispatch = dict(data["dispatch"])
        longrepr = str(report.longrepr)
        outcome = classify(
            report.when,
            failed=report.failed,
            skipped=report.skipped,
            xfail=hasattr(report, "wasxfail"),
            longrepr=longrepr,
            carried=data is not None,
        )
        ledger.record(test, item_key(report.nodeid), report.when, outcome, xfail_reason=getattr(report, "wasxfail", ""), longrepr=longrepr)

    # The end: statuses settled, the typed report built once, compared, written, shown.

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        for backend in [*self.backends, *self.at_level.values()]:
            if backend.adapter is not None:
                try:
                    backend.adapter.finish()
                except Exception as exc:  # the run's results matter more than a hint's clean-up
                    self.notes.append(f"{backend.name}: the adapter's finish() raised {type(exc).__name__}: {exc}")
        if not self.controller:
            return
        interrupted = bool(exitstatus == pytest.ExitCode.INTERRUPTED or session.shouldstop or session.shouldfail)
        results = [self.ledgers[cell.id].settle(interrupted) for cell in self.cells]
        run_timing = {"wall": perf_counter() - self.started, **self.timing}
        rep = end_of_run.build(
            self.config, self.backends, results, int(exitstatus), profile=self.profile, notes=self.notes, timing=run_timing
        )
        rep.shard = None if self.shard is None else self.shard.to_json()
        end = end_of_run.conclude(rep, self.options, self.baseline, session.exitstatus, Path(self.config.invocation_params.dir))
        session.exitstatus = end.exitstatus
        self.finished += end.lines
        self.report = rep

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.controller:
            terminal.summary(terminalreporter, self.report, bool(self.backends), self.finished, self.options.case_dir)
