"""The example plug-in runs through the whole suite by the command its docstring and docs/adapters.md give."""

from __future__ import annotations

from pathlib import Path

from backprop_conformance.conformance.runner import run_suite

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python -m pytest conformance --conformance-backend backprop_conformance.adapters.example_numpy:NumpyAdapter"


def test_documented_command_is_the_one_tested() -> None:
    assert COMMAND in (ROOT / "adapters" / "example_numpy.py").read_text()
    assert COMMAND in (ROOT / "docs" / "adapters.md").read_text()


def test_example_adapter_passes_the_whole_suite(tmp_path: Path) -> None:
    """Every test, the fidelity tier included: the example computes σ′ = σ(z)σ(−z), exact where a(1 − a) is not."""
    args = COMMAND.split()[4:]
    done = run_suite([*args, "--conformance-max-examples", "30"], tmp_path)
    assert done.returncode == 0 and done.report is not None, done.explain()
    cells = {c.id: c for c in done.report.cells}
    assert set(cells) == {"numpy-example-manual-float64", "numpy-example-manual-float32", "numpy-example-manual-float16"}
    for c in cells.values():
        assert (c.status, c.examples, c.failures, c.contract) == ("passed", 30, 0, "passed"), c
