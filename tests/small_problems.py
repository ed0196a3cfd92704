"""Small fixed networks for the adapter tests: generic values from a seed, rounded to the format asked for."""

from __future__ import annotations

import itertools

import numpy as np

from backprop_conformance.conformance.api import rounded
from backprop_conformance.reference.model import Batch, Network


def problem(dtype: str, widths: tuple[int, ...] = (3, 4, 2), batch_size: int = 5, seed: int = 0) -> tuple[Network, Batch]:
    """Standard-normal parameters and inputs, targets in (0.05, 0.95), every value a ``dtype`` value."""
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal((n_out, n_in)) for n_in, n_out in itertools.pairwise(widths)]
    biases = [rng.standard_normal(n) for n in widths[1:]]
    batch = Batch(rng.standard_normal((batch_size, widths[0])), rng.uniform(0.05, 0.95, (batch_size, widths[-1])))
    return rounded(Network.from_lists(weights, biases), batch, dtype)
