"""Naming a layer-indexing bug: a layer whose z^l is another layer's parameters applied to its input.

A network whose hidden layers are alike is often written as a loop or a scan over stacked weights (JAX's
``lax.scan`` over layers, a ``for`` over a list of blocks). Its commonest bug is an index: every step reads the
stack's first slice, or a layer list is indexed by a stale counter. The forward pass then runs layer l with layer
m's parameters, and z^l, the first quantity it touches, leaves its bound. Given the framework's own a^{l−1}, the
check is local and exact in the reference's arithmetic: z^l equals a^{l−1}·(w^m)ᵀ + b^m, within z^l's own tolerance,
for a layer m < l of the same shape, and not the layer's own a^{l−1}·(w^l)ᵀ + b^l. Like
:mod:`~backprop_conformance.conformance.micro_batches` for accumulation, this says what a failure looks like; the
verdict itself is the bound's.
"""

from __future__ import annotations

import numpy as np

from backprop_conformance.adapters.base import AdapterOutput
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.reference.error_bound import ErrorBounds


def _within(got: np.ndarray, want: np.ndarray, bound: np.ndarray) -> bool:
    with np.errstate(invalid="ignore", over="ignore"):
        return bool(np.all(np.abs(got - want) <= bound))


def diagnose(problem: Problem, output: AdapterOutput, tol: ErrorBounds) -> str:
    """The layers whose z^l outside its bound is an earlier layer's parameters applied to the framework's own a^{l−1},
    in one sentence; '' when the output exposes no z^l and a^l, or the first z^l outside its bound is no such thing."""
    if output.z is None or output.a is None:
        return ""
    network, trace = problem.network, problem.trace
    reused: list[tuple[int, int]] = []
    for l in network.layers:
        got = np.asarray(output.z[l], dtype=np.float64)
        if _within(got, trace.z[l], tol.z[l]):
            continue
        a = np.asarray(output.a[l - 1], dtype=np.float64)
        match = next(
            (
                m
                for m in network.layers
                if m < l
                and network.w[m].shape == network.w[l].shape
                and not _within(a @ network.w[m].T + network.b[m], a @ network.w[l].T + network.b[l], tol.z[l])
                and _within(got, a @ network.w[m].T + network.b[m], tol.z[l])
            ),
            None,
        )
        if match is None:
            break
        reused.append((l, match))
    if not reused:
        return ""
    sources = sorted({m for _, m in reused})
    which = ", ".join(f"z^{l}" for l, _ in reused)
    if len(sources) == 1:
        m = sources[0]
        return (
            f"{which} computed with layer {m}'s parameters (w^{m}, b^{m}) instead of {'its' if len(reused) == 1 else 'their'} own, "
            f"applied to the framework's own a^(l−1): a loop or scan over layers that reads layer {m}'s slice of the stack at "
            "every step"
        )
    pairs = ", ".join(f"z^{l} with layer {m}'s" for l, m in reused)
    return f"layers computed with another layer's parameters (w^m, b^m) applied to the framework's own a^(l−1): {pairs}"
