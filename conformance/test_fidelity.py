"""Fidelity tier (marker ``fidelity``): exactness against the high-precision oracle, beyond conformance.

Known upstream defects are strict xfails from ``known_defects.toml``: when a framework fixes one, the
test XPASSes, the run fails, and the entry can be removed. See :mod:`backprop_conformance.conformance.fidelity`.
"""

from __future__ import annotations

import pytest

from backprop_conformance.adapters.selfcheck import check_output
from backprop_conformance.conformance.cells import Cell
from backprop_conformance.conformance.fidelity import (
    exact_gradients,
    network_problem,
    network_tolerance,
    regions,
    unit_problem,
    unit_tolerance,
)
from backprop_conformance.conformance.plugin import adapter_for
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.conformance.timing import timed
from backprop_conformance.conformance.verdict import judge_exactness
from backprop_conformance.reference.error_bound import Precision
from backprop_conformance.reference.model import Gradients


def _judge(request: pytest.FixtureRequest, cell: Cell, problem: Problem, exact: Gradients, bound: Gradients) -> None:
    adapter = adapter_for(request.config, cell).adapter
    with timed("framework"):
        output = adapter.run(problem.network, problem.batch, dtype=cell.dtype, path=cell.path, device=cell.device)
    check_output(cell.backend, cell.path, cell.dtype, problem.network, problem.batch, output)
    verdict = judge_exactness(cell.id, problem, output, exact, bound)
    if not verdict.passed:
        raise AssertionError(verdict.message())  # the message alone: no introspection of the Verdict object


@pytest.mark.fidelity
def test_sigmoid_prime_fidelity(cell: Cell, fidelity_case: str, request: pytest.FixtureRequest) -> None:
    """∂C/∂b^2_j = (a_j − y_j) σ′(z_j) on single units is exact to a few ulps, for z across ``fidelity_case``."""
    region = next(r for r in regions(cell.dtype) if r.name == fidelity_case)
    problem = unit_problem(cell.dtype, region)
    with timed("reference"):
        exact = exact_gradients(problem)
    _judge(request, cell, problem, exact, unit_tolerance(cell.dtype, exact))


@pytest.mark.fidelity
def test_network_fidelity(cell: Cell, fidelity_case: str, request: pytest.FixtureRequest) -> None:
    """A small network's gradients are within the error bound of a computation with an exact-quality σ′."""
    caps = adapter_for(request.config, cell).capabilities
    assert caps is not None
    problem = network_problem(cell.dtype, fidelity_case)
    bound = network_tolerance(problem, Precision.of(cell.dtype, caps.accumulation_of(cell.dtype)))
    with timed("reference"):
        exact = exact_gradients(problem)
    _judge(request, cell, problem, exact, bound)
