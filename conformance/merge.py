"""``backprop-conformance merge REPORT... --out merged.json``: one report, and one verdict, for a whole CI matrix.

pytest-xdist merges the workers of one machine; across machines each job leaves its own report. This module joins
them into an ordinary report (the baseline comparison, the plots, the Markdown summary and the page read it as they
read a run's), by these rules:

* A cell is keyed by its coordinates (the cell id: backend, path, dtype, device, dispatch level) and by what makes it
  a different experiment (:func:`configuration_of`): the framework and its version, Python, the operating system, the
  machine's architecture, and the dispatch configuration it ran with (the CPU, its features, the BLAS core, the
  kernels the framework chose). Numbers computed with other kernels are other numbers: they are never pooled.
* Two records with the same key -- the same cell from two shards or two jobs -- combine: examples and their
  per-example series add up, the worst ratio is the larger, the status and the contract are the worse of the two,
  case files, problems and the replay command are kept.
* Records of one cell id under different configurations stay separate cells; their ids get a suffix naming what
  differs (``torch-eager-float32@v2.12.0``), since a report holds each id once.
* Refused, with the file named: a file that is not a report of this schema, the report of an interrupted run
  (exit status 2: its cells stopped part-way), the same cell run by two suite versions, the same file twice, and a
  split (``--conformance-shard``) with a slice missing -- a verdict on part of a matrix must not read as a verdict on
  all of it.

The merged report records every input in ``merged_from``; its top-level provenance keeps what all inputs agree on
(a field on which they differ becomes null, so that the baseline comparison never takes two runs for draws of the
same examples when they were not).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from backprop_conformance.conformance import baseline as baselines
from backprop_conformance.conformance import outputs, report
from backprop_conformance.conformance.markdown_summary import markdown
from backprop_conformance.conformance.report import STATUSES, CellResult, Report, ReportError

INTERRUPTED = 2
"""pytest's exit status for an interrupted run (Ctrl-C, ``-x``): its report holds cells stopped part-way."""

SEVERITY = ("not run", "passed", "known defect", "incomplete", "failed")
"""Cell statuses from the least to the most severe: the status of a cell combined from two records is the later one.
"Not run" is the least: a record that did not run a cell says nothing against one that did."""

CONTRACT_SEVERITY = ("not run", "passed", "failed")

EXPERIMENT = ("framework", "version", "python", "os", "machine")
"""The parts of a configuration that make a cell another experiment (with its dispatch configuration)."""

LABEL = {"framework": "{}", "version": "v{}", "python": "py{}", "os": "{}", "machine": "{}"}
"""How each differing part of a configuration reads in a cell id's suffix: ``torch-eager-float32@v2.12.0+py3.12.1``."""

USAGE = 2
"""Exit status of ``merge`` (and ``page``) for inputs they refuse."""

assert set(SEVERITY) == set(STATUSES)


class MergeError(ValueError):
    """Reports that cannot be merged; the message names the file and what is wrong."""


def configuration_of(rep: Report, cell: CellResult) -> dict[str, str]:
    """What ``cell`` of ``rep`` ran on, beyond its coordinates: framework, its version, Python, OS, architecture, suite.

    A merged cell carries it (``configuration``); a run's cell has it derived from the run's backends and environment.
    """
    if cell.configuration:
        return dict(cell.configuration)
    backend = next((b for b in rep.backends if b.name == cell.backend), None)
    env = rep.environment
    return {
        "framework": str(backend.framework) if backend is not None else "unknown",
        "version": str(backend.version) if backend is not None else "unknown",
        "python": str(env.get("python") or "unknown"),
        "os": str(env.get("platform") or "unknown").split("-", 1)[0],
        "machine": str(env.get("machine") or "unknown"),
        "suite": str(rep.suite.get("version") or "unknown"),
    }


def dispatch_of(rep: Report, cell: CellResult) -> dict[str, str]:
    """The dispatch configuration ``cell`` ran with: its own, else (a cell no test of which ran) the machine's."""
    return dict(cell.dispatch) if cell.dispatch else dict(rep.dispatch)


def _key(rep: Report, cell: CellResult) -> tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    config = configuration_of(rep, cell)
    return cell.id, tuple((k, config[k]) for k in EXPERIMENT if k in config), tuple(sorted(dispatch_of(rep, cell).items()))


def combine(into: CellResult, other: CellResult) -> None:
    """Add ``other``, another record of the same cell under the same configuration, to ``into``."""
    into.merge(other)
    into.status = max(into.status, other.status, key=SEVERITY.index)
    into.contract = max(into.contract, other.contract, key=CONTRACT_SEVERITY.index)
    into.dispatch = into.dispatch or dict(other.dispatch)


def read_all(paths: Sequence[Path]) -> list[Report]:
    """Every report, read and checked as mergeable: distinct files, none of an interrupted run."""
    seen: dict[Path, Path] = {}
    reports = []
    for path in paths:
        resolved = Path(path).resolve()
        if resolved in seen:
            raise MergeError(f"{path}: given twice (as {seen[resolved]} too); each report's examples would count twice")
        seen[resolved] = Path(path)
        rep = report.read(Path(path))
        if rep.exitstatus == INTERRUPTED:
            raise MergeError(
                f"{path}: the report of an interrupted run (exit status {INTERRUPTED}): its cells stopped part-way; "
                "run that job again and merge its new report"
            )
        reports.append(rep)
    if not reports:
        raise MergeError("no report to merge: give one or more report files")
    return reports


def merge(reports: Sequence[Report]) -> Report:
    """One ordinary report holding every cell of ``reports``, combined by the rules of this module."""
    _check_shards(reports)
    groups: dict[tuple[Any, ...], tuple[CellResult, dict[str, str], str]] = {}
    ran = {c.id for rep in reports for c in rep.cells if c.status != "not run"}
    for rep in reports:
        for cell in rep.cells:
            if cell.status == "not run" and cell.id in ran:  # another record ran it: this one adds nothing
                continue
            key = _key(rep, cell)
            config = configuration_of(rep, cell)
            if key not in groups:
                copy = CellResult.from_json(cell.to_json(), rep.source)
                copy.configuration, copy.dispatch = config, dispatch_of(rep, cell)
                groups[key] = (copy, config, rep.source)
                continue
            into, first_config, first_source = groups[key]
            if first_config.get("suite") != config.get("suite"):
                raise MergeError(
                    f"{rep.source}: cell {cell.id} ran with suite version {config.get('suite')} here and "
                    f"{first_config.get('suite')} in {first_source}; one merged cell needs one suite version: "
                    "merge reports of the same suite version"
                )
            combine(into, cell)
    by_id: dict[str, list[tuple[Any, ...]]] = {}
    for key in groups:
        by_id.setdefault(key[0], []).append(key)
    cells = []
    for cell_id, keys in by_id.items():
        labels = _labels(keys) if len(keys) > 1 else {keys[0]: ""}
        for key in keys:
            cell = groups[key][0]
            cell.id = f"{cell_id}@{labels[key]}" if labels[key] else cell_id
            cells.append(cell)
    return Report(
        cells=sorted(cells, key=lambda c: c.id),
        backends=_unique(b for rep in reports for b in rep.backends),
        skipped_backends=_unique(b for rep in reports for b in rep.skipped_backends),
        exitstatus=max(rep.exitstatus for rep in reports),
        timestamp=max(rep.timestamp for rep in reports),
        command={"executable": sys.executable, "argv": list(sys.argv), "pytest_args": [], "cwd": os.getcwd()},
        suite=_agreed(rep.suite for rep in reports),
        environment=_agreed(rep.environment for rep in reports),
        hypothesis=_agreed(rep.hypothesis for rep in reports),
        dispatch={k: v for k, v in _agreed(rep.dispatch for rep in reports).items() if v is not None},
        notes=list(dict.fromkeys(note for rep in reports for note in rep.notes)),
        timing=_summed(rep.timing for rep in reports),
        merged_from=[source for rep in reports for source in (rep.merged_from or [_source(rep)])],
        source="merged report",
    )


def _labels(keys: Sequence[tuple[Any, ...]]) -> dict[tuple[Any, ...], str]:
    """A short name per configuration of one cell id: the values of the parts that differ, a digest for the dispatch."""
    configs = [dict(key[1]) for key in keys]
    differing = [part for part in EXPERIMENT if len({c.get(part) for c in configs}) > 1]
    labels = {}
    for key, config in zip(keys, configs, strict=True):
        parts = [LABEL[part].format(config.get(part, "unknown")) for part in differing]
        if len({k[2] for k in keys}) > 1:
            parts.append("dispatch-" + hashlib.sha256(json.dumps(key[2]).encode()).hexdigest()[:8])
        labels[key] = re.sub(r"[^A-Za-z0-9._+-]+", "-", "+".join(parts))
    return labels


def _check_shards(reports: Sequence[Report]) -> None:
    """Refuse a split with a slice missing: every index 1..count of each split (same selection, backends, machine)."""
    splits: dict[tuple[Any, ...], dict[int, str]] = {}
    for rep in reports:
        if rep.shard is None:
            continue
        env = rep.environment
        split = (
            rep.shard["count"],
            tuple(rep.shard["selection"]),
            tuple(sorted((b.name, b.version or "") for b in rep.backends)),
            env.get("python"),
            env.get("machine"),
        )
        splits.setdefault(split, {})[rep.shard["index"]] = rep.source
    for split, given in splits.items():
        missing = [i for i in range(1, split[0] + 1) if i not in given]
        if missing:
            shown = ", ".join(f"{i}/{split[0]} ({source})" for i, source in sorted(given.items()))
            raise MergeError(
                f"shard(s) {', '.join(f'{i}/{split[0]}' for i in missing)} of a split of {len(split[1])} cells are missing "
                f"(given: {shown}); a merged verdict must cover every slice: add their reports, or rerun the jobs that left none"
            )


def _source(rep: Report) -> dict[str, Any]:
    return {
        "file": rep.source,
        "timestamp": rep.timestamp,
        "exitstatus": rep.exitstatus,
        "shard": None if rep.shard is None else f"{rep.shard['index']}/{rep.shard['count']}",
        "cells": [c.id for c in rep.cells],
        "suite": dict(rep.suite),
        "environment": dict(rep.environment),
        "dispatch": dict(rep.dispatch),
        "hypothesis": dict(rep.hypothesis),
    }


def _agreed(objects: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Each key's value where every object has the same, else None."""
    objects = list(objects)
    keys = dict.fromkeys(k for o in objects for k in o)
    return {k: objects[0].get(k) if all(o.get(k) == objects[0].get(k) for o in objects) else None for k in keys}


def _summed(objects: Iterable[Mapping[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for o in objects:
        for k, v in o.items():
            total[k] = total.get(k, 0.0) + float(v)
    return total


def _unique(entries: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for entry in entries:
        if entry not in out:
            out.append(entry)
    return out


def main(paths: Sequence[str], out: str, baseline: str | None = None, summary: str | None = None) -> int:
    """Merge ``paths`` into ``out``; compare with ``baseline`` and append a Markdown ``summary`` when asked.

    Exit status: 0 when every merged cell passed (or failed only by a known defect) and nothing regressed, 1 when a
    cell failed, ran incomplete or regressed, 2 for inputs refused (the message names the file).
    """
    inputs = {f"REPORT {p}": Path(p) for p in {Path(p).resolve(): p for p in reversed(paths)}.values()}  # a repeat: read_all's error
    files = {"--out": Path(out), **({"--markdown": Path(summary)} if summary else {})}
    try:
        outputs.check_locations(files, {}, inputs={**inputs, **({"--baseline": Path(baseline)} if baseline else {})})
        merged = merge(read_all([Path(p) for p in paths]))
        old = report.read(Path(baseline)) if baseline else None
    except (MergeError, ReportError, outputs.OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE
    comparison = baselines.compare(old, merged) if old is not None else None
    lines = [f"merged {len(paths)} report(s): {len(merged.cells)} cells, " + ", ".join(f"{n} {s}" for s, n in merged.counts.items() if n)]
    if comparison is not None:
        merged.baseline = comparison.to_json()
        lines += comparison.summary_lines()
    failed = merged.counts["failed"] + merged.counts["incomplete"] + bool(comparison is not None and comparison.regressions)
    merged.exitstatus = max(merged.exitstatus, 1 if failed else 0)
    report.write(merged, Path(out))
    lines.append(f"merged report written to {out}")
    if summary:
        outputs.append_text(markdown(merged, comparison), Path(summary))
        lines.append(f"Markdown summary appended to {summary}")
    print("\n".join(lines))
    return 1 if merged.exitstatus else 0
