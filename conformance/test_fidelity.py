"""Fidelity tier (marker ``fidelity``): exactness against the high-precision oracle, beyond conformance.

Known upstream defects are strict xfails from ``known_defects.toml``: when a framework fixes one, the
test XPASSes, the run fails, and the entry can be removed. See :mod:`backprop_conformance.conformance.fidelity`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # annotations only: the tests get everything they use from fixtures
    from backprop_conformance.conformance.cells import Cell
    from backprop_conformance.conformance.checks import Checks


@pytest.mark.fidelity
def test_sigmoid_prime_fidelity(cell: Cell, fidelity_case: str, conformance: Checks) -> None:
    """∂C/∂b^2_j = (a_j − y_j) σ′(z_j) on single units is exact to a few ulps, for z across ``fidelity_case``."""
    conformance.check_fidelity("test_sigmoid_prime_fidelity", cell, fidelity_case)


@pytest.mark.fidelity
def test_network_fidelity(cell: Cell, fidelity_case: str, conformance: Checks) -> None:
    """A small network's gradients are within the error bound of a computation with an exact-quality σ′."""
    conformance.check_fidelity("test_network_fidelity", cell, fidelity_case)
