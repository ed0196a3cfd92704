"""Naming a data-parallel bug: what a wrong all-reduced gradient equals, when it equals something recognisable.

A data-parallel path (torch's ``ddp``, JAX's ``sharded``) computes ∂C/∂w = Σ_r Σ_{x in slice r} δ^l_j a^{l−1}_k as
R partial sums, one per rank, combined by an all-reduce. Its costliest bugs leave a signature in the gradient
itself, which the reference can compute exactly, since the page's per-example δ^l and a^{l−1} do not depend on
how the batch is split: rank r's partial gradient is the reference's sum over rank r's slice
(:func:`~backprop_conformance.adapters.ranks.shards`). When a data-parallel gradient fails its bound, the verdict
compares it, within the same tolerance, with each signature:

* G/R: the mean over ranks returned as the sum's gradient (DistributedDataParallel averages; the page's cost is a sum);
* G − g_r: rank r's share dropped from the reduction;
* G + g_r: rank r's share reduced twice;
* g_0 or R·g_0: rank 0's own gradient, never combined (no all-reduce), as it is or scaled as if it were the mean;
* G with errors the size of float16's or bfloat16's rounding in the combination: the reduction done in a format
  coarser than the gradients'.

Every signature that matches is named (with 2 ranks, "rank 1 dropped" and "rank 0's own gradient" are the same
numbers); one indistinguishable from G itself (an empty slice) is not.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from backprop_conformance.adapters.ranks import shards
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.reference.dtypes import FORMATS, float_format
from backprop_conformance.reference.error_bound import K, Precision, cross_rank_reduction_bound
from backprop_conformance.reference.model import Gradients

COARSER_REDUCTIONS = ("float16", "bfloat16")
"""Formats a reduction may wrongly be done in, finest first (DDP's ``fp16_compress_hook``, ``bf16_compress_hook``)."""


def rank_gradients(problem: Problem, ranks: int) -> list[Gradients]:
    """g_r, each rank's exact partial gradient Σ_{x in slice r} (δ^l_j a^{l−1}_k, δ^l_j), from the reference's per-example values."""
    trace = problem.trace
    parts = []
    for piece in shards(problem.batch.size, ranks):
        w = {l: trace.delta[l][piece].T @ trace.a[l - 1][piece] for l in problem.network.layers}
        b = {l: trace.delta[l][piece].sum(axis=0) for l in problem.network.layers}
        parts.append(Gradients(w, b))
    return parts


def _combine(*terms: tuple[float, Gradients]) -> Gradients:
    layers = terms[0][1].w.keys()
    return Gradients(
        {l: sum(c * g.w[l] for c, g in terms) for l in layers},
        {l: sum(c * g.b[l] for c, g in terms) for l in layers},
    )


def _within(got: Gradients, want: Gradients, bound: Gradients) -> bool:
    for kind in ("w", "b"):
        for l, value in getattr(want, kind).items():
            error = np.abs(np.asarray(getattr(got, kind)[l], dtype=np.float64) - value)
            if not np.all(error <= getattr(bound, kind)[l]):
                return False
    return True


def _magnitudes(problem: Problem) -> Gradients:
    """S, the sums of the terms' magnitudes: Σ_x |δ^l_j||a^{l−1}_k| and Σ_x |δ^l_j|."""
    trace = problem.trace
    layers = problem.network.layers
    return Gradients(
        {l: np.abs(trace.delta[l]).T @ np.abs(trace.a[l - 1]) for l in layers},
        {l: np.abs(trace.delta[l]).sum(axis=0) for l in layers},
    )


def _examples(piece: slice, batch_size: int) -> str:
    if piece.stop - piece.start == 1:
        return f"example {piece.start + 1} of {batch_size}"
    return f"examples {piece.start + 1}–{piece.stop} of {batch_size}"


def diagnose(problem: Problem, got: Gradients, bound: Gradients, precision: Precision, dtype: str) -> str:
    """The data-parallel signatures ``got`` matches within ``bound`` (the verdict's tolerance), in one sentence; '' for R = 1."""
    R = precision.ranks
    if R == 1:
        return ""
    G = problem.trace.gradients
    parts = rank_gradients(problem, R)
    pieces = shards(problem.batch.size, R)
    candidates: list[tuple[str, Gradients]] = [
        (
            f"the mean over the {R} ranks returned as the gradient of the summed cost (every element 1/{R} of it): "
            f"DistributedDataParallel averages, the page's cost is a sum, so its gradient is {R} × DDP's",
            _combine((1 / R, G)),
        ),
        (f"rank 0's own gradient ({_examples(pieces[0], problem.batch.size)}), never combined with the others: no all-reduce", parts[0]),
        (f"rank 0's own gradient times {R}, as if it were the mean over ranks: no all-reduce", _combine((float(R), parts[0]))),
    ]
    for r, part in enumerate(parts):
        where = _examples(pieces[r], problem.batch.size)
        dropped, twice = _combine((1.0, G), (-1.0, part)), _combine((1.0, G), (1.0, part))
        candidates.append((f"rank {r}'s share ({where}) missing: its gradient was dropped from the reduction", dropped))
        candidates.append((f"rank {r}'s share ({where}) counted twice: its gradient was reduced twice", twice))
    named = [text for text, candidate in candidates if not _within(candidate, G, bound) and _within(got, candidate, bound)]
    if not named:
        magnitude = _magnitudes(problem)
        for fmt in COARSER_REDUCTIONS:
            coarse = float_format(fmt)
            if coarse.u <= FORMATS[dtype].u:
                continue
            reduced = dataclasses.replace(precision, u=coarse.u, eta=coarse.tiny)

            # The all-reduce in the coarse format (γ_{R−1}, the mean's roundings) and the cast of each partial sum into it (u).
            def allowance(size: np.ndarray, tol: np.ndarray, reduced: Precision = reduced, u: float = coarse.u) -> np.ndarray:
                return tol + K * (cross_rank_reduction_bound(size, tol, reduced) + u * (size + tol))

            allowed = Gradients(
                {l: allowance(magnitude.w[l], bound.w[l]) for l in G.w},
                {l: allowance(magnitude.b[l], bound.b[l]) for l in G.b},
            )
            if _within(got, G, allowed):
                named.append(
                    f"the right sum, with errors the size of {fmt} rounding: the cross-rank reduction was done in {fmt}, not {dtype}"
                )
                break
    if not named:
        return (
            f"no known data-parallel signature matches (the mean for the sum, a rank dropped or counted twice, no all-reduce, "
            f"a reduction in a coarser format) over {R} ranks; compare with the same backend's single-process paths"
        )
    return "consistent with " + "; or ".join(named)
