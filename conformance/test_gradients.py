"""The conformance property: for every network, each cell's gradients are within the bound.

One test item per cell (``test_gradients[torch-eager-float32]``). Hypothesis draws networks
(:mod:`backprop_conformance.conformance.strategies`), steers toward the largest error/bound ratio with
``target`` in runs large enough for it to pay (:data:`~backprop_conformance.conformance.trial.STEER_FROM`),
and shrinks a failure to the smallest failing network; then the covering design's networks run, which reach
every class of every role a dimension plays in the kernels (:mod:`backprop_conformance.conformance.coverage`).
A failure also writes reproducer case files: the shrunk example and the worst one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # annotations only: the tests get everything they use from fixtures
    from backprop_conformance.conformance.cells import Cell
    from backprop_conformance.conformance.checks import Checks


def test_gradients(cell: Cell, conformance: Checks, request: pytest.FixtureRequest) -> None:
    """Every ∂C/∂w^l_jk and ∂C/∂b^l_j, and the cost, agree with the reference within K·(E_framework + E_reference)."""
    conformance.check_gradients(request.node, cell)
