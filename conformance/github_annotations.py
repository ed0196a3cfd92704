"""Failing cells as GitHub Actions annotations: the ``::error`` workflow commands a job's log turns into annotations.

A reviewer of a pull request sees annotations on the run's summary page without opening the log, so each cell that
did not pass gets one: its status, its worst element (both values, bound, ratio), its problems, the case file and
the replay command, as :mod:`~backprop_conformance.conformance.markdown_summary` gives them. Printed only when
``GITHUB_ACTIONS=true``, the variable GitHub sets in every job; elsewhere the lines would be noise.

Workflow-command syntax: ``::error title=T::MESSAGE``. The message's ``%``, CR and LF must be written ``%25``, ``%0D``
and ``%0A`` (a raw newline would end the command), and the title's ``,`` and ``:`` too (``%2C``, ``%3A``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from backprop_conformance.adapters.dispatch import describe
from backprop_conformance.conformance.ratios import describe_element
from backprop_conformance.conformance.report import CellResult, Report

ANNOUNCED = ("failed", "incomplete")
"""Statuses that fail a run; a known upstream defect is a warning, not an error."""


def on_github_actions(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process runs in a GitHub Actions job (GitHub sets ``GITHUB_ACTIONS=true`` there)."""
    return environ.get("GITHUB_ACTIONS") == "true"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _message(cell: CellResult) -> str:
    lines = [f"{cell.id}: {cell.status} ({cell.failures} failing of {cell.examples} examples; contract {cell.contract})"]
    if cell.worst_element is not None:
        lines.append(f"worst: {describe_element(cell.worst_element)}")
    lines += list(cell.problems)
    lines += [f"case file: {path}" for path in cell.case_files]
    if cell.replay:
        lines.append(f"replay: {cell.replay}")
    if cell.dispatch:
        lines.append(f"dispatch: {describe(cell.dispatch)}")
    return "\n".join(lines)


def workflow_commands(report: Report) -> list[str]:
    """One workflow command per cell that did not pass: ``::error`` for a failure, ``::warning`` for a known defect."""
    commands = []
    for cell in report.cells:
        if cell.status in ANNOUNCED:
            level = "error"
        elif cell.status == "known defect":
            level = "warning"
        else:
            continue
        title = _escape_property(f"backprop-conformance {cell.id}: {cell.status}")
        commands.append(f"::{level} title={title}::{_escape_data(_message(cell))}")
    return commands
