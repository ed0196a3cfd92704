"""Judging a framework's gradients: per element, against the derived error bound.

An element passes when |g_framework − g_reference| ≤ K·(E(framework) + E(reference)) (see
:mod:`backprop_conformance.reference.error_bound`, K = 2). On top of the bound, the rules the design note adds:

* the finite/non-finite pattern must match exactly: the reference is always finite, so any NaN or
  infinity fails (NaN never passes: every comparison with NaN is false, and this code checks
  finiteness explicitly rather than relying on that);
* a zero where the reference exceeds its bound fails like any other element, and the message says
  it is an exact zero, because a silently dropped gradient is the commonest cause.

A failing verdict names the parameter in the page's indices, both values, the bound and their
ratio, and the first layer at which the framework's own z^l, a^l or δ^l left *its* bound: a wrong
gradient in layer 2 often starts as a wrong δ in layer 5, and that is where to look.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from backprop_conformance.adapters.base import Adapter, AdapterOutput
from backprop_conformance.adapters.selfcheck import check_output
from backprop_conformance.conformance.cells import Cell
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.conformance.timing import timed
from backprop_conformance.reference.error_bound import ErrorBounds, K, Precision, tolerance
from backprop_conformance.reference.model import Gradients, parameter_name

MAX_LISTED = 5
"""How many failing elements a message lists beside the worst."""

CONFORMANCE = f"the error bound K·(E_framework + E_reference), K = {K:g}"
EXACTNESS = f"the exactness bound (K = {K:g}, σ′ as accurate as σ(z)σ(−z), against the mpmath oracle)"


@dataclass(frozen=True)
class Mismatch:
    """One element outside its bound."""

    name: str
    framework: float
    reference: float
    bound: float

    @property
    def ratio(self) -> float:
        """|framework − reference| / bound; infinite for a non-finite framework value."""
        if not np.isfinite(self.framework):
            return float("inf")
        return abs(self.framework - self.reference) / self.bound

    def line(self) -> str:
        note = "  (framework returned exactly 0)" if self.framework == 0 and self.reference != 0 else ""
        return (
            f"{self.name}: framework {self.framework:.17g}, reference {self.reference:.17g}, "
            f"bound {self.bound:.3g}, ratio {self.ratio:.3g}{note}"
        )


@dataclass(frozen=True)
class Verdict:
    """The outcome of comparing one adapter output with the reference.

    ``worst_ratio`` is the largest error/bound ratio over every gradient element (infinite when
    the framework returned a non-finite value); ``mismatches`` are the elements above 1, worst first.
    """

    cell: str
    problem: Problem
    worst_ratio: float
    mismatches: tuple[Mismatch, ...]
    elements: int
    divergence: str = ""
    standard: str = CONFORMANCE

    @property
    def passed(self) -> bool:
        return not self.mismatches

    def message(self) -> str:
        """The failure report, written to be pasted into a bug report as it is."""
        if self.passed:
            return f"{self.cell}: all {self.elements} gradient elements within {self.standard} (worst ratio {self.worst_ratio:.3g})"
        lines = [
            f"{self.cell}: {len(self.mismatches)} of {self.elements} gradient elements exceed {self.standard}",
            f"  worst: {self.mismatches[0].line()}",
        ]
        lines += [f"  also:  {m.line()}" for m in self.mismatches[1 : 1 + MAX_LISTED]]
        if len(self.mismatches) > 1 + MAX_LISTED:
            lines.append(f"  ... and {len(self.mismatches) - 1 - MAX_LISTED} more")
        if self.divergence:
            lines.append(f"  first divergence: {self.divergence}")
        lines.append(f"  case: {self.problem.describe()}")
        return "\n".join(lines)


def _compare(name_of: object, framework: np.ndarray, reference: np.ndarray, bound: np.ndarray) -> tuple[float, list[Mismatch]]:
    """Worst ratio and the failing elements of one array (framework converted to float64 first)."""
    fw = np.asarray(framework, dtype=np.float64)
    finite = np.isfinite(fw)
    with np.errstate(over="ignore", invalid="ignore"):  # an infinite or huge framework value is a failure, not a warning
        diff = np.where(finite, np.abs(fw - reference), np.inf)
        ratio = diff / bound
    bad = np.argwhere(ratio > 1)
    mismatches = [
        Mismatch(name_of(tuple(int(i) for i in idx)), float(fw[tuple(idx)]), float(reference[tuple(idx)]), float(bound[tuple(idx)]))  # type: ignore[operator]
        for idx in bad
    ]
    return (float(np.max(ratio)) if ratio.size else 0.0), mismatches


def first_divergence(output: AdapterOutput, problem: Problem, tol: ErrorBounds) -> str:
    """Where the framework first left its bounds: the first intermediate, in computation order, or why none is named.

    Order: forward z^2, a^2, ..., z^L, a^L, then backward δ^L, ..., δ^2. Only the intermediates the
    adapter exposes are compared (they are optional in the contract).
    """
    trace = problem.trace
    checks: list[tuple[str, int, Mapping[int, np.ndarray] | None, Mapping[int, np.ndarray], Mapping[int, np.ndarray]]] = []
    for l in problem.network.layers:
        checks.append(("z", l, output.z, trace.z, tol.z))
        checks.append(("a", l, output.a, trace.a, tol.a))
    for l in reversed(problem.network.layers):
        checks.append(("δ", l, output.delta, trace.delta, tol.delta))
    compared = []
    for symbol, l, got, want, bound in checks:
        if got is None or l not in got:
            continue
        compared.append(f"{symbol}^{l}")
        arr = np.asarray(got[l], dtype=np.float64)
        if arr.shape != want[l].shape:
            return f"{symbol}^{l} has shape {arr.shape}, expected {want[l].shape} (B, n({l}))"
        _, bad = _compare(lambda idx, s=symbol, layer=l: f"{s}^{layer}_{idx[1] + 1} (example {idx[0] + 1})", arr, want[l], bound[l])
        if bad:
            m = max(bad, key=lambda m: m.ratio)
            return f"{symbol}^{l} (layer {l}) left its bound first; worst there {m.line()}"
    if not compared:
        return "none to compare: the adapter exposes no intermediates (z, a, δ)"
    return f"none: every exposed intermediate ({', '.join(compared)}) is within its bound, so the error arises in the gradient step itself"


def compare_gradients(got: Gradients, want: Gradients, bound: Gradients) -> tuple[float, list[Mismatch], int]:
    """Worst ratio, failing elements and element count of ``got`` against ``want`` within ``bound``."""
    worst = 0.0
    mismatches: list[Mismatch] = []
    elements = 0
    for kind, l, w in want.items():
        g = (got.w if kind == "w" else got.b)[l]
        e = (bound.w if kind == "w" else bound.b)[l]
        ratio, bad = _compare(lambda idx, k=kind, layer=l: parameter_name(k, layer, idx), g, w, e)
        worst = max(worst, ratio)
        mismatches += bad
        elements += w.size
    return worst, mismatches, elements


def judge(cell: str, problem: Problem, output: AdapterOutput, framework: Precision) -> Verdict:
    """Compare an adapter's gradients with the reference at ``problem``, element by element.

    The output's shapes and dtypes must already have passed :func:`backprop_conformance.adapters.selfcheck.check_output`.
    """
    trace = problem.trace
    with timed("bound"):
        tol = tolerance(problem.network, problem.batch, trace, framework)
        worst, mismatches, elements = compare_gradients(output.gradients, trace.gradients, tol.gradients)
    # The cost is judged like one more element: a framework whose gradients are right for a wrong
    # cost (a lost 1/2 compensated elsewhere, a mean) is not computing the page's network.
    cost = Mismatch("C (the cost)", float(output.cost), trace.cost, tol.cost)
    worst = max(worst, cost.ratio)
    if cost.ratio > 1:
        mismatches.append(cost)
    mismatches.sort(key=lambda m: m.ratio, reverse=True)
    divergence = first_divergence(output, problem, tol) if mismatches else ""
    return Verdict(cell, problem, worst, tuple(mismatches), elements, divergence)


def judge_exactness(cell: str, problem: Problem, output: AdapterOutput, exact: Gradients, bound: Gradients) -> Verdict:
    """Compare an adapter's gradients with the high-precision oracle's, within an exactness ``bound`` (fidelity tier)."""
    worst, mismatches, elements = compare_gradients(output.gradients, exact, bound)
    mismatches.sort(key=lambda m: m.ratio, reverse=True)
    return Verdict(cell, problem, worst, tuple(mismatches), elements, standard=EXACTNESS)


def run_and_judge(adapter: Adapter, cell: Cell, problem: Problem) -> Verdict:
    """Run one cell's adapter on ``problem``, check the output's form, and judge its values."""
    caps = adapter.capabilities()
    with timed("framework"):
        output = adapter.run(problem.network, problem.batch, dtype=cell.dtype, path=cell.path, device=cell.device)
    check_output(caps.name, cell.path, cell.dtype, problem.network, problem.batch, output)
    return judge(cell.id, problem, output, Precision.of(cell.dtype, caps.accumulation_of(cell.dtype)))
