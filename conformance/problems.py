"""One test case: a network and a batch at a point representable in the format under test.

A framework computing in float32 can only be handed float32 numbers. The suite therefore rounds the
parameters and data to the format first and evaluates the float64 reference at exactly those rounded
values: the comparison is then between two computations of the same mathematical function at the
same point, and every difference is rounding error of the computations (bounded by the error bound)
or a bug.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from backprop_conformance.conformance.blas_threads import serial_blas
from backprop_conformance.reference.dtypes import float_format, round_to
from backprop_conformance.reference.error_bound import ErrorBounds, K, Precision, gradient_tolerance, micro_batch_tolerance
from backprop_conformance.reference.mixed_precision import MixedPolicy, mixed_tolerance
from backprop_conformance.reference.model import Batch, Gradients, Network
from backprop_conformance.reference.vectorized import BackpropTrace, backprop

LEAN_FROM = 2**20
"""Numbers in one precision's per-example bounds (five arrays of B·n(l) per layer, l = 2..L) from which a problem judged
once computes only the bounds a passing verdict reads (:meth:`Problem.judges_lean`): 8 MiB. The ``large`` profile's
widest example has 39 million (300 MiB per precision, two precisions); the default profile's generated ones at most
80,640 (B = 24, seven layers of 96)."""


@dataclass(frozen=True)
class Problem:
    """A network and batch whose values are all exactly representable in ``dtype`` (held in float64)."""

    network: Network
    batch: Batch
    dtype: str
    shared: bool = field(default=False, compare=False)
    """Whether this problem is judged in many cells (a covering design's): its gradients' and cost's bounds are then
    kept per precision (:meth:`judged_bounds`)."""

    @cached_property
    def judges_lean(self) -> bool:
        """Whether a verdict computes the gradients' and the cost's bounds alone first (:meth:`judged_bounds`), and the
        per-example bounds only if the example fails, instead of every bound at once (:meth:`tolerance`).

        Lean for a :attr:`shared` problem, which keeps its bounds for the whole run, and for one whose per-example bounds
        hold :data:`LEAN_FROM` numbers or more: at the ``large`` profile they are most of the verdict's peak memory. Not
        for the others: a failing example then computes its bounds twice, and hypothesis' shrinking judges many failing
        examples (each 40–50 % dearer, measured), while a small passing example saves only the scaling of its
        per-example bounds by K.
        """
        return self.shared or 5 * self.batch.size * sum(self.network.widths[1:]) >= LEAN_FROM

    @classmethod
    def rounded(cls, network: Network, batch: Batch, dtype: str) -> Problem:
        """Round ``network`` and ``batch`` to ``dtype`` and hold the result in float64."""
        float_format(dtype)

        def to_format(values: np.ndarray) -> np.ndarray:
            return round_to(dtype, np.asarray(values, dtype=np.float64)).astype(np.float64)

        return cls(network.astype(np.float64).map(to_format), batch.astype(np.float64).map(to_format), dtype)

    @cached_property
    def trace(self) -> BackpropTrace:
        """The float64 reference at this exact point (computed once, shared by verdict and diagnosis)."""
        with serial_blas(self.network, self.batch.size):
            return backprop(self.network, self.batch)

    @cached_property
    def _judged(self) -> dict[tuple[float | int, ...], tuple[Gradients, float]]:
        return {}

    def tolerance(self, framework: Precision | MixedPolicy, partial_sums: int = 1) -> ErrorBounds:
        """The verdict's tolerance at this point for a framework of precision ``framework``: every bound, the per-example
        ones included, which the diagnosis of a failing example reads.

        A mixed-precision cell's ``framework`` is its declared policy, judged by the bound that follows it operation by
        operation; it runs only on paths that compute each sum in one piece
        (:func:`~backprop_conformance.conformance.cells.select_cells`). ``partial_sums`` is k for a framework that adds
        each sum over the batch from k partial sums (micro-batches, per-example gradients:
        :meth:`~backprop_conformance.adapters.base.Capabilities.partial_sums`). Computed afresh at each call: a
        :attr:`shared` problem keeps only what :meth:`judged_bounds` returns (it says why), and any other problem is
        judged once, and its caller keeps what it needs.
        """
        bounds = self._tolerance(framework, partial_sums)
        if self.shared:
            self._judged.setdefault((*framework.constants(), partial_sums), (bounds.gradients, bounds.cost))
        return bounds

    def judged_bounds(self, framework: Precision | MixedPolicy, partial_sums: int = 1) -> tuple[Gradients, float]:
        """The bounds on the gradients and on the cost (:meth:`tolerance`'s), all that the verdict of a passing example reads.

        A :attr:`shared` problem -- a covering design's, the same object in every cell of a format
        (:func:`~backprop_conformance.conformance.strategies.covering`) -- computes them once per precision, so that cells
        whose frameworks round alike (torch's three paths, JAX) share the bound instead of computing it again: two
        precisions with equal constants give equal bounds (:meth:`~backprop_conformance.reference.error_bound.Precision.constants`).
        It keeps these alone, not the per-example bounds (five arrays of B·n(l) per layer, only a failure's diagnosis
        reads them): the design's problems live for the whole run, and keeping every bound of every format and
        precision held about a gigabyte more than the gradients' bounds do (``docs/speed.md``).

        Any problem's bounds for a :class:`Precision` computing each sum in one piece come from
        :func:`~backprop_conformance.reference.error_bound.gradient_tolerance`, which drops each per-example bound once
        the recursion has read it: the same bits as :meth:`tolerance`'s, at a fraction of its peak memory. A mixed
        policy's or a partial-sum path's come from :meth:`tolerance`.
        """
        key = (*framework.constants(), partial_sums)
        if self.shared and key in self._judged:
            return self._judged[key]
        if isinstance(framework, MixedPolicy) or partial_sums != 1:
            bounds = self.tolerance(framework, partial_sums)
            return bounds.gradients, bounds.cost
        with serial_blas(self.network, self.batch.size):
            judged = gradient_tolerance(self.network, self.batch, self.trace, framework)
        if self.shared:
            self._judged[key] = judged
        return judged

    def _tolerance(self, framework: Precision | MixedPolicy, partial_sums: int) -> ErrorBounds:
        trace = self.trace
        with serial_blas(self.network, self.batch.size):
            if isinstance(framework, MixedPolicy):
                if partial_sums != 1:
                    raise ValueError(f"a mixed-precision policy's bound has no term for {partial_sums} partial sums")
                return mixed_tolerance(self.network, self.batch, trace, framework, K)
            return micro_batch_tolerance(self.network, self.batch, trace, framework, partial_sums)

    def split(self, micro_batches: tuple[int, ...] | None) -> Problem:
        """The same problem with its batch split into micro-batches of these sizes (:attr:`Batch.micro_batches`).

        The reference's trace is the same whatever the split, so it is carried over, not computed again.
        """
        problem = Problem(self.network, self.batch.split(micro_batches), self.dtype, self.shared)
        if "trace" in self.__dict__:
            problem.__dict__["trace"] = self.trace
        return problem

    @property
    def max_abs_z(self) -> float:
        """Largest |z^l_j| over the whole batch: how deep into saturation this case goes."""
        return float(max(np.max(np.abs(z)) for z in self.trace.z.values()))

    def __repr__(self) -> str:
        # Hypothesis prints the failing example with repr(); the parameters themselves go to the case
        # file, and thousands of numbers in the terminal would bury the message.
        return f"Problem({self.dtype}, {self.describe()})"

    def _repr_pretty_(self, printer: object, cycle: bool) -> None:
        """The same short form for hypothesis' pretty-printer, which would otherwise expand the dataclass."""
        printer.text(repr(self))  # type: ignore[attr-defined]

    def describe(self) -> str:
        """One line for failure messages: architecture, batch size, saturation."""
        split = self.batch.micro_batches
        pieces = f" in {len(split)} micro-batches {'+'.join(map(str, split))}" if split is not None else ""
        return (
            f"widths {self.network.widths} (L = {self.network.depth}), batch B = {self.batch.size}{pieces}, max |z| = {self.max_abs_z:.4g}"
        )


def contract_problem(dtype: str) -> Problem:
    """The adapter contract's fixed input: a non-square and a square layer, so that a transposed layout shows in both shape and value."""
    rng = np.random.default_rng(20181109)
    widths = (3, 4, 4, 2)
    weights = [rng.standard_normal((widths[i + 1], widths[i])) for i in range(3)]
    biases = [rng.standard_normal(widths[i + 1]) for i in range(3)]
    batch = Batch(rng.standard_normal((5, widths[0])), rng.uniform(size=(5, widths[-1])))
    return Problem.rounded(Network.from_lists(weights, biases), batch, dtype)
