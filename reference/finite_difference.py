"""Central finite differences of the page's cost: the crudest oracle, kept because it assumes nothing.

∂C/∂θ ≈ (C(θ⁺) − C(θ⁻)) / (θ⁺ − θ⁻) with θ^± = fl(θ ± h) for each parameter θ = w^l_jk or b^l_j. It needs
neither analyticity (as the complex step does) nor any formula of the page, only the cost itself, so it
is the check of last resort that the other oracles and the reference differentiate the right function.

It is crude, and its error has two parts that pull h in opposite directions:

* truncation: the exact central difference differs from ∂C/∂θ by h²/6 · ∂³C/∂θ³ at some point of
  [θ⁻, θ⁺] (Taylor's theorem), O(h²);
* cancellation: C(θ^±) each carry a rounding error E_C of a few u·C, which the subtraction keeps and
  the division by 2h magnifies to about E_C/h.

Balancing h² against u/h gives the default h = ∛ε · max(1, |θ|) (ε = 2^-52), for which both parts are
about ε^(2/3) ≈ 4e-11 relative to the scale of C and its third derivative: roughly 10 significant
digits at best, fewer where C‴ is large or ∂C/∂θ is small against C. Use it to catch gross errors (a
wrong formula, a transposed matrix), never as a bit-level reference; ``tests/test_oracles.py`` derives
the tolerance it deserves from the exact truncation term and the cost's rounding bound.

The denominator is the computed θ⁺ − θ⁻ rather than 2h: fl(θ ± h) are not exactly θ ± h, and dividing by
the step actually taken is what keeps the quotient a central difference of the function that was evaluated.
"""

from __future__ import annotations

import math

import numpy as np

from backprop_conformance.reference.complex_step import coordinate_costs, gradients_from_vector, parameter_vector
from backprop_conformance.reference.model import Batch, Gradients, Network

CBRT_EPS = float(np.finfo(np.float64).eps) ** (1 / 3)
"""∛ε ≈ 6.06e-6, the step scale that balances O(h²) truncation against O(ε/h) cancellation."""


def central_points(network: Network, scale: float = CBRT_EPS) -> tuple[np.ndarray, np.ndarray]:
    """The two points θ⁺ = fl(θ + h) and θ⁻ = fl(θ − h), h = scale · max(1, |θ|), in :func:`parameter_vector` order.

    Exposed so that a check can evaluate the exact central difference at exactly these points.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or not 0 < scale < 1:
        raise ValueError(f"the finite-difference step scale must be a float in (0, 1) (default ∛ε ≈ {CBRT_EPS:.3g}); got {scale!r}")
    theta = parameter_vector(network)
    h = float(scale) * np.maximum(1.0, np.abs(theta))
    return theta + h, theta - h


def finite_difference_gradients(network: Network, batch: Batch, scale: float = CBRT_EPS) -> Gradients:
    """∂C/∂w^l_jk and ∂C/∂b^l_j by central differences (C(θ⁺) − C(θ⁻)) / (θ⁺ − θ⁻), in float64.

    ``scale`` sets h = scale · max(1, |θ|); the default ∛ε is the usual balance of truncation and
    cancellation (module docstring). Each parameter is moved on its own, all others held fixed.
    """
    plus, minus = central_points(network, scale)
    differences = coordinate_costs(network, batch, plus) - coordinate_costs(network, batch, minus)
    return gradients_from_vector(network, differences / (plus - minus))
