"""The suite's power, measured: ``pytest conformance`` with its default profile fails every planted bug and passes correct code.

One subprocess runs the real suite, exactly as a user runs it (``python -m pytest conformance``, no CI
variables so Hypothesis' default profile, a fresh hypothesis database) against the whole catalogue of
:mod:`tests.mutants` at once, through :mod:`backprop_conformance.conformance.runner`. The tests read its
JSON report and its JUnit XML: every mutant's cells must fail, every correct variant's pass, and the
failure messages must say what a user needs (the parameter in the page's indices and the ratio; the
contract's specific complaint).
"""

from __future__ import annotations

import re

import pytest
from conftest import REPO_ROOT, replay_command, suite
from mutants import (
    CORRECT,
    MUTANTS,
    AccumulatesAcrossCalls,
    CostWithoutHalf,
    CrossEntropyShortcut,
    GradientInComputeFormat,
    LooseDeclaration,
    LossScaleNotRemoved,
    LossScaleRemovedTwice,
    ManualBackprop,
    MasterCopyNotTheParameter,
    MissingFirstLayer,
    ReturnsFloat64,
    SigmaTypo,
    TransposedLayout,
    TransposedSquareGradient,
    ZeroBiasGradient,
    backend_name,
    cells,
)

from backprop_conformance.conformance.runner import SuiteRun

CONTRACT_WORDING: dict[type[ManualBackprop], str] = {
    TransposedLayout: "(the framework's layout is transposed?)",
    ReturnsFloat64: "has dtype float64, expected float32",
    MissingFirstLayer: "a missing layer means a dropped gradient",
    AccumulatesAcrossCalls: "gradients must not accumulate",
    GradientInComputeFormat: "has dtype float16, expected float32 (the carrier of mixed-float16",
    LooseDeclaration: "which is not a bfloat16 value, yet the declared policy mixed-bfloat16 rounds matmul to bfloat16",
    MasterCopyNotTheParameter: "negating every parameter left every gradient unchanged: the gradients refer to a copy of the parameters",
}
"""The contract mutants and the phrase of the contract's checks (:mod:`backprop_conformance.adapters.selfcheck`, or the
base class's output check) that must name their bug."""

NAMES_PARAMETER = re.compile(r"worst: [wb]\^\d+_\S+: framework \S+, reference \S+, bound \S+, ratio \S+")
"""A gradient verdict's worst line: the parameter in the page's indices (w^3_12, b^2_1), both values, bound and ratio."""


def _name(adapter: type[ManualBackprop]) -> str:
    return adapter.name


@pytest.fixture(scope="module")
def mutants_run(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    args = [arg for adapter in (*CORRECT, *MUTANTS) for arg in ("--conformance-backend", backend_name(adapter))]
    return suite(tmp_path_factory.mktemp("conformance-run"), *args)


def _summary(run: SuiteRun, adapter: type[ManualBackprop]) -> str:
    return "\n".join(f"{o.test}: {o.outcome}\n{o.message[:2000]}" for o in run.items(cells(adapter)))


def test_names_are_unique() -> None:
    names = [a.name for a in (*CORRECT, *MUTANTS)]
    assert len(set(names)) == len(names), sorted(n for n in names if names.count(n) > 1)


def test_every_cell_ran(mutants_run: SuiteRun) -> None:
    """Each adapter got test_contract and test_gradients in each of its dtypes: nothing was skipped or deselected."""
    assert mutants_run.returncode == 1, f"expected exit status 1 (tests failed), got {mutants_run.explain()}"
    for adapter in (*CORRECT, *MUTANTS):
        want = {f"{test}[{cell}]" for test in ("test_contract", "test_gradients") for cell in cells(adapter)}
        got = {o.test for o in mutants_run.items(cells(adapter)) if o.outcome != "skipped"}
        assert want <= got, f"{adapter.__name__}: ran {sorted(got)}, expected {sorted(want)}"


@pytest.mark.parametrize("mutant", MUTANTS, ids=_name)
def test_mutant_is_caught(mutants_run: SuiteRun, mutant: type[ManualBackprop]) -> None:
    """Caught twice over: a failed test item, and every one of its cells reported as failed."""
    assert any(o.failed for o in mutants_run.items(cells(mutant))), (
        f"{mutant.__name__} ({mutant.__doc__}) passed every test:\n{_summary(mutants_run, mutant)}"
    )
    assert mutants_run.report is not None, mutants_run.explain()
    statuses = {cell: mutants_run.report.cell(cell).status for cell in cells(mutant)}  # type: ignore[union-attr]
    assert any(status == "failed" for status in statuses.values()), f"{mutant.__name__}: report statuses {statuses}"


@pytest.mark.parametrize("variant", CORRECT, ids=_name)
def test_correct_variant_passes(mutants_run: SuiteRun, variant: type[ManualBackprop]) -> None:
    outcomes = [o for o in mutants_run.items(cells(variant)) if o.test.startswith(("test_contract[", "test_gradients["))]
    assert outcomes, f"{variant.__name__} did not run"
    assert all(o.outcome == "passed" for o in outcomes), f"correct {variant.__name__} failed:\n{_summary(mutants_run, variant)}"
    assert mutants_run.report is not None, mutants_run.explain()
    for cell in cells(variant):
        result = mutants_run.report.cell(cell)
        assert result is not None and result.status == "passed" and result.examples >= 100, result


@pytest.mark.parametrize("mutant", list(CONTRACT_WORDING), ids=_name)
def test_contract_mutant_is_named_by_the_contract(mutants_run: SuiteRun, mutant: type[ManualBackprop]) -> None:
    contract = [o for o in mutants_run.items(cells(mutant)) if o.test.startswith("test_contract[") and o.failed]
    assert contract, f"{mutant.__name__}: test_contract passed in every cell:\n{_summary(mutants_run, mutant)}"
    wording = CONTRACT_WORDING[mutant]
    for outcome in contract:
        assert "AdapterContractError" in outcome.message, outcome.message[:2000]
        assert wording in outcome.message, f"{outcome.test}: message lacks {wording!r}:\n{outcome.message[:2000]}"
        assert f"adapter {mutant.name!r}" in outcome.message, outcome.message[:2000]
    assert mutants_run.report is not None
    assert all(mutants_run.report.cell(o.cell).contract == "failed" for o in contract)  # type: ignore[union-attr]


NAMED_IN_MESSAGE = (SigmaTypo, CostWithoutHalf, CrossEntropyShortcut, TransposedSquareGradient, ZeroBiasGradient)


@pytest.mark.parametrize("mutant", NAMED_IN_MESSAGE, ids=_name)
def test_gradient_failure_names_the_parameter(mutants_run: SuiteRun, mutant: type[ManualBackprop]) -> None:
    gradients = [o for o in mutants_run.items(cells(mutant)) if o.test.startswith("test_gradients[") and o.failed]
    assert gradients, f"{mutant.__name__}: test_gradients passed in every cell:\n{_summary(mutants_run, mutant)}"
    for outcome in gradients:
        assert NAMES_PARAMETER.search(outcome.message), f"{outcome.test}: no 'worst: w^l_jk ... ratio' line:\n{outcome.message[:2000]}"


@pytest.mark.parametrize(
    ("mutant", "named"),
    [
        # The scale shows exactly where a gradient exceeds its own bound; where none does, only its least value shows.
        # It is 2^16 unless that overflowed the example, which the mutant then retries at 2^15, 2^14, ... as GradScaler does.
        (
            LossScaleNotRemoved,
            r"loss scale: every gradient is (2\^(1[0-6]|[1-9]) times the reference|.* for k = \d+ and above).*: a loss scale of ",
        ),
        (LossScaleRemovedTwice, r"loss scale: .*a loss scale of 2\^16 removed twice"),
    ],
    ids=["kept", "twice"],
)
def test_a_loss_scale_left_in_is_named(mutants_run: SuiteRun, mutant: type[ManualBackprop], named: str) -> None:
    failed = [o for o in mutants_run.items(cells(mutant)) if o.test.startswith("test_gradients[") and o.failed]
    assert failed and all(re.search(named, o.message) for o in failed), _summary(mutants_run, mutant)


def test_zero_gradient_is_called_out(mutants_run: SuiteRun) -> None:
    failed = [o for o in mutants_run.items(cells(ZeroBiasGradient)) if o.test.startswith("test_gradients[") and o.failed]
    assert failed and all("framework returned exactly 0" in o.message for o in failed), _summary(mutants_run, ZeroBiasGradient)


def test_reproducer_replays_against_any_adapter(mutants_run: SuiteRun) -> None:
    """A case file written by the failing run replays without hypothesis: the correct adapter passes it, the mutant fails it."""
    found = sorted(mutants_run.case_dir.glob(f"{CrossEntropyShortcut.name}-manual-float64-shrunk-*.json"))
    assert found, (
        f"no reproducer for {CrossEntropyShortcut.name} in {mutants_run.case_dir}: {sorted(p.name for p in mutants_run.case_dir.glob('*'))}"
    )
    for adapter, status in ((ManualBackprop, 0), (CrossEntropyShortcut, 1)):
        command = (str(found[0]), "--backend", backend_name(adapter))
        done = replay_command(*command, cwd=REPO_ROOT, tmp=mutants_run.workdir)
        assert done.returncode == status, (
            f"replay {' '.join(command)} exited {done.returncode}, expected {status}:\n{done.stdout}{done.stderr}"
        )
        assert ("PASS " if status == 0 else "FAIL ") in done.stdout, done.stdout
