"""Mixed-precision cells swept: false alarms, the worst ratio per framework, and the smallest relative bug each catches.

    nice python -m benchmarks.sweep_mixed                                  # 10,000 examples per mixed cell, 1,000 per format
    nice python -m benchmarks.sweep_mixed --examples 300 --format-examples 100   # a quick look
    nice python -m benchmarks.sweep_mixed --framework torch --framework flax     # some frameworks only

Every framework path that has mixed-precision cells runs each cell (``mixed-bfloat16``, ``mixed-float16``) on
examples drawn by the suite's own strategy (``conformance.strategies.problems``, pooled shapes, seeded), judged
as the suite judges them (:func:`~backprop_conformance.conformance.verdict.judge`, the declared policy's bound): the
ratio is the verdict's, the worst over every gradient element and the cost, and ≤ 1 passes, so every ratio above 1
is a false alarm on a correct framework. The pure formats the policies are made of (float32, bfloat16, float16) run
the same way on fewer examples, for the last column.

The detection threshold of an example is measured on the framework's own output: the smallest ε > 0 such that the
output with every gradient multiplied by 1 + ε (a loss scale not quite removed; ``TinyScaleOnWeightGradient`` of
``tests/mutants.py`` is the same bug on ∂C/∂w^2 alone) fails the verdict. Per element, with d = g − ref the
framework's own error, it is (E − |d|)/|g| where d has g's sign and (E + |d|)/|g| where it has the other; the
example's is the least over every gradient element. Printed per cell: the
least over the examples (a bug that large is caught on some example of a run this size) and the median (on half
the examples). It prints figures and asserts nothing; the figures it printed are in docs/error-bound.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from backprop_conformance.adapters.base import Adapter, AdapterOutput
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.conformance.strategies import problems
from backprop_conformance.conformance.verdict import judge
from backprop_conformance.reference.error_bound import VacuousBound
from backprop_conformance.reference.model import Gradients

CHUNK = 500
"""Examples drawn at a time: hypothesis keeps what it draws, with each example's reference trace, and 10,000 of them
at once exhausted 23 GB; a chunk is drawn, judged and dropped before the next."""

POLICIES = ("mixed-bfloat16", "mixed-float16")
FORMATS = ("float32", "bfloat16", "float16")
"""The pure formats the policies are made of, swept for comparison."""


def _torch() -> Iterator[tuple[str, Adapter, str]]:
    import torch

    from backprop_conformance.adapters.torch_adapter import TorchAdapter

    torch.set_num_threads(1)  # tiny networks gain nothing from threads, and on a shared machine lose to contention
    adapter = TorchAdapter()
    for path in ("eager", "func", "mse", "grad-scaler"):
        yield f"torch-{path}", adapter, path


def _jax() -> Iterator[tuple[str, Adapter, str]]:
    from backprop_conformance.adapters.jax_adapter import JaxAdapter

    yield "jax-jit", JaxAdapter(), "jit"


def _tensorflow() -> Iterator[tuple[str, Adapter, str]]:
    from backprop_conformance.adapters.tensorflow_adapter import TensorFlowAdapter

    yield "tensorflow-eager", TensorFlowAdapter(), "eager"


def _keras() -> Iterator[tuple[str, Adapter, str]]:
    from backprop_conformance.adapters.keras_adapter import KerasAdapter

    adapter = KerasAdapter()
    for path in ("torch", "tensorflow", "jax", "tensorflow-loss-scale"):
        yield f"keras-{path}", adapter, path


def _flax() -> Iterator[tuple[str, Adapter, str]]:
    from backprop_conformance.adapters.flax_adapter import FlaxAdapter

    yield "flax-jit", FlaxAdapter(), "jit"


FRAMEWORKS: dict[str, Callable[[], Iterator[tuple[str, Adapter, str]]]] = {
    "torch": _torch,
    "jax": _jax,
    "tensorflow": _tensorflow,
    "keras": _keras,
    "flax": _flax,
}
"""Each framework's paths with mixed cells, one per way of computing them (a Keras backend is a framework path)."""


def threshold(output: AdapterOutput, problem: Problem, bound: Gradients) -> float:
    """The smallest ε > 0 for which every gradient times (1 + ε) fails the verdict at ``problem`` (module docstring);
    inf if no gradient is nonzero."""
    least = math.inf
    for kind, l, want in problem.trace.gradients.items():
        g = np.asarray((output.gradients.w if kind == "w" else output.gradients.b)[l], dtype=np.float64)
        d, limit, nonzero = g - want, (bound.w if kind == "w" else bound.b)[l], g != 0
        eps = np.where(np.sign(d) == np.sign(g), limit - np.abs(d), limit + np.abs(d))[nonzero] / np.abs(g[nonzero])
        least = min(least, float(np.min(eps))) if eps.size else least
    return least


@dataclass
class Tally:
    """The ratios and detection thresholds of one (framework path, dtype)."""

    ratios: list[float] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    vacuous: int = 0
    worst_example: str = ""

    def add(self, ratio: float, eps: float, example: str) -> None:
        if not self.ratios or ratio > max(self.ratios):
            self.worst_example = example
        self.ratios.append(ratio)
        if math.isfinite(eps):
            self.thresholds.append(eps)

    def row(self, label: str) -> str:
        """One line of the table: examples, false alarms, median and worst ratio, least and median ε caught."""
        note = f"   ({self.vacuous} not judged: vacuous bound)" if self.vacuous else ""
        found = sorted(self.thresholds) or [math.inf]
        columns = [f"{len(self.ratios):>8}", f"{sum(r > 1 for r in self.ratios):>8}"]
        if self.ratios:
            columns += [f"{value:>9.3g}" for value in (statistics.median(self.ratios), max(self.ratios))]
            columns += [f"{value:>11.3g}" for value in (found[0], statistics.median(found))]
        return f"{label:<44} " + " ".join(columns) + note


HEADER = (
    f"{'framework-path dtype':<44} {'examples':>8} {'false':>8} {'median':>9} {'worst':>9} {'least ε':>11} {'median ε':>11}\n"
    f"{'':<44} {'':>8} {'alarms':>8} {'ratio':>9} {'ratio':>9} {'caught':>11} {'caught':>11}"
)


def examples(dtype: str, count: int) -> Iterator[Problem]:
    """``count`` examples of ``dtype`` from the suite's strategy (pooled shapes), :data:`CHUNK` at a time, chunk i drawn
    with hypothesis seed i, so that a rerun draws the same ones."""
    from hypothesis import HealthCheck, given, seed, settings

    drawn: list[Problem] = []

    def collect(problem: Problem) -> None:
        drawn.append(Problem(problem.network, problem.batch, problem.dtype))

    for chunk in range(math.ceil(count / CHUNK)):
        size = min(CHUNK, count - chunk * CHUNK)
        settled = settings(max_examples=size, database=None, deadline=None, suppress_health_check=list(HealthCheck))
        seed(chunk)(settled(given(problems(dtype))(collect)))()
        while drawn:
            yield drawn.pop(0)


def sweep(runners: list[tuple[str, Adapter, str]], dtype: str, count: int) -> dict[str, Tally]:
    """Every runner that has ``dtype`` on ``count`` suite examples of it."""
    mine = [(label, adapter, path) for label, adapter, path in runners if dtype in adapter.caps.dtypes_of_path(path)]
    tallies = {label: Tally() for label, _, _ in mine}
    if not mine:
        return tallies
    for index, drawn in enumerate(examples(dtype, count)):
        problem = Problem(drawn.network, drawn.batch, drawn.dtype, shared=True)
        for label, adapter, path in mine:
            framework = adapter.caps.precision(dtype, path)
            try:
                bound = problem.tolerance(framework)
            except VacuousBound:
                tallies[label].vacuous += 1
                continue
            output = adapter.compute(problem.network, problem.batch, dtype=dtype, path=path)
            verdict = judge(f"{label}-{dtype}", problem, output, framework)
            tallies[label].add(verdict.worst_ratio, threshold(output, problem, bound.gradients), f"example #{index}: {problem.describe()}")
    return tallies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=10_000, help="examples per mixed cell (default 10,000)")
    parser.add_argument("--format-examples", type=int, default=1_000, help="examples per pure-format cell (default 1,000; 0 skips)")
    parser.add_argument("--framework", action="append", choices=sorted(FRAMEWORKS), help="framework to sweep (repeatable; default all)")
    args = parser.parse_args(argv)
    print("ratio = |g_framework − g_reference| / bound, worst over every gradient element and the cost; ≤ 1 passes")
    print("ε caught = the smallest relative error planted on every gradient that fails the verdict (least over the examples, median)")
    print(HEADER)
    for name in args.framework or list(FRAMEWORKS):
        try:
            runners = list(FRAMEWORKS[name]())
        except ImportError as exc:
            print(f"{name}: not installed ({exc}), left out")
            continue
        worst = 0.0
        for dtype, count in [*((p, args.examples) for p in POLICIES), *((f, args.format_examples) for f in FORMATS)]:
            if count <= 0:
                continue
            start = time.perf_counter()
            tallies = sweep(runners, dtype, count)
            for label, tally in tallies.items():
                print(tally.row(f"{label} {dtype}"))
                if dtype in POLICIES and tally.ratios:
                    worst = max(worst, max(tally.ratios))
                    if max(tally.ratios) > 1:
                        print(f"    false alarm, worst at {tally.worst_example}")
            print(f"    [{dtype}: {time.perf_counter() - start:.0f} s]", flush=True)
        print(f"{name}: worst ratio over its mixed cells {worst:.3g}", flush=True)
        for _, adapter, _ in runners[:1]:
            adapter.finish()


if __name__ == "__main__":
    main()
