"""What the run prints for a person at a terminal: the header before the tests, the matrix and the run's end after them.

The header says what will be tested and how (profile, examples, steering, dispatch, each backend's paths, dtypes
and accumulation); the matrix gives one row per cell with its status and ratios, and the worst element of each
cell that did not pass; then come the report's and the baseline's lines and, in a GitHub Actions job, the
annotations. The figures are written by :mod:`~backprop_conformance.conformance.ratios`, as every other output
writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import settings

from backprop_conformance.adapters import dispatch
from backprop_conformance.adapters.base import Capabilities
from backprop_conformance.conformance import options, provenance
from backprop_conformance.conformance.cells import EVERY_LEVEL, NATIVE, Backend
from backprop_conformance.conformance.github_annotations import on_github_actions, workflow_commands
from backprop_conformance.conformance.ratios import describe_element, format_ratio
from backprop_conformance.conformance.report import Report
from backprop_conformance.conformance.reproducers import REPLAY
from backprop_conformance.conformance.trial import STEER_FROM, steers


def header(opts: options.RunOptions, profile: str, backends: Sequence[Backend], notes: Sequence[str]) -> list[str]:
    """The lines pytest prints under its own header: the suite, the profile in force, the machine and each backend."""
    current = settings.default
    overridden = f" ({options.PREFIX}max-examples)" if opts.max_examples is not None else ""
    lines = [
        f"backprop-conformance {provenance.suite_version()}: hypothesis profile {profile}, "
        f"max_examples={current.max_examples}{overridden}, "
        + ("steering toward the worst ratio with target()" if steers(current) else f"no target() steering (from {STEER_FROM} examples)"),
        "  dispatch: " + dispatch.describe(dispatch.machine()),
    ]
    for backend in backends:
        caps = backend.capabilities
        if caps is None:
            lines.append(f"  {backend.spec.name}: {backend.unavailable}")
            continue
        opt_in = [p for p in caps.paths if p not in caps.default_paths]
        lines.append(
            f"  {caps.name}: {caps.framework} {caps.version}; devices {', '.join(caps.devices)}; paths {', '.join(caps.default_paths)}"
            + (f" (opt-in: {', '.join(opt_in)})" if opt_in else "")
            + f"; dtypes {', '.join(caps.dtypes)}; accumulation {caps.describe_accumulation()}"
            + "".join(f"; {path} {count} ranks" for path, count in caps.ranks.items())
            + _describe_levels(caps, opts.dispatch)
        )
        lines += [f"    policy {line}" for line in caps.describe_policies()]
    lines += [f"  note: {note}" for note in notes]
    return lines


def _describe_levels(caps: Capabilities, requested: Sequence[str]) -> str:
    """The header's note of a backend's dispatch levels: which run in this session, or how to run them."""
    names = list(dict.fromkeys(level.name for levels in caps.levels.values() for level in levels))
    if not names:
        return ""
    chosen = [n for n in names if EVERY_LEVEL in requested or n in requested]
    if chosen:
        return f"; dispatch levels {', '.join(chosen)}" + (f" and {NATIVE}" if NATIVE in requested else "")
    return f"; dispatch {NATIVE} (levels {', '.join(names)}: {options.PREFIX}dispatch)"


def summary(tr: pytest.TerminalReporter, rep: Report | None, any_backend: bool, finished: Sequence[str], case_dir: Path) -> None:
    """The end of the run: the matrix (when anything was selected), the outputs' and baseline's lines, the annotations."""
    if rep is not None and (rep.cells or any_backend):
        _write_matrix(tr, rep, case_dir)
    if finished:
        tr.section("conformance report and baseline")
        for line in finished:
            tr.write_line(line)
    if rep is not None and on_github_actions():
        for command in workflow_commands(rep):
            tr.write_line(command)


def _cells(ids: Sequence[str]) -> str:
    """Cell ids in a line; beyond four, the first three and how many more."""
    return ", ".join(ids) if len(ids) <= 4 else f"{', '.join(ids[:3])} and {len(ids) - 3} more"


def _write_matrix(tr: pytest.TerminalReporter, rep: Report, case_dir: Path) -> None:
    """One row per cell: status, examples, failures, contract, exceptions, worst and median ratio."""
    tr.section("conformance matrix (error/bound ratio per example: ≤ 1 passes)")
    names: Sequence[str] = [c.id for c in rep.cells] + [b.name for b in rep.skipped_backends] + ["cell"]
    width = max(len(name) for name in names)
    tr.write_line(
        f"{'cell':<{width}} {'status':>12} {'examples':>8} {'failures':>8} {'contract':>8} {'raised':>6} {'worst':>10} {'median':>10}"
    )
    for c in rep.cells:
        tr.write_line(
            f"{c.id:<{width}} {c.status:>12} {c.examples:>8} {c.failures:>8} {c.contract:>8} {c.exceptions:>6} "
            f"{format_ratio(c.worst):>10} {format_ratio(c.median):>10}"
        )
        if c.status in ("known defect", "failed", "incomplete") and c.worst_element is not None:
            # The column is the worst of the examples counted; this element may come from a shrinking replay.
            tr.write_line(f"{'':<{width}}   worst {describe_element(c.worst_element)} (shrinking replays included)")
        if c.failures or c.exceptions:
            tr.write_line(
                f"{'':<{width}}   stopped at its first failing example: {c.examples} tried, then {c.shrink_calls} shrinking replays"
            )
    for b in rep.skipped_backends:
        tr.write_line(f"{b.name:<{width}} {b.reason}")
    machine = set(rep.dispatch)
    groups: dict[str, list[str]] = {}
    for c in rep.cells:
        own = {k: v for k, v in c.dispatch.items() if k not in machine}
        if own:
            groups.setdefault(dispatch.describe(own), []).append(c.id)
    for described, ids in groups.items():
        tr.write_line(f"dispatch: {described}: {_cells(ids)}")
    for note in rep.notes:
        tr.write_line(f"note: {note}")
    counts = rep.counts
    tr.write_line(", ".join(f"{n} {status}" for status, n in counts.items() if n) or "no cell was selected: nothing was tested")
    if any(c.case_files for c in rep.cells):
        tr.write_line(f"reproducers written to {case_dir}/; replay one with: {REPLAY} CASE.json --backend NAME")
