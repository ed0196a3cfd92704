"""The fidelity tier: is a framework's gradient *exact*, not merely within the conformance bound?

Conformance asks whether a framework's error is what its arithmetic permits; the bound therefore
allows for σ′ computed as a(1 − a), whose error is absolute (≈ u·a): relative to σ′ it grows like
u·e^z, and once σ(z) rounds to 1 (z ≳ 36.7 in float64) a(1 − a) is exactly 0 although the true σ′ is
a perfectly representable number. Fidelity asks for more: a result as accurate as the format allows,
judged against the high-precision oracle (:mod:`backprop_conformance.reference.mpmath_oracle`).

Two kinds of case, each in named regions of z so that test ids say where a framework stops being
exact:

* single units: an identity layer (w^2 = I, b^2 = 0, so z^2_j = x_j exactly) with one z per neuron;
  ∂C/∂b^2_j = (a_j − y_j) σ′(z_j) with y_j = 0 for z_j ≥ 0 and y_j = 1 below, so that |a − y| ≈ 1 and
  the gradient is σ′ itself up to a factor computed to a few ulps. Tolerance, derived for an exact z:
  σ (c_σ ulps), a − y (1 ulp), σ′ as σ(z)σ(−z) (2c_σ + 1 ulps), the product (1 ulp): (3c_σ + 3)u
  relative, times K, plus the underflow allowance;
* small networks (widths 3-4-2, batch 3), judged with the error bound of a computation whose σ′ is
  stable (:func:`backprop_conformance.reference.error_bound.error_bounds` with ``stable_sigma_prime``), against mpmath.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from backprop_conformance.adapters.base import AdapterOutput
from backprop_conformance.conformance import timing
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.conformance.verdict import Verdict, judge_exactness
from backprop_conformance.reference.dtypes import float_format, round_to
from backprop_conformance.reference.error_bound import C_SIGMA, K, Precision, error_bounds
from backprop_conformance.reference.model import Batch, Gradients, Network
from backprop_conformance.reference.mpmath_oracle import mpmath_backprop

POINTS_PER_REGION = 12


@dataclass(frozen=True)
class Region:
    """A named interval of z for one format."""

    name: str
    low: float
    high: float


def regions(dtype: str) -> tuple[Region, ...]:
    """The regions of z where σ′ behaves differently in ``dtype``.

    ``saturated`` starts where σ(z) rounds to 1 in the format (1 − σ(z) < u/2, z > ln(2/u)) and ends
    where σ′ would leave the normal range; ``positive-tail`` lies between the center and saturation,
    where a(1 − a) loses relative accuracy like u·e^z; ``negative-tail`` runs down to where σ′ leaves
    the normal range, and there a(1 − a) is accurate (1 − a ≈ 1).
    """
    fmt = float_format(dtype)
    saturation = math.log(2 / fmt.u) + 0.5
    underflow = -math.log(fmt.tiny) - 0.2
    return (
        Region("center", -1.0, 1.0),
        Region("negative-tail", -underflow, -1.0),
        Region("positive-tail", 1.0, saturation - 1.0),
        Region("saturated", saturation, underflow),
    )


FIDELITY_TESTS: dict[str, tuple[str, ...]] = {
    "test_sigmoid_prime_fidelity": ("center", "negative-tail", "positive-tail", "saturated"),
    "test_network_fidelity": ("unsaturated", "saturated-output"),
}
"""Each fidelity test and its cases: the table tests are generated from and known defects are checked against."""


def unit_problem(dtype: str, region: Region) -> Problem:
    """The identity layer with one z per neuron, spread over ``region`` (see the module docstring)."""
    z = np.unique(round_to(dtype, np.linspace(region.low, region.high, POINTS_PER_REGION)).astype(np.float64))
    n = z.size
    network = Network({2: np.eye(n)}, {2: np.zeros(n)})
    y = np.where(z >= 0, 0.0, 1.0)
    return Problem.rounded(network, Batch(z[None, :], y[None, :]), dtype)


def network_problem(dtype: str, regime: str) -> Problem:
    """A fixed 3-4-2 network, batch 3, with positive weights (no cancellation in the sums).

    ``unsaturated`` keeps every |z| below about 1; ``saturated-output`` shifts the output layer's
    biases so that its z lies in the middle of the format's saturated region.
    """
    rng = np.random.default_rng(37)
    w2 = rng.uniform(0.1, 0.3, size=(4, 3))
    w3 = rng.uniform(0.1, 0.3, size=(2, 4))
    b2 = rng.uniform(-0.3, 0.3, size=4)
    b3 = rng.uniform(-0.3, 0.3, size=2)
    x = rng.uniform(0.0, 1.0, size=(3, 3))
    y = np.zeros((3, 2))
    problem = Problem.rounded(Network({2: w2, 3: w3}, {2: b2, 3: b3}), Batch(x, y), dtype)
    if regime == "saturated-output":
        saturated = regions(dtype)[3]
        b3 = b3 + (saturated.low + saturated.high) / 2 - problem.trace.z[3].mean(axis=0)
        problem = Problem.rounded(Network({2: w2, 3: w3}, {2: b2, 3: b3}), Batch(x, y), dtype)
    return problem


def problem_of(test: str, case: str, dtype: str) -> Problem:
    """The problem of fidelity ``test``'s ``case`` in ``dtype``: a unit problem over the region, or a small network."""
    if test == "test_sigmoid_prime_fidelity":
        return unit_problem(dtype, next(r for r in regions(dtype) if r.name == case))
    return network_problem(dtype, case)


def judge(test: str, cell: str, problem: Problem, output: AdapterOutput, framework: Precision) -> Verdict:
    """The verdict of fidelity ``test`` on ``output``: its gradients against the oracle's within the test's exactness bound.

    The run's test and the replay of a fidelity case file both judge here, so that a case replays as it failed.
    """
    with timing.timed("reference"):
        exact = exact_gradients(problem)
        bound = unit_tolerance(problem.dtype, exact) if test == "test_sigmoid_prime_fidelity" else network_tolerance(problem, framework)
    return judge_exactness(cell, problem, output, exact, bound)


def exact_gradients(problem: Problem) -> Gradients:
    """The oracle's gradients at the problem's point, correctly rounded to float64."""
    return mpmath_backprop(problem.network, problem.batch).gradients()


def unit_tolerance(dtype: str, exact: Gradients) -> Gradients:
    """K·(3c_σ + 3)·u relative, plus the format's underflow allowance, per element (derivation above)."""
    fmt = float_format(dtype)
    rel = K * (3 * C_SIGMA + 3) * fmt.u
    return Gradients(
        {l: rel * np.abs(g) + K * fmt.tiny for l, g in exact.w.items()}, {l: rel * np.abs(g) + K * fmt.tiny for l, g in exact.b.items()}
    )


def network_tolerance(problem: Problem, framework: Precision) -> Gradients:
    """K·E with a stable σ′, at the framework's precision (the oracle's own error is ~1e-50)."""
    bounds = error_bounds(problem.network, problem.batch, problem.trace, framework, stable_sigma_prime=True).scaled(K)
    return bounds.gradients
