"""Fixed test networks shared by the adapter tests that need the same few shapes in every format (TensorFlow, Keras)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backprop_conformance.conformance.problems import Problem
from backprop_conformance.reference.model import Batch, Network


@dataclass(frozen=True)
class Architecture:
    """A fixed test network: widths (n(1), ..., n(L)), batch size, and the scale of its normal(0, scale²) parameters."""

    name: str
    widths: tuple[int, ...]
    batch_size: int
    scale: float = 1.0

    def problem(self, dtype: str, seed: int) -> Problem:
        """The network and batch drawn from ``seed`` (each test module keeps its own), rounded to ``dtype``."""
        rng = np.random.default_rng([seed, len(self.widths), self.batch_size])
        n = self.widths
        weights = [self.scale * rng.standard_normal((n[i + 1], n[i])) for i in range(len(n) - 1)]
        biases = [self.scale * rng.standard_normal(n[i + 1]) for i in range(len(n) - 1)]
        batch = Batch(rng.standard_normal((self.batch_size, n[0])), rng.uniform(size=(self.batch_size, n[-1])))
        return Problem.rounded(Network.from_lists(weights, biases), batch, dtype)


ARCHITECTURES = (
    Architecture("L2", (3, 2), 1),
    Architecture("width1", (1, 1, 1, 1), 7),
    Architecture("deep-square", (4, 4, 4, 4, 4, 4, 4), 7),
    Architecture("saturated", (4, 5, 3), 7, scale=30.0),
)
