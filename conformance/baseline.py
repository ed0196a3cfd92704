"""Comparing a run with a stored baseline report: did any cell get worse?

The bound already fails any example whose error/bound ratio exceeds 1. A baseline catches what the
bound lets through: a framework release whose gradients are still inside the bound but clearly less
accurate than before, eating the margin that keeps the next change from failing. A cell regresses
when

* its worst ratio grows beyond ``FACTOR × max(baseline worst, floor)``, or
* it passed in the baseline and does not pass now (a failing example, a failing contract, an
  exception, an incomplete run of it).

Why ``FACTOR = 2`` and a floor: the bound is designed so that a correct framework's ratios sit well
below 1 (median 0.01–0.2, worst 0.55 in float32 and 0.83 in float16 over ~1,200 networks, see
``docs/error-bound.md``), and the worst ratio of one run is the luck of the examples it drew: torch
2.13 and jax 0.10 on CPU, 100 examples per cell, five hypothesis seeds, gave per-cell worst ratios
spread by up to ×2.3 (bfloat16: 0.104–0.243; float32: 0.122–0.234; float16: 0.060–0.116; float64:
0.084–0.089). Below the floor a ratio is a handful of ulps against a bound hundreds of ulps wide, and
which example was drawn matters more than the framework: 0.001 → 0.003 is noise, not a regression.
Above it, a doubling means the framework lost half of its remaining distance to the bound.

The floor is ``FLOOR = 0.25`` between runs that drew different examples, so no cell can fail the
comparison with a worst ratio under 0.5 there. When both runs drew the very same networks -- the same
derandomized hypothesis settings and version (the ``ci`` profile, which Hypothesis selects in CI) and
the same suite version -- there is no seed-to-seed spread to absorb and the floor drops to
``FLOOR_SAME_EXAMPLES = 0.02``: a cell whose worst ratio doubles from 0.1 then fails, and one that
grows from 0.01 to 0.05 fails too (beyond 2 × 0.02 = 0.04). That is how a baseline should be recorded
and checked in CI. When the settings differ, the comparison says so and keeps the wide floor.

Cells only in the run (new) or only in the baseline (missing: not selected, or their backend not
installed) are listed and do not fail the run -- unless the run shares *no* cell with the baseline:
then nothing was compared, and that is reported as a failure of the comparison, never as "no
regressions".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from backprop_conformance.adapters import dispatch
from backprop_conformance.conformance.ratios import format_ratio
from backprop_conformance.conformance.report import CellResult, Report, encode_float

FACTOR = 2.0
"""A cell regresses when its worst ratio exceeds FACTOR × max(baseline worst, floor)."""

FLOOR = 0.25
"""Worst ratios below this are compared as if they were this: they are rounding noise, not margin lost."""

FLOOR_SAME_EXAMPLES = 0.02
"""The floor when both runs drew the very same networks (derandomized, equal hypothesis settings and
version, same suite version -- a release fixes its strategies; a commit hash would change with the very
commit that stores the baseline): no seed-to-seed spread to absorb, so any growth is the framework's."""

HYPOTHESIS_SETTINGS = ("profile", "max_examples", "derandomize", "seed")
"""The settings that decide which examples a run draws (see :func:`~backprop_conformance.conformance.provenance.hypothesis_settings`)."""

NOT_PASSING = ("failed", "incomplete")


def limit(baseline_worst: float, floor: float = FLOOR) -> float:
    """The largest worst ratio a cell may reach before it counts as a regression."""
    return FACTOR * max(baseline_worst, floor)


def floor_for(old: Report, new: Report) -> float:
    """:data:`FLOOR_SAME_EXAMPLES` when both reports drew the same examples, else :data:`FLOOR`."""
    old_h, new_h = old.hypothesis, new.hypothesis
    same_settings = all(old_h.get(key) == new_h.get(key) for key in (*HYPOTHESIS_SETTINGS, "version"))
    same_suite = old.suite.get("version") == new.suite.get("version") is not None
    return FLOOR_SAME_EXAMPLES if same_settings and new_h.get("derandomize") and same_suite else FLOOR


@dataclass(frozen=True)
class CellComparison:
    """One cell in the baseline and in this run (either side None when it ran on one side only)."""

    cell: str
    old: CellResult | None
    new: CellResult | None
    problems: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        """``new``, ``missing``, ``regressed`` or ``ok``."""
        if self.old is None:
            return "new"
        if self.new is None:
            return "missing"
        return "regressed" if self.problems else "ok"

    def markdown(self) -> str:
        """The baseline column of the Markdown table."""
        if self.old is None:
            return "new cell"
        if self.new is None:
            return "not run"
        text = f"{format_ratio(self.old.worst)} → {format_ratio(self.new.worst)}"
        old, new = self.old.worst, self.new.worst
        if old and new is not None and math.isfinite(old) and math.isfinite(new):
            text += f" (×{new / old:.2g})"
        return f"**{text}** regressed" if self.problems else text

    def to_json(self) -> dict[str, Any]:
        def worst(side: CellResult | None) -> float | str | None:
            return None if side is None or side.worst is None else encode_float(side.worst)

        return {
            "status": self.status,
            "baseline_worst": worst(self.old),
            "worst": worst(self.new),
            "baseline_failures": None if self.old is None else self.old.failures,
            "failures": None if self.new is None else self.new.failures,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class Comparison:
    """The comparison of a run with a baseline, per cell, plus notes on what differs between the two runs."""

    source: str
    cells: dict[str, CellComparison]
    notes: tuple[str, ...]
    floor: float = FLOOR

    @property
    def compared(self) -> int:
        return sum(c.status in ("ok", "regressed") for c in self.cells.values())

    @property
    def regressions(self) -> list[str]:
        found = [problem for c in self.cells.values() for problem in c.problems]
        if not self.compared:
            found.append(
                f"the run shares no cell with the baseline {self.source}: nothing was compared "
                "(different backends, paths or dtypes?); a comparison that compared nothing cannot pass"
            )
        return found

    @property
    def new(self) -> list[str]:
        return [cell for cell, c in self.cells.items() if c.status == "new"]

    @property
    def missing(self) -> list[str]:
        return [cell for cell, c in self.cells.items() if c.status == "missing"]

    def summary_lines(self) -> list[str]:
        """What a person needs to read: regressions first, then cells on one side only, then notes."""
        lines = [
            f"{self.compared} cell(s) compared with the baseline {self.source}; a cell regresses when its worst ratio "
            f"exceeds {FACTOR:g} × max(baseline worst, {self.floor:g}) or it passed there and does not pass now"
        ]
        lines += [f"REGRESSION {problem}" for problem in self.regressions]
        if not self.regressions:
            lines.append("no regressions")
        if self.new:
            lines.append("new cells, not in the baseline: " + ", ".join(self.new))
        if self.missing:
            lines.append("cells in the baseline that this run did not run: " + ", ".join(self.missing))
        lines += [f"note: {note}" for note in self.notes]
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "factor": FACTOR,
            "floor": self.floor,
            "passed": not self.regressions,
            "compared": self.compared,
            "regressions": self.regressions,
            "new": self.new,
            "missing": self.missing,
            "notes": list(self.notes),
            "cells": {cell: c.to_json() for cell, c in self.cells.items()},
        }


def compare_cell(old: CellResult, new: CellResult, floor: float = FLOOR) -> CellComparison:
    """The regressions of one cell that ran in both reports, each message naming the cell and both figures."""
    problems = []
    if old.worst is not None and new.worst is not None and new.worst > limit(old.worst, floor):
        growth = f" (×{new.worst / old.worst:.3g})" if old.worst > 0 and math.isfinite(new.worst) else ""
        problems.append(
            f"{new.id}: worst error/bound ratio {format_ratio(old.worst)} in the baseline, {format_ratio(new.worst)} now{growth}, "
            f"beyond {FACTOR:g} × max({format_ratio(old.worst)}, {floor:g}) = {format_ratio(limit(old.worst, floor))}"
        )
    if old.status == "passed" and new.status in NOT_PASSING:
        problems.append(
            f"{new.id}: passed in the baseline (0 of {old.examples} examples failed, worst ratio {format_ratio(old.worst)}), "
            f"{new.status} now ({new.failures} of {new.examples} examples failed, contract {new.contract}, "
            f"{new.exceptions} exception(s), worst ratio {format_ratio(new.worst)})"
        )
    return CellComparison(new.id, old, new, tuple(problems))


def compare(baseline: Report, run: Report) -> Comparison:
    """Compare every cell that ran in either report; a cell with no examples and no failure counts as not run."""

    def ran(c: CellResult) -> bool:
        return c.examples > 0 or c.status in NOT_PASSING

    old = {c.id: c for c in baseline.cells if ran(c)}
    new = {c.id: c for c in run.cells if ran(c)}
    floor = floor_for(baseline, run)
    cells: dict[str, CellComparison] = {}
    for cell in sorted(old.keys() | new.keys()):
        if cell not in old:
            cells[cell] = CellComparison(cell, None, new[cell])
        elif cell not in new:
            cells[cell] = CellComparison(cell, old[cell], None)
        else:
            cells[cell] = compare_cell(old[cell], new[cell], floor)
    return Comparison(baseline.source, cells, tuple(_notes(baseline, run)), floor)


def _notes(old: Report, new: Report) -> list[str]:
    """What differs between the two runs' settings and versions: context for reading the comparison."""
    notes = []
    old_h, new_h = old.hypothesis, new.hypothesis
    differ = [f"{key} {old_h.get(key)!r} → {new_h.get(key)!r}" for key in HYPOTHESIS_SETTINGS if old_h.get(key) != new_h.get(key)]
    if differ:
        notes.append(
            f"hypothesis settings differ from the baseline's ({', '.join(differ)}): worst ratios compare best under equal settings"
        )
    old_versions = {b.name: b.version for b in old.backends}
    for b in new.backends:
        before = old_versions.get(b.name)
        if before is not None and before != b.version:
            notes.append(f"{b.name}: {b.framework} {before} in the baseline, {b.version} now")
    for key in ("version", "commit"):
        if old.suite.get(key) != new.suite.get(key):
            notes.append(f"suite {key}: {old.suite.get(key)} in the baseline, {new.suite.get(key)} now")
    return notes + _dispatch_notes(old, new)


def _dispatch_notes(old: Report, new: Report) -> list[str]:
    """Where the baseline ran other kernels: another CPU, numpy BLAS core, or framework configuration.

    A worst ratio measured with other kernels is a different experiment; the comparison still runs (a CPU change is
    exactly what a regression check should survive), and these notes say what changed. A baseline written before the
    configuration was recorded has none to compare, and says so.
    """
    if not old.dispatch:
        return ["the baseline records no dispatch configuration (written before it was recorded): its CPU and kernels are unknown"]
    notes = []
    machine = dispatch.differences(old.dispatch, new.dispatch)
    if machine:
        notes.append("dispatch configuration differs from the baseline's (other kernels ran): " + "; ".join(machine))
    old_cells = {c.id: c for c in old.cells}
    per_cell: dict[str, list[str]] = {}
    for c in new.cells:
        before = old_cells.get(c.id)
        if before is None or not before.dispatch or not c.dispatch:
            continue
        own = {k: v for k, v in before.dispatch.items() if k not in old.dispatch}
        changed = dispatch.differences(own, c.dispatch)
        if changed:
            per_cell.setdefault("; ".join(changed), []).append(c.id)
    notes += [f"{', '.join(ids)}: dispatch differs from the baseline's: {what}" for what, ids in per_cell.items()]
    return notes
