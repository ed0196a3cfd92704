"""The page's activation σ and its derivative σ′, evaluated so that no z overflows or cancels.

σ(z) = 1 / (1 + e^(−z)) is the page's "sigmoid function" (a^l_j = σ(z^l_j)).

Two numerical hazards, and how they are avoided:

* Overflow: e^(−z) overflows for z < −709 in float64 (and for z < −88 in float32). Both branches
  below only ever exponentiate −|z| ≤ 0, so e = e^(−|z|) lies in (0, 1] and nothing overflows.
* Cancellation in σ′: the textbook σ′(z) = σ(z)(1 − σ(z)) computes 1 − σ(z), which is exactly 0 once
  σ(z) rounds to 1 (z ≳ 36.7 in float64, z ≳ 16.6 in float32), although the true σ′ is still a
  perfectly representable positive number. The identity 1 − σ(z) = σ(−z) removes the subtraction:
  σ′(z) = σ(z)·σ(−z), a product of two values each accurate to a few ulps, so σ′ is accurate to a few
  ulps *relative* for every z until it underflows.
"""

from __future__ import annotations

import math

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    """σ(z) elementwise, in the dtype of ``z``, without overflow for any finite z.

    With e = e^(−|z|): σ(z) = 1/(1 + e) for z ≥ 0 and σ(z) = e/(1 + e) for z < 0; the numerator is
    ``np.maximum(e, z ≥ 0)``, as in :func:`sigmoid_and_prime` (e ≤ 1), one call instead of building ones for ``np.where``.
    """
    z = np.asarray(z)
    e = np.exp(-np.abs(z))
    return np.maximum(e, z >= 0) / (1 + e)


def sigmoid_prime(z: np.ndarray) -> np.ndarray:
    """σ′(z) = σ(z)·σ(−z), elementwise, accurate to a few ulps relative for every z (see module docstring).

    The product is symmetric in z, so it equals σ(|z|)·σ(−|z|) = 1/(1 + e) · e/(1 + e) with
    e = e^(−|z|): one exponential instead of the two that calling :func:`sigmoid` twice would cost.
    """
    e = np.exp(-np.abs(np.asarray(z)))
    d = 1 + e
    return (1 / d) * (e / d)


def sigmoid_scalar(z: float) -> float:
    """σ(z) for one Python float, same stable branches as :func:`sigmoid` (used by the literal transcription)."""
    e = math.exp(-abs(z))
    return (1.0 if z >= 0 else e) / (1.0 + e)


def sigmoid_prime_scalar(z: float) -> float:
    """σ′(z) = σ(z)·σ(−z) for one Python float."""
    return sigmoid_scalar(z) * sigmoid_scalar(-z)


def sigmoid_and_prime(z: np.ndarray, out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """σ(z) and σ′(z) from one exponential, bitwise equal to :func:`sigmoid` and :func:`sigmoid_prime`.

    The backward pass needs σ′ at every z the forward pass took σ of; sharing e = e^(−|z|) and working
    in place halves the elementwise cost.
    ``np.maximum(e, z ≥ 0)`` is the numerator of :func:`sigmoid` (1 for z ≥ 0, e otherwise, as e ≤ 1)
    without the cost of ``np.where``. ``out``, a pair of arrays shaped like ``z``, receives (σ, σ′)
    so that a caller holding one buffer for a whole backward pass does not allocate new ones; σ′ uses
    its buffer for 1 + e along the way, so neither may overlap ``z``.
    """
    z = np.asarray(z)
    s, prime = out if out is not None else (np.empty_like(z), np.empty_like(z))
    e = np.abs(z)
    np.negative(e, out=e)
    np.exp(e, out=e)
    d = np.add(e, 1, out=prime)
    np.maximum(e, z >= 0, out=s)
    np.divide(s, d, out=s)
    np.divide(e, d, out=e)
    np.divide(1, d, out=d)
    np.multiply(d, e, out=prime)
    return s, prime
