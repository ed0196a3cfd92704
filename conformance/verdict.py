"""Judging a framework's gradients, per element, against the derived error bound: the one comparison vocabulary.

An element passes when |g_framework − g_reference| ≤ K·(E(framework) + E(reference)) (see
:mod:`backprop_conformance.reference.error_bound`, K = 2). On top of the bound, the rules the design
note adds:

* the finite/non-finite pattern must match exactly: the reference is always finite, so any NaN or
  infinity fails (NaN never passes: every comparison with NaN is false, and this code checks
  finiteness explicitly rather than relying on that);
* a zero where the reference exceeds its bound fails like any other element, and the message says
  it is an exact zero, because a silently dropped gradient is the commonest cause.

Everything that compares computed values with expected ones uses this module -- the suite, the replay
command, the Python API and the project's own tests of the adapters and the reference -- so that one
rule, one ratio and one message format say what "within the bound" means: :func:`compare_arrays` for
one array, :func:`compare_gradients` for all of ∂C/∂w and ∂C/∂b, :func:`judge` for an adapter's output,
and :func:`assert_within_bound` for a test.

A failing verdict names the parameter in the page's indices, both values, the bound and their ratio,
and the first layer at which the framework's own z^l, a^l or δ^l left *its* bound: a wrong gradient in
layer 2 often starts as a wrong δ in layer 5, and that is where to look.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from backprop_conformance.adapters.base import AdapterOutput
from backprop_conformance.conformance import layer_reuse, loss_scale, micro_batches
from backprop_conformance.conformance.data_parallel import diagnose
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.conformance.ratios import format_mismatch, format_ratio
from backprop_conformance.reference.error_bound import ErrorBounds, K, Precision, per_example_tolerance
from backprop_conformance.reference.mixed_precision import MixedPolicy
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
        """|framework − reference| / bound; infinite for a non-finite framework value or a zero bound."""
        return _ratio(self.framework, self.reference, self.bound)

    def line(self) -> str:
        note = "  (framework returned exactly 0)" if self.framework == 0 and self.reference != 0 else ""
        return format_mismatch(self.name, self.framework, self.reference, self.bound, self.ratio) + note

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "framework": self.framework, "reference": self.reference, "bound": self.bound, "ratio": self.ratio}


def _ratio(framework: float, reference: float, bound: float) -> float:
    if not (np.isfinite(framework) and np.isfinite(reference)):
        return float("inf")
    diff = abs(framework - reference)
    if diff == 0:
        return 0.0
    return diff / bound if bound > 0 else float("inf")


def _quiet() -> np.errstate:
    """numpy's floating-point warnings off while ratios are computed: an infinite or huge value is a failure, not a warning."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


def _ratios(got: object, want: np.ndarray, bound: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Elementwise (got as float64, error/bound ratio), 0 where exact, ∞ where non-finite or over a zero bound, and
    the worst ratio (0 for no element). Called inside :func:`_quiet`, entered once for many arrays."""
    fw = np.asarray(got, dtype=np.float64)
    ref = np.asarray(want, dtype=np.float64)
    # |fw − ref| / bound in one array: the rule below gives the same value wherever this one is not NaN.
    ratio = np.subtract(fw, ref)
    np.abs(ratio, out=ratio)
    np.divide(ratio, bound, out=ratio)
    worst = float(np.max(ratio, initial=0.0))
    if worst != worst:  # NaN: a non-finite value, or 0/0: the rule element by element
        finite = np.isfinite(fw) & np.isfinite(ref)
        diff = np.where(finite, np.abs(fw - ref), np.inf)
        ratio = np.where(diff == 0, 0.0, diff / bound)
        worst = float(np.max(ratio, initial=0.0))
    return fw, ratio, worst


def _judged(name_of: Callable[[tuple[int, ...]], str], got: object, want: np.ndarray, bound: np.ndarray) -> tuple[float, list[Mismatch]]:
    """:func:`compare_arrays` inside :func:`_quiet`."""
    fw, ratio, worst = _ratios(got, want, bound)
    if worst <= 1:  # nearly every array of a run: nothing to list
        return worst, []
    mismatches = [
        Mismatch(name_of(idx), float(fw[idx]), float(want[idx]), float(bound[idx]))
        for idx in (tuple(int(i) for i in bad) for bad in np.argwhere(ratio > 1))
    ]
    return worst, mismatches


def compare_arrays(
    name_of: Callable[[tuple[int, ...]], str], got: object, want: np.ndarray, bound: np.ndarray
) -> tuple[float, list[Mismatch]]:
    """Worst ratio and the failing elements (ratio > 1) of one array; ``name_of`` names an element by its index."""
    with _quiet():
        return _judged(name_of, got, want, bound)


def worst_ratio(got: Mapping[int, np.ndarray] | None, want: Mapping[int, np.ndarray], bound: Mapping[int, np.ndarray]) -> float:
    """The worst error/bound ratio over one per-layer quantity (z, a or δ); 0 when the adapter did not expose it."""
    if got is None:
        return 0.0
    with _quiet():
        return max((_ratios(got[l], want[l], bound[l])[2] for l in got), default=0.0)


@dataclass(frozen=True)
class GradientComparison:
    """Every ∂C/∂w^l_jk and ∂C/∂b^l_j of one computation against another, within a per-element bound."""

    worst_ratio: float
    mismatches: tuple[Mismatch, ...]
    elements: int

    @property
    def passed(self) -> bool:
        return not self.mismatches

    def describe(self, what: str, standard: str = "their bounds") -> str:
        """One paragraph: the outcome, then the worst failing elements in the page's indices."""
        if self.passed:
            return f"{what}: all {self.elements} gradient elements within {standard} (worst ratio {format_ratio(self.worst_ratio)})"
        lines = [
            f"{what}: {len(self.mismatches)} of {self.elements} gradient elements exceed {standard}",
            f"  worst: {self.mismatches[0].line()}",
        ]
        lines += [f"  also:  {m.line()}" for m in self.mismatches[1 : 1 + MAX_LISTED]]
        if len(self.mismatches) > 1 + MAX_LISTED:
            lines.append(f"  ... and {len(self.mismatches) - 1 - MAX_LISTED} more")
        return "\n".join(lines)


def compare_gradients(got: Gradients, want: Gradients, bound: Gradients) -> GradientComparison:
    """``got`` against ``want`` element by element within ``bound``, worst mismatch first.

    Shapes must already match (the adapter contract checks them); a mismatch raises instead of
    broadcasting into a meaningless comparison.
    """
    arrays = [(kind, l, (got.w if kind == "w" else got.b)[l], w, (bound.w if kind == "w" else bound.b)[l]) for kind, l, w in want.items()]
    for kind, l, g, w, _ in arrays:
        if np.shape(g) != w.shape:
            raise ValueError(f"∂C/∂{kind}^{l} has shape {np.shape(g)}, expected {w.shape}")
    elements = sum(w.size for _, _, _, w, _ in arrays)
    with _quiet():  # entered once for every array: a context per array cost more than a small array's comparison
        if elements <= JOINED_UP_TO:
            worst = _ratios(*(_joined(arrays, i) for i in (2, 3, 4)))[2]
            if worst <= 1:  # the same ratios, element for element, so the same worst; nothing to list
                return GradientComparison(worst, (), elements)
        worst = 0.0
        mismatches: list[Mismatch] = []
        for kind, l, g, w, e in arrays:
            ratio, bad = _judged(lambda idx, k=kind, layer=l: parameter_name(k, layer, idx), g, w, e)
            worst = max(worst, ratio)
            mismatches += bad
    mismatches.sort(key=lambda m: m.ratio, reverse=True)
    return GradientComparison(worst, tuple(mismatches), elements)


JOINED_UP_TO = 2**16
"""Gradient elements up to which :func:`compare_gradients` compares every array at once, joined into one.

A small network's comparison is numpy's per-call overhead, five calls per array: joined, it is three joins and five
calls. Above this the three copies cost more than the calls they save. An element's ratio is the same number either
way, so is the worst; a failing comparison goes array by array, to name its elements."""


def _joined(arrays: list[tuple[str, int, object, np.ndarray, np.ndarray]], part: int) -> np.ndarray:
    """One part (2: the framework's, 3: the reference's, 4: the bound) of every array, raveled and joined in float64."""
    return np.concatenate([np.ravel(item[part]) for item in arrays], dtype=np.float64)


def assert_within_bound(got: Gradients, want: Gradients, bound: Gradients, what: str) -> GradientComparison:
    """Fail a test, with the suite's own message, unless every element of ``got`` is within ``bound`` of ``want``."""
    __tracebackhide__ = True
    comparison = compare_gradients(got, want, bound)
    if not comparison.passed:
        raise AssertionError(comparison.describe(what))
    return comparison


@dataclass(frozen=True)
class Verdict:
    """The outcome of comparing one adapter output with the reference.

    ``gradients`` compares every gradient element; ``cost`` is the cost against its own bound (None
    for the fidelity tier, which judges gradients only). ``worst_ratio`` is the largest error/bound
    ratio over both, infinite when the framework returned a non-finite value. ``data_parallel``, for a
    failing gradient of a data-parallel path, names the bug it matches (:mod:`~backprop_conformance.conformance.data_parallel`);
    ``loss_scale``, for a failing mixed-precision gradient, a loss scale left in it, and on a loss-scaling path whether
    the scale it used could change a rounding (:mod:`~backprop_conformance.conformance.loss_scale`);
    ``layers``, for a z^l outside its bound, another layer's parameters used in its place
    (:mod:`~backprop_conformance.conformance.layer_reuse`).
    """

    cell: str
    problem: Problem
    gradients: GradientComparison
    cost: Mismatch | None = None
    divergence: str = ""
    standard: str = CONFORMANCE
    data_parallel: str = ""
    loss_scale: str = ""
    accumulation: str = ""
    layers: str = ""

    @property
    def cost_failed(self) -> bool:
        return self.cost is not None and not self.cost.ratio <= 1

    @property
    def passed(self) -> bool:
        return self.gradients.passed and not self.cost_failed

    @property
    def worst_ratio(self) -> float:
        return max(self.gradients.worst_ratio, self.cost.ratio if self.cost is not None else 0.0)

    @property
    def worst(self) -> Mismatch | None:
        """The element (or the cost) furthest outside its bound; None when everything is within."""
        candidates = [*self.gradients.mismatches[:1], *([self.cost] if self.cost_failed else [])]
        return max(candidates, key=lambda m: m.ratio, default=None)

    def message(self) -> str:
        """The failure report, written to be pasted into a bug report as it is."""
        g = self.gradients
        if self.passed:
            worst = format_ratio(self.worst_ratio)
            return f"{self.cell}: all {g.elements} gradient elements and the cost within {self.standard} (worst ratio {worst})"
        if g.passed:
            lines = [f"{self.cell}: the cost exceeds {self.standard}, while all {g.elements} gradient elements are within it"]
        else:
            lines = g.describe(self.cell, self.standard).splitlines()
            if self.cost_failed:
                lines[0] += " (and so does the cost)"
        if self.cost_failed:
            assert self.cost is not None
            lines.append(f"  cost:  {self.cost.line()}")
        if self.divergence:
            lines.append(f"  first divergence: {self.divergence}")
        if self.data_parallel:
            lines.append(f"  data-parallel: {self.data_parallel}")
        if self.loss_scale:
            lines.append(f"  loss scale: {self.loss_scale}")
        if self.accumulation:
            lines.append(f"  accumulation: {self.accumulation}")
        if self.layers:
            lines.append(f"  layers: {self.layers}")
        lines.append(f"  case: {self.problem.describe()}")
        return "\n".join(lines)


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
        _, bad = compare_arrays(lambda idx, s=symbol, layer=l: f"{s}^{layer}_{idx[1] + 1} (example {idx[0] + 1})", arr, want[l], bound[l])
        if bad:
            m = max(bad, key=lambda m: m.ratio)
            return f"{symbol}^{l} (layer {l}) left its bound first; worst there {m.line()}"
    if not compared:
        return "none to compare: the adapter exposes no intermediates (z, a, δ)"
    return f"none: every exposed intermediate ({', '.join(compared)}) is within its bound, so the error arises in the gradient step itself"


def judge(
    cell: str,
    problem: Problem,
    output: AdapterOutput,
    framework: Precision | MixedPolicy,
    *,
    with_cost: bool = True,
    partial_sums: int = 1,
) -> Verdict:
    """Compare an adapter's gradients and cost with the reference at ``problem``, element by element.

    The output's form must already have passed the contract (:meth:`~backprop_conformance.adapters.base.Adapter.compute`).
    The cost is judged beside the gradients: a framework whose gradients are right for a wrong cost (a
    lost 1/2 compensated elsewhere, a mean) is not computing the page's network. ``with_cost=False``
    judges the gradients alone, for a computation that returns no cost (the Python API's ``check_gradients``).
    ``partial_sums`` is k for a path that adds each sum over the batch from k partial sums
    (:meth:`~backprop_conformance.adapters.base.Capabilities.partial_sums`); per-example gradients the output holds
    (:attr:`~backprop_conformance.adapters.base.AdapterOutput.per_example`) are judged with the sums.
    """
    trace = problem.trace
    # A small problem judged once computes every bound now, for the diagnosis a failure needs; a shared or a large one
    # computes the bounds a passing verdict reads, and the rest only if this example fails (Problem.judges_lean).
    tol = None if problem.judges_lean else problem.tolerance(framework, partial_sums)
    gradient_bounds, cost_bound = problem.judged_bounds(framework, partial_sums) if tol is None else (tol.gradients, tol.cost)
    sums = gradients = compare_gradients(output.gradients, trace.gradients, gradient_bounds)
    if output.per_example is not None:
        gradients = _merged(sums, compare_per_example(problem, output.per_example, framework))
    cost = Mismatch("C (the cost)", float(output.cost), trace.cost, cost_bound) if with_cost else None
    verdict = Verdict(cell, problem, gradients, cost)
    if verdict.passed:
        return verdict
    if tol is None:
        tol = problem.tolerance(framework, partial_sums)
    data_parallel = accumulation = scaled = ""
    if not sums.passed and isinstance(framework, Precision):
        data_parallel = diagnose(problem, output.gradients, tol.gradients, framework, problem.dtype)
        if partial_sums > 1:
            accumulation = micro_batches.diagnose(problem, output.gradients, tol.gradients, per_example=output.per_example is not None)
    elif not sums.passed:
        scaled = loss_scale.diagnose(problem, output.gradients, tol.gradients)
    if not sums.passed and output.loss_scale is not None and partial_sums == 1:
        used = loss_scale.exactness(problem, framework, output.loss_scale)
        scaled = f"{scaled}; {used}" if scaled else used
    return Verdict(
        cell,
        problem,
        gradients,
        verdict.cost,
        first_divergence(output, problem, tol),
        data_parallel=data_parallel,
        loss_scale=scaled,
        accumulation=accumulation,
        layers=layer_reuse.diagnose(problem, output, tol),
    )


def compare_per_example(problem: Problem, per_example: Gradients, framework: Precision) -> GradientComparison:
    """Each example's own gradient against the reference of that one example, ∂C_x/∂w^l_jk = δ^l_j a^{l−1}_k and
    ∂C_x/∂b^l_j = δ^l_j, within :func:`~backprop_conformance.reference.error_bound.per_example_tolerance`.

    Checked beside their sum, because a sum can be right while its terms are not (two examples' gradients swapped).
    """
    trace = problem.trace
    bound = per_example_tolerance(problem.network, problem.batch, trace, framework)
    want = Gradients(
        {l: trace.delta[l][:, :, None] * trace.a[l - 1][:, None, :] for l in problem.network.layers},
        {l: np.asarray(trace.delta[l]) for l in problem.network.layers},
    )
    worst = 0.0
    mismatches: list[Mismatch] = []
    elements = 0
    for kind, l, w in want.items():

        def name(idx: tuple[int, ...], kind: str = kind, l: int = l) -> str:
            return f"{parameter_name(kind, l, idx[1:])} of example {idx[0] + 1} alone"

        ratio, bad = compare_arrays(name, getattr(per_example, kind)[l], w, getattr(bound, kind)[l])
        worst = max(worst, ratio)
        mismatches += bad
        elements += w.size
    return GradientComparison(worst, tuple(mismatches), elements)


def _merged(sums: GradientComparison, terms: GradientComparison) -> GradientComparison:
    """The sums' comparison and their terms' as one, worst mismatch first."""
    mismatches = sorted((*sums.mismatches, *terms.mismatches), key=lambda m: m.ratio, reverse=True)
    return GradientComparison(max(sums.worst_ratio, terms.worst_ratio), tuple(mismatches), sums.elements + terms.elements)


def judge_exactness(cell: str, problem: Problem, output: AdapterOutput, exact: Gradients, bound: Gradients) -> Verdict:
    """Compare an adapter's gradients with the high-precision oracle's, within an exactness ``bound`` (fidelity tier)."""
    return Verdict(cell, problem, compare_gradients(output.gradients, exact, bound), standard=EXACTNESS)
