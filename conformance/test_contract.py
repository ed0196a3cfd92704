"""The adapter contract, once per cell: layout round trip, output shapes and dtypes, no state between calls.

These run before trusting any verdict of the cell: a transposed layout or a gradient returned in the
wrong dtype is the adapter's bug, and is reported as such (see :mod:`backprop_conformance.adapters.selfcheck`).
"""

from __future__ import annotations

import numpy as np
import pytest

from backprop_conformance.adapters.selfcheck import check_adapter
from backprop_conformance.conformance.cells import Cell
from backprop_conformance.conformance.plugin import adapter_for
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.conformance.timing import timed
from backprop_conformance.reference.model import Batch, Network


def contract_problem(dtype: str) -> Problem:
    """A small network with a non-square and a square layer (so a transposed layout shows in both shape and value)."""
    rng = np.random.default_rng(20181109)
    widths = (3, 4, 4, 2)
    weights = [rng.standard_normal((widths[i + 1], widths[i])) for i in range(3)]
    biases = [rng.standard_normal(widths[i + 1]) for i in range(3)]
    batch = Batch(rng.standard_normal((5, widths[0])), rng.uniform(size=(5, widths[-1])))
    return Problem.rounded(Network.from_lists(weights, biases), batch, dtype)


def test_contract(cell: Cell, request: pytest.FixtureRequest) -> None:
    adapter = adapter_for(request.config, cell).adapter
    problem = contract_problem(cell.dtype)
    with timed("framework"):
        check_adapter(adapter, cell.path, cell.dtype, cell.device, problem.network, problem.batch)
