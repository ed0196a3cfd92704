"""Hostile and careless inputs (GitHub issue 10): a green run never lies, nothing is lost, and a case file never runs code.

Every check here drives the suite the way a user, a plug-in author or a stranger's bug report does --
a fresh interpreter running ``python -m pytest conformance`` through
:mod:`backprop_conformance.conformance.runner`, or the replay command line -- and asserts the exact
promised outcome: the exit status (4, pytest's usage error, for anything wrong with how the suite was
asked to run; 2 for a replay that cannot be made; 1 for a failure) *and* a message naming the cause,
the field or the adapter, never a Python traceback and never an ``INTERNALERROR``.

The hostile adapters are defined here and named on the suite's command line as
``tests.test_hostile_inputs:ClassName`` (the suite's subprocess runs from the repository root). They
derive from the fast numpy adapters of :mod:`tests.mutants` and misbehave only on hypothesis' examples,
never on the contract test's fixed input (:func:`is_contract_input`), so that each fails exactly where
it is meant to. Plug-ins that must break while being imported are modules written to a temporary
directory, installed as entry points by a ``*.dist-info`` directory beside them, as pip would leave them.

Several checks read one run (module-scoped fixtures); each run uses a handful of examples and the
conformance tier only: the module costs about 80 CPU-seconds (some 70 short runs of the suite), two
minutes of wall time under ``-n 2`` on the project's 2-core machine while others were using it.
What other modules already cover is not repeated here: the examples/shrink-call count of a failing
cell (``tests/test_plugin.py::test_examples_count_examples_tried_not_shrinking_replays``), most
malformed baselines (``tests/test_baseline.py::test_unusable_baseline_is_a_usage_error_at_start_up``),
a report or summary path that is a directory (``tests/test_report.py``), and known-defects entries
checked in-process (``tests/test_known_defects.py``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

try:  # this directory's convention (tests/ is on sys.path) ...
    from mutants import CrossEntropyShortcut, ManualBackprop
except ImportError:  # ... and the suite's subprocess, which imports this module as tests.test_hostile_inputs from the repository root
    from tests.mutants import CrossEntropyShortcut, ManualBackprop

from backprop_conformance.adapters.base import AdapterOutput, Capabilities
from backprop_conformance.adapters.registry import ENTRY_POINT_GROUP
from backprop_conformance.conformance import cases, outputs
from backprop_conformance.conformance.__main__ import main as replay_main
from backprop_conformance.conformance.cells import Cell
from backprop_conformance.conformance.problems import Problem, contract_problem
from backprop_conformance.conformance.runner import SuiteRun, clean_environment, run_suite
from backprop_conformance.reference.model import Batch, Gradients, Network

REPO_ROOT = Path(__file__).resolve().parents[1]
HERE = "tests.test_hostile_inputs"
"""This module's import name in the suite's subprocess."""
CONFORMANCE_ONLY = ("-m", "not fidelity")
USAGE_ERROR = int(pytest.ExitCode.USAGE_ERROR)
TESTS_FAILED = int(pytest.ExitCode.TESTS_FAILED)
INTERRUPTED = int(pytest.ExitCode.INTERRUPTED)
REPLAY_USAGE = 2
"""The replay command's exit status for anything wrong with the request or the case file."""


# The hostile adapters.


def is_contract_input(batch: Batch, dtype: str) -> bool:
    """True for the contract test's fixed input, which the hostile adapters leave alone so that their cells' contracts pass."""
    contract = contract_problem(dtype).batch
    return batch.x.shape == contract.x.shape and bool(np.array_equal(batch.x, contract.x))


class RaisesFromTheThirdExample(ManualBackprop):
    """Correct on its first two examples of each format, then raises on every call, as a framework that breaks on some inputs."""

    name = "hostile-raises"

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        if not is_contract_input(batch, dtype):
            self.calls[dtype] = self.calls.get(dtype, 0) + 1
            if self.calls[dtype] >= 3:
                raise RuntimeError(f"the framework gave up on widths {network.widths}")
        return super().run(network, batch, dtype=dtype, path=path, device=device)


HANG_SECONDS = 300.0
"""How long the hanging adapters sleep: far beyond any limit the checks set, so that only a timeout ends the call."""


class HangsOnAnExample(ManualBackprop):
    """Never returns from a hypothesis example (sleeps :data:`HANG_SECONDS`): a framework call that hangs."""

    name = "hostile-hangs"

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        if not is_contract_input(batch, dtype):
            time.sleep(HANG_SECONDS)
        return super().run(network, batch, dtype=dtype, path=path, device=device)


class DiesOnAnExample(ManualBackprop):
    """Kills its own process (``os._exit``) on a hypothesis example: a framework that segfaults, as pytest-xdist sees it."""

    name = "hostile-dies"

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        if not is_contract_input(batch, dtype):
            os._exit(17)
        return super().run(network, batch, dtype=dtype, path=path, device=device)


MARKER_VARIABLE = "HOSTILE_MARKER"


class WaitsForCtrlC(ManualBackprop):
    """On a hypothesis example, creates the file named by ``$HOSTILE_MARKER`` and waits: the moment a user presses Ctrl-C."""

    name = "hostile-waits"

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        if not is_contract_input(batch, dtype):
            Path(os.environ[MARKER_VARIABLE]).write_text("waiting\n", encoding="utf-8")
            time.sleep(HANG_SECONDS)
        return super().run(network, batch, dtype=dtype, path=path, device=device)


class WrongCostOnly(ManualBackprop):
    """Every gradient right, the cost doubled: a verdict must not count the cost among the gradient elements."""

    name = "hostile-cost-only"

    def cost(self, a_L: np.ndarray, y: np.ndarray) -> float:
        return 2 * super().cost(a_L, y)


class Float64Accumulation(ManualBackprop):
    """Correct, and honest about accumulating float32 sums in float64: it computes in float64 and rounds the results once."""

    name = "hostile-acc64"
    dtypes = ("float32",)

    def capabilities(self) -> Capabilities:
        declared = super().capabilities()
        return Capabilities(
            name=declared.name,
            framework=declared.framework,
            version=declared.version,
            dtypes=declared.dtypes,
            paths=declared.paths,
            default_paths=declared.default_paths,
            accumulation={"float32": "float64"},
        )

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        exact = super().run(network, batch, dtype="float64", path=path, device=device)
        w, b = exact.gradients.w, exact.gradients.b
        return AdapterOutput(
            Gradients({l: g.astype(np.float32) for l, g in w.items()}, {l: g.astype(np.float32) for l, g in b.items()}), exact.cost
        )


CAPABILITIES_VARIABLE = "HOSTILE_CAPABILITIES"


class DeclaresFromEnvironment(CrossEntropyShortcut):
    """A failing adapter (δ^L without σ′) declaring valid capabilities overridden by ``$HOSTILE_CAPABILITIES`` (JSON).

    Failing, so that a declaration slipping through would write case files, named after its name and path.
    """

    def capabilities(self) -> Capabilities:
        fields: dict[str, object] = {
            "name": "hostile-declares",
            "framework": "NumPy hand-written backprop (tests/test_hostile_inputs.py)",
            "version": np.__version__,
            "dtypes": ("float64", "float32"),
            "paths": ("manual",),
            "default_paths": ("manual",),
        }
        fields.update(json.loads(os.environ.get(CAPABILITIES_VARIABLE, "{}")))
        return Capabilities(**fields)  # type: ignore[arg-type]


class ConstructorRaises(ManualBackprop):
    """A plug-in whose constructor raises (a framework initialised eagerly, a GPU that is not there)."""

    def __init__(self) -> None:
        raise RuntimeError("no accelerator found while initialising the framework")


class CapabilitiesRaise(ManualBackprop):
    """A plug-in whose ``capabilities()`` raises."""

    def capabilities(self) -> Capabilities:
        raise KeyError("version")


class CapabilitiesOfTheWrongType(ManualBackprop):
    """A plug-in whose ``capabilities()`` returns a dict instead of :class:`Capabilities`."""

    def capabilities(self) -> Capabilities:
        return {"name": "wrong-type", "dtypes": ["float64"]}  # type: ignore[return-value]


# Running the suite and the replay command.


PLAIN_ASSERT = "--assert=plain"
"""The one way the runs below differ from a user's: pytest does not rewrite ``assert`` statements.

The suite's verdicts raise their own messages and never rely on rewriting, so nothing checked here
changes; and where ``PYTHONDONTWRITEBYTECODE`` is set (as in some CI images), pytest would otherwise
rewrite the ~90 modules of the suite and of its plug-ins (hypothesis) anew in each of the dozens of
runs below, about two seconds each."""


def suite(tmp: Path, *args: str, **env: str) -> SuiteRun:
    """One run of the suite, conformance tier only, its outputs under ``tmp``; ``env`` is added to a clean environment."""
    return run_suite([PLAIN_ASSERT, *CONFORMANCE_ONLY, *args], tmp, env=clean_environment(tmp / "hypothesis", **env))


def assert_clean_failure(output: str) -> None:
    """The promise of every check here: whatever went wrong, the user reads a message, not the suite's insides."""
    assert "Traceback" not in output and "INTERNALERROR" not in output, output[-6000:]


def assert_usage_error(run: SuiteRun, *wanted: str) -> None:
    """Exit status 4 before any test ran, with every ``wanted`` phrase in the message."""
    assert run.returncode == USAGE_ERROR, run.explain()
    assert_clean_failure(run.output)
    assert "ERROR:" in run.output and run.report is None, run.explain()
    for text in wanted:
        assert text in run.output, f"{text!r} missing:\n{run.explain()}"


def replay_command(*args: str, cwd: Path, tmp: Path, plugins: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m backprop_conformance replay ...`` run in ``cwd``, this checkout first on the import path (then ``plugins``)."""
    path = os.pathsep.join(str(p) for p in (REPO_ROOT, plugins) if p is not None)
    environment = clean_environment(tmp / "hypothesis", PYTHONPATH=path)
    return subprocess.run(
        [sys.executable, "-m", "backprop_conformance", "replay", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )


def install_distribution(directory: Path, name: str, entry_points: dict[str, str], modules: dict[str, str] | None = None) -> Path:
    """A distribution as pip installs it: modules and a ``*.dist-info`` registering ``entry_points`` in the adapters' group.

    Returns ``directory``, to put on ``PYTHONPATH``; :mod:`importlib.metadata` finds the distribution there itself.
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


# 1. A case file never runs code: replay imports only built-in and installed adapters unless told otherwise.


def write_case(directory: Path, adapter: str, backend: str = "ok-stable", dtype: str = "float64") -> Path:
    """A valid case file (a tiny network, values exact in every format) naming ``adapter``."""
    network = Network({2: np.array([[0.5, -0.25]])}, {2: np.array([0.125])})
    batch = Batch(np.array([[1.0, 2.0]]), np.array([[0.75]]))
    case = cases.Case(Problem(network, batch, dtype), Cell(backend, "manual", dtype), adapter, {"numpy": np.__version__}, "a failure")
    return cases.write(case, directory)


EVIL_SOURCE = '''"""A module sent along with a case file: importing it is running a stranger's code."""
from pathlib import Path

Path({marker!r}).write_text("imported\\n")


class Adapter:
    pass
'''


@pytest.mark.parametrize("where", ["beside-the-case", "in-the-working-directory"])
@pytest.mark.parametrize("adapter", ["evil:Adapter", "evil"])
def test_replay_never_imports_a_module_the_case_names(tmp_path: Path, where: str, adapter: str) -> None:
    """``replay case.json`` without ``--backend``, the case naming ``evil:Adapter``: exit 2, evil.py not imported, the option printed."""
    marker = tmp_path / "evil-was-imported"
    attachment = tmp_path / "attachment"
    cwd = attachment if where == "beside-the-case" else tmp_path / "work"
    for directory in {attachment, cwd}:
        directory.mkdir(exist_ok=True)
        (directory / "evil.py").write_text(EVIL_SOURCE.format(marker=str(marker)), encoding="utf-8")
    case = write_case(attachment, adapter)
    done = replay_command(os.path.relpath(case, cwd), cwd=cwd, tmp=tmp_path)
    assert not marker.exists(), "replay imported the module the case file names"
    assert done.returncode == REPLAY_USAGE, f"exit {done.returncode}\n{done.stdout}{done.stderr}"
    assert_clean_failure(done.stderr)
    assert f"names the adapter {adapter!r}, which is neither built in nor an installed plug-in" in done.stderr, done.stderr
    assert f"--backend {adapter}" in done.stderr and "PASS" not in done.stdout and "FAIL" not in done.stdout, done.stderr


def test_replay_uses_an_installed_adapter_the_case_names(tmp_path: Path, good_plugin: Path) -> None:
    """A case naming an installed plug-in (as one naming ``torch`` or ``jax``) replays against it without ``--backend``."""
    case = write_case(tmp_path, GOOD_PLUGIN, backend=GOOD_PLUGIN)
    done = replay_command(str(case), cwd=tmp_path, tmp=tmp_path, plugins=good_plugin)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}{done.stderr}"
    assert f"PASS {GOOD_PLUGIN}-manual-float64: all 3 gradient elements and the cost within" in done.stdout, done.stdout


# 2. A malformed case file is a usage error (exit 2) naming the field: never a traceback, never exit 1.


def valid_case() -> dict:
    """A valid case file's JSON (float64, widths (2, 1), one example), to be broken one field at a time."""
    network = Network({2: np.array([[0.5, 0.25]])}, {2: np.array([0.0])})
    batch = Batch(np.array([[1.0, 2.0]]), np.array([[0.5]]))
    case = cases.Case(Problem(network, batch, "float64"), Cell("ok-stable", "manual", "float64"), "ok-stable", {"numpy": "2"}, "")
    return cases.to_json(case)


def edit(*keys: str, value: object) -> Callable[[dict], str]:
    """A breakage: the nested field ``keys`` set to ``value``."""

    def apply(data: dict) -> str:
        inner = data
        for key in keys[:-1]:
            inner = inner[key]
        inner[keys[-1]] = value
        return json.dumps(data)

    return apply


def raw(transform: Callable[[str], str]) -> Callable[[dict], str]:
    """A breakage made on the JSON text itself (for what ``json.dumps`` cannot produce)."""
    return lambda data: transform(json.dumps(data))


def nested(depth: int, leaf: object = 1.0) -> object:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


MALFORMED_CASES: dict[str, tuple[Callable[[dict], str], str]] = {
    "dtype-a-number": (edit("cell", "dtype", value=64), "field cell.dtype: expected a string, got int 64"),
    "path-null": (edit("cell", "path", value=None), "field cell.path: expected a string, got null"),
    "versions-a-string": (edit("versions", value="2.13.0"), "field versions: expected an object of strings, got str '2.13.0'"),
    "number-a-string": (edit("batch", "x", value=[["1.0", 2.0]]), "field batch.x[0][0]: expected a number, got str '1.0'"),
    "number-a-boolean": (
        edit("parameters", "w", "2", value=[[True, 0.25]]),
        "field parameters.w.2[0][0]: expected a number, got bool True",
    ),
    "widths-strings": (edit("widths", value=["2", "1"]), "field widths: ['2', '1'] does not match the parameters' widths [2, 1]"),
    "widths-a-boolean": (edit("widths", value=[2, True]), "field widths: [2, True] does not match"),
    "not-a-float32-value": (
        lambda d: edit("batch", "x", value=[[0.1, 2.0]])(json.loads(edit("cell", "dtype", value="float32")(d))),
        "field batch.x: holds values that are not float32 values",
    ),
    "deeply-nested-list": (edit("batch", "x", value=nested(60)), "field batch.x[0][0]: expected a number, got list"),
    "nesting-bomb": (lambda d: "[" * 100_000 + "]" * 100_000, "is not valid JSON: nested too deeply"),
    "nesting-bomb-in-a-field": (
        raw(lambda t: t.replace('"failure": ""', '"failure": ' + "[" * 100_000 + "]" * 100_000)),
        "nested too deeply",
    ),
    "integer-beyond-float64": (raw(lambda t: t.replace("[[1.0, 2.0]]", "[[1" + "0" * 400 + ", 2.0]]")), "field batch.x[0][0]: "),
    "integer-of-5000-digits": (raw(lambda t: t.replace("[[1.0, 2.0]]", "[[1" + "0" * 5000 + ", 2.0]]")), "is not valid JSON"),
    "nan-token": (raw(lambda t: t.replace("[[1.0, 2.0]]", "[[NaN, 2.0]]")), "NaN is not a JSON number"),
    "unknown-key": (edit("colour", value="red"), "field (top level): unknown key(s) 'colour'"),
    "unknown-nested-key": (edit("batch", "z", value=[[1.0]]), "field batch: unknown key(s) 'z'"),
    "backend-climbs-out": (edit("cell", "backend", value="../x"), "field cell.backend: '../x' is not a valid name"),
    "path-with-a-separator": (edit("cell", "path", value="a/b"), "field cell.path: 'a/b' is not a valid name"),
    "device-not-declared": (edit("cell", "device", value="tpu"), "ok-stable has no device tpu; it offers cpu"),
    "failure-a-list": (edit("failure", value=["x"]), "field failure: expected a string, got list"),
}


@pytest.mark.parametrize("breakage", MALFORMED_CASES.values(), ids=MALFORMED_CASES.keys())
def test_malformed_case_is_a_usage_error_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], breakage: tuple[Callable[[dict], str], str]
) -> None:
    """Replayed in-process: any exception escaping the command would fail this test, as a traceback would confront the user."""
    make, wanted = breakage
    path = tmp_path / "case.json"
    path.write_text(make(valid_case()), encoding="utf-8")
    status = replay_main(["replay", str(path), "--backend", "mutants:ManualBackprop"])
    err = capsys.readouterr().err
    assert status == REPLAY_USAGE, f"exit {status}: {err}"
    assert wanted in err and err.startswith("error: "), err
    assert str(path) in err or "device" in err, err


def test_malformed_case_on_the_command_line_prints_one_line(tmp_path: Path) -> None:
    """The same through the real command: a number too large for a float is one error line, not a traceback."""
    path = tmp_path / "case.json"
    path.write_text(MALFORMED_CASES["integer-beyond-float64"][0](valid_case()), encoding="utf-8")
    done = replay_command(str(path), "--backend", "tests.mutants:ManualBackprop", cwd=REPO_ROOT, tmp=tmp_path)
    assert done.returncode == REPLAY_USAGE, f"exit {done.returncode}\n{done.stderr}"
    assert_clean_failure(done.stderr)
    assert done.stderr.startswith(f"error: {path}: field batch.x[0][0]: ") and len(done.stderr.splitlines()) == 1, done.stderr


# 3. No false green: a failed contract or an adapter exception fails the cell in the report, the summary and the exit status.


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


# 4. Capabilities are validated once, at load, as a usage error naming the adapter; no name can lead a file out of the case directory.

BAD_DECLARATIONS: dict[str, tuple[dict[str, object], str]] = {
    "no-paths": ({"paths": [], "default_paths": []}, "adapter 'hostile-declares': paths is empty; declare at least one"),
    "no-dtypes": ({"dtypes": []}, "adapter 'hostile-declares': dtypes is empty; declare at least one"),
    "default-not-a-path": (
        {"default_paths": ["eager"]},
        "adapter 'hostile-declares': default path 'eager' is not among its paths ['manual']",
    ),
    "unknown-dtype": ({"dtypes": ["float64", "float8"]}, "adapter 'hostile-declares': unknown dtype 'float8'; the suite knows float64"),
    "unknown-accumulation-format": (
        {"accumulation": {"float32": "float128"}},
        "adapter 'hostile-declares': accumulation of float32 (dot) is 'float128'; the formats are",
    ),
    "unknown-accumulation-operation": (
        {"accumulation": {"float32": {"matmul": "float64"}}},
        "adapter 'hostile-declares': accumulation of float32 names operation 'matmul'; the operations are dot, batch_sum, cost_sum",
    ),
    "string-for-a-tuple": (
        {"paths": "manual"},
        "adapter 'hostile-declares': paths must be a tuple of strings, got str 'manual' (write ('manual',) for one)",
    ),
    "empty-name": ({"name": ""}, "adapter name '' is not usable"),
    "name-with-a-separator": ({"name": "sub/escaped"}, "adapter name 'sub/escaped' is not usable"),
    "name-climbing-out": ({"name": "../escaped"}, "adapter name '../escaped' is not usable"),
    "path-climbing-out": ({"paths": ["../escaped"], "default_paths": ["../escaped"]}, "paths holds '../escaped'"),
    "absolute-name": ({"name": "{tmp}/escaped"}, "adapter name '{tmp}/escaped' is not usable"),
}


@pytest.mark.parametrize("declaration", BAD_DECLARATIONS.values(), ids=BAD_DECLARATIONS.keys())
def test_bad_capabilities_are_a_usage_error_naming_the_adapter(tmp_path: Path, declaration: tuple[dict[str, object], str]) -> None:
    """Exit 4 at start-up, naming the adapter (declared name and where it was loaded from) and what is wrong; no file written anywhere."""
    overrides, wanted = declaration
    overrides = {k: (v.format(tmp=tmp_path) if isinstance(v, str) else v) for k, v in overrides.items()}
    run = suite(
        tmp_path / "run",
        "--conformance-backend",
        f"{HERE}:DeclaresFromEnvironment",
        "--conformance-max-examples=3",
        **{CAPABILITIES_VARIABLE: json.dumps(overrides)},
    )
    assert_usage_error(run, wanted.format(tmp=tmp_path), f"(adapter loaded from {HERE}:DeclaresFromEnvironment)")
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [], f"files written by a run that must not have started: {written}"


# 5. An adapter may not loosen its own bound; what it declares is shown; a 1e-9 relative bug is caught in float64.


@pytest.mark.parametrize(
    "accumulation",
    [{"float64": "float32"}, {"float64": {"batch_sum": "float32"}}],
    ids=["float64-in-float32", "one-operation"],
)
def test_coarser_accumulation_is_a_usage_error(tmp_path: Path, accumulation: dict[str, object]) -> None:
    """float32 sums declared for float64 storage would widen the float64 bound by 2^29 and let a 1e-9 relative bug pass."""
    (dtype, declared), *_ = accumulation.items()
    fmt = declared if isinstance(declared, str) else next(iter(declared.values()))  # type: ignore[union-attr]
    run = suite(
        tmp_path,
        "--conformance-backend",
        f"{HERE}:DeclaresFromEnvironment",
        **{CAPABILITIES_VARIABLE: json.dumps({"accumulation": accumulation})},
    )
    assert_usage_error(
        run,
        "adapter 'hostile-declares': declares ",
        f"sums of {dtype} accumulated in {fmt}, coarser than {dtype} itself",
        "may not loosen the bound",
    )


@pytest.fixture(scope="module")
def tiny_bug_run(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    """The planted (1 + 1e-9) factor on ∂C/∂w^2, beside an adapter that declares float64 accumulation of float32 sums."""
    return suite(
        tmp_path_factory.mktemp("tiny-bug"),
        "--conformance-backend",
        "tests.mutants:TinyScaleOnWeightGradient",
        "--conformance-backend",
        f"{HERE}:Float64Accumulation",
        "--conformance-max-examples=10",
    )


def test_a_relative_error_of_1e_9_is_caught_in_float64(tiny_bug_run: SuiteRun) -> None:
    """The bound an honest float64 declaration gets is tight enough for a relative error far below any fixed tolerance."""
    assert tiny_bug_run.returncode == TESTS_FAILED, tiny_bug_run.explain()
    assert tiny_bug_run.report is not None
    statuses = {c.id: (c.status, c.failures > 0) for c in tiny_bug_run.report.cells}
    assert statuses["mut-scale-1e-9-manual-float64"] == ("failed", True), statuses
    assert statuses["mut-scale-1e-9-manual-float32"] == ("passed", False), "in float32, 1 + 1e-9 rounds to 1: the adapter is correct there"
    assert statuses["hostile-acc64-manual-float32"] == ("passed", False), statuses


def test_declared_accumulation_is_shown_in_the_header_and_the_report(tiny_bug_run: SuiteRun) -> None:
    """What an adapter declared about its sums decides its bound, so a reader of the run must see it."""
    header = tiny_bug_run.output.split("collected", 1)[0]
    assert re.search(r"^  hostile-acc64: .*; dtypes float32; accumulation float32→float64$", header, re.MULTILINE), header
    assert re.search(r"^  mut-scale-1e-9: .*; accumulation in storage format$", header, re.MULTILINE), header
    assert tiny_bug_run.report is not None
    declared = {b.name: b.accumulation for b in tiny_bug_run.report.backends}
    assert declared == {"mut-scale-1e-9": "in storage format", "hostile-acc64": "float32→float64"}, declared


# 6. An installed plug-in joins a plain run, and is tested even where no built-in framework is installed.

HIDE_FRAMEWORKS = '''"""sitecustomize for the test: this interpreter behaves as one where no built-in framework was ever installed.

Every finder on sys.meta_path is wrapped so that it finds nothing named torch, jax, jaxlib, tensorflow, keras, mlx or flax: then
``importlib.util.find_spec("torch")`` returns None and ``import torch`` raises ModuleNotFoundError,
exactly as without the packages, while everything else installed beside them still imports.
"""
import sys

HIDDEN = ("torch", "jax", "jaxlib", "tensorflow", "keras", "mlx", "flax")


class Hiding:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        find = getattr(self.finder, "find_spec", None)
        return None if find is None else find(name, path, target)

    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)


sys.meta_path[:] = [Hiding(finder) for finder in sys.meta_path]
'''


@pytest.fixture(scope="module")
def without_frameworks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose ``sitecustomize.py`` hides the built-in frameworks from an interpreter that has it on ``PYTHONPATH``.

    Why this way: the frameworks sit in the same site-packages as numpy and pytest, so they cannot be
    removed from the path, and a stub ``torch.py`` would make them *present*. A finder that finds
    nothing under their names is what a machine without them looks like to the registry, which asks
    :func:`importlib.util.find_spec`, and to any import.
    """
    directory = tmp_path_factory.mktemp("without-frameworks")
    (directory / "sitecustomize.py").write_text(HIDE_FRAMEWORKS, encoding="utf-8")
    probe = "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('jax'), u.find_spec('numpy') is not None)"
    done = subprocess.run(
        [sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(directory)}, capture_output=True, text=True, check=False
    )
    assert done.stdout.split() == ["None", "None", "True"], f"the frameworks are not hidden: {done.stdout}{done.stderr}"
    return directory


def test_installed_plugin_is_tested_by_a_plain_run_without_the_built_in_frameworks(
    tmp_path: Path, good_plugin: Path, without_frameworks: Path
) -> None:
    """No ``--conformance-backend``: the built-ins skip with their reason, the plug-in's cells run and pass (not "all skipped, exit 0")."""
    run = suite(tmp_path, "--conformance-max-examples=3", PYTHONPATH=os.pathsep.join([str(without_frameworks), str(good_plugin)]))
    assert run.returncode == 0 and run.report is not None, run.explain()
    skipped = {b.name: b.reason for b in run.report.skipped_backends}
    assert skipped == {
        "torch": "skipped: torch not installed (needed by adapter 'torch')",
        "jax": "skipped: jax not installed (needed by adapter 'jax')",
        "tensorflow": "skipped: tensorflow not installed (needed by adapter 'tensorflow')",
        "keras": "skipped: keras not installed (needed by adapter 'keras')",
        "mlx": "skipped: mlx.core not installed (needed by adapter 'mlx')",
        "flax": "skipped: flax.nnx, jax not installed (needed by adapter 'flax')",
    }
    cells = {c.id: (c.status, c.examples) for c in run.report.cells}
    assert cells == {f"{GOOD_PLUGIN}-manual-float64": ("passed", 3), f"{GOOD_PLUGIN}-manual-float32": ("passed", 3)}, run.explain()


# 7. Only a framework listed in ``requires`` being absent is a skip; anything else wrong with a plug-in is a usage error.

BROKEN_MODULES = {
    "hostile_import_error": "import no_such_framework_for_hostile_tests\n\n\nclass Adapter:\n    pass\n",
    "hostile_syntax_error": "def capabilities(:\n    pass\n",
    "hostile_raises_at_import": 'raise RuntimeError("the plug-in failed while importing itself")\n',
}
BROKEN_PLUGINS: dict[str, tuple[str, list[str]]] = {
    "broken-import": (
        "hostile_import_error:Adapter",
        [
            "adapter 'broken-import': importing 'hostile_import_error' failed: No module named 'no_such_framework_for_hostile_tests'",
            "list it in `requires`",
        ],
    ),
    "broken-syntax": ("hostile_syntax_error:Adapter", ["adapter 'broken-syntax': importing 'hostile_syntax_error' raised SyntaxError"]),
    "broken-at-import": (
        "hostile_raises_at_import:Adapter",
        ["adapter 'broken-at-import': importing 'hostile_raises_at_import' raised RuntimeError: the plug-in failed while importing itself"],
    ),
    "broken-constructor": (
        f"{HERE}:ConstructorRaises",
        [f"adapter 'broken-constructor': {HERE}:ConstructorRaises() raised RuntimeError: no accelerator found"],
    ),
    "broken-capabilities": (
        f"{HERE}:CapabilitiesRaise",
        [f"adapter 'broken-capabilities': {HERE}:CapabilitiesRaise.capabilities() raised KeyError"],
    ),
    "broken-capabilities-type": (
        f"{HERE}:CapabilitiesOfTheWrongType",
        [
            "CapabilitiesOfTheWrongType.capabilities() returned a dict, expected backprop_conformance.adapters.base.Capabilities",
            f"(adapter loaded from {HERE}:CapabilitiesOfTheWrongType)",
        ],
    ),
}


@pytest.fixture(scope="module")
def broken_plugins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One installed distribution with an entry point for each way a plug-in can be broken."""
    directory = tmp_path_factory.mktemp("broken-plugins")
    return install_distribution(directory, "hostile-broken-plugins", {n: t for n, (t, _) in BROKEN_PLUGINS.items()}, BROKEN_MODULES)


@pytest.mark.parametrize("plugin", BROKEN_PLUGINS, ids=BROKEN_PLUGINS.keys())
def test_broken_plugin_is_a_usage_error_naming_it_and_the_cause(tmp_path: Path, broken_plugins: Path, plugin: str) -> None:
    """A broken plug-in reported as skipped would turn a run green having tested nothing; the user must see which and why."""
    run = suite(tmp_path, "--conformance-backend", plugin, PYTHONPATH=str(broken_plugins))
    assert_usage_error(run, *BROKEN_PLUGINS[plugin][1])
    assert "skipped" not in run.output, run.explain()


def test_broken_plugin_fails_a_plain_run(tmp_path: Path, broken_plugins: Path, without_frameworks: Path) -> None:
    """Installed and broken, it fails the plain run too (torch and jax hidden, so that they cannot mask it)."""
    run = suite(tmp_path, PYTHONPATH=os.pathsep.join([str(without_frameworks), str(broken_plugins)]))
    assert_usage_error(run, "adapter 'broken-at-import': importing 'hostile_raises_at_import' raised RuntimeError")


# 8. A baseline that cannot be compared is refused at start-up (the cases tests/test_baseline.py does not already cover).


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real report of the correct numpy adapter (3 examples per cell), the raw material of the baselines below."""
    tmp = tmp_path_factory.mktemp("recorded")
    run = suite(tmp, "--conformance-backend", "tests.mutants:ManualBackprop", "--conformance-max-examples=3")
    assert run.returncode == 0 and run.report is not None, run.explain()
    return tmp / "report.json"


def first_cell(change: Callable[[dict], None]) -> Callable[[str], str]:
    def apply(text: str) -> str:
        data = json.loads(text)
        change(data["cells"][0])
        return json.dumps(data)

    return apply


UNCOMPARABLE_BASELINES: dict[str, tuple[Callable[[str], str], str]] = {
    "nan-among-the-ratios": (first_cell(lambda c: c["ratios"].__setitem__(0, "nan")), "cells[0].ratios[0]: NaN"),
    "worst-that-is-not-the-ratios-worst": (
        first_cell(lambda c: c.update(worst=0.0001)),
        "cells[0]: 'worst' is 0.0001, but the largest of its 'ratios' is",
    ),
    "number-beyond-float64": (lambda t: re.sub(r'"worst": [^,]+,', '"worst": 1' + "0" * 400 + ",", t, count=1), "cells[0].worst: "),
    "integer-of-5000-digits": (lambda t: re.sub(r'"worst": [^,]+,', '"worst": 1' + "0" * 5000 + ",", t, count=1), "is not valid JSON"),
    "cell-not-an-object": (
        lambda t: json.dumps({**json.loads(t), "cells": ["ok-stable-manual-float64"]}),
        "cells[0] must be an object, got str",
    ),
}


@pytest.mark.parametrize("breakage", UNCOMPARABLE_BASELINES.values(), ids=UNCOMPARABLE_BASELINES.keys())
def test_uncomparable_baseline_is_refused_at_start_up(tmp_path: Path, recorded: Path, breakage: tuple[Callable[[str], str], str]) -> None:
    """Refused before any test, naming the file and the field: a comparison that cannot be made must neither cost a run nor pass."""
    make, wanted = breakage
    base = tmp_path / "base.json"
    base.write_text(make(recorded.read_text(encoding="utf-8")), encoding="utf-8")
    run = suite(
        tmp_path / "run",
        "--conformance-backend",
        "tests.mutants:ManualBackprop",
        "--conformance-max-examples=3",
        "--conformance-baseline",
        str(base),
    )
    assert_usage_error(run, f"--conformance-baseline: {base}", wanted)


# 9. A requested backend left with no cell is reported, and fails the run under --conformance-require.

NO_CELL_ARGS = (
    "--conformance-backend",
    "tests.mutants:ManualBackprop",
    "--conformance-backend",
    "tests.test_plugin:ReferenceAdapter",
    "--conformance-path",
    "manual",
    "--conformance-max-examples=3",
)
NO_CELL_NOTE = "reference-as-adapter: no cell selected: it offers paths vectorized (default vectorized)"


def test_a_backend_left_without_cells_is_reported(tmp_path: Path) -> None:
    """A requested backend must never vanish from a run unnoticed: the header, the matrix and the report say why it has no cell."""
    run = suite(tmp_path, *NO_CELL_ARGS)
    assert run.returncode == 0 and run.report is not None, run.explain()
    header, matrix = run.output.split("collected", 1)
    assert f"  note: {NO_CELL_NOTE}" in header, header
    assert f"note: {NO_CELL_NOTE}" in matrix.split("conformance matrix", 1)[1], run.explain()
    assert any(note.startswith(NO_CELL_NOTE) for note in run.report.notes), run.report.notes
    assert {b.name for b in run.report.backends} == {"ok-stable", "reference-as-adapter"}


def test_a_backend_left_without_cells_fails_a_required_run(tmp_path: Path) -> None:
    """Under --conformance-require, a backend that tests nothing is as much a failure as one that is not installed."""
    run = suite(tmp_path, *NO_CELL_ARGS, "--conformance-require")
    assert_usage_error(run, f"--conformance-require: {NO_CELL_NOTE}")


# 10. One file given to two outputs is a usage error at start-up, and the file is left byte for byte as it was.

COLLISIONS: dict[str, tuple[list[str], list[str]]] = {
    "baseline-and-report": (
        ["--conformance-baseline", "{shared}", "--conformance-report", "{shared}"],
        ["--conformance-report", "--conformance-baseline"],
    ),
    "report-and-markdown": (
        ["--conformance-report", "{shared}", "--conformance-markdown", "{shared}"],
        ["--conformance-report", "--conformance-markdown"],
    ),
    "junitxml-and-report": (["--junitxml", "{shared}", "--conformance-report", "{shared}"], ["--conformance-report", "--junitxml"]),
    "case-dir-and-baseline": (
        ["--conformance-baseline", "{shared}", "--conformance-case-dir", "{shared}"],
        ["--conformance-baseline", "--conformance-case-dir"],
    ),
    "two-spellings": (
        ["--conformance-baseline", "{shared}", "--conformance-report", "{tmp}/out/../base.json"],
        ["--conformance-report", "--conformance-baseline"],
    ),
    "through-a-symbolic-link": (
        ["--conformance-baseline", "{shared}", "--conformance-markdown", "{tmp}/link/base.json"],
        ["--conformance-markdown", "--conformance-baseline"],
    ),
}


@pytest.mark.parametrize("collision", COLLISIONS.values(), ids=COLLISIONS.keys())
def test_one_file_for_two_outputs_is_a_usage_error(tmp_path: Path, recorded: Path, collision: tuple[list[str], list[str]]) -> None:
    """A failing run (so that a report written over the baseline would be a real loss) given one location twice."""
    args, options = collision
    shared = tmp_path / "base.json"
    shutil.copyfile(recorded, shared)
    before = shared.read_bytes()
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    formatted = [a.format(shared=shared, tmp=tmp_path) for a in args]
    run = suite(tmp_path / "run", "--conformance-backend", "tests.mutants:CrossEntropyShortcut", "--conformance-max-examples=3", *formatted)
    assert_usage_error(run, f"{options[0]} and {options[1]} name the same location")
    assert shared.read_bytes() == before, "the file given twice was changed"


# 11. Every output location is checked at start-up.


@contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """Make ``path`` (a directory or a file) unwritable for this process for the block.

    As an ordinary user, by its mode. As root, whom modes do not stop, by the immutable attribute
    (``chattr +i``), which stops root too and which ``os.access`` reports; skipped where neither works.
    """
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode != 0:
        pytest.skip("running as root, and the immutable attribute is not available here to make a path unwritable")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def too_long_case_dir(tmp_path: Path) -> Path:
    """A directory that can be created, but where ``<dir>/<cell id>-shrunk-<hash>.json`` would exceed PATH_MAX."""
    path_max = os.pathconf(tmp_path, "PC_PATH_MAX")
    deep = tmp_path
    while len(str(deep)) < path_max - 400:
        deep = deep / ("d" * 200)
    deep.mkdir(parents=True)
    return deep / ("c" * (path_max - 30 - len(str(deep))))


LOCATIONS: dict[str, tuple[str, str, str]] = {
    # id: (option, how its path is made, the message)
    "case-dir-is-a-file": ("--conformance-case-dir", "file", "--conformance-case-dir {path}: is a file; give a directory"),
    "case-dir-unwritable": (
        "--conformance-case-dir",
        "unwritable-dir",
        "--conformance-case-dir {path}: cannot be written ({path} is not writable)",
    ),
    "case-dir-in-an-unwritable-dir": ("--conformance-case-dir", "in-unwritable-dir", "--conformance-case-dir {path}: cannot be written ("),
    "case-dir-too-long-for-its-files": (
        "--conformance-case-dir",
        "too-long",
        "would exceed this file system's limits (names ≤ 255, paths < 4096)",
    ),
    "case-dir-name-beyond-name-max": ("--conformance-case-dir", "name-too-long", "--conformance-case-dir {path}: cannot be used ("),
    "report-in-an-unwritable-dir": ("--conformance-report", "in-unwritable-dir", "--conformance-report {path}: cannot be written ("),
    "markdown-unwritable-file": (
        "--conformance-markdown",
        "unwritable-file",
        "--conformance-markdown {path}: cannot be written (the file is not writable)",
    ),
    "report-name-beyond-name-max": ("--conformance-report", "name-too-long", "--conformance-report {path}: cannot be used ("),
    "baseline-is-a-directory": ("--conformance-baseline", "dir", "--conformance-baseline {path}: is a directory; give a file name"),
    "baseline-in-an-unwritable-dir": ("--conformance-baseline", "in-unwritable-dir", "--conformance-baseline {path}: cannot be written ("),
}


@pytest.mark.parametrize("location", LOCATIONS.values(), ids=LOCATIONS.keys())
def test_unusable_output_location_is_a_usage_error_at_start_up(tmp_path: Path, location: tuple[str, str, str]) -> None:
    """A failing adapter, so that a location that slipped through would be found only midway, with its reproducers lost."""
    option, make, message = location
    locked = tmp_path / "locked"
    locked.mkdir()
    path = {
        "file": tmp_path / "a-file",
        "unwritable-dir": locked,
        "in-unwritable-dir": locked / "out" / "f.json",
        "too-long": too_long_case_dir(tmp_path) if make == "too-long" else tmp_path,
        "name-too-long": tmp_path / ("n" * 300) / "f.json",
        "unwritable-file": locked / "summary.md",
        "dir": tmp_path / "a-dir",
    }[make]
    if make == "file":
        path.write_text("", encoding="utf-8")
    elif make == "unwritable-file":
        path.write_text("# an earlier step's summary\n", encoding="utf-8")
    elif make == "dir":
        path.mkdir()
    extra = ["--conformance-update-baseline"] if option == "--conformance-baseline" else []
    args = ["--conformance-backend", "tests.mutants:CrossEntropyShortcut", "--conformance-max-examples=3", option, str(path), *extra]
    with unwritable(path if make == "unwritable-file" else locked):
        run = suite(tmp_path / "run", *args)
    assert_usage_error(run, message.format(path=path))


def test_a_read_only_baseline_is_fine_when_it_is_only_read(tmp_path: Path, recorded: Path) -> None:
    """Without --conformance-update-baseline the baseline is only read: a read-only copy (a CI cache, a mounted artifact) must do."""
    shared = tmp_path / "baselines"
    shared.mkdir()
    shutil.copyfile(recorded, shared / "base.json")
    with unwritable(shared / "base.json"), unwritable(shared):
        run = suite(
            tmp_path / "run",
            "--conformance-backend",
            "tests.mutants:ManualBackprop",
            "--conformance-max-examples=3",
            "--conformance-baseline",
            str(shared / "base.json"),
        )
    assert run.returncode == 0, run.explain()
    assert "no regressions" in run.output, run.explain()


# 12. An interrupted write leaves no temporary file behind; Ctrl-C ends a run with pytest's status 2, not a traceback.

SLOW_WRITER = """
import os, sys, time
from pathlib import Path
from backprop_conformance.conformance import outputs

real_fsync = os.fsync

def slow_fsync(fd):
    # The middle of write_atomically: the temporary file exists and is not yet renamed over the target.
    print("inside", flush=True)
    time.sleep(float(sys.argv[2]))
    real_fsync(fd)

os.fsync = slow_fsync
outputs.write_atomically("{" + " " * 5_000_000 + "}\\n", Path(sys.argv[1]))
print("written", flush=True)
"""


def temporaries(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.glob(f".{target.name}.*.tmp"))


def interrupted_writer(target: Path, how: signal.Signals, pause: float) -> subprocess.Popen[str]:
    """A process writing ``target`` atomically, stopped by ``how`` while its temporary file exists; returned after it ended."""
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(target), str(pause)],
        cwd=REPO_ROOT,
        env=clean_environment(target.parent / "hypothesis"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line == "inside\n", f"the writer never reached the middle of its write: {line!r} {child.stderr.read() if child.stderr else ''}"
    assert temporaries(target), "the temporary file must exist at this point for the check to mean anything"
    child.send_signal(how)
    child.wait(timeout=60)
    return child


def test_sigterm_in_the_middle_of_a_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    """SIGTERM is held back while the temporary exists: the write completes, then the process dies of the signal."""
    target = tmp_path / "report.json"
    target.write_text("{}\n", encoding="utf-8")
    child = interrupted_writer(target, signal.SIGTERM, pause=1.0)
    assert child.returncode == -signal.SIGTERM, f"exit {child.returncode}"
    assert temporaries(target) == [], "SIGTERM stranded the temporary file"
    assert target.stat().st_size == 5_000_003, "the target must hold either the old or the whole new text"


def test_a_temporary_stranded_by_sigkill_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """SIGKILL cannot be held back; the temporary it strands names a dead process, and the next write to the file removes it."""
    target = tmp_path / "report.json"
    target.write_text("{}\n", encoding="utf-8")
    child = interrupted_writer(target, signal.SIGKILL, pause=60.0)
    assert child.returncode == -signal.SIGKILL
    assert len(temporaries(target)) == 1 and target.read_text(encoding="utf-8") == "{}\n", "SIGKILL cannot be held back: the old file stays"
    outputs.write_atomically("{}\n", target)
    assert temporaries(target) == [], "the next write to the same file must remove what the killed writer stranded"


DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)
"""Runs ``python ARGS`` with SIGINT's default disposition: a process started in the background by a shell (``cmd &``, ``nohup``)
inherits SIGINT *ignored*, Python then installs no KeyboardInterrupt handler, and Ctrl-C would be tested on a run deaf to it."""


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
        *CONFORMANCE_ONLY,
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


# 13. A worker that dies leaves its cell incomplete, not "0 examples", and fails the run.


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


# 15. "N of M gradient elements exceed": M counts the gradient elements, never the cost.

WIDTHS = re.compile(r"case: widths \((?P<widths>[\d, ]+)\)")


def parameter_count(message: str) -> int:
    """Σ_l n(l)·n(l−1) + n(l): the number of gradient elements of the network the message describes."""
    match = WIDTHS.search(message)
    assert match, message
    widths = [int(w) for w in match["widths"].split(",") if w.strip()]
    return sum(widths[i] * widths[i - 1] + widths[i] for i in range(1, len(widths)))


@pytest.fixture(scope="module")
def cost_run(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    return suite(
        tmp_path_factory.mktemp("cost"),
        "--conformance-backend",
        f"{HERE}:WrongCostOnly",
        "--conformance-backend",
        "tests.mutants:CostWithoutHalf",
        "--conformance-dtype=float64",
        "--conformance-max-examples=5",
    )


def gradient_failure(run: SuiteRun, cell_id: str) -> str:
    (outcome,) = [o for o in run.outcomes if o.test == f"test_gradients[{cell_id}]"]
    assert outcome.failed, run.explain()
    return outcome.message


def test_a_wrong_cost_alone_is_not_counted_as_a_gradient_element(cost_run: SuiteRun) -> None:
    """Only the cost is wrong: the message says so, and counts exactly the network's gradient elements."""
    message = gradient_failure(cost_run, "hostile-cost-only-manual-float64")
    found = re.search(r"the cost exceeds .*, while all (?P<m>\d+) gradient elements are within it", message)
    assert found, message
    assert int(found["m"]) == parameter_count(message), message
    assert "  cost:  C (the cost): framework " in message, message


def test_a_wrong_cost_and_gradients_count_only_the_gradients(cost_run: SuiteRun) -> None:
    """Cost and gradients doubled (no ½): N of M counts gradient elements only, and the cost is reported beside them."""
    message = gradient_failure(cost_run, "mut-no-half-manual-float64")
    found = re.search(r": (?P<n>\d+) of (?P<m>\d+) gradient elements exceed .* \(and so does the cost\)", message)
    assert found, message
    assert int(found["n"]) <= int(found["m"]) == parameter_count(message), message


# 16. Known defects: extra files add to the built-in list, can be repeated, may name backends this run did not load.

DEFECT = (
    '[[defect]]\nbackend = "{backend}"\nversions = "*"\ntests = ["test_gradients"]\npaths = {paths}\ndtypes = ["{dtype}"]\n'
    'issue = "https://example.org/{backend}/1"\nsummary = "δ^L without σ′"\n'
)


def defects_file(path: Path, *entries: str) -> Path:
    path.write_text("\n".join(entries), encoding="utf-8")
    return path


def test_known_defect_files_add_up_and_may_name_backends_not_loaded(tmp_path: Path) -> None:
    """Two files, one entry each for the two cells: both apply; a third entry, for a backend not loaded, is ignored with a note."""
    first = defects_file(tmp_path / "first.toml", DEFECT.format(backend="mut-cross-entropy-delta", paths='["manual"]', dtype="float32"))
    second = defects_file(
        tmp_path / "second.toml",
        DEFECT.format(backend="mut-cross-entropy-delta", paths='["*"]', dtype="float64"),
        DEFECT.format(backend="mxnet", paths='["gluon"]', dtype="float64"),
    )
    run = suite(
        tmp_path / "run",
        "--conformance-backend",
        "tests.mutants:CrossEntropyShortcut",
        "--conformance-max-examples=3",
        "--conformance-known-defects",
        str(first),
        "--conformance-known-defects",
        str(second),
    )
    assert run.returncode == 0 and run.report is not None, run.explain()
    assert {c.id: c.status for c in run.report.cells} == {
        "mut-cross-entropy-delta-manual-float64": "known defect",
        "mut-cross-entropy-delta-manual-float32": "known defect",
    }
    note = f"{second}: 1 known-defect entry for backend 'mxnet', not loaded in this run, ignored"
    assert f"  note: {note}" in run.output.split("collected", 1)[0] and note in run.report.notes, run.explain()


BUILT_IN_DEFECT = next(
    (
        (framework, f"test_sigmoid_prime_fidelity[{framework}-{path}-float64-saturated]", issues)
        for framework, path, issues in (
            ("jax", "jit", "github.com/jax-ml/jax/issues"),
            ("torch", "eager", "github.com/pytorch/pytorch/issues"),
        )
        if importlib.util.find_spec(framework) is not None
    ),
    None,
)
"""A fidelity item the suite's own known_defects.toml makes a strict xfail, for the cheaper installed framework (jax imports faster)."""


@pytest.mark.skipif(BUILT_IN_DEFECT is None, reason="neither jax nor torch is installed: the built-in list covers only them")
def test_extra_known_defect_files_keep_the_built_in_entries(tmp_path: Path) -> None:
    """With an extra file, the built-in σ′ entry still makes the framework's saturated fidelity case a strict xfail."""
    assert BUILT_IN_DEFECT is not None
    framework, item, issues = BUILT_IN_DEFECT
    extra = defects_file(tmp_path / "extra.toml", DEFECT.format(backend="mut-cross-entropy-delta", paths='["*"]', dtype="float64"))
    selected = f"test_gradients and mut-cross-entropy-delta or {item.replace('[', ' and ').rstrip(']')}"
    args = [
        "--conformance-backend",
        framework,
        "--conformance-backend",
        "tests.mutants:CrossEntropyShortcut",
        "--conformance-dtype=float64",
    ]
    env = clean_environment(tmp_path / "hypothesis", JAX_PLATFORMS="cpu")  # no probing for accelerators the suite does not use
    run = run_suite(
        [PLAIN_ASSERT, *args, "--conformance-max-examples=3", "--conformance-known-defects", str(extra), "-k", selected], tmp_path, env=env
    )
    assert run.returncode == 0 and run.report is not None, run.explain()
    outcomes = {o.test: (o.outcome, o.message) for o in run.outcomes}
    assert set(outcomes) == {"test_gradients[mut-cross-entropy-delta-manual-float64]", item}, outcomes
    assert all(kind == "skipped" and "known upstream defect" in message for kind, message in outcomes.values()), outcomes
    assert issues in outcomes[item][1], outcomes[item]


def test_known_defect_mixing_star_with_names_is_a_usage_error(tmp_path: Path) -> None:
    """``paths = ["*", "manual"]`` means nothing precise: refused at start-up, naming the file and the entry."""
    path = defects_file(
        tmp_path / "defects.toml", DEFECT.format(backend="mut-cross-entropy-delta", paths='["*", "manual"]', dtype="float32")
    )
    run = suite(tmp_path / "run", "--conformance-backend", "tests.mutants:CrossEntropyShortcut", "--conformance-known-defects", str(path))
    assert_usage_error(run, f"{path}: defect #1: paths ['*', 'manual'] mixes \"*\" (every one) with names")


# 17. A hung framework call ends the test, names the cell, fails the run, and is never retried.


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
