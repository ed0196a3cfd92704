"""The example plug-in runs through the whole suite by the command its docstring and docs/adapters.md give."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import suite

from backprop_conformance.adapters.base import RequestError
from backprop_conformance.adapters.example_numpy import NumpyAdapter
from backprop_conformance.conformance.problems import contract_problem
from backprop_conformance.reference.model import Batch, Network

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python -m pytest conformance --conformance-backend backprop_conformance.adapters.example_numpy:NumpyAdapter"


def test_documented_command_is_the_one_tested() -> None:
    assert COMMAND in (ROOT / "adapters" / "example_numpy.py").read_text()
    assert COMMAND in (ROOT / "docs" / "adapters.md").read_text()


def test_example_adapter_passes_the_whole_suite(tmp_path: Path) -> None:
    """Every test, the fidelity tier included: the example computes σ′ = σ(z)σ(−z), exact where a(1 − a) is not."""
    args = COMMAND.split()[4:]
    done = suite(tmp_path, *args, "--conformance-max-examples", "30", marks=None)
    assert done.returncode == 0 and done.report is not None, done.explain()
    cells = {c.id: c for c in done.report.cells}
    assert set(cells) == {"numpy-example-manual-float64", "numpy-example-manual-float32", "numpy-example-manual-float16"}
    for c in cells.values():
        assert (c.status, c.examples, c.failures, c.contract) == ("passed", 30, 0, "passed"), c


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("array", ["w^2", "w^4", "b^2", "b^4", "x", "y"])
def test_a_request_names_the_one_array_that_is_not_in_its_format(array: str, dtype: str) -> None:
    """The request check looks at every value at once first; the one array that fails must still be the one named.

    One element of one array is moved half an ulp of ``dtype`` off its grid, every other value is a ``dtype`` value.
    """
    problem = contract_problem(dtype)
    w = {l: np.array(v) for l, v in problem.network.w.items()}
    b = {l: np.array(v) for l, v in problem.network.b.items()}
    x, y = np.array(problem.batch.x), np.array(problem.batch.y)
    target = {"w^2": w[2], "w^4": w[4], "b^2": b[2], "b^4": b[4], "x": x, "y": y}[array]
    flat = target.reshape(-1)
    flat[-1] += np.spacing(np.asarray(flat[-1], dtype=np.dtype(dtype))).astype(np.float64) / 2
    network, batch = Network(w, b), Batch(x, y)
    adapter = NumpyAdapter()
    named = {"x": "x (the inputs)", "y": "y (the targets)"}.get(array, array)
    expected = rf"^adapter 'numpy-example': {re.escape(named)} holds values that are not exactly representable in {dtype}"
    with pytest.raises(RequestError, match=expected):
        adapter.compute(network, batch, dtype=dtype, path="manual")
    adapter.compute(problem.network, problem.batch, dtype=dtype, path="manual")  # the same request, unchanged, is valid
