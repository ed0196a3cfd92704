"""The reference's own bound inside a tolerance, and what a scaled framework bound in its place would cost. Prints figures.

    python -m benchmarks.sweep_reference_bound              # 500 suite examples and 300 saturated ones per format
    python -m benchmarks.sweep_reference_bound --quick      # 50 and 30

Evidence for a decision of issue 27, not a change the suite makes. A tolerance is K·(E(framework) + E(reference)),
two recursions of the bound (``reference/error_bound.py``), and for a framework narrower than float64 the second is
a tiny share of the first that costs as much to compute: at the ``large`` profile it is four of the verdict's eleven
float64 products per layer (``python -m benchmarks.bench_verdict``, table (ii)). It could be replaced by ρ̃·E(framework),
with ρ the largest ratio of the two precisions' constants (u, u_a, u_batch, u_cost, η) and ρ̃ = ρ·Π_l e^{max E_z^l},
E_z^l the framework's bound on z^l: every equation of the bound is linear in the bounds it takes, or grows faster
(products of two errors), except σ's deviation, for which Δσ(z, ρE) ≤ ρ e^{E} Δσ(z, E) because log σ′ is
1-Lipschitz, hence one factor e^{max E_z^l} per layer. That argument is a sketch, not a proof the project has
adopted. This sweep checks its conclusion, E(reference) ≤ ρ̃·E(framework) element by element, on the suite's own
examples (``conformance.strategies.problems``, derandomized) and on saturated ones (max |z| from 30 to 300), and
prints how much the tolerance K·(1 + ρ̃)·E(framework) would exceed today's: the price of skipping the recursion,
and in how many examples ρ̃ stays at most 2^−20 (where it does not, the recursion would have to run as today).
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from backprop_conformance.conformance.problems import Problem
from backprop_conformance.reference.error_bound import FLOAT64, ErrorBounds, Precision, error_bounds
from backprop_conformance.reference.model import Batch, Network
from benchmarks.sweep_saturation import suite_problems

PRECISIONS = {
    "float32": Precision.of("float32"),
    "float16": Precision.of("float16", accumulation="float32"),
    "bfloat16": Precision.of("bfloat16", accumulation="float32"),
}
"""The narrower formats, each with the accumulation torch declares on CPU."""


USABLE = 2.0**-20
"""A ρ̃ from which the scaled bound would be worth having: it raises the tolerance by at most this share of itself."""


def rho(framework: Precision, reference: Precision = FLOAT64) -> float:
    """The largest ratio of the reference's constants to the framework's: every equation's constant term scales by at most this."""
    pairs = (
        (reference.u, framework.u),
        (reference.u_a, framework.u_a),
        (reference.u_bias_sum, framework.u_bias_sum),
        (reference.u_cost_sum, framework.u_cost_sum),
        (reference.eta, framework.eta),
    )
    return max(r / f for r, f in pairs)


def _quantities(bounds: ErrorBounds) -> list[np.ndarray]:
    per_example = [array for name in ("z", "a", "sigma_prime", "dC_da", "delta") for array in getattr(bounds, name).values()]
    return [*per_example, *(array for _, _, array in bounds.gradients.items()), np.array([bounds.cost])]


def measure(problem: Problem, framework: Precision) -> tuple[float, float, float]:
    """(ρ̃, the largest E(reference) / (ρ̃·E(framework)) over every quantity, the largest relative rise of the tolerance)."""
    trace = problem.trace
    ours = error_bounds(problem.network, problem.batch, trace, framework)
    ref = error_bounds(problem.network, problem.batch, trace, FLOAT64)
    scaled = math.exp(min(math.log(rho(framework)) + sum(float(np.max(e)) for e in ours.z.values()), 700.0))
    worst_share, worst_rise = 0.0, 0.0
    with np.errstate(over="ignore"):  # a ρ̃ of 10^300, where the scaled bound is useless, overflows; inf says so
        for mine, theirs in zip(_quantities(ours), _quantities(ref), strict=True):
            positive = mine > 0
            if np.any(theirs[~positive] > 0):
                return scaled, math.inf, math.inf
            if np.any(positive):
                worst_share = max(worst_share, float(np.max(theirs[positive] / (scaled * mine[positive]))))
                worst_rise = max(worst_rise, float(np.max((1 + scaled) * mine[positive] / (mine[positive] + theirs[positive]) - 1)))
    return scaled, worst_share, worst_rise


def saturated(dtype: str, count: int, seed: int) -> list[Problem]:
    """``count`` networks driven into saturation: weights of scale 3 to 30 over √n, biases of 3 to 30, max |z| in [30, 300)."""
    rng = np.random.default_rng(seed)
    made: list[Problem] = []
    while len(made) < count:
        widths = [int(rng.integers(1, 17)) for _ in range(int(rng.integers(3, 7)))]
        B = int(rng.integers(1, 9))
        scale, bias = float(rng.choice([3.0, 10.0, 30.0])), float(rng.choice([3.0, 10.0, 30.0]))
        w = [rng.standard_normal((widths[i + 1], widths[i])) * scale / math.sqrt(widths[i]) for i in range(len(widths) - 1)]
        b = [rng.standard_normal(widths[i + 1]) * bias for i in range(len(widths) - 1)]
        batch = Batch(rng.standard_normal((B, widths[0])), rng.uniform(0.0, 1.0, (B, widths[-1])))
        problem = Problem.rounded(Network.from_lists(w, b), batch, dtype)
        if 30 <= problem.max_abs_z < 300:
            made.append(problem)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 suite and 30 saturated examples per format instead of 500 and 300")
    args = parser.parse_args()
    suite, corner = (50, 30) if args.quick else (500, 300)
    columns = ("format", "examples", "ρ", f"ρ̃ ≤ {USABLE:.3g}", "largest ρ̃", "largest E(ref) / (ρ̃ E(fw))", "largest rise of their tolerance")
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|")
    for dtype, framework in PRECISIONS.items():
        for label, problems in (("suite", suite_problems(dtype, suite)), ("saturated", saturated(dtype, corner, 0))):
            rows = [measure(p, framework) for p in problems]
            usable = sum(r[0] <= USABLE for r in rows)
            print(
                f"| {dtype}, {label} | {len(rows)} | {rho(framework):.3g} | {usable} | {max(r[0] for r in rows):.3g} | "
                f"{max(r[1] for r in rows):.3g} | {max((r[2] for r in rows if r[0] <= USABLE), default=0.0):.3g} |"
            )


if __name__ == "__main__":
    main()
