"""The project's fixed test networks: hand-written ones with chosen values, and seeded random architectures.

Every test that needs a particular network and batch, rather than hypothesis' arbitrary ones
(:mod:`tests.strategies`), takes it from here, so that "the L=2 network", "the deep one" or "the
saturated one" means the same thing in every adapter's tests. Values are rounded to a format and
widened back to float64 in one way only, :meth:`Problem.rounded`: the point a computation in that
format sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backprop_conformance.conformance.problems import Problem
from backprop_conformance.reference.model import Batch, Network


def tiny_problem(dtype: str = "float64") -> Problem:
    """Widths (2, 1), one example, every value exact in every format: the network of hand-made case files."""
    network = Network({2: np.array([[0.5, -0.25]])}, {2: np.array([0.125])})
    return Problem(network, Batch(np.array([[1.0, 2.0]]), np.array([[0.75]])), dtype)


def inexact_problem(dtype: str = "float64") -> Problem:
    """Widths (2, 2, 1), two examples, whose parameters and data (0.1, 1/3, ...) are float64 values but not float32 ones."""
    network = Network(
        {2: np.array([[0.1, 1 / 3], [-0.7, 0.2]]), 3: np.array([[0.3, -1 / 7]])}, {2: np.array([0.05, -0.1]), 3: np.array([0.1])}
    )
    return Problem(network, Batch(np.array([[0.9, -0.3], [1 / 3, 0.6]]), np.array([[0.1], [0.7]])), dtype)


def rounded(dtype: str, network: Network, batch: Batch) -> tuple[Network, Batch]:
    """The point a ``dtype`` computation sees, in float64 (:meth:`Problem.rounded`), as an adapter's two arguments."""
    problem = Problem.rounded(network, batch, dtype)
    return problem.network, problem.batch


@dataclass(frozen=True)
class Architecture:
    """A seeded random network: widths (n(1), ..., n(L)), batch size B, and how its parameters are drawn.

    Parameters are normal(0, scale²). With ``saturate_layer_2`` the parameters of layer 2 alone are
    scaled by 60 instead, so that most |z^2_j| exceed 40 (where σ(z) rounds to 1 in float32 and
    float64 and σ′ computed as a(1 − a) is 0) while the later layers, and their gradients, stay informative.
    """

    name: str
    widths: tuple[int, ...]
    batch_size: int = 1
    scale: float = 1.0
    saturate_layer_2: bool = False

    def draw(self, seed: int) -> tuple[Network, Batch]:
        """The float64 network and batch drawn from ``seed`` (each test module keeps its own), not yet rounded."""
        rng = np.random.default_rng([seed, len(self.widths), self.batch_size])
        n = self.widths
        weights = [self.scale * rng.standard_normal((n[i + 1], n[i])) for i in range(len(n) - 1)]
        biases = [self.scale * rng.standard_normal(n[i + 1]) for i in range(len(n) - 1)]
        if self.saturate_layer_2:
            weights[0], biases[0] = 60.0 * weights[0], 60.0 * biases[0]
        batch = Batch(rng.standard_normal((self.batch_size, n[0])), rng.uniform(size=(self.batch_size, n[-1])))
        return Network.from_lists(weights, biases), batch

    def problem(self, dtype: str, seed: int) -> Problem:
        """The network and batch drawn from ``seed``, rounded to ``dtype`` (held in float64)."""
        return Problem.rounded(*self.draw(seed), dtype)

    def with_batch_size(self, batch_size: int) -> Architecture:
        return Architecture(self.name, self.widths, batch_size, self.scale, self.saturate_layer_2)


ARCHITECTURES = (
    Architecture("L2", (3, 2), 1),
    Architecture("width1", (1, 1, 1, 1), 7),
    Architecture("deep-square", (4, 4, 4, 4, 4, 4, 4), 7),
    Architecture("saturated", (4, 5, 3), 7, scale=30.0),
)
"""The shapes every framework's tests check: L = 2, width 1, a deep square network (where a transposed w^l still has a
valid shape) and saturated units; few distinct shapes, since compiling frameworks pay once per shape."""
SATURATION = 40.0
"""|z| the saturated case must exceed: σ(z) rounds to 1 from z ≈ 16.6 in float32 and 36.7 in float64."""


def problem(dtype: str, widths: tuple[int, ...] = (3, 4, 2), batch_size: int = 5, seed: int = 0) -> tuple[Network, Batch]:
    """A seeded network of ``widths`` and a batch of ``batch_size``, rounded to ``dtype``: an adapter's two arguments."""
    return rounded(dtype, *Architecture("fixed", widths, batch_size).draw(seed))
