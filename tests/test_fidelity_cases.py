"""Fidelity case files (conformance/fidelity_cases.py): a fidelity test id read as test, case and cell, and the
case file made from it, which replay judges with that test's exactness bound, not the conformance bound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backprop_conformance.conformance import cases, fidelity, fidelity_cases
from backprop_conformance.conformance.__main__ import main as commands
from backprop_conformance.conformance.cells import Cell


@pytest.mark.parametrize(
    ("test_id", "wanted"),
    [
        (
            "test_sigmoid_prime_fidelity[jax-jit-float64-saturated]",
            ("test_sigmoid_prime_fidelity", "saturated", Cell("jax", "jit", "float64")),
        ),
        (
            "test_network_fidelity[keras-tensorflow-bfloat16-saturated-output]",
            ("test_network_fidelity", "saturated-output", Cell("keras", "tensorflow", "bfloat16")),
        ),
        (
            "test_sigmoid_prime_fidelity[torch-compile-float16-positive-tail]",
            ("test_sigmoid_prime_fidelity", "positive-tail", Cell("torch", "compile", "float16")),
        ),
        (
            "test_sigmoid_prime_fidelity[jax-per-example-float32-negative-tail]",
            ("test_sigmoid_prime_fidelity", "negative-tail", Cell("jax", "per-example", "float32")),
        ),
        (
            "test_sigmoid_prime_fidelity[numpy-example-manual-float32-center]",
            ("test_sigmoid_prime_fidelity", "center", Cell("numpy-example", "manual", "float32")),
        ),
    ],
)
def test_a_fidelity_test_id_names_its_test_case_and_cell(test_id: str, wanted: tuple[str, str, Cell]) -> None:
    assert fidelity_cases.parse(test_id) == wanted


@pytest.mark.parametrize(
    ("test_id", "message"),
    [
        ("jax-jit-float64-saturated", "is not a fidelity test id; give TEST[BACKEND-PATH-FORMAT-CASE]"),
        ("test_gradients[jax-jit-float64]", "'test_gradients' is not a fidelity test; the suite has test_sigmoid_prime_fidelity"),
        (
            "test_network_fidelity[jax-jit-float64-saturated]",
            "the id must end with one of test_network_fidelity's cases: unsaturated, saturated-output",
        ),
        ("test_sigmoid_prime_fidelity[jax-jit-mixed-saturated]", "the cell 'jax-jit-mixed' names none of the formats float64"),
        ("test_sigmoid_prime_fidelity[jax-float64-saturated]", "the cell 'jax-float64' names none of the formats"),
        (
            "test_sigmoid_prime_fidelity[tensorflow-eager-float32-onednn-off-saturated]",
            "'onednn-off' follows the format; bisect --fidelity takes cells on the CPU at the native dispatch level",
        ),
    ],
)
def test_an_id_that_is_not_a_fidelity_cell_is_refused(test_id: str, message: str) -> None:
    with pytest.raises(fidelity_cases.FidelityIdError) as raised:
        fidelity_cases.parse(test_id)
    assert message in str(raised.value)


def test_the_case_file_holds_the_test_s_own_problem(tmp_path: Path) -> None:
    path = fidelity_cases.write("test_sigmoid_prime_fidelity[ok-stable-manual-float32-saturated]", tmp_path)
    case = cases.read(path)
    want = fidelity.problem_of("test_sigmoid_prime_fidelity", "saturated", "float32")
    assert case.fidelity == ("test_sigmoid_prime_fidelity", "saturated") and case.kind == "fixed" and case.adapter == "ok-stable"
    assert case.cell == Cell("ok-stable", "manual", "float32")
    assert np.array_equal(case.problem.batch.x, want.batch.x) and np.array_equal(case.problem.network.w[2], want.network.w[2])


@pytest.mark.parametrize(("adapter", "status", "verdict"), [("mutants:ManualBackprop", 0, "PASS"), ("mutants:OutputSigmaPrime", 1, "FAIL")])
def test_replay_judges_a_fidelity_case_with_its_exactness_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], adapter: str, status: int, verdict: str
) -> None:
    """σ′ = a(1 − a) is within the conformance bound but 0 where σ(z) rounds to 1: the fidelity case fails it."""
    path = fidelity_cases.write("test_sigmoid_prime_fidelity[ok-stable-manual-float64-saturated]", tmp_path)
    assert commands(["replay", str(path), "--backend", adapter]) == status
    out = capsys.readouterr().out
    assert "judged by the fidelity tier's exactness bound: test_sigmoid_prime_fidelity, case saturated" in out
    assert f"{verdict} " in out and "exactness bound" in out.splitlines()[-1 if status == 0 else 2], out


def test_replay_in_another_format_judges_the_test_s_problem_in_that_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """float64's saturated z rounded to float32 is not float32's saturated region: the replay takes float32's own problem."""
    path = fidelity_cases.write("test_sigmoid_prime_fidelity[ok-stable-manual-float64-saturated]", tmp_path)
    assert commands(["replay", str(path), "--backend", "mutants:OutputSigmaPrime", "--dtype", "float32"]) == 1
    out = capsys.readouterr().out
    assert "FAIL ok-output-sigma-prime-manual-float32" in out, out
    assert f"max |z| = {fidelity.problem_of('test_sigmoid_prime_fidelity', 'saturated', 'float32').describe().rsplit('= ', 1)[1]}" in out
