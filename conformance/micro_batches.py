"""Naming an accumulation bug: what a wrong gradient summed from k partial sums equals, when it equals something recognisable.

A path that accumulates (torch's ``accumulate``: ``.backward()`` once per micro-batch into ``.grad``; JAX's
``accumulate``: a carry summed in ``lax.scan``) or sums per-example gradients (``vmap(grad)``) computes each sum over
the batch as k partial sums g_1, ..., g_k, one per micro-batch or per example. The reference computes each g_i
exactly, since the page's per-example δ^l and a^{l−1} do not depend on the split. When such a gradient fails its
bound, the verdict compares it, within the same tolerance, with the signatures of the training loop's usual bugs:

* G/k: the mean over the k partial sums (each micro-batch's loss divided by k, the idiom of a loop that *averages*
  its micro-batches, while the page's cost, and so its gradient, is a sum);
* G − g_i: micro-batch i dropped (a loop that stops one step short, a last uneven micro-batch never run);
* g_k: the last micro-batch's gradient alone (``.grad`` zeroed between micro-batches instead of between steps);
* G + g_i: micro-batch i accumulated twice;
* k·g_1: the first partial sum broadcast to all k (one example's gradient copied to every example).

Every signature that matches is named; one indistinguishable from G itself is not. Like
:mod:`~backprop_conformance.conformance.data_parallel` for ranks, this says what a failure looks like; the verdict
itself is the bound's.
"""

from __future__ import annotations

import numpy as np

from backprop_conformance.conformance.problems import Problem
from backprop_conformance.reference.model import Gradients


def partial_gradients(problem: Problem, pieces: tuple[slice, ...]) -> list[Gradients]:
    """g_i, the exact gradient of each piece of the batch: Σ_{x in piece} (δ^l_j a^{l−1}_k, δ^l_j), from the reference."""
    trace = problem.trace
    layers = problem.network.layers
    return [
        Gradients(
            {l: trace.delta[l][piece].T @ trace.a[l - 1][piece] for l in layers}, {l: trace.delta[l][piece].sum(axis=0) for l in layers}
        )
        for piece in pieces
    ]


def _combine(*terms: tuple[float, Gradients]) -> Gradients:
    layers = terms[0][1].w.keys()
    return Gradients({l: sum(c * g.w[l] for c, g in terms) for l in layers}, {l: sum(c * g.b[l] for c, g in terms) for l in layers})


def _within(got: Gradients, want: Gradients, bound: Gradients) -> bool:
    return all(
        np.all(np.abs(np.asarray(getattr(got, kind)[l], dtype=np.float64) - value) <= getattr(bound, kind)[l])
        for kind in ("w", "b")
        for l, value in getattr(want, kind).items()
    )


def _examples(piece: slice, batch_size: int) -> str:
    if piece.stop - piece.start == 1:
        return f"example {piece.start + 1} of {batch_size}"
    return f"examples {piece.start + 1}–{piece.stop} of {batch_size}"


def diagnose(problem: Problem, got: Gradients, bound: Gradients, per_example: bool) -> str:
    """The accumulation signatures ``got`` matches within ``bound`` (the verdict's tolerance), in one sentence; '' when
    the sums had one part. The parts are the batch's micro-batches, or its B examples when ``per_example``."""
    B = problem.batch.size
    pieces = tuple(slice(x, x + 1) for x in range(B)) if per_example else problem.batch.pieces
    k = len(pieces)
    if k == 1:
        return ""
    part, plural = ("example", "examples") if per_example else ("micro-batch", "micro-batches")
    G = problem.trace.gradients
    parts = partial_gradients(problem, pieces)
    candidates = [
        (
            f"the mean over the {k} {'per-example' if per_example else 'micro-batch'} gradients returned for their sum (every "
            f"element 1/{k} of it): the {'per-example' if per_example else 'micro-batch'} gradients were averaged, the page's "
            "cost is a sum",
            _combine((1 / k, G)),
        ),
        (
            f"only the last {part}'s gradient ({_examples(pieces[-1], B)}): .grad zeroed (or overwritten) between {part}s "
            "instead of between steps",
            parts[-1],
        ),
        (f"the first {part}'s gradient ({_examples(pieces[0], B)}) broadcast to all {k} ({k} × it)", _combine((float(k), parts[0]))),
    ]
    for i, piece in enumerate(parts):
        where = _examples(pieces[i], B)
        candidates.append((f"{part} {i + 1} ({where}) dropped from the accumulation", _combine((1.0, G), (-1.0, piece))))
        candidates.append((f"{part} {i + 1} ({where}) accumulated twice", _combine((1.0, G), (1.0, piece))))
    named = [text for text, candidate in candidates if not _within(candidate, G, bound) and _within(got, candidate, bound)]
    if not named:
        return (
            f"no known accumulation signature matches (the mean for the sum, one {part} dropped or counted twice, the last "
            f"{part} alone, the first broadcast) over {k} {plural}; compare with the same backend's eager path"
        )
    return "consistent with " + "; or ".join(named)
