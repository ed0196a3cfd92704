"""How an error/bound ratio and an element outside its bound are written for a person: one spelling everywhere.

The verdict, the terminal matrix, the Markdown summary, the GitHub annotations and the baseline's messages all
show the same figures; written by one formatter, a ratio reads the same in each of them. A cell that ran no
examples has no ratio, written :data:`NO_RATIO`; an infinite ratio (a non-finite gradient, or an error over a zero
bound) is written ``inf``, as the JSON report stores it (:func:`~backprop_conformance.conformance.report.encode_float`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NO_RATIO = "–"
"""A ratio that does not exist: a cell that ran no examples, or a side of a baseline comparison without the cell."""


def format_ratio(value: float | None) -> str:
    """``value`` to three significant digits; ``inf`` when infinite, :data:`NO_RATIO` for None."""
    return NO_RATIO if value is None else f"{float(value):.3g}"


def format_mismatch(name: str, framework: float, reference: float, bound: float, ratio: float) -> str:
    """One element against its bound: ``w^2_13: framework …, reference …, bound …, ratio …`` (values to 17 digits)."""
    return f"{name}: framework {framework:.17g}, reference {reference:.17g}, bound {bound:.3g}, ratio {format_ratio(ratio)}"


def describe_element(element: Mapping[str, Any]) -> str:
    """A cell's recorded worst element (``CellResult.worst_element``) in the verdict's words (:func:`format_mismatch`)."""
    return format_mismatch(element["name"], element["framework"], element["reference"], element["bound"], float(element["ratio"]))
