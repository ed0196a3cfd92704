"""Plots of a report: where each framework's error grows, relative to the bound.

``python -m backprop_conformance plot REPORT.json [--out DIR]`` reads a report written by ``pytest conformance
--conformance-report REPORT.json`` and writes three PNG files:

* ``ratio_vs_depth.png``: each example's worst error/bound ratio against the network's depth L, one
  panel per dtype, one series per backend and path. Errors compound through the backward recursion
  δ^l = ((w^{l+1})ᵀ δ^{l+1}) ⊙ σ′(z^l), so a framework whose ratio climbs with L loses accuracy there.
* ``ratio_vs_max_abs_z.png``: the same ratios against the example's largest |z^l_j|: saturation, where
  σ′ computed as a(1 − a) degrades and then vanishes.
* ``ratio_distribution.png``: the distribution of the ratios per cell.

Ratios are on a log scale with the bound (ratio 1) drawn as a line: the bound is designed so that a
correct framework sits one to two decades under it. A log axis has no place for 0 (an exact gradient,
common in float64) nor for ∞ (a NaN or infinite gradient): they are drawn on two labelled rows below
and above the data, and infinite ones are marked with a red cross, so that neither disappears.

matplotlib is an optional dependency (the ``plot`` extra); only this module needs it, and it is
imported when a plot is drawn, through the object-oriented API (no pyplot, no GUI backend).
"""

from __future__ import annotations

import math
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backprop_conformance.conformance.report import CellResult, Report, ReportError, read
from backprop_conformance.reference.dtypes import FORMATS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

EXTRA = "plot"
"""The optional-dependency group that installs matplotlib."""

FILES = ("ratio_vs_depth.png", "ratio_vs_max_abs_z.png", "ratio_distribution.png")

MARKERS = ("o", "s", "^", "D", "v", "P", "*", "h", "<", ">")
BOUND_STYLE = {"color": "tab:red", "linestyle": "--", "linewidth": 1.2}
INFINITE_STYLE = {"marker": "X", "s": 70, "color": "tab:red", "edgecolors": "black", "linewidths": 0.5, "zorder": 5}


class PlotError(Exception):
    """Plotting is impossible (matplotlib missing, nothing to plot); the message says what to do."""


def _figure_class() -> type[Figure]:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(
            f"plotting needs matplotlib, which is not installed; install the suite's {EXTRA!r} extra: "
            f"pip install 'backprop-conformance[{EXTRA}]' (or pip install matplotlib)"
        ) from None
    return Figure


LOWEST_DECADE = -6
"""Ratios under 1e-6 are drawn with the zeros: an error a millionth of its bound is as good as exact,
and float64 cells have ratios down to 1e-200 (tiny gradients against the underflow allowance η), which
would squeeze the decades around the bound that matter into a sliver."""

HIGHEST_DECADE = 6
"""Finite ratios over 1e6 are drawn on the 1e6 line: they fail by far, and how far says nothing more."""


@dataclass(frozen=True)
class RatioAxis:
    """A log axis for ratios, decades ``low``..``high``, with a row under it for 0 and one over it for ∞.

    The zero row (at ``10**(low - 1)``) also holds the ratios under ``10**low`` when ``low`` is
    :data:`LOWEST_DECADE`, and says so in its label; the ``10**high`` line holds the finite ratios
    above it when ``high`` is :data:`HIGHEST_DECADE`.
    """

    low: int
    high: int
    tiny: bool
    huge: bool

    @classmethod
    def for_ratios(cls, ratios: Sequence[float]) -> RatioAxis:
        finite = [r for r in ratios if math.isfinite(r) and r > 0]
        smallest, largest = min(finite, default=0.1), max([*finite, 1.0])
        low = min(max(math.floor(math.log10(smallest)), LOWEST_DECADE), -1)
        high = min(math.ceil(math.log10(largest)), HIGHEST_DECADE)
        return cls(low, high, smallest < 10.0**low, largest > 10.0**high)

    def place(self, ratios: Sequence[float]) -> np.ndarray:
        """Positions on the axis: the ratio itself, clipped to the decades shown; 0 on the zero row, ∞ and NaN on the ∞ row."""
        values = np.asarray(ratios, dtype=float)
        inside = np.clip(values, 10.0**self.low, 10.0**self.high)
        out = np.where(values < 10.0**self.low, 10.0 ** (self.low - 1), inside)
        return np.where(np.isfinite(values), out, 10.0 ** (self.high + 1))

    def apply(self, ax: Axes, which: str) -> None:
        """Log scale, decade ticks with the 0 and ∞ rows labelled, the failing region above the bound shaded."""
        from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

        exponents = list(range(self.low - 1, self.high + 2))
        gap = " " if which == "y" else "\n"  # the x axis' labels stack, so that they do not run into their neighbours
        labels = [f"0 or{gap}< {_decade(self.low)}" if self.tiny else f"0{gap}(exact)"]
        labels += [_decade(k) for k in range(self.low, self.high)]
        labels += [f"≥ {_decade(self.high)}" if self.huge else _decade(self.high), f"∞{gap}(NaN/inf)"]
        lo, hi = 10.0 ** (self.low - 1.5), 10.0 ** (self.high + 1.5)
        axis = ax.yaxis if which == "y" else ax.xaxis
        (ax.set_yscale if which == "y" else ax.set_xscale)("log")
        axis.set_major_locator(FixedLocator([10.0**k for k in exponents]))
        axis.set_major_formatter(FixedFormatter(labels))
        axis.set_minor_locator(NullLocator())
        (ax.set_ylim if which == "y" else ax.set_xlim)(lo, hi)
        span, line = (ax.axhspan, ax.axhline) if which == "y" else (ax.axvspan, ax.axvline)
        span(1.0, hi, color="tab:red", alpha=0.06, zorder=0)
        line(1.0, **BOUND_STYLE, zorder=1)
        # Grey bands set the 0 and ∞ rows apart from the decades: they are not points of the scale.
        for k in (self.low - 1, self.high + 1):
            span(10.0 ** (k - 0.4), 10.0 ** (k + 0.4), color="0.5", alpha=0.12, zorder=0)


def _decade(k: int) -> str:
    return {0: "1", 1: "10", -1: "0.1"}.get(k, f"1e{k}")


def _series_key(cell: CellResult) -> str:
    return f"{cell.backend} {cell.path}" + (f" ({cell.device})" if cell.device != "cpu" else "")


def _dtypes(cells: Sequence[CellResult]) -> list[str]:
    present = {c.dtype for c in cells}
    return [d for d in FORMATS if d in present] + sorted(present - set(FORMATS))


def _styles(cells: Sequence[CellResult]) -> dict[str, dict[str, Any]]:
    """One colour and marker per backend and path, the same in every figure."""
    from matplotlib import colormaps

    keys = sorted({_series_key(c) for c in cells})
    colours = colormaps["tab10"].colors
    return {key: {"color": colours[i % len(colours)], "marker": MARKERS[i % len(MARKERS)]} for i, key in enumerate(keys)}


def _subtitle(report: Report) -> str:
    backends = ", ".join(f"{b.framework} {b.version}" for b in report.backends)
    hyp = report.hypothesis
    budget = f"hypothesis profile {hyp.get('profile', '?')}, max_examples {hyp.get('max_examples', '?')}"
    return "\n".join([*textwrap.wrap(backends, 150), f"{budget}; {report.timestamp}"])


def _panels(figure_class: type[Figure], count: int) -> tuple[Figure, list[Axes]]:
    cols = min(2, count)
    rows = math.ceil(count / cols)
    fig = figure_class(figsize=(6.8 * cols, 4.4 * rows + 1.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def _legend(fig: Figure, styles: dict[str, dict[str, Any]], infinite: bool) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], linestyle="none", marker=s["marker"], markerfacecolor="none", markeredgecolor=s["color"], markersize=7, label=key)
        for key, s in styles.items()
    ]
    handles.append(Line2D([], [], **BOUND_STYLE, label="bound: ratio 1 (above fails)"))
    if infinite:
        handles.append(
            Line2D([], [], linestyle="none", marker="X", color="tab:red", markeredgecolor="black", markersize=8, label="ratio ∞")
        )
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), frameon=False)


def _scatter_figure(
    figure_class: type[Figure], report: Report, cells: Sequence[CellResult], axis: RatioAxis, feature: str, path: Path
) -> None:
    """Ratio against depth L (``feature == "depth"``) or against the largest |z| (``"max_abs_z"``), a panel per dtype."""
    styles = _styles(cells)
    dtypes = _dtypes(cells)
    fig, axes = _panels(figure_class, len(dtypes))
    rng = np.random.default_rng(0)
    keys = list(styles)
    for ax, dtype in zip(axes, dtypes, strict=True):
        for cell in (c for c in cells if c.dtype == dtype):
            key = _series_key(cell)
            y = axis.place(cell.ratios)
            if feature == "depth":
                # Side by side within each depth, with a little jitter: depth is an integer and many examples share it.
                offset = (keys.index(key) - (len(keys) - 1) / 2) * 0.6 / len(keys)
                x = np.asarray(cell.depths, dtype=float) + offset + rng.uniform(-0.04, 0.04, len(y))
            else:
                x = np.asarray(cell.max_abs_z, dtype=float)
            ax.scatter(x, y, marker=styles[key]["marker"], facecolors="none", edgecolors=[styles[key]["color"]], s=26, linewidths=0.9)
            infinite = ~np.isfinite(np.asarray(cell.ratios, dtype=float))
            if infinite.any():
                ax.scatter(x[infinite], y[infinite], **INFINITE_STYLE)
        axis.apply(ax, "y")
        ax.set_title(dtype)
        ax.grid(True, axis="y", alpha=0.3)
        if feature == "depth":
            depths = sorted({d for c in cells for d in c.depths})
            ax.set_xticks(depths)
            ax.set_xlabel("network depth L (layers, input layer included)")
        else:
            ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)
            ax.set_xlim(0, 1.5 * max([1.0, *(z for c in cells for z in c.max_abs_z if math.isfinite(z))]))
            ax.set_xlabel("largest $|z^l_j|$ of the example (saturation; log scale, linear below 1)")
        ax.set_ylabel("worst error/bound ratio of the example")
    what = "network depth L" if feature == "depth" else "saturation (largest |z|)"
    fig.suptitle(f"Error/bound ratio per example against {what}\n{_subtitle(report)}", fontsize=11)
    _legend(fig, styles, any(not math.isfinite(r) for c in cells for r in c.ratios))
    fig.savefig(path, dpi=110)


def _distribution_figure(figure_class: type[Figure], report: Report, cells: Sequence[CellResult], axis: RatioAxis, path: Path) -> None:
    """One row per cell: every example as a dot, a box from the 25th to the 75th percentile, whiskers to min and max."""
    styles = _styles(cells)
    ordered = [c for dtype in _dtypes(cells) for c in sorted((c for c in cells if c.dtype == dtype), key=lambda c: c.id)]
    fig = figure_class(figsize=(11, 0.42 * len(ordered) + 2.2), layout="constrained")
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for row, cell in enumerate(ordered):
        y = len(ordered) - 1 - row
        x = axis.place(cell.ratios)
        style = styles[_series_key(cell)]
        q0, q25, q50, q75, q100 = np.quantile(x, [0, 0.25, 0.5, 0.75, 1.0], method="higher")
        ax.hlines(y, q0, q100, color=style["color"], linewidth=1.0, zorder=2)
        ax.barh(y, q75 - q25, left=q25, height=0.55, facecolor="none", edgecolor=style["color"], linewidth=1.4, zorder=3)
        ax.vlines(q50, y - 0.27, y + 0.27, color="black", linewidth=2.0, zorder=4)
        ax.scatter(x, y + rng.uniform(-0.18, 0.18, len(x)), s=9, color=style["color"], alpha=0.35, linewidths=0, zorder=2)
        infinite = ~np.isfinite(np.asarray(cell.ratios, dtype=float))
        if infinite.any():
            ax.scatter(x[infinite], np.full(infinite.sum(), y), **INFINITE_STYLE)
        low = int(np.sum(x <= 10.0 ** (axis.low - 1)))
        note = (
            f"n={cell.examples}, {cell.failures} failed"
            + (f", {low} on the 0 row" if low else "")
            + (f", {int(infinite.sum())} × ∞" if infinite.any() else "")
        )
        ax.annotate(note, (1.0, y), xycoords=("axes fraction", "data"), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8)
    axis.apply(ax, "x")
    ax.set_yticks(range(len(ordered)), [c.id for c in reversed(ordered)], fontsize=9)
    ax.set_ylim(-0.7, len(ordered) - 0.3)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_xlabel("worst error/bound ratio per example (box: 25th–75th percentile, black: median, whiskers: min–max)")
    fig.suptitle(f"Distribution of error/bound ratios per cell\n{_subtitle(report)}", fontsize=11)
    _legend(fig, {}, any(not math.isfinite(r) for c in ordered for r in c.ratios))
    fig.savefig(path, dpi=110)


def plot(report: Report, out_dir: Path) -> list[Path]:
    """Write the three PNG files for ``report`` into ``out_dir`` (created if needed) and return their paths."""
    cells = [c for c in report.cells if c.examples]
    if not cells:
        raise PlotError(f"{report.source}: no cell ran any example; nothing to plot")
    figure_class = _figure_class()
    axis = RatioAxis.for_ratios([r for c in cells for r in c.ratios])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in FILES]
    _scatter_figure(figure_class, report, cells, axis, "depth", paths[0])
    _scatter_figure(figure_class, report, cells, axis, "max_abs_z", paths[1])
    _distribution_figure(figure_class, report, cells, axis, paths[2])
    return paths


def main(report_path: str, out_dir: str) -> int:
    """The ``plot`` command: 0 with the files written, 2 with a message for an unreadable report or missing matplotlib."""
    try:
        paths = plot(read(Path(report_path)), Path(out_dir))
    except (ReportError, PlotError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0
