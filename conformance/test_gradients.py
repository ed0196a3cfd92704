"""The conformance property: for every generated network, each cell's gradients are within the bound.

One test item per cell (``test_gradients[torch-eager-float32]``); hypothesis draws the networks
(:mod:`backprop_conformance.conformance.strategies`), steers toward the largest error/bound ratio with ``target``, and
shrinks a failure to the smallest failing network. A failure also writes a reproducer case file.
"""

from __future__ import annotations

import pytest
from hypothesis import given, target
from hypothesis import strategies as st

from backprop_conformance.conformance.cells import Cell
from backprop_conformance.conformance.plugin import adapter_for, limits_for, record
from backprop_conformance.conformance.strategies import problems
from backprop_conformance.conformance.timing import timed
from backprop_conformance.conformance.verdict import run_and_judge

RATIO_CAP = 1e6
"""hypothesis.target needs a finite score; ratios beyond this are failures anyway."""


@given(data=st.data())
def test_gradients(cell: Cell, data: st.DataObject, request: pytest.FixtureRequest) -> None:
    """Every ∂C/∂w^l_jk and ∂C/∂b^l_j agrees with the reference within K·(E_framework + E_reference)."""
    adapter = adapter_for(request.config, cell).adapter
    with timed("generation"):
        problem = data.draw(problems(cell.dtype, limits_for(request.config)), label="problem")
    verdict = run_and_judge(adapter, cell, problem)
    record(request.config, request.node, cell, verdict)
    target(min(verdict.worst_ratio, RATIO_CAP), label="error/bound")
    if not verdict.passed:
        raise AssertionError(verdict.message())  # the message alone: no introspection of the Verdict object
