"""The adapter contract, once per cell: layout round trip, output shapes and dtypes, no state between calls.

These run before trusting any verdict of the cell: a transposed layout or a gradient returned in the
wrong dtype is the adapter's bug, and is reported as such (see :mod:`backprop_conformance.adapters.selfcheck`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the tests get everything they use from fixtures
    from backprop_conformance.conformance.cells import Cell
    from backprop_conformance.conformance.checks import Checks


def test_contract(cell: Cell, conformance: Checks) -> None:
    conformance.check_contract(cell)
