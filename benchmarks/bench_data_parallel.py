"""The data-parallel paths' cost per example, once warm, against their backend's single-process path. Prints figures; asserts nothing.

    python -m benchmarks.bench_data_parallel

For each of a few network sizes, float32, the same problem through torch's ``ddp`` and ``eager`` paths and JAX's
``sharded`` and ``jit`` paths, through :meth:`~backprop_conformance.adapters.base.Adapter.compute` as the suite
calls them. Each path is warmed first (the rank processes started and joined, each shape compiled), then timed
over many calls, alternating the two paths of a backend so that the ratio is measured in one stretch of a shared
machine. Also printed: the one-off start of each data-parallel path (processes, imports, rendezvous). The ranks
are 2 unless ``BACKPROP_CONFORMANCE_DDP_RANKS`` / ``BACKPROP_CONFORMANCE_SHARDED_DEVICES`` say otherwise.

The goal (issue 16): a data-parallel example within 10× its single-process path, once warm.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from backprop_conformance.adapters.base import Adapter
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.reference.model import Batch, Network

SHAPES = (((5, 8, 8, 3), 4), ((16, 32, 32, 8), 16), ((64, 128, 128, 128, 10), 64))
ROUNDS = 5
CALLS = 40


def problem(widths: tuple[int, ...], batch_size: int) -> Problem:
    rng = np.random.default_rng(0)
    network = Network.from_lists(
        [rng.standard_normal((n, m)) / np.sqrt(m) for m, n in itertools.pairwise(widths)], [rng.standard_normal(n) for n in widths[1:]]
    )
    return Problem.rounded(
        network, Batch(rng.standard_normal((batch_size, widths[0])), rng.uniform(size=(batch_size, widths[-1]))), "float32"
    )


def per_call(adapter: Adapter, path: str, p: Problem) -> float:
    start = time.perf_counter()
    for _ in range(CALLS):
        adapter.compute(p.network, p.batch, dtype="float32", path=path)
    return (time.perf_counter() - start) / CALLS


def compare(adapter: Adapter, parallel: str, single: str) -> None:
    first = problem(*SHAPES[0])
    start = time.perf_counter()
    adapter.compute(first.network, first.batch, dtype="float32", path=parallel)
    seconds = time.perf_counter() - start
    ranks = adapter.caps.ranks_of(parallel)
    print(f"  {adapter.caps.name} {parallel}, {ranks} ranks: first call (processes started, group joined, built): {seconds:.2f} s")
    print(f"  {'widths':>22} {'B':>4} {parallel + ' ms':>12} {single + ' ms':>12} {'ratio':>7}")
    for widths, batch_size in SHAPES:
        p = problem(widths, batch_size)
        for path in (parallel, single):
            adapter.compute(p.network, p.batch, dtype="float32", path=path)  # compile, build the model
        times: dict[str, list[float]] = {parallel: [], single: []}
        for _ in range(ROUNDS):
            for path in (parallel, single):
                times[path].append(per_call(adapter, path, p))
        slow, fast = min(times[parallel]), min(times[single])
        print(f"  {'-'.join(map(str, widths)):>22} {batch_size:>4} {slow * 1e3:>12.2f} {fast * 1e3:>12.2f} {slow / fast:>6.1f}×")


def main() -> None:
    print(f"cost per example once warm, float32, best of {ROUNDS} × {CALLS} calls (goal: ≤ 10× the single-process path)")
    try:
        from backprop_conformance.adapters.torch_adapter import TorchAdapter

        torch_adapter = TorchAdapter()
        compare(torch_adapter, "ddp", "eager")
        torch_adapter.finish()
    except ImportError as exc:
        print(f"  torch: skipped ({exc})")
    try:
        from backprop_conformance.adapters.jax_adapter import JaxAdapter

        compare(JaxAdapter(), "sharded", "jit")
    except ImportError as exc:
        print(f"  jax: skipped ({exc})")


if __name__ == "__main__":
    main()
