"""The project's test harness: a guard every test runs under, and the one way tests run the suite and the replay command.

The guard: no test may leave mpmath's global precision changed. mpmath keeps its working precision in
one global context (``mpmath.mp``); the oracle in :mod:`backprop_conformance.reference.mpmath_oracle`
promises to set precision only inside ``workdps`` blocks, and a leak would silently change every later
mpmath computation in the session, including the expected values of other tests. The hook below checks
the promise around every test and restores the precision, so one leak cannot cascade.

The harness: tests drive the suite as a user does -- a fresh interpreter running ``python -m pytest
conformance`` through :mod:`backprop_conformance.conformance.runner`, or the replay command line --
with :func:`suite` and :func:`replay_command`, and check a refused run with :func:`assert_usage_error`.
Test modules import these helpers (``from conftest import suite``; this directory is on ``sys.path``).
Adapters named on the suite's command line live in importable modules (:mod:`tests.mutants`,
:mod:`tests.hostile_adapters`, ...) and are named ``tests.<module>:ClassName``, since the suite's
subprocess runs from the repository root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path

import mpmath
import pytest

from backprop_conformance.adapters.registry import ENTRY_POINT_GROUP
from backprop_conformance.conformance.runner import SuiteRun, clean_environment, run_suite

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE_ONLY = "not fidelity"
"""The marker expression of most runs: the conformance tier only, the fidelity items left out."""
USAGE_ERROR = int(pytest.ExitCode.USAGE_ERROR)
TESTS_FAILED = int(pytest.ExitCode.TESTS_FAILED)
INTERRUPTED = int(pytest.ExitCode.INTERRUPTED)
REPLAY_USAGE = 2
"""The replay command's exit status for anything wrong with the request or the case file."""
CORRECT_ADAPTER = ("--conformance-backend", "tests.mutants:ManualBackprop")
"""The fast, correct numpy adapter (cells ``ok-stable-manual-<dtype>``): a run that passes, or the ground a test breaks."""
PLAIN_ASSERT = "--assert=plain"

DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)
"""``python -c DEFAULT_SIGINT ARGS`` runs ``python ARGS`` with SIGINT's default disposition. A process started in the
background by a shell (``cmd &``, ``nohup``), as a CI job or the test run itself may be, inherits SIGINT *ignored*;
Python then installs no KeyboardInterrupt handler, and a test of Ctrl-C would test a process deaf to it."""
"""The one way the runs differ from a user's: pytest does not rewrite ``assert`` statements.

The suite's verdicts raise their own messages and never rely on rewriting, so nothing checked
changes; and where ``PYTHONDONTWRITEBYTECODE`` is set (as in some CI images), pytest would otherwise
rewrite the modules of the suite and of its plug-ins (hypothesis) anew in each of the dozens of runs
the tests make."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    before = mpmath.mp.prec
    try:
        result = yield
    finally:
        after = mpmath.mp.prec
        mpmath.mp.prec = before
    if after != before:
        raise AssertionError(f"{item.nodeid} changed mpmath's global precision from {before} to {after} bits and did not restore it")
    return result


def suite(tmp: Path, *args: str, marks: str | None = CONFORMANCE_ONLY, **env: str) -> SuiteRun:
    """One run of the suite from the repository root, its outputs under ``tmp``; ``env`` is added to a clean environment.

    ``marks`` is the ``-m`` expression (the conformance tier by default; None runs every tier).
    """
    selection = ("-m", marks) if marks is not None else ()
    return run_suite([PLAIN_ASSERT, *selection, *args], tmp, env=clean_environment(tmp / "hypothesis", **env))


def assert_clean_failure(output: str) -> None:
    """The promise of every refused or failed run: whatever went wrong, the user reads a message, not the suite's insides."""
    assert "Traceback" not in output and "INTERNALERROR" not in output, output[-6000:]


def assert_usage_error(run: SuiteRun, *wanted: str) -> None:
    """Exit status 4 before any test ran, with every ``wanted`` phrase in the message."""
    assert run.returncode == USAGE_ERROR, run.explain()
    assert_clean_failure(run.output)
    assert "ERROR:" in run.output and run.report is None, run.explain()
    for text in wanted:
        assert text in run.output, f"{text!r} missing:\n{run.explain()}"


def replay_command(*args: str, cwd: Path, tmp: Path, plugins: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m backprop_conformance replay ARGS`` run in ``cwd``, this checkout first on the import path (then ``plugins``)."""
    path = os.pathsep.join(str(p) for p in (REPO_ROOT, plugins) if p is not None)
    return run_python("-m", "backprop_conformance", "replay", *args, cwd=cwd, env=clean_environment(tmp / "hypothesis", PYTHONPATH=path))


def run_python(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` (this interpreter) in ``cwd`` with exactly ``env``; its output captured, its exit status not checked."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)


def install_distribution(directory: Path, name: str, entry_points: dict[str, str], modules: dict[str, str] | None = None) -> Path:
    """A distribution as pip installs it: modules and a ``*.dist-info`` registering ``entry_points`` in the adapters' group.

    Returns ``directory``, to put on ``PYTHONPATH`` (or ``sys.path``); :mod:`importlib.metadata` finds the distribution there.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for module, source in (modules or {}).items():
        (directory / f"{module}.py").write_text(source, encoding="utf-8")
    dist_info = directory / f"{name.replace('-', '_')}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n", encoding="utf-8")
    lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}", encoding="utf-8")
    return directory


GOOD_PLUGIN = "hostileplug"
"""The entry-point name of the correct plug-in :func:`good_plugin` installs."""
GOOD_PLUGIN_SOURCE = '''"""An installed third-party adapter: one correct numpy adapter."""
from tests.mutants import ManualBackprop


class PluginAdapter(ManualBackprop):
    name = "hostileplug"
'''


@pytest.fixture(scope="module")
def good_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An installed distribution whose entry point ``hostileplug`` is a correct adapter (cells ``hostileplug-manual-<dtype>``)."""
    directory = tmp_path_factory.mktemp("good-plugin")
    return install_distribution(
        directory, "hostile-good-plugin", {GOOD_PLUGIN: "hostile_plugin:PluginAdapter"}, {"hostile_plugin": GOOD_PLUGIN_SOURCE}
    )


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real report of the correct numpy adapter under CI (derandomized, 5 examples a cell): the raw material of baselines."""
    tmp = tmp_path_factory.mktemp("recorded")
    run = suite(tmp, *CORRECT_ADAPTER, "--conformance-max-examples", "5", CI="true")
    assert run.returncode == 0 and run.report is not None, run.explain()
    return tmp / "report.json"
