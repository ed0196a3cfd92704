"""The corner where the first-order error bound failed a correct framework, swept; and the bound before and after.

    nice python -m benchmarks.sweep_saturation            # 10,000 saturated examples per dtype, then 1,000 suite examples per dtype
    nice python -m benchmarks.sweep_saturation --quick    # 300 and 50: a few minutes, to see that it runs

Issue 12: tinygrad's bfloat16 gradient of a network with max |z| = 611, targets within 7.5e-17 of a
saturated output, exceeded the first-order bound by 6 %, although every intermediate it exposed was within
its own bound. Part 1 sweeps that corner: float16 and bfloat16, max |z| between 100 and 1000, targets set to
the outputs or within a few ulps of them, batch 1 to 16. Part 2 draws examples from the suite's own
strategy (``conformance.strategies.problems``), every dtype, to show what the change did to the bound
everywhere else. Each example is computed once per framework path, and its error/bound ratio (the
verdict's: the worst over every gradient element and the cost, ≤ 1 passes) is taken under the bound as
it is now and under the previous one (:func:`previous_error_bounds`, the formula before issue 12, kept
here verbatim) on the same outputs. It prints figures and asserts nothing.

Frameworks: torch (its default paths eager, func, mse), jax (jit), and the example plug-in
``backprop_conformance/adapters/example_numpy.py`` (float64, float32, float16). numpy has no bfloat16; for bfloat16 the
example's backpropagation runs on ml_dtypes' bfloat16 arrays (:class:`NumpyBfloat16`, ml_dtypes comes
with jax), whose matrix products accumulate in float32 but whose sums accumulate in bfloat16 -- a bfloat16
sum of 256 or more terms has no finite bound (n·u ≥ 1), so part 1 keeps B·n(L) ≤ 128 and part 2 counts
the examples it cannot judge. Every precision is the one the adapter declares (``Capabilities.precision``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from backprop_conformance.adapters.base import Adapter, AdapterOutput, Capabilities
from backprop_conformance.adapters.example_numpy import NumpyAdapter
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.conformance.strategies import _fits, problems
from backprop_conformance.conformance.verdict import Mismatch, Verdict, compare_gradients
from backprop_conformance.reference.dtypes import float_format
from backprop_conformance.reference.error_bound import FLOAT64, K, Precision, gamma, tolerance
from backprop_conformance.reference.model import Batch, Gradients, Network
from backprop_conformance.reference.sigmoid import sigmoid_prime
from backprop_conformance.reference.vectorized import BackpropTrace

SATURATED_DTYPES = ("float16", "bfloat16")
SUITE_DTYPES = ("float64", "float32", "float16", "bfloat16")
Z_RANGE = (100.0, 1000.0)
"""max |z| of every example of part 1: "in the hundreds"."""


def previous_error_bounds(network: Network, batch: Batch, trace: BackpropTrace, precision: Precision) -> tuple[Gradients, float]:
    """The bound before issue 12 (gradients and cost only), as reference/error_bound.py had it at commit df2421a.

    First order in every error: E_a = σ′ E_z + c_σ u a + η (σ′ at the reference's z, however large E_z),
    E_s = |1 − 2a| E_a + 2u σ′ + η, no product of two errors in δ or ∂C/∂w, two roundings charged on the
    bias in z, none for the final rounding of the bias and cost sums. Kept verbatim so that the
    comparison runs anywhere, without the old checkout.
    """
    u, u_a, eta, c_sigma = precision.u, precision.u_a, precision.eta, precision.c_sigma
    L, B = network.depth, batch.size
    absw = {l: np.abs(network.w[l]) for l in network.layers}
    absb = {l: np.abs(network.b[l]) for l in network.layers}
    a = dict(trace.a)
    sp = {l: sigmoid_prime(trace.z[l]) for l in network.layers}
    E_a = {1: u * np.abs(a[1])}
    E_s = {}
    for l in network.layers:
        n = network.widths[l - 2]
        E_z = E_a[l - 1] @ absw[l].T + (gamma(n + 1, u_a) + 2 * u) * (np.abs(a[l - 1]) @ absw[l].T + absb[l]) + (2 * n + 1) * eta
        E_a[l] = sp[l] * E_z + c_sigma * u * a[l] + eta
        E_s[l] = np.abs(1 - 2 * a[l]) * E_a[l] + 2 * u * sp[l] + eta
    y, r = batch.y, trace.dC_da[L]
    delta = {l: np.abs(v) for l, v in trace.delta.items()}
    h = {l: np.abs(v) for l, v in trace.dC_da.items()}
    E_h = E_a[L] + u * (np.abs(r) + np.abs(y))
    E_d = {L: E_h * sp[L] + np.abs(r) * E_s[L] + 3 * u * delta[L] + eta}
    E_hL = E_h
    for l in range(L - 1, 1, -1):
        n_next = network.widths[l]
        E_h = E_d[l + 1] @ absw[l + 1] + gamma(n_next, u_a) * (delta[l + 1] @ absw[l + 1]) + 2 * n_next * eta
        E_d[l] = E_h * sp[l] + h[l] * E_s[l] + 2 * u * delta[l] + eta
    g_B = gamma(B, u_a)
    E_w = {
        l: E_d[l].T @ np.abs(a[l - 1]) + delta[l].T @ E_a[l - 1] + (u + g_B) * (delta[l].T @ np.abs(a[l - 1])) + 2 * B * eta for l in E_d
    }
    g_bias = gamma(B, precision.u_bias_sum)
    E_b = {l: E_d[l].sum(axis=0) + g_bias * delta[l].sum(axis=0) + B * eta for l in E_d}
    g_N = gamma(r.size, precision.u_cost_sum)
    E_C = float(np.sum(np.abs(r) * E_hL + 0.5 * E_hL**2) + (u + g_N) * np.sum(0.5 * r * r) + 2 * r.size * eta)
    return Gradients(E_w, E_b), E_C


def previous_tolerance(problem: Problem, precision: Precision) -> tuple[Gradients, float]:
    """K·(E(framework) + E(float64 reference)) under :func:`previous_error_bounds`."""
    (fw_g, fw_c), (ref_g, ref_c) = (previous_error_bounds(problem.network, problem.batch, problem.trace, p) for p in (precision, FLOAT64))
    layers = problem.network.layers
    bound = Gradients({l: K * (fw_g.w[l] + ref_g.w[l]) for l in layers}, {l: K * (fw_g.b[l] + ref_g.b[l]) for l in layers})
    return bound, K * (fw_c + ref_c)


def worst_ratio(output: AdapterOutput, problem: Problem, bound: Gradients, cost_bound: float) -> float:
    """The verdict's worst error/bound ratio over every gradient element and the cost (:attr:`Verdict.worst_ratio`)."""
    gradients = compare_gradients(output.gradients, problem.trace.gradients, bound)
    return Verdict("", problem, gradients, Mismatch("C (the cost)", float(output.cost), problem.trace.cost, cost_bound)).worst_ratio


class NumpyBfloat16(NumpyAdapter):
    """The example plug-in's backpropagation on ml_dtypes' bfloat16 arrays, results returned in float32 (bfloat16's carrier).

    ml_dtypes rounds every elementwise result and every sum to bfloat16, the sums adding in bfloat16,
    but returns a matrix product of bfloat16 arrays in float32 (accumulated in float32); each product is
    rounded back to bfloat16 here, as a framework storing bfloat16 does. Declared so: products accumulate
    in float32, the bias gradient's and the cost's sums in bfloat16.
    """

    requires = ("numpy", "ml_dtypes")

    def capabilities(self) -> Capabilities:
        caps = super().capabilities()
        return Capabilities(
            name="numpy-example-ml_dtypes",
            framework=caps.framework + " on ml_dtypes",
            version=caps.version,
            dtypes=("bfloat16",),
            paths=caps.paths,
            default_paths=caps.default_paths,
            accumulation={"bfloat16": {"dot": "float32"}},
        )

    def load_parameters(self, network: Network, *, dtype: str, device: str = "cpu") -> Network:
        return network.astype(np.float32)

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        from ml_dtypes import bfloat16

        def mm(p: np.ndarray, q: np.ndarray) -> np.ndarray:
            return (p @ q).astype(bfloat16)

        w = {l: network.w[l].astype(bfloat16) for l in network.layers}
        b = {l: network.b[l].astype(bfloat16) for l in network.layers}
        a, sp = {1: batch.x.astype(bfloat16)}, {}
        for l in network.layers:
            z = mm(a[l - 1], w[l].T) + b[l]
            e = np.exp(-np.abs(z))
            a[l] = np.where(z >= 0, bfloat16(1), e) / (1 + e)
            sp[l] = (1 / (1 + e)) * (e / (1 + e))
        L = network.depth
        r = a[L] - batch.y.astype(bfloat16)
        cost = 0.5 * np.sum(r * r)
        delta = {L: r * sp[L]}
        for l in range(L - 1, 1, -1):
            delta[l] = mm(delta[l + 1], w[l + 1]) * sp[l]
        widen = np.float32
        weights = {l: mm(delta[l].T, a[l - 1]).astype(widen) for l in network.layers}
        gradients = Gradients(weights, {l: delta[l].sum(axis=0).astype(widen) for l in network.layers})
        return AdapterOutput(gradients, float(cost), a={l: v.astype(widen) for l, v in a.items()})


@dataclass
class Tally:
    """Ratios of one (dtype, framework path) under the new and the previous bound, on the same outputs."""

    new: list[float] = field(default_factory=list)
    previous: list[float] = field(default_factory=list)
    vacuous: int = 0
    worst_failures: dict[str, tuple[float, str]] = field(default_factory=dict)
    """Per bound ("bound", "previous bound"), the failing example with the largest ratio: (ratio, which example)."""

    def add(self, new: float, previous: float, example: str) -> None:
        self.new.append(new)
        self.previous.append(previous)
        for bound, ratio in (("bound", new), ("previous bound", previous)):
            if ratio > 1 and ratio > self.worst_failures.get(bound, (1.0, ""))[0]:
                self.worst_failures[bound] = (ratio, example)

    def row(self, label: str) -> str:
        if not self.new:
            return f"{label:<34} {'0':>8}" + (f"   ({self.vacuous} not judged: vacuous bound)" if self.vacuous else "")
        n = len(self.new)
        new_fail = sum(r > 1 for r in self.new)
        old_fail = sum(r > 1 for r in self.previous)
        text = (
            f"{label:<34} {n:>8} {new_fail:>8} {statistics.median(self.new):>10.3g} {max(self.new):>10.3g}"
            f"   {old_fail:>8} {statistics.median(self.previous):>10.3g} {max(self.previous):>10.3g}"
        )
        return text + (f"   ({self.vacuous} not judged: vacuous bound)" if self.vacuous else "")


HEADER = (
    f"{'dtype / framework-path':<34} {'examples':>8} {'failures':>8} {'median':>10} {'worst':>10}"
    f"   {'previous bound: failures, median, worst':>40}"
)


def frameworks(dtype: str) -> Iterator[tuple[str, Adapter, str]]:
    """(label, adapter, path) for every framework path that can run ``dtype`` here; a missing framework is left out."""
    candidates: list[tuple[str, Callable[[], Adapter], tuple[str, ...]]] = []
    try:
        import torch

        from backprop_conformance.adapters.torch_adapter import TorchAdapter

        torch.set_num_threads(1)  # tiny networks gain nothing from threads, and on a shared machine lose to contention
        candidates.append(("torch", TorchAdapter, ("eager", "func", "mse")))
    except ImportError:
        print("torch not installed: left out")
    try:
        import jax  # noqa: F401

        from backprop_conformance.adapters.jax_adapter import JaxAdapter

        candidates.append(("jax", JaxAdapter, ("jit",)))
    except ImportError:
        print("jax not installed: left out")
    if dtype != "bfloat16":
        candidates.append(("numpy-example", NumpyAdapter, ("manual",)))
    else:
        try:
            import ml_dtypes  # noqa: F401

            candidates.append(("numpy-example", NumpyBfloat16, ("manual",)))
        except ImportError:
            print("ml_dtypes not installed: the numpy plug-in left out of bfloat16")
    for name, make, paths in candidates:
        adapter = make()
        if dtype in adapter.caps.dtypes:
            for path in paths:
                yield f"{name}-{path}", adapter, path


def judge_all(problem: Problem, runners: list[tuple[str, Adapter, str]], tallies: dict[str, Tally], example: str) -> None:
    """Run ``problem`` through every framework path and record its ratio under both bounds (each bound once per precision)."""
    bounds: dict[Precision, tuple[tuple[Gradients, float], tuple[Gradients, float]] | None] = {}
    for label, adapter, path in runners:
        precision = adapter.caps.precision(problem.dtype, path)
        if precision not in bounds:
            try:
                tol = tolerance(problem.network, problem.batch, problem.trace, precision)
                bounds[precision] = ((tol.gradients, tol.cost), previous_tolerance(problem, precision))
            except ValueError:  # γ_n with n·u ≥ 1: no finite bound for this sum in this format
                bounds[precision] = None
        if bounds[precision] is None:
            tallies[label].vacuous += 1
            continue
        (new_g, new_c), (old_g, old_c) = bounds[precision]
        output = adapter.compute(problem.network, problem.batch, dtype=problem.dtype, path=path)
        tallies[label].add(worst_ratio(output, problem, new_g, new_c), worst_ratio(output, problem, old_g, old_c), example)


def shape_pool(rng: np.random.Generator) -> list[tuple[tuple[int, ...], int]]:
    """24 architectures (depth 2-4, widths 1-16, n(L) ≤ 8) with batches 1-16, 1 and 16 included; jax.jit compiles each once."""
    pool = []
    for i in range(24):
        depth = int(rng.integers(2, 5))
        widths = [int(rng.choice([1, 2, 3, 4, 8, 10, 16])) for _ in range(depth - 1)] + [int(rng.choice([1, 2, 4, 8]))]
        batch = 1 if i == 0 else 16 if i == 1 else int(rng.integers(1, 17))
        pool.append((tuple(widths), batch))
    return pool


def saturated_problems(dtype: str, count: int, seed: int) -> Iterator[Problem]:
    """``count`` examples of the corner: max |z| in [100, 1000), targets equal to the outputs or within 4 ulps of them."""
    rng = np.random.default_rng(seed)
    pool = shape_pool(rng)
    u = float_format(dtype).u
    made = 0
    while made < count:
        widths, B = pool[int(rng.integers(len(pool)))]
        weight_scale = float(rng.choice([3.0, 10.0, 30.0, 100.0]))
        bias_scale = float(rng.choice([10.0, 30.0, 100.0, 300.0]))
        weights = [rng.standard_normal((widths[i + 1], widths[i])) * weight_scale / math.sqrt(widths[i]) for i in range(len(widths) - 1)]
        biases = [rng.standard_normal(widths[i + 1]) * bias_scale for i in range(len(widths) - 1)]
        x = rng.standard_normal((B, widths[0])) * float(rng.choice([1.0, 10.0]))
        provisional = Problem.rounded(Network.from_lists(weights, biases), Batch(x, np.zeros((B, widths[-1]))), dtype)
        outputs = provisional.trace.a[len(widths)]
        if rng.integers(2):
            y = outputs
        else:
            y = outputs * (1 + rng.integers(-4, 5, outputs.shape) * u)
        problem = Problem.rounded(provisional.network, Batch(provisional.batch.x, y), dtype)
        if Z_RANGE[0] <= problem.max_abs_z < Z_RANGE[1] and _fits(problem):
            made += 1
            yield problem


def suite_problems(dtype: str, count: int) -> list[Problem]:
    """``count`` examples drawn by the suite's own strategy, derandomized.

    Not reproducible example for example beyond the first few hundred: hypothesis 6.170's generation,
    seeded alike, was seen to diverge after about 300 examples between processes that had done
    different work before, so reruns agree in their figures' size, not in every digit.
    """
    from hypothesis import HealthCheck, given, settings

    drawn: list[Problem] = []

    @settings(max_examples=count, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(problems(dtype))
    def collect(problem: Problem) -> None:
        drawn.append(problem)

    collect()
    return drawn


def report(title: str, dtypes: tuple[str, ...], examples: Callable[[str], Iterator[Problem] | list[Problem]]) -> None:
    print(f"\n{title}\n{HEADER}")
    for dtype in dtypes:
        runners = list(frameworks(dtype))
        tallies = {label: Tally() for label, _, _ in runners}
        start = time.perf_counter()
        for index, problem in enumerate(examples(dtype)):
            judge_all(problem, runners, tallies, f"example #{index}: {problem.describe()}")
        everything = Tally([r for t in tallies.values() for r in t.new], [r for t in tallies.values() for r in t.previous])
        for label in tallies:
            print(tallies[label].row(f"{dtype} {label}"))
        print(everything.row(f"{dtype} all frameworks") + f"   [{time.perf_counter() - start:.0f} s]")
        for label, tally in tallies.items():
            for bound, (ratio, example) in tally.worst_failures.items():
                print(f"    {dtype} {label}, worst failure under the {bound}: ratio {ratio:.3g}, {example}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 saturated and 50 suite examples per dtype instead of 10,000 and 1,000")
    parser.add_argument("--examples", type=int, default=None, help="saturated examples per dtype (default 10,000)")
    parser.add_argument("--suite-examples", type=int, default=None, help="suite examples per dtype (default 1,000; 0 skips part 2)")
    parser.add_argument("--seed", type=int, default=12, help="seed of part 1's examples")
    args = parser.parse_args()
    saturated = args.examples if args.examples is not None else (300 if args.quick else 10_000)
    suite = args.suite_examples if args.suite_examples is not None else (50 if args.quick else 1_000)
    print("ratio = |g_framework − g_reference| / bound, worst over every gradient element and the cost; ≤ 1 passes")
    report(
        f"1. the saturated corner: max |z| in [{Z_RANGE[0]:g}, {Z_RANGE[1]:g}), targets = outputs or within 4 ulps, B = 1-16 "
        f"({saturated} examples per dtype, seed {args.seed})",
        SATURATED_DTYPES,
        lambda dtype: saturated_problems(dtype, saturated, args.seed),
    )
    if suite:
        report(
            f"2. the suite's own examples (conformance.strategies.problems, derandomized, {suite} per dtype)",
            SUITE_DTYPES,
            lambda dtype: suite_problems(dtype, suite),
        )


if __name__ == "__main__":
    main()
