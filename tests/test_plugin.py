"""The ``pytest conformance`` machinery, driven as a user drives it: a subprocess, options, exit status, the JSON report.

Each module-scoped fixture is one run of the suite (about a second with the fast numpy adapters of
:mod:`tests.mutants`), through :mod:`backprop_conformance.conformance.runner`, shared by the checks that
read it: the session header, the skip of a backend whose framework is missing, the cells of the
report, the reproducer of a failure (case files, replay command, JUnit XML) and the merge of
pytest-xdist workers' results. Usage errors, which stop the run before any test, get one short run
each. The replay commands a failing run prints are run as printed, to show that they work when pasted.

The adapters are those of :mod:`tests.reference_adapters` and :mod:`tests.mutants`, named on the
subprocess' command line as ``tests.<module>:Name`` (the suite runs from the repository root).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_usage_error, run_python, suite
from reference_adapters import HERE, MISSING_MODULE, NeedsMissingFramework, ReferenceAdapter

from backprop_conformance.conformance import cases
from backprop_conformance.conformance.cells import Cell
from backprop_conformance.conformance.provenance import PACKAGE_ROOT
from backprop_conformance.conformance.runner import SuiteRun, clean_environment

EXAMPLES = 7
"""--conformance-max-examples of the runs below: small for speed, and an odd number no profile uses."""


CORRECT_CELLS = {"ok-stable-manual-float64", "ok-stable-manual-float32"}
"""ManualBackprop's cells: its name, its one path and its two dtypes (tests/mutants.py)."""
SKIP_REASON = f"skipped: {MISSING_MODULE} not installed"
CORRECT_ARGS = (
    "--conformance-backend",
    "tests.mutants:ManualBackprop",
    "--conformance-backend",
    f"{HERE}:NeedsMissingFramework",
    f"--conformance-max-examples={EXAMPLES}",
)


@pytest.fixture(scope="module")
def correct_run(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    return suite(tmp_path_factory.mktemp("correct"), *CORRECT_ARGS, "-rs")


@pytest.fixture(scope="module")
def xdist_run(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    return suite(tmp_path_factory.mktemp("xdist"), *CORRECT_ARGS, "-n", "2")


@pytest.fixture(scope="module")
def xdist_each_run(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    """Every worker runs every test (``--dist each``), so each cell's examples come from both workers."""
    return suite(tmp_path_factory.mktemp("xdist-each"), *CORRECT_ARGS, "-n", "2", "--dist", "each")


FAILING = "tests.mutants:CrossEntropyShortcut"
FAILING_NAME = "mut-cross-entropy-delta"


@pytest.fixture(scope="module")
def failing_run(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    return suite(tmp_path_factory.mktemp("failing"), "--conformance-backend", FAILING, "--conformance-max-examples=10")


# Hints to adapters: prepare() before the tests, finish() after them; tests grouped by backend, compiled cells last.


def prepared_run(tmp: Path, *args: str, backends: Sequence[str] = ("PreparationRecorder",)) -> list[str]:
    log = tmp / "log"
    selected = [option for name in backends for option in ("--conformance-backend", f"{HERE}:{name}")]
    run = suite(tmp, *selected, f"--conformance-max-examples={EXAMPLES}", *args, marks=None, BACKPROP_CONFORMANCE_TEST_LOG=str(log))
    assert run.returncode == pytest.ExitCode.OK, run.explain()
    return log.read_text().splitlines()


def test_each_selected_cell_is_prepared_before_the_tests_and_the_adapter_finished_after(tmp_path: Path) -> None:
    from backprop_conformance.conformance.strategies import DEFAULT_LIMITS

    log = prepared_run(tmp_path, "-k", "test_gradients")
    first_run = next(i for i, line in enumerate(log) if line.startswith("run "))
    prepared = log[:first_run]
    assert sorted(prepared) == sorted([f"prepare compiled float64 cpu {len(DEFAULT_LIMITS.pool)}", "prepare eager float64 cpu 0"]), log
    assert log[-1] == "finish" and log.count("finish") == 1, log
    runs = [line.split()[1] for line in log if line.startswith("run ")]
    assert runs == ["prep-eager"] * EXAMPLES + ["prep-compiled"] * EXAMPLES, f"the compiled path's cell must run last: {runs}"


def test_tests_run_grouped_by_backend_with_the_compiled_cells_last(tmp_path: Path) -> None:
    """Every test of a cell (contract, fidelity, property): the first backend's eager cell, then the second backend's,
    then the first's compiled cell, so that the compilation started ahead has the other backends' time to finish."""
    log = prepared_run(tmp_path, backends=("PreparationRecorder", "EagerRecorder"))
    cells = [line.split()[1] for line in log if line.startswith("run ")]
    order = list(dict.fromkeys(cells))
    assert order == ["prep-eager", "prep2-eager", "prep-compiled"], f"tests ran in this order of cells: {order}"
    for cell in order:
        first, last = cells.index(cell), len(cells) - 1 - cells[::-1].index(cell)
        assert set(cells[first : last + 1]) == {cell}, f"{cell}'s tests are interleaved with another cell's: {cells}"


def test_a_deselected_cell_is_not_prepared(tmp_path: Path) -> None:
    log = prepared_run(tmp_path, "-k", "test_gradients and eager")
    assert [line for line in log if line.startswith("prepare")] == ["prepare eager float64 cpu 0"], log


def test_xdist_workers_are_not_given_hints(tmp_path: Path) -> None:
    """Each xdist worker runs only some cells: preparing every cell in each would double the work the hint hides."""
    log = prepared_run(tmp_path, "-k", "test_gradients", "-n", "2")
    assert not [line for line in log if line.startswith("prepare")], log
    assert sorted(line.split()[1] for line in log if line.startswith("run ")) == sorted(["prep-compiled", "prep-eager"] * EXAMPLES), log


# Usage errors: exit status 4 (pytest's usage error), a message that lists what is valid.


@pytest.mark.parametrize(
    ("args", "wanted"),
    [
        (["--conformance-backend", "tensorflw"], ["unknown adapter 'tensorflw'", "jax", "torch", "package.module:Attribute"]),
        (
            ["--conformance-backend", "tests.mutants:ManualBackprop", "--conformance-path", "jit"],
            ["unknown --conformance-path 'jit'", "offer manual"],
        ),
        (
            ["--conformance-backend", "tests.mutants:ManualBackprop", "--conformance-dtype", "float8"],
            ["unknown --conformance-dtype 'float8'", "float32, float64"],
        ),
        (
            ["--conformance-backend", "tests.mutants:ManualBackprop", "--conformance-device", "cuda"],
            ["unknown --conformance-device 'cuda'", "offer cpu"],
        ),
        (
            ["--conformance-backend", "tests.mutants:ManualBackprop", "--conformance-max-examples", "0"],
            ["--conformance-max-examples must be at least 1, got 0"],
        ),
        (["--conformance-backend", "tests.mutants:NoSuchAdapter"], ["module 'tests.mutants' has no attribute 'NoSuchAdapter'"]),
        (
            ["--conformance-backend", "tests.mutants:PATH"],
            ["tests.mutants:PATH is a str, not a backprop_conformance.adapters.base.Adapter"],
        ),
        (["--conformance-backend", f"{HERE}:NeedsMissingFramework", "--conformance-require"], ["--conformance-require", SKIP_REASON]),
        (
            ["--conformance-all-paths", "--conformance-path", "manual"],
            ["--conformance-all-paths and --conformance-path select paths in two ways"],
        ),
    ],
    ids=["backend", "path", "dtype", "device", "max-examples", "no-attribute", "not-an-adapter", "require", "all-paths-and-path"],
)
def test_usage_error(tmp_path: Path, args: list[str], wanted: list[str]) -> None:
    assert_usage_error(suite(tmp_path, *args, marks=None), *wanted)


@pytest.mark.parametrize(
    "target",
    ["backprop_conformance.adapters.base:Capabilities", "backprop_conformance.adapters.base:Adapter"],
    ids=["not-an-adapter-class", "abstract"],
)
def test_class_that_cannot_be_an_adapter_is_a_usage_error(tmp_path: Path, target: str) -> None:
    assert_usage_error(suite(tmp_path, "--conformance-backend", target, marks=None), target)


def test_misspelt_module_is_a_usage_error(tmp_path: Path) -> None:
    assert_usage_error(suite(tmp_path, "--conformance-backend", "tests.mutnats:ManualBackprop", marks=None), "tests.mutnats", "PYTHONPATH")


def test_backends_with_the_same_name_are_rejected(tmp_path: Path) -> None:
    backends = ("--conformance-backend", f"{HERE}:ReferenceAdapter", "--conformance-backend", f"{HERE}:ImpostorOfReference")
    assert_usage_error(suite(tmp_path, *backends, "--conformance-max-examples=3", marks=None), ReferenceAdapter.name)


# Profiles: the header says which one is in force and with how many examples; Hypothesis detects CI itself.


@pytest.mark.parametrize(
    ("extra_env", "args", "wanted"),
    [
        ({}, [], "hypothesis profile default, max_examples=100"),
        ({"CI": "true"}, [], "hypothesis profile ci, max_examples=100"),
        ({"GITHUB_ACTIONS": "true"}, [], "hypothesis profile ci, max_examples=100"),
        ({}, ["--hypothesis-profile", "thorough"], "hypothesis profile thorough, max_examples=2000"),
        ({}, [f"--conformance-max-examples={EXAMPLES}"], f"max_examples={EXAMPLES}"),
    ],
    ids=["default", "ci", "github-actions", "thorough", "max-examples"],
)
def test_header_names_the_profile(tmp_path: Path, extra_env: dict[str, str], args: list[str], wanted: str) -> None:
    run = suite(tmp_path, "--conformance-backend", f"{HERE}:ReferenceAdapter", "--collect-only", *args, marks=None, **extra_env)
    assert run.returncode == pytest.ExitCode.OK, run.explain()
    assert wanted in run.output, run.explain()


def test_backends_can_be_named_by_the_environment(tmp_path: Path) -> None:
    """$BACKPROP_CONFORMANCE_BACKENDS names the backends for tox and CI matrices when the option is not given."""
    backends = f"tests.mutants:ManualBackprop, {HERE}:ReferenceAdapter"
    run = suite(tmp_path, "--collect-only", marks=None, BACKPROP_CONFORMANCE_BACKENDS=backends)
    assert run.returncode == pytest.ExitCode.OK, run.explain()
    assert (
        "test_gradients[ok-stable-manual-float64]" in run.output
        and f"test_gradients[{ReferenceAdapter.name}-vectorized-float32]" in run.output
    )
    assert "torch" not in run.output.split("collected", 1)[0], "the built-ins must not join when the variable names the backends"


# A correct adapter and a missing framework, in one run.


def test_correct_run_passes(correct_run: SuiteRun) -> None:
    assert correct_run.returncode == pytest.ExitCode.OK, correct_run.explain()


def test_header_names_each_backend_framework_and_version(correct_run: SuiteRun) -> None:
    header = correct_run.output.split("collected", 1)[0]
    assert f"ok-stable: NumPy hand-written backprop (ManualBackprop, tests/mutants.py) {np.__version__}" in header, correct_run.explain()
    assert "paths manual" in header and "dtypes float64, float32" in header and "accumulation in storage format" in header
    assert f"NeedsMissingFramework: {SKIP_REASON}" in header, correct_run.explain()


def test_missing_framework_is_skipped_with_the_reason(correct_run: SuiteRun) -> None:
    skips = [line for line in correct_run.output.splitlines() if line.startswith("SKIPPED")]
    assert skips and all(SKIP_REASON in line for line in skips), correct_run.explain()
    assert any("test_gradients" in line for line in skips) and any("test_contract" in line for line in skips), correct_run.explain()
    assert correct_run.report is not None
    (skipped,) = correct_run.report.skipped_backends
    assert skipped.name == "NeedsMissingFramework" and skipped.reason is not None and skipped.reason.startswith(SKIP_REASON), skipped


def test_requires_is_checked_without_importing(tmp_path: Path) -> None:
    """``requires`` is checked with find_spec: a module that is present counts as installed and is still not imported."""
    (tmp_path / f"{MISSING_MODULE}.py").write_text("raise RuntimeError('the suite imported a framework it should only have looked for')\n")
    run = suite(tmp_path, "--conformance-backend", f"{HERE}:NeedsMissingFramework", "--collect-only", marks=None, PYTHONPATH=str(tmp_path))
    assert run.returncode == pytest.ExitCode.OK and "the suite imported" not in run.output, run.explain()
    assert f"{NeedsMissingFramework.name}: the suite's own float64 reference" in run.output, run.explain()


def test_report_has_a_cell_per_cell_with_every_example(correct_run: SuiteRun) -> None:
    assert correct_run.report is not None, correct_run.explain()
    rows = {c.id: c for c in correct_run.report.cells}
    assert set(rows) == CORRECT_CELLS, correct_run.explain()
    for cell_id, c in rows.items():
        assert c.examples == EXAMPLES, f"{cell_id}: {c.examples} examples, --conformance-max-examples was {EXAMPLES}"
        assert (c.failures, c.status, c.contract, c.exceptions) == (0, "passed", "passed", 0), c
    assert "conformance matrix" in correct_run.output and "2 passed" in correct_run.output


# pytest-xdist: the controller's results merge the workers'.


def test_xdist_results_match_a_serial_run(correct_run: SuiteRun, xdist_run: SuiteRun) -> None:
    assert xdist_run.returncode == pytest.ExitCode.OK, xdist_run.explain()
    assert correct_run.report is not None and xdist_run.report is not None
    serial = {c.id: (c.examples, c.failures, c.status) for c in correct_run.report.cells}
    parallel = {c.id: (c.examples, c.failures, c.status) for c in xdist_run.report.cells}
    assert parallel == serial, f"-n 2 {parallel}, -n 0 {serial}"
    assert len(xdist_run.report.skipped_backends) == len(correct_run.report.skipped_backends) == 1


def test_xdist_sums_examples_across_workers(xdist_each_run: SuiteRun) -> None:
    assert xdist_each_run.returncode == pytest.ExitCode.OK, xdist_each_run.explain()
    assert xdist_each_run.report is not None
    for c in xdist_each_run.report.cells:
        assert c.examples == 2 * EXAMPLES, f"{c.id}: {c.examples} examples from two workers running {EXAMPLES} each"
        assert c.failures == 0 and c.status == "passed"


# A failing adapter: the failure, its case files, its replay command, the JUnit XML.

NAMES_PARAMETER = re.compile(r"worst: [wb]\^\d+_\S+: framework \S+, reference \S+, bound \S+, ratio \S+")
REPLAY_LINE = re.compile(r"^replay it \(any adapter, no hypothesis\): (?P<command>.+)$", re.MULTILINE)


def replay_commands(run: SuiteRun) -> list[list[str]]:
    """The printed replay commands, with ``python`` as the interpreter the user ran pytest with."""
    commands = [shlex.split(m["command"]) for m in REPLAY_LINE.finditer(run.output)]
    assert commands, f"no replay command printed:\n{run.explain()}"
    for command in commands:
        assert command[:4] == ["python", "-m", "backprop_conformance", "replay"], "an adapter named by module:Attribute needs the cwd"
    return [[sys.executable, *command[1:]] for command in commands]


def replay(command: Sequence[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    """A printed replay command run as printed: in the repository root, with no ``PYTHONPATH`` added."""
    return run_python(*command[1:], cwd=PACKAGE_ROOT, env=clean_environment(tmp))


def with_backend(command: Sequence[str], backend: str) -> list[str]:
    """``command`` with its ``--backend`` value replaced."""
    i = list(command).index("--backend")
    return [*command[: i + 1], backend, *command[i + 2 :]]


def test_failing_run_exits_1_and_names_the_parameter(failing_run: SuiteRun) -> None:
    assert failing_run.returncode == pytest.ExitCode.TESTS_FAILED, failing_run.explain()
    assert NAMES_PARAMETER.search(failing_run.output), failing_run.explain()
    assert failing_run.report is not None
    rows = {c.id: c for c in failing_run.report.cells}
    assert set(rows) == {f"{FAILING_NAME}-manual-float64", f"{FAILING_NAME}-manual-float32"}, failing_run.explain()
    for c in rows.values():
        assert c.status == "failed" and c.failures >= 1 and c.worst_element is not None and c.worst_element["ratio"] > 1, c


def test_examples_count_examples_tried_not_shrinking_replays(failing_run: SuiteRun) -> None:
    """At most --conformance-max-examples examples per cell; hypothesis' shrinking calls are counted apart."""
    assert failing_run.report is not None
    for c in failing_run.report.cells:
        assert 1 <= c.examples <= 10 and c.failures <= c.examples, c
        assert c.shrink_calls >= 1, f"{c.id}: a failure is shrunk, and those calls must be counted somewhere"


def test_failure_writes_shrunk_and_worst_case_files_per_failing_cell(failing_run: SuiteRun) -> None:
    assert failing_run.report is not None
    for dtype in ("float64", "float32"):
        cell_id = f"{FAILING_NAME}-manual-{dtype}"
        files = sorted(failing_run.case_dir.glob(f"{cell_id}-*.json"))
        assert files and any("-shrunk-" in f.name for f in files), f"{dtype}: {sorted(p.name for p in failing_run.case_dir.glob('*'))}"
        read = [cases.read(f) for f in files]
        assert all(c.cell == Cell(FAILING_NAME, "manual", dtype) for c in read)
        assert all("ratio" in c.failure and NAMES_PARAMETER.search(c.failure) for c in read)
        assert {str(f.name) for f in files} == {Path(p).name for p in failing_run.report.cell(cell_id).case_files}  # type: ignore[union-attr]
        assert all(f.name in failing_run.output for f in files), "the failure text names every case file"


def test_replayed_case_fails_the_mutant_and_passes_a_correct_adapter(failing_run: SuiteRun, tmp_path: Path) -> None:
    for command in replay_commands(failing_run):
        for backend, status, verdict in ((FAILING, 1, "FAIL "), ("tests.mutants:ManualBackprop", 0, "PASS ")):
            done = replay(with_backend(command, backend), tmp_path)
            assert done.returncode == status, (
                f"{shlex.join(with_backend(command, backend))}: exit {done.returncode}\n{done.stdout}{done.stderr}"
            )
            assert verdict in done.stdout, done.stdout


def test_printed_replay_command_works_as_printed(failing_run: SuiteRun, tmp_path: Path) -> None:
    for command in replay_commands(failing_run):
        done = replay(command, tmp_path)
        assert done.returncode == 1, f"{shlex.join(command)}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        assert "FAIL " in done.stdout


def test_junit_xml_carries_the_reproducer(failing_run: SuiteRun) -> None:
    failures = {o.test: o.message for o in failing_run.outcomes if o.test.startswith("test_gradients[") and o.failed}
    assert set(failures) == {f"test_gradients[{FAILING_NAME}-manual-{d}]" for d in ("float64", "float32")}, failures
    for name, text in failures.items():
        assert "case file, " in text and "-m backprop_conformance replay " in text, f"{name}:\n{text[-2000:]}"
        assert "-shrunk-" in text, f"{name}:\n{text[-2000:]}"


# Importing the suite and listing adapters must not import a framework.

IMPORTS_NO_FRAMEWORK = """
import sys
import backprop_conformance
import backprop_conformance.adapters.base, backprop_conformance.adapters.registry, backprop_conformance.adapters.selfcheck
import backprop_conformance.conformance.cases, backprop_conformance.conformance.cells, backprop_conformance.conformance.known_defects
import backprop_conformance.conformance.plugin, backprop_conformance.reference.model, backprop_conformance.reference.vectorized
import backprop_conformance.reference.error_bound, backprop_conformance.conformance.api
from backprop_conformance.adapters.registry import known_specs
print(sorted(known_specs()), {name: spec.missing() for name, spec in known_specs().items()})
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "jax", "jaxlib", "tensorflow", "keras", "mlx", "flax")))
"""


def test_importing_the_suite_imports_no_framework(tmp_path: Path) -> None:
    done = run_python("-c", IMPORTS_NO_FRAMEWORK, cwd=PACKAGE_ROOT, env=clean_environment(tmp_path))
    assert done.returncode == 0, done.stderr
    listed, frameworks = done.stdout.strip().splitlines()
    assert listed.startswith("['flax', 'jax', 'keras', 'mlx', ") and "'torch'" in listed, listed
    assert frameworks == "[]", f"imported {frameworks}"


# Steering with hypothesis.target: only where hypothesis says it is obvious (conformance.trial.STEER_FROM).


def test_the_property_steers_with_target_from_ten_thousand_examples_unless_the_target_phase_is_off() -> None:
    from hypothesis import Phase, settings

    from backprop_conformance.conformance.trial import steers

    assert not steers(settings(max_examples=100)), "the default profile (100 examples) must not pay for steering"
    assert not steers(settings(max_examples=2000)), "the thorough profile (2,000 examples) must not pay for steering"
    assert not steers(settings(max_examples=9999))
    assert steers(settings(max_examples=10_000)) and steers(settings(max_examples=20_000))
    assert not steers(settings(max_examples=20_000, phases=[Phase.generate, Phase.shrink])), "Phase.target left out turns steering off"
