"""How often the default profile catches bugs that live only in particular shapes. Prints figures; asserts nothing.

    python -m benchmarks.shape_coverage              # 5 seeds, free and pooled shapes
    python -m benchmarks.shape_coverage --seeds 10

Kernels change code paths at block sizes (a remainder loop, a second tile, an odd batch tail), so a bug
there shows only in some shapes. This script runs the real suite (default profile, 100 examples per
cell, a fresh hypothesis database and a different ``--hypothesis-seed`` each run) against the
shape-dependent mutants of ``tests/mutants.py`` -- a remainder loop one lane short for fan-ins ≡ 7 mod 8
and ≥ 15, an odd batch tail dropped for B ≥ 13, the second 32-wide block without its bias for layers ≥ 40
wide, and the older truncated-sum mutants -- each twice: as a path that draws its shapes freely (eager
frameworks, numpy plug-ins) and as one that declares it compiles per shape and so draws from the pool
(``jax.jit``). It prints, per mutant and way, which (dtype, seed) runs caught the bug, and the totals.
The goal (issue 14): at least 9 in 10 (mutant, dtype, seed) runs caught.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from backprop_conformance.conformance.runner import run_suite
from tests import mutants

SHAPE_MUTANTS = (
    mutants.RemainderLoopDropsALane,
    mutants.OddBatchTailDropped,
    mutants.SecondBlockWithoutBias,
    mutants.TruncatedWideSum,
    mutants.TruncatedBatchSum,
)


MODULE = "benchmarks.shape_coverage"
"""This module's import name in the suite's subprocess (run as a script, its ``__name__`` is ``__main__``)."""


def pooled(mutant: type[mutants.ManualBackprop]) -> type[mutants.ManualBackprop]:
    """The same bug on a path that declares it compiles per shape (so the suite draws its shapes from the pool)."""
    return type(f"Pooled{mutant.__name__}", (mutant,), {"compiles_per_shape": True, "__module__": MODULE})


# Module attributes, so that the suite's subprocess can name them (--conformance-backend benchmarks.shape_coverage:...).
PooledRemainderLoopDropsALane = pooled(mutants.RemainderLoopDropsALane)
PooledOddBatchTailDropped = pooled(mutants.OddBatchTailDropped)
PooledSecondBlockWithoutBias = pooled(mutants.SecondBlockWithoutBias)
PooledTruncatedWideSum = pooled(mutants.TruncatedWideSum)
PooledTruncatedBatchSum = pooled(mutants.TruncatedBatchSum)
POOLED = {
    mutants.RemainderLoopDropsALane: PooledRemainderLoopDropsALane,
    mutants.OddBatchTailDropped: PooledOddBatchTailDropped,
    mutants.SecondBlockWithoutBias: PooledSecondBlockWithoutBias,
    mutants.TruncatedWideSum: PooledTruncatedWideSum,
    mutants.TruncatedBatchSum: PooledTruncatedBatchSum,
}


def caught(adapter: type[mutants.ManualBackprop], seed: int, workdir: Path) -> dict[str, bool]:
    """dtype -> whether this run's property test failed the adapter's cell."""
    args = ["--conformance-backend", f"{adapter.__module__}:{adapter.__name__}", "-k", "test_gradients", "--hypothesis-seed", str(seed)]
    run = run_suite([*args, "-q"], workdir)
    if run.report is None:
        raise RuntimeError(run.explain())
    return {cell.dtype: cell.failures > 0 for cell in run.report.cells}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="independent runs per mutant and way (default 5)")
    args = parser.parse_args(argv)
    seeds = list(range(1, args.seeds + 1))
    totals = {"free": [0, 0], "pooled": [0, 0]}
    print(f"{'mutant':<28} {'shapes':<7} " + " ".join(f"{'seed ' + str(s):>13}" for s in seeds) + "   caught")
    with tempfile.TemporaryDirectory(prefix="shape-coverage-") as tmp:
        for mutant in SHAPE_MUTANTS:
            for way, adapter in (("free", mutant), ("pooled", POOLED[mutant])):
                cells = []
                for seed in seeds:
                    outcome = caught(adapter, seed, Path(tmp) / f"{adapter.__name__}-{seed}")
                    cells.append(" ".join(("✓" if outcome[d] else "✗") + d.removeprefix("float") for d in sorted(outcome)))
                    totals[way][0] += sum(outcome.values())
                    totals[way][1] += len(outcome)
                hits = sum(c.count("✓") for c in cells)
                runs = sum(c.count("✓") + c.count("✗") for c in cells)
                print(f"{mutant.__name__:<28} {way:<7} " + " ".join(f"{c:>13}" for c in cells) + f"   {hits}/{runs}")
    for way, (hits, runs) in totals.items():
        print(f"{way} shapes: {hits} of {runs} (mutant, dtype, seed) runs caught ({100 * hits / runs:.0f} %)")
    hits = sum(h for h, _ in totals.values())
    runs = sum(r for _, r in totals.values())
    print(f"all: {hits} of {runs} caught ({100 * hits / runs:.0f} %); goal ≥ 90 %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
