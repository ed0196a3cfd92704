"""What a framework demonstrably accumulates its sums in, measured through its adapter: the evidence for
``Capabilities.accumulation``.

    python -m backprop_conformance accumulation mlx
    backprop-conformance accumulation mypkg.adapter:MyAdapter --path eager --dtype float16 --trials 50

The declared accumulation decides the error bound a framework is judged by, so it must be measured, not guessed.
The probe runs the adapter itself (its public ``compute``, as the suite does) on networks built so that one output
is one sum of n positive terms the adapter also returns, and counts how often the sum is *correctly rounded*:
the exact sum of the returned terms, rounded once to the format. Accumulating in a wider format and rounding once
gives that in practically every trial; accumulating in the format itself (sequentially, pairwise or blocked) in
few, once n is large. Positive terms, so that no cancellation hides the difference. The sums, and the declaration
keys they decide:

* ``dot`` -- the forward product z^2 = w^2 a^1 (b^2 = 0) of a network n → 2, one example: terms w_jk a_k;
* ``dot`` -- the weight gradient ∂C/∂w^2_j1 = Σ_x δ^2_xj a^1_x of a network 1 → 2 on a batch of n: terms δ·a;
* ``batch_sum`` -- the bias gradient ∂C/∂b^2_j = Σ_x δ^2_xj of the same network;
* ``cost_sum`` -- the cost C = Σ_x Σ_j ½ (a^2_xj)² (targets 0) of the same network. A hit is a result equal to
  the correctly rounded sum of either the format's squares or the exact squares (a framework may fuse the square
  into a wider sum).

The forward product needs z from the adapter, the gradient sums δ, the cost a: a path that does not return one
leaves its sums unmeasured, and the probe says so. A sum judged wider than the format is declared as the next
wider format (float32 for float16 and bfloat16, float64 for float32); both ``dot`` sums must be wider for ``dot``
to be declared. The terms are the values the adapter returns, rounded to the format: a framework that sums
wider intermediates than it returns (a fused backward pass) shows as accumulating in the format, which keeps
the declaration on the safe side.

A mixed-precision policy (``--dtype mixed-bfloat16``) declares its sums in its policy, one format per accumulation,
either storage (float32) or compute. The probe measures them the same way, with terms in the compute format (the
casts of the inputs and the parameters are then exact) and the results compared after rounding to the compute
format: a sum accumulated in float32 lands on the correctly rounded compute-format value in practically every
trial, whatever format its result is returned in, and one accumulated in the compute format rarely. The measured
policy is compared with the declared one, and a disagreement fails the command (:func:`policy_disagreements`): a sum
declared in the compute format that is measured wider would judge the framework by a looser bound than its arithmetic
earns, and one declared in float32 that is measured in the compute format by a tighter one (false alarms).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TextIO

import numpy as np

from backprop_conformance.adapters.base import OPERATIONS, Adapter, AdapterError, Capabilities
from backprop_conformance.reference.dtypes import MIXED, round_to
from backprop_conformance.reference.model import Batch, Network

SIZES: tuple[int, ...] = (16, 1024)
"""Terms per sum: a batch of the default profile's largest size, and a large one, where in-format accumulation
is rarely correctly rounded."""

WIDER: dict[str, str] = {"float16": "float32", "bfloat16": "float32", "float32": "float64"}
"""The format a sum judged wider than its dtype is declared in."""

SUMS: tuple[tuple[str, str, str], ...] = (
    ("forward", "dot", "dot (z = w·a)"),
    ("weight", "dot", "dot (∂C/∂w = Σ δ·a)"),
    ("bias", "batch_sum", "batch_sum (∂C/∂b = Σ δ)"),
    ("cost", "cost_sum", "cost_sum (C = Σ ½a²)"),
)
"""(sum, the declaration key it decides, its column heading)."""

WIDE_SHARE = 0.9
"""The share of correctly rounded results at the largest size above which a sum counts as accumulated wider:
float32 accumulation of 1024 float16 terms misses correct rounding in well under 1% of sums, float16
accumulation hits it in a minority."""


def exact_dot(p: np.ndarray, q: np.ndarray) -> list[Fraction]:
    """Column by column, the exact Σ_i p_i q_i of two (n, k) arrays of floats (exact even where float64 products are not)."""
    return [
        sum((Fraction(float(a)) * Fraction(float(b)) for a, b in zip(p[:, j], q[:, j], strict=True)), Fraction(0))
        for j in range(p.shape[1])
    ]


def exact_sum(p: np.ndarray) -> list[Fraction]:
    """Column by column, the exact Σ_i p_i of an (n, k) array of floats."""
    return [sum((Fraction(float(a)) for a in p[:, j]), Fraction(0)) for j in range(p.shape[1])]


def correctly_rounded(dtype: str, got: Sequence[float], *exact: Sequence[Fraction]) -> int:
    """How many of ``got``, rounded to ``dtype``, equal the correctly rounded value, in ``dtype``, of the matching exact
    sum of one of ``exact``. A result already in ``dtype`` is compared as it is; a mixed-precision policy's results,
    some returned wider than its compute format, are compared at the compute format's precision."""
    hits = 0
    for i, value in enumerate(got):
        wanted = {float(round_to(dtype, np.float64(float(candidate[i])))) for candidate in exact}
        hits += int(float(round_to(dtype, np.float64(float(value)))) in wanted)
    return hits


def term_format(dtype: str) -> str:
    """The format the probe's terms are drawn in and its sums compared at: ``dtype``, or a policy's compute format."""
    return MIXED[dtype][1] if dtype in MIXED else dtype


@dataclass
class Tally:
    """Correctly rounded results of one sum, per number of terms: n -> [hits, sums]; ``missing`` says why none ran."""

    counts: dict[int, list[int]] = field(default_factory=dict)
    missing: str = ""

    def add(self, n: int, hits: int, total: int) -> None:
        entry = self.counts.setdefault(n, [0, 0])
        entry[0] += hits
        entry[1] += total

    def wide(self) -> bool | None:
        """Whether the sum is accumulated wider than its format (judged at the largest n); None when unmeasured."""
        if not self.counts:
            return None
        hits, total = self.counts[max(self.counts)]
        return hits >= WIDE_SHARE * total


@dataclass
class Measurement:
    """One (path, dtype) of an adapter: a :class:`Tally` per sum of :data:`SUMS`, or the error that stopped it."""

    path: str
    dtype: str
    tallies: dict[str, Tally]
    error: str = ""

    def declaration(self) -> dict[str, str]:
        """The per-operation accumulation the evidence supports (keys undeclared where it is the dtype itself; for a
        mixed-precision policy, every measured key, in storage or compute format)."""
        if self.dtype in MIXED and not self.error:
            storage, compute = MIXED[self.dtype]
            measured = {}
            for key in dict.fromkeys(key for _, key, _ in SUMS):
                verdicts = [v for name, k, _ in SUMS if k == key and (v := self.tallies[name].wide()) is not None]
                if verdicts:
                    measured[key] = storage if all(verdicts) else compute
            return measured
        wider = WIDER.get(self.dtype)
        if wider is None or self.error:
            return {}
        declared = {}
        for key in dict.fromkeys(key for _, key, _ in SUMS):
            verdicts = [self.tallies[name].wide() for name, k, _ in SUMS if k == key]
            if verdicts and all(v is True for v in verdicts):
                declared[key] = wider
        return declared


def _uniform(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Positive values of ``dtype`` in (0, 1), as float64."""
    return round_to(dtype, rng.uniform(0.0625, 1.0, shape)).astype(np.float64)


def measure(adapter: Adapter, path: str, dtype: str, *, trials: int = 20, sizes: Sequence[int] = SIZES, seed: int = 0) -> Measurement:
    """Run ``trials`` probes of every size through ``adapter`` on ``path`` in ``dtype``, and count correctly rounded sums."""
    rng = np.random.default_rng(seed)
    tallies = {name: Tally() for name, _, _ in SUMS}
    try:
        for n in sizes:
            for _ in range(trials):
                _forward_trial(adapter, path, dtype, n, rng, tallies["forward"])
                _batch_trial(adapter, path, dtype, n, rng, tallies)
    except Exception as exc:  # the adapter's code: whatever it raises is the measurement's outcome, shown as such
        return Measurement(path, dtype, tallies, f"{type(exc).__name__}: {exc}")
    return Measurement(path, dtype, tallies)


def _forward_trial(adapter: Adapter, path: str, dtype: str, n: int, rng: np.random.Generator, tally: Tally) -> None:
    fmt = term_format(dtype)
    w = _uniform(rng, fmt, (2, n))
    x = _uniform(rng, fmt, (1, n))
    out = adapter.compute(Network({2: w}, {2: np.zeros(2)}), Batch(x, np.zeros((1, 2))), dtype=dtype, path=path)
    if out.z is None:
        tally.missing = f"path {path!r} returns no z"
        return
    got = np.asarray(out.z[2], dtype=np.float64)[0]
    tally.add(n, correctly_rounded(fmt, got, exact_dot(w.T, np.repeat(x.T, 2, axis=1))), 2)


def _batch_trial(adapter: Adapter, path: str, dtype: str, n: int, rng: np.random.Generator, tallies: Mapping[str, Tally]) -> None:
    fmt = term_format(dtype)
    network = Network({2: _uniform(rng, fmt, (2, 1))}, {2: _uniform(rng, fmt, (2,))})
    x = _uniform(rng, fmt, (n, 1))
    out = adapter.compute(network, Batch(x, np.zeros((n, 2))), dtype=dtype, path=path)
    if out.delta is None:
        tallies["weight"].missing = tallies["bias"].missing = f"path {path!r} returns no δ"
    else:
        delta = np.asarray(out.delta[2], dtype=np.float64)
        weight = np.asarray(out.gradients.w[2], dtype=np.float64)[:, 0]
        tallies["weight"].add(n, correctly_rounded(fmt, weight, exact_dot(delta, np.repeat(x, 2, axis=1))), 2)
        tallies["bias"].add(n, correctly_rounded(fmt, np.asarray(out.gradients.b[2], dtype=np.float64), exact_sum(delta)), 2)
    if out.a is None:
        tallies["cost"].missing = f"path {path!r} returns no a"
        return
    a = np.asarray(out.a[2], dtype=np.float64).reshape(-1, 1)
    squares = round_to(fmt, a * a).astype(np.float64)
    half = Fraction(1, 2)
    in_format = [half * s for s in exact_sum(squares)]
    exact = [half * s for s in exact_dot(a, a)]
    tallies["cost"].add(2 * n, correctly_rounded(fmt, [out.cost], in_format, exact), 1)


def probe(adapter: Adapter, paths: Sequence[str], dtypes: Sequence[str], *, trials: int, out: TextIO) -> list[Measurement]:
    """Measure every (path, dtype) and print the evidence and the declaration it supports."""
    caps = adapter.caps
    measurements = []
    print(
        f"accumulation of {caps.name} ({caps.framework} {caps.version}): correctly rounded sums out of those tried, "
        f"positive terms, {trials} trials per size; a sum is judged wider than its format when at least "
        f"{WIDE_SHARE:.0%} of its largest sums are correctly rounded",
        file=out,
    )
    for path in paths:
        print(f"\npath {path}", file=out)
        print(f"  {'dtype':<9} " + " ".join(f"{heading:>26}" for _, _, heading in SUMS), file=out)
        for dtype in dtypes:
            m = measure(adapter, path, dtype, trials=trials)
            measurements.append(m)
            if m.error:
                print(f"  {dtype:<9} error: {m.error}", file=out)
                continue
            cells = []
            for name, _, _ in SUMS:
                tally = m.tallies[name]
                text = " ".join(f"{hits}/{total}" for hits, total in (tally.counts[n] for n in sorted(tally.counts)))
                cells.append(f"{text or 'not measured':>26}")
            print(f"  {dtype:<9} " + " ".join(cells), file=out)
        missing = sorted({t.missing for m in measurements if m.path == path for t in m.tallies.values() if t.missing})
        if missing:
            print(f"  not measured: {'; '.join(missing)}", file=out)
    print("\nmeasured (widest accumulation every probed path supports), beside what the adapter declares:", file=out)
    for dtype in dtypes:
        if dtype in caps.policies:
            declared = caps.policies[dtype].formats
            measured_policy = measured_sums(measurements, dtype)
            print(
                f"  {dtype:<9} measured {_sums(measured_policy) or 'nothing'}; declared {_sums({k: declared[k] for k in measured_policy})}",
                file=out,
            )
            continue
        found = [m.declaration() for m in measurements if m.dtype == dtype and not m.error]
        common = {k: v for k, v in found[0].items() if all(f.get(k) == v for f in found)} if found else {}
        measured: object = common or dtype
        if common and set(common) == set(OPERATIONS) and len(set(common.values())) == 1:
            measured = next(iter(common.values()))
        print(f"  {dtype:<9} measured {measured}; declared {caps.accumulation.get(dtype, dtype)}", file=out)
    for line in policy_disagreements(caps, measurements):
        print(f"DISAGREES: {line}", file=out)
    return measurements


def _sums(formats: Mapping[str, str]) -> str:
    return ", ".join(f"{key} {fmt}" for key, fmt in formats.items())


def measured_sums(measurements: Sequence[Measurement], dtype: str) -> dict[str, str]:
    """A policy's accumulations as measured on every probed path: storage where every path accumulated wider, else compute."""
    found = [m.declaration() for m in measurements if m.dtype == dtype and not m.error]
    compute = MIXED[dtype][1]
    keys = dict.fromkeys(key for f in found for key in f)
    return {key: compute if any(f.get(key) == compute for f in found) else MIXED[dtype][0] for key in keys}


def policy_disagreements(caps: Capabilities, measurements: Sequence[Measurement]) -> list[str]:
    """Each accumulation of a declared mixed-precision policy that the measurement contradicts, said in words.

    A policy's sums are part of its declaration, and the bound follows them: a sum declared in the compute format but
    measured in float32 would loosen the bound beyond what the arithmetic earns (what :func:`check_policy_intermediates
    <backprop_conformance.adapters.base.check_policy_intermediates>` refuses for z and a), one declared in float32 but
    measured in the compute format would tighten it into false alarms.
    """
    lines = []
    for dtype in dict.fromkeys(m.dtype for m in measurements):
        if dtype not in caps.policies:
            continue
        policy = caps.policies[dtype]
        for key, measured in measured_sums(measurements, dtype).items():
            declared = policy.formats[key]
            if declared == measured:
                continue
            effect = (
                "a looser bound than its arithmetic earns: declare it as measured"
                if measured == policy.storage
                else "a tighter bound than its arithmetic allows (false alarms): declare it as measured"
            )
            lines.append(f"{caps.name} {dtype}: {key} declared {declared}, measured {measured}; the declaration gives {effect}")
    return lines


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``accumulation BACKEND [--path P]... [--dtype D]... [--trials N]``; exit status 0, or 2 for a backend that cannot load.

    ``out`` and ``err`` default to the streams of the moment of the call (not of the import), so a caller's redirection holds."""
    from backprop_conformance.adapters.registry import AdapterUnavailable, resolve

    parser = argparse.ArgumentParser(prog="backprop-conformance accumulation", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("backend", help="a built-in adapter's name, an installed plug-in's, or package.module:Attribute")
    parser.add_argument("--path", action="append", default=[], help="path to probe (repeatable); default: every path not data-parallel")
    parser.add_argument(
        "--dtype", action="append", default=[], help="format to probe (repeatable); default: every dtype the adapter declares"
    )
    parser.add_argument("--trials", type=_positive, default=20, help="trials per size of sum (default 20)")
    args = parser.parse_args(argv)
    out, err = out or sys.stdout, err or sys.stderr
    try:
        adapter = resolve(args.backend).load()
    except (AdapterUnavailable, AdapterError) as exc:
        print(f"accumulation: {exc}", file=err)
        return 2
    caps = adapter.caps
    formats = caps.dtypes
    for what, asked, valid in (("path", args.path, caps.paths), ("dtype", args.dtype, formats)):
        stray = [a for a in asked if a not in valid]
        if stray:
            print(f"accumulation: {caps.name} has no {what} {', '.join(stray)}; it offers {', '.join(valid)}", file=err)
            return 2
    paths = args.path or [p for p in caps.paths if p not in caps.ranks]
    try:
        measurements = probe(adapter, paths, args.dtype or list(formats), trials=args.trials, out=out)
    finally:
        adapter.finish()
    return 1 if policy_disagreements(caps, measurements) else 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"give a whole number of trials ≥ 1, not {text}")
    return value
