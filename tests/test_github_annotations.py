"""Failing cells become GitHub Actions annotations (``::error``), with the evidence a bug report needs, on GitHub only."""

from __future__ import annotations

from pathlib import Path

from conftest import suite
from reports import F32, F64, cell, run

from backprop_conformance.conformance.github_annotations import on_github_actions, workflow_commands

WORST = {"name": "w^2_13", "framework": 0.5, "reference": 0.25, "bound": 1e-7, "ratio": 2.5e6}


def test_a_failing_cell_is_one_error_with_its_evidence_on_one_line() -> None:
    failing = cell(
        F32,
        0.2,
        2.5e6,
        worst_element=WORST,
        problems=["the adapter contract failed (test_contract)"],
        case_files=["conformance-cases/fake-eager-float32-shrunk-0123456789.json"],
        replay="backprop-conformance replay conformance-cases/fake-eager-float32-shrunk-0123456789.json",
    )
    commands = workflow_commands(run(failing, cell(F64, 0.1)))
    assert len(commands) == 1, "the passing cell gets no annotation"
    command = commands[0]
    assert "\n" not in command and "\r" not in command, "a raw newline would end the workflow command"
    assert command.startswith("::error title=backprop-conformance fake-eager-float32%3A failed::")
    message = command.split("::", 2)[2]
    assert message.split("%0A") == [
        "fake-eager-float32: failed (1 failing of 2 examples; contract passed)",
        "worst: w^2_13: framework 0.5, reference 0.25, bound 1e-07, ratio 2.5e+06",
        "the adapter contract failed (test_contract)",
        "case file: conformance-cases/fake-eager-float32-shrunk-0123456789.json",
        "replay: backprop-conformance replay conformance-cases/fake-eager-float32-shrunk-0123456789.json",
    ]


def test_percent_signs_and_newlines_are_escaped_and_known_defects_are_warnings() -> None:
    defect = cell(F64, 3.0, status="known defect", problems=["100% wrong\nsecond line"])
    (command,) = workflow_commands(run(defect))
    assert command.startswith("::warning title=backprop-conformance fake-eager-float64%3A known defect::")
    assert "100%25 wrong%0Asecond line" in command


def test_incomplete_cells_are_errors_and_nothing_is_said_of_a_green_run() -> None:
    assert workflow_commands(run(cell(F32, 0.3), cell(F64, 0.1))) == []
    (command,) = workflow_commands(run(cell(F32, status="incomplete")))
    assert command.startswith("::error ")


def test_only_github_actions_gets_them() -> None:
    assert on_github_actions({"GITHUB_ACTIONS": "true"})
    assert not on_github_actions({"CI": "true"})
    assert not on_github_actions({})


def test_a_failing_run_on_github_prints_them_and_elsewhere_does_not(tmp_path: Path) -> None:
    args = ["--conformance-backend", "tests.mutants:ZeroBiasGradient", "--conformance-max-examples", "5"]
    on_github = suite(tmp_path / "github", *args, GITHUB_ACTIONS="true")
    assert on_github.returncode == 1, on_github.explain()
    errors = [line for line in on_github.output.splitlines() if line.startswith("::error title=backprop-conformance mut-zero-bias-manual-")]
    assert len(errors) == 2, on_github.output[-3000:]  # float64 and float32
    assert all("worst: b^" in line and "replay: " in line for line in errors), errors
    elsewhere = suite(tmp_path / "local", *args)
    assert elsewhere.returncode == 1 and "::error" not in elsewhere.output
