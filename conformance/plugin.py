"""The pytest side of the suite: options, hypothesis profiles, the cell table, reproducers, the matrix.

Loaded by ``conformance/conftest.py``, so it is active exactly when the user runs ``pytest conformance``
(or a file in it) and never in other test runs.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from time import perf_counter

import pytest
from hypothesis import HealthCheck, settings

from backprop_conformance.adapters.registry import UnknownAdapter, known_specs
from backprop_conformance.conformance import cases, known_defects, report, timing
from backprop_conformance.conformance.cells import Backend, Cell, SelectionError, load_backends, select_cells
from backprop_conformance.conformance.fidelity import FIDELITY_TESTS
from backprop_conformance.conformance.stats import CellStats
from backprop_conformance.conformance.strategies import DEFAULT_LIMITS, LARGE_LIMITS, Limits
from backprop_conformance.conformance.verdict import Verdict

settings.register_profile("dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", max_examples=100, deadline=None, derandomize=True, database=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("large", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIMITS_BY_PROFILE = {"large": LARGE_LIMITS}
"""Profiles that change the size of the networks, not only the number of examples (default: DEFAULT_LIMITS)."""

BACKENDS_KEY = pytest.StashKey[list[Backend]]()
CELLS_KEY = pytest.StashKey[list[Cell]]()
STATS_KEY = pytest.StashKey[dict[str, "CellStats"]]()
FAILURE_KEY = pytest.StashKey["cases.Case"]()
DEFECTS_KEY = pytest.StashKey[list[known_defects.Defect]]()
PROFILE_KEY = pytest.StashKey[str]()
SESSION_TIME_KEY = pytest.StashKey[CellStats]()
"""Time of every test of the session by category (only the ``wall`` and ``seconds`` fields are used)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("backprop-conformance")
    group.addoption(
        "--backend",
        action="append",
        default=[],
        help="adapter to test: a built-in name (torch, jax), an installed plug-in's name, or package.module:Attribute; "
        "repeatable; default: every built-in",
    )
    group.addoption(
        "--path",
        action="append",
        default=[],
        help="execution path to test (e.g. eager, jit); repeatable; default: each backend's default paths",
    )
    group.addoption(
        "--dtype", action="append", default=[], help="float64, float32, float16 or bfloat16; repeatable; default: all the backend supports"
    )
    group.addoption("--device", action="append", default=[], help="device to test on (cpu, cuda, gpu); repeatable; default: cpu")
    group.addoption(
        "--all-paths",
        action="store_true",
        help="run every path of every backend, opt-in ones (torch compile, jax grad/vjp/jacfwd) included",
    )
    group.addoption(
        "--known-defects",
        default=str(known_defects.DEFAULT_FILE),
        help="TOML file of known upstream defects applied as strict xfails to the fidelity tests (default: the suite's own)",
    )
    group.addoption("--require", action="store_true", help="fail the run, instead of skipping, when a requested backend is not installed")
    group.addoption("--max-examples", type=int, default=None, help="hypothesis examples per cell, overriding the profile")
    group.addoption(
        "--case-dir",
        default="conformance-cases",
        help="directory where each failure's reproducer case file is written (default: ./conformance-cases)",
    )
    report.add_options(group)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Profiles, the cell table and the known defects; last, so that hypothesis' own plugin has already
    loaded a ``--hypothesis-profile`` and ``--max-examples`` is applied on top of it, not undone by it."""
    config.addinivalue_line("markers", "fidelity: exactness checks against the high-precision oracle, beyond conformance")
    requested = config.getoption("hypothesis_profile", default=None)
    if requested is None:
        requested = "ci" if os.environ.get("CI") else "dev"
        settings.load_profile(requested)
    config.stash[PROFILE_KEY] = requested
    max_examples = config.getoption("max_examples")
    if max_examples is not None:
        if max_examples < 1:
            raise pytest.UsageError(f"--max-examples must be at least 1, got {max_examples}")
        settings.register_profile("conformance-cli", parent=settings.default, max_examples=max_examples)
        settings.load_profile("conformance-cli")
    if config.getoption("all_paths") and config.getoption("path"):
        raise pytest.UsageError("--all-paths and --path select paths in two ways; give one of them")
    try:
        with timing.timed("framework"):  # importing the frameworks is the frameworks' time, not the harness's
            backends = load_backends(config.getoption("backend"))
        cells = select_cells(
            backends,
            config.getoption("path"),
            config.getoption("dtype"),
            config.getoption("device") or ("cpu",),
            config.getoption("all_paths"),
        )
    except (UnknownAdapter, SelectionError) as exc:
        raise pytest.UsageError(str(exc)) from None
    missing = [b for b in backends if b.unavailable]
    if config.getoption("require") and missing:
        raise pytest.UsageError("--require: " + "; ".join(f"{b.spec.name}: {b.unavailable}" for b in missing))
    try:
        defects = known_defects.load(Path(config.getoption("known_defects")))
        loaded = {b.capabilities.name: b.capabilities for b in backends if b.capabilities is not None}
        known_defects.validate(defects, FIDELITY_TESTS, loaded, list(known_specs()))
    except known_defects.KnownDefectsError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[DEFECTS_KEY] = defects
    config.stash[BACKENDS_KEY] = backends
    config.stash[CELLS_KEY] = cells
    config.stash[STATS_KEY] = {}
    config.stash[SESSION_TIME_KEY] = CellStats()
    config.stash[SESSION_TIME_KEY].add_time(0.0, timing.take())
    report.configure(config)


def pytest_report_header(config: pytest.Config) -> list[str]:
    profile = settings.default
    overridden = " (--max-examples)" if config.getoption("max_examples") is not None else ""
    lines = [
        f"backprop-conformance {cases.suite_version()}: hypothesis profile {config.stash[PROFILE_KEY]}, "
        f"max_examples={profile.max_examples}{overridden}"
    ]
    for backend in config.stash.get(BACKENDS_KEY, []):
        caps = backend.capabilities
        if caps is None:
            lines.append(f"  {backend.spec.name}: {backend.unavailable}")
            continue
        opt_in = [p for p in caps.paths if p not in caps.default_paths]
        lines.append(
            f"  {caps.name}: {caps.framework} {caps.version}; devices {', '.join(caps.devices)}; paths {', '.join(caps.default_paths)}"
            + (f" (opt-in: {', '.join(opt_in)})" if opt_in else "")
            + f"; dtypes {', '.join(caps.dtypes)}"
        )
    return lines


def backend_params(config: pytest.Config) -> list[object]:
    """pytest parameters, one per cell, plus one skipped parameter per unavailable backend."""
    params: list[object] = [pytest.param(cell, id=cell.id) for cell in config.stash[CELLS_KEY]]
    params += [
        pytest.param(None, id=b.spec.name, marks=pytest.mark.skip(reason=b.unavailable))
        for b in config.stash[BACKENDS_KEY]
        if b.unavailable
    ]
    return params


def fidelity_params(config: pytest.Config, test: str) -> list[object]:
    """(cell, case) parameters of one fidelity test, known upstream defects marked as strict xfails."""
    defects = config.stash[DEFECTS_KEY]
    params: list[object] = []
    for cell in config.stash[CELLS_KEY]:
        caps = adapter_for(config, cell).capabilities
        assert caps is not None
        for case in FIDELITY_TESTS[test]:
            defect = known_defects.find(defects, test, cell.backend, caps.version, cell.path, cell.dtype, case)
            marks = [pytest.mark.xfail(strict=True, reason=defect.reason)] if defect else []
            params.append(pytest.param(cell, case, id=f"{cell.id}-{case}", marks=marks))
    params += [
        pytest.param(None, None, id=b.spec.name, marks=pytest.mark.skip(reason=b.unavailable))
        for b in config.stash[BACKENDS_KEY]
        if b.unavailable
    ]
    return params


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "fidelity_case" in metafunc.fixturenames:
        name = metafunc.definition.originalname
        if name not in FIDELITY_TESTS:
            raise pytest.UsageError(
                f"{name} takes fidelity_case but is not listed in backprop_conformance.conformance.fidelity.FIDELITY_TESTS"
            )
        metafunc.parametrize(("cell", "fidelity_case"), fidelity_params(metafunc.config, name))
    elif "cell" in metafunc.fixturenames:
        metafunc.parametrize("cell", backend_params(metafunc.config))


def limits_for(config: pytest.Config) -> Limits:
    """The network size limits of the profile in force (``large`` raises them)."""
    return LIMITS_BY_PROFILE.get(config.stash[PROFILE_KEY], DEFAULT_LIMITS)


def adapter_for(config: pytest.Config, cell: Cell) -> Backend:
    return next(b for b in config.stash[BACKENDS_KEY] if b.capabilities is not None and b.capabilities.name == cell.backend)


def record(config: pytest.Config, item: pytest.Item, cell: Cell, verdict: Verdict) -> None:
    """Count the example in the cell's statistics and keep the latest failure for the reproducer.

    Hypothesis replays the minimal failing example last, so the failure kept when the test ends is
    the shrunk one.
    """
    config.stash[STATS_KEY].setdefault(cell.id, CellStats()).add(verdict)
    if not verdict.passed:
        backend = adapter_for(config, cell)
        caps = backend.capabilities
        assert caps is not None
        versions = cases.environment_versions(caps.framework, caps.version)
        item.stash[FAILURE_KEY] = cases.Case(verdict.problem, cell, backend.spec.requested_as, versions, verdict.message())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> object:
    """Time every test by category (:mod:`backprop_conformance.conformance.timing`): for the session, and per cell for the property test."""
    timing.take()
    start = perf_counter()
    yield
    wall = perf_counter() - start
    seconds = timing.take()
    item.config.stash[SESSION_TIME_KEY].add_time(wall, seconds)
    callspec = getattr(item, "callspec", None)
    cell = callspec.params.get("cell") if callspec is not None else None
    if getattr(item, "originalname", None) == "test_gradients" and cell is not None:
        item.config.stash[STATS_KEY].setdefault(cell.id, CellStats()).add_time(wall, seconds)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or not report.failed or FAILURE_KEY not in item.stash:
        return
    case = item.stash[FAILURE_KEY]
    path = cases.write(case, Path(item.config.getoption("case_dir")))
    command = f"python -m backprop_conformance replay {shlex.quote(str(path))} --backend {shlex.quote(case.adapter)}"
    text = f"case file: {path}\nreplay it (any adapter, no hypothesis): {command}\n"
    # On the failure's own text too, so that JUnit XML (which carries only that) shows the reproducer.
    if hasattr(report.longrepr, "addsection"):
        report.longrepr.addsection("conformance reproducer", text)
    else:
        report.sections.append(("conformance reproducer", text))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Workers hand their statistics to the controller; the controller writes the report and checks the baseline."""
    config = session.config
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["conformance_stats"] = {k: v.to_dict() for k, v in config.stash.get(STATS_KEY, {}).items()}
        return
    if BACKENDS_KEY not in config.stash:  # pytest_configure stopped with a usage error
        return
    report.finish(session, config.stash[STATS_KEY], config.stash[BACKENDS_KEY], config.stash[CELLS_KEY], config.stash[PROFILE_KEY])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """pytest-xdist: merge a worker's per-cell statistics into the controller's."""
    output = getattr(node, "workeroutput", {}).get("conformance_stats", {})
    stats = node.config.stash[STATS_KEY]  # type: ignore[attr-defined]
    for cell_id, data in output.items():
        stats.setdefault(cell_id, CellStats()).merge(data)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    stats = config.stash.get(STATS_KEY, {})
    if stats:
        _write_matrix(terminalreporter, config, stats)
    if BACKENDS_KEY in config.stash:
        report.terminal_summary(terminalreporter, config)


def _write_matrix(tr: pytest.TerminalReporter, config: pytest.Config, stats: dict[str, CellStats]) -> None:
    """One row per cell: examples, failures, worst and median error/bound ratio."""
    tr.section("conformance matrix (error/bound ratio per example: ≤ 1 passes)")
    unavailable = [b for b in config.stash.get(BACKENDS_KEY, []) if b.unavailable]
    width = max(len(name) for name in [*stats, *(b.spec.name for b in unavailable), "cell"])
    tr.write_line(f"{'cell':<{width}} {'examples':>8} {'failures':>8} {'worst':>10} {'median':>10}")
    for cell_id in sorted(stats):
        s = stats[cell_id]
        tr.write_line(f"{cell_id:<{width}} {s.examples:>8} {s.failures:>8} {s.worst:>10.3g} {s.median:>10.3g}")
    for backend in unavailable:
        tr.write_line(f"{backend.spec.name:<{width}} {backend.unavailable}")
    if any(s.failures for s in stats.values()):
        case_dir = config.getoption("case_dir")
        tr.write_line(
            f"reproducers written to {case_dir}/; replay one with: {sys.executable} -m backprop_conformance replay CASE.json --backend NAME"
        )
