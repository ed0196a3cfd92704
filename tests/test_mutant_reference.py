"""The reference's agreement check can fail: it fails deliberately wrong references, through every oracle.

A check that has only ever been seen passing proves nothing. Each mutant below replaces one function of
:mod:`backprop_conformance.reference.vectorized` with a plausible mistake -- most of them mistakes the page itself invites --
and :func:`strategies.reference_verdicts`, the very check ``test_reference_agreement.py`` runs, must
report it against *each* oracle (literal transcription, complex step, mpmath) independently: the oracles
do not import backprop_conformance.reference.vectorized, so the mutation cannot reach them.

The networks are generic random ones (no zero, repeated or symmetric entries), with equal hidden and
output widths so that the transposed-weight mutant still has valid shapes, and batches of more than one
example so that a mean-instead-of-sum mutant is visible. Each mutant accepts the ``out`` buffer that
``backprop`` offers and ignores it, returning a new array, which ``backprop`` supports by keeping what
each equation returns.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from strategies import ORACLES, random_case, reference_verdicts

from backprop_conformance.reference import vectorized
from backprop_conformance.reference.model import Batch, Network
from backprop_conformance.reference.sigmoid import sigmoid


def _sigma_for_sigma_prime(monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's typo: σ(z^l_j) where σ′(z^l_j) is meant, in every δ^l_j (the forward pass hands σ to the backward one)."""
    monkeypatch.setattr(vectorized, "activation", lambda z_l, out=None: (sigmoid(z_l), sigmoid(z_l)))


def _bias_left_out_of_z(monkeypatch: pytest.MonkeyPatch) -> None:
    """z^l_j = Σ_k w^l_jk a^{l−1}_k, forgetting + b^l_j: the bias contributes nothing forward."""
    monkeypatch.setattr(vectorized, "weighted_input", lambda w_l, a_prev, b_l, out=None: a_prev @ w_l.T)


def _bias_gradient_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's ??? left unfilled: ∂C/∂b^l_j reported as 0."""
    monkeypatch.setattr(vectorized, "bias_gradient", lambda delta_l, out=None: np.zeros(delta_l.shape[1]))


def _transposed_weight_in_backward_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Σ_i δ^{l+1}_i w^{l+1}_ji instead of w^{l+1}_ij: the classic transposition, shape-compatible on square layers."""
    monkeypatch.setattr(vectorized, "hidden_activation_gradient", lambda w_next, delta_next, out=None: delta_next @ w_next.T)


def _sign_of_output_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    """∂C/∂a^L_j = y_j − a^L_j: differentiating (y − a)² and dropping the inner derivative's minus sign."""
    monkeypatch.setattr(vectorized, "output_activation_gradient", lambda a_L, y, out=None: y - a_L)


def _mean_over_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """∂C/∂w^l_jk averaged over the batch instead of summed (a different cost, 1/B · C)."""
    monkeypatch.setattr(vectorized, "weight_gradient", lambda delta_l, a_prev, out=None: delta_l.T @ a_prev / delta_l.shape[0])


def _one_part_in_a_billion(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ∂C/∂w^l_jk off by a relative 1e-9: far below any rtol a hand-picked tolerance would use."""
    monkeypatch.setattr(vectorized, "weight_gradient", lambda delta_l, a_prev, out=None: (delta_l.T @ a_prev) * (1 + 1e-9))


MUTANTS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "sigma for sigma prime": _sigma_for_sigma_prime,
    "bias left out of z": _bias_left_out_of_z,
    "bias gradient missing": _bias_gradient_missing,
    "transposed weight in backward step": _transposed_weight_in_backward_step,
    "sign of output gradient": _sign_of_output_gradient,
    "mean over batch": _mean_over_batch,
    "one part in a billion": _one_part_in_a_billion,
}

NETS: list[tuple[Network, Batch]] = [
    random_case(seed, widths, batch_size)
    for seed, widths, batch_size in [(11, (3, 4, 4, 4), 3), (12, (2, 3, 3), 2), (13, (5, 2, 2, 2, 2), 4)]
]


@pytest.mark.parametrize("case", range(len(NETS)))
def test_the_unmutated_reference_passes_on_the_mutant_test_nets(case: int) -> None:
    """Control: on these same nets the correct reference agrees with every oracle, so failures below are the mutants'."""
    verdicts = reference_verdicts(*NETS[case])
    assert all(v.ok for v in verdicts), "\n".join(str(v) for v in verdicts)


@pytest.mark.parametrize("case", range(len(NETS)))
@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_every_oracle_reports_the_mutant(mutant: str, case: int, monkeypatch: pytest.MonkeyPatch) -> None:
    MUTANTS[mutant](monkeypatch)
    verdicts = reference_verdicts(*NETS[case])
    assert [v.what for v in verdicts] == [f"vectorized vs {name}" for name in ORACLES]
    passed = [v.what for v in verdicts if v.ok]
    assert not passed, f"mutant {mutant!r} went unnoticed by: {passed}"
