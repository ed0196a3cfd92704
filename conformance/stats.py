"""Per-cell statistics of a run: what the end-of-run matrix, the JSON report, the plots and the benchmark are made of.

Every example a cell runs adds its worst error/bound ratio together with the two features the plots
put on their x axes (the network's depth L and its largest |z|), so that a report can show *where*
a framework's error grows, not only how large it got. Statistics travel from pytest-xdist workers to
the controller as plain dicts (:meth:`CellStats.to_dict` / :meth:`CellStats.merge`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from backprop_conformance.conformance.verdict import Verdict

QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class CellStats:
    """Examples, failures and, per example, (worst ratio, depth L, max |z|), in the order they ran; and
    the cell's wall time with its split by category (:mod:`backprop_conformance.conformance.timing`)."""

    examples: int = 0
    failures: int = 0
    ratios: list[float] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    max_abs_z: list[float] = field(default_factory=list)
    wall: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, verdict: Verdict) -> None:
        self.examples += 1
        self.failures += not verdict.passed
        self.ratios.append(verdict.worst_ratio)
        self.depths.append(verdict.problem.network.depth)
        self.max_abs_z.append(verdict.problem.max_abs_z)

    def add_time(self, wall: float, seconds: dict[str, float]) -> None:
        """Add the wall time of one test item and its split by :data:`backprop_conformance.conformance.timing.CATEGORIES`."""
        self.wall += wall
        for category, value in seconds.items():
            self.seconds[category] = self.seconds.get(category, 0.0) + value

    def merge(self, other: dict) -> None:
        """Add a worker's statistics (as produced by :meth:`to_dict`)."""
        self.examples += other["examples"]
        self.failures += other["failures"]
        self.ratios += other["ratios"]
        self.depths += other["depths"]
        self.max_abs_z += other["max_abs_z"]
        self.add_time(other["wall"], other["seconds"])

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def worst(self) -> float:
        return max(self.ratios) if self.ratios else float("nan")

    @property
    def median(self) -> float:
        return self.quantile(0.5)

    def quantile(self, q: float) -> float:
        """The q-quantile of the per-example worst ratios (NaN for a cell that ran nothing).

        ``method="higher"`` picks an observed ratio instead of interpolating, so an infinite ratio (a
        NaN or inf gradient) stays infinite instead of turning the interpolation into NaN.
        """
        return float(np.quantile(self.ratios, q, method="higher")) if self.ratios else float("nan")
