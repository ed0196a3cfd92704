"""How often the default profile catches bugs that live only in particular shapes. Prints figures; asserts nothing.

    python -m benchmarks.shape_coverage                      # the held-out sample: 60 mutants, 3 seeds, free and pooled
    python -m benchmarks.shape_coverage --sample tuning      # the sample the design was tuned on
    python -m benchmarks.shape_coverage --classes            # which kernel classes the covering design and the pool reach
    python -m benchmarks.shape_coverage --named              # the shape-dependent mutants of tests/mutants.py

What it measures. A bug in one kernel's handling of one dimension shows only in some shapes. The suite covers
them by design (:mod:`backprop_conformance.conformance.coverage`): every class (residue modulo 4 ... 64, one to
three blocks) of every role a dimension plays (fan-in, fan-out, batch, elements, narrow layer, depth). Whether that
generalises is measured on bugs nobody listed: mutants drawn from the family of ``tests/shape_mutants.py``, whose
parameters are the role, modulus, residue, threshold and kind of corruption, uniformly at random.

Tuning and measuring are kept apart. The design (the covering shapes, the pool's size) was tuned on the sample
drawn with :data:`TUNING_SEED` only; the figures to quote are those of the sample drawn with :data:`HELD_OUT_SEED`,
which was first run after the design was frozen. Each mutant runs twice: on a path that draws its shapes freely
(eager frameworks, numpy plug-ins), and on one that declares it compiles per shape and so draws from the pool
(``jax.jit``). Each (way, seed) is one ``pytest conformance`` subprocess with every mutant of the sample as a
backend, ``-k test_gradients``, the default profile (100 examples per cell), a fresh hypothesis database and
``--hypothesis-seed``; a (mutant, dtype, seed) run is caught when its cell failed. It prints the rate per role and
per kind, free and pooled side by side, then the misses. Target (issue 23): at least 0.95 caught, free and pooled.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

from backprop_conformance.conformance import coverage
from backprop_conformance.conformance.runner import run_suite
from backprop_conformance.conformance.strategies import DEFAULT_LIMITS, SHAPE_POOL
from tests import mutants, shape_mutants

TUNING_SEED = 23
HELD_OUT_SEED = 1207
"""The sample whose rates are quoted, drawn and first run after the design was frozen (covering design of 72 networks
of depth 4 to 8 beside 2-wide layers, pool of 48). An earlier held-out sample (seed 1206) measured the design before
it: free 0.967, pooled 0.947 (pool of 40); its misses, tile transpositions beside 1-wide layers, led to the change,
so it no longer counts as held out."""

SAMPLES = {"tuning": TUNING_SEED, "held-out": HELD_OUT_SEED}
WAYS = ("free", "pooled")
MODULE = "tests.shape_mutants"


def caught(names: list[str], pooled: bool, seed: int, workdir: Path) -> dict[tuple[str, str], bool]:
    """(mutant, dtype) -> whether that cell failed, for one suite run over every mutant."""
    suffix = "__pooled" if pooled else ""
    by_backend = {shape_mutants.make(name + suffix).name: name for name in names}
    args = [a for name in names for a in ("--conformance-backend", f"{MODULE}:{name}{suffix}")]
    run = run_suite([*args, "-k", "test_gradients", "--hypothesis-seed", str(seed), "-q"], workdir)
    if run.report is None:
        raise RuntimeError(run.explain())
    return {(by_backend[cell.backend], cell.dtype): cell.failures > 0 or cell.exceptions > 0 for cell in run.report.cells}


def rates(results: dict[str, dict[tuple[str, str, int], bool]], key: str) -> dict[str, dict[str, tuple[int, int]]]:
    """way -> group -> (caught, runs), grouped by the mutants' ``key`` parameter (role or kind)."""
    table: dict[str, dict[str, tuple[int, int]]] = {}
    for way, outcomes in results.items():
        groups: dict[str, list[bool]] = collections.defaultdict(list)
        for (name, _dtype, _seed), hit in outcomes.items():
            groups[str(getattr(shape_mutants.make(name), key))].append(hit)
        table[way] = {group: (sum(hits), len(hits)) for group, hits in sorted(groups.items())}
    return table


def print_rates(results: dict[str, dict[tuple[str, str, int], bool]]) -> None:
    for key in ("role", "kind", "modulus", "blocks"):
        table = rates(results, key)
        print(f"\nby {key:<8} " + "".join(f"{way:>18}" for way in results))
        for group in next(iter(table.values())):
            print(
                f"  {group:<14} "
                + "".join(f"{table[way][group][0]:>8}/{table[way][group][1]:<4} {_pct(*table[way][group]):>5}" for way in results)
            )
    print()
    for way, outcomes in results.items():
        hits, runs = sum(outcomes.values()), len(outcomes)
        print(f"{way} shapes: {hits} of {runs} (mutant, dtype, seed) runs caught ({hits / runs:.3f}); target ≥ 0.95")


def _pct(hits: int, runs: int) -> str:
    return f"{100 * hits / runs:.0f}%" if runs else "-"


def print_classes() -> None:
    """Which kernel classes each design reaches, per role: no suite run."""
    limits = (DEFAULT_LIMITS.max_depth, coverage.LARGEST, coverage.LARGEST)
    space = coverage.reachable(*limits)
    design, pool = space & coverage.covered(DEFAULT_LIMITS.covering), space & coverage.covered(SHAPE_POOL)
    print(f"{'role':<10} {'classes':>8} {'covering design':>16} {'pool':>10}")
    for role in coverage.ROLES:
        count = [sum(c[0] == role for c in reached) for reached in (space, design, pool)]
        print(f"{role:<10} {count[0]:>8} {count[1]:>16} {count[2]:>10}")
    print(f"{'all':<10} {len(space):>8} {len(design):>16} {len(pool):>10}")
    print(f"covering design: {len(DEFAULT_LIMITS.covering)} shapes; pool: {len(SHAPE_POOL)} shapes")


NAMED = (
    mutants.RemainderLoopDropsALane,
    mutants.OddBatchTailDropped,
    mutants.SecondBlockWithoutBias,
    mutants.TruncatedWideSum,
    mutants.TruncatedBatchSum,
)
"""The shape-dependent mutants the free generator was first tuned to (issue 14), kept as a regression check."""


def pooled_named(mutant: type[mutants.ManualBackprop]) -> type[mutants.ManualBackprop]:
    """The same bug on a path that declares it compiles per shape (so the suite draws its shapes from the pool)."""
    return type(f"Pooled{mutant.__name__}", (mutant,), {"compiles_per_shape": True, "__module__": __name__})


# Module attributes, so that the suite's subprocess can name them (--conformance-backend benchmarks.shape_coverage:...).
PooledRemainderLoopDropsALane = pooled_named(mutants.RemainderLoopDropsALane)
PooledOddBatchTailDropped = pooled_named(mutants.OddBatchTailDropped)
PooledSecondBlockWithoutBias = pooled_named(mutants.SecondBlockWithoutBias)
PooledTruncatedWideSum = pooled_named(mutants.TruncatedWideSum)
PooledTruncatedBatchSum = pooled_named(mutants.TruncatedBatchSum)


def run_named(seeds: list[int], workdir: Path) -> None:
    for way, prefix in (("free", "tests.mutants:"), ("pooled", "benchmarks.shape_coverage:Pooled")):
        hits = runs = 0
        for seed in seeds:
            args = [a for m in NAMED for a in ("--conformance-backend", f"{prefix}{m.__name__}")]
            run = run_suite([*args, "-k", "test_gradients", "--hypothesis-seed", str(seed), "-q"], workdir / f"named-{way}-{seed}")
            if run.report is None:
                raise RuntimeError(run.explain())
            hits += sum(c.failures > 0 for c in run.report.cells)
            runs += len(run.report.cells)
        print(f"named mutants, {way} shapes: {hits} of {runs} (mutant, dtype, seed) runs caught")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sample", choices=tuple(SAMPLES), default="held-out", help="which sample of mutants (default: held-out)")
    parser.add_argument("--mutants", type=int, default=60, help="mutants in the sample (default 60)")
    parser.add_argument("--seeds", type=int, default=3, help="hypothesis seeds per mutant and way (default 3)")
    parser.add_argument("--ways", choices=(*WAYS, "both"), default="both")
    parser.add_argument("--classes", action="store_true", help="print the classes each design reaches, and stop")
    parser.add_argument("--named", action="store_true", help="run the named shape mutants of tests/mutants.py instead")
    args = parser.parse_args(argv)
    if args.classes:
        print_classes()
        return 0
    seeds = list(range(1, args.seeds + 1))
    with tempfile.TemporaryDirectory(prefix="shape-coverage-") as tmp:
        if args.named:
            run_named(seeds, Path(tmp))
            return 0
        names = shape_mutants.sample(args.mutants, SAMPLES[args.sample])
        ways = WAYS if args.ways == "both" else (args.ways,)
        results: dict[str, dict[tuple[str, str, int], bool]] = {}
        for way in ways:
            outcomes: dict[tuple[str, str, int], bool] = {}
            for seed in seeds:
                for (name, dtype), hit in caught(names, way == "pooled", seed, Path(tmp) / f"{way}-{seed}").items():
                    outcomes[(name, dtype, seed)] = hit
            results[way] = outcomes
        print(f"sample {args.sample} (seed {SAMPLES[args.sample]}): {len(names)} mutants × 2 dtypes × {len(seeds)} seeds")
        print_rates(results)
        for way, outcomes in results.items():
            missed = sorted({name for (name, _d, _s), hit in outcomes.items() if not hit})
            for name in missed:
                runs = [f"{d.removeprefix('float')}/{s}" for (n, d, s), hit in sorted(outcomes.items()) if n == name and not hit]
                print(f"missed ({way}): {name} in {', '.join(runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
