"""The run as a GitHub-flavoured Markdown section, for ``$GITHUB_STEP_SUMMARY`` (``--conformance-markdown``).

A reviewer reads this page instead of the job's log, so it must never look greener than the run was:
its headline follows each cell's status (a failed contract, an exception, an incomplete or unrun cell
are all named), and for each failing cell it gives the worst element with both values, the bound and
the ratio, the case files and the replay command -- what a bug report needs.
"""

from __future__ import annotations

from collections.abc import Mapping

from backprop_conformance.adapters.dispatch import describe
from backprop_conformance.conformance.baseline import Comparison
from backprop_conformance.conformance.ratios import describe_element, format_ratio
from backprop_conformance.conformance.report import CellResult, Report

STATUS_MARK = {"passed": "✅", "failed": "❌", "incomplete": "❌ incomplete", "known defect": "⚠️ known defect", "not run": "– not run"}


def headline(report: Report, comparison: Comparison | None) -> str:
    """The verdict in a few words, worst news first."""
    counts = report.counts
    total = len(report.cells)
    if counts["failed"] or counts["incomplete"]:
        parts = [f"{counts[s]} {s}" for s in ("failed", "incomplete") if counts[s]]
        return f"❌ {', '.join(parts)} of {total} cells"
    if comparison is not None and comparison.regressions:
        return "❌ regressions against the baseline"
    if not total:
        return "⚠️ nothing was tested: no cell was selected"
    if counts["not run"]:
        return f"⚠️ {counts['not run']} of {total} cells were not run"
    if counts["known defect"]:
        return f"⚠️ {counts['passed']} cells within the bound, {counts['known defect']} failing only by known upstream defects"
    return f"✅ all {total} cells tested and within the bound"


def markdown(report: Report, comparison: Comparison | None = None) -> str:
    """One table row per cell, then the failing cells' evidence, the skipped backends and the baseline's verdict.

    Each run appends its own section, so several runs in one job (a matrix of backends) each get theirs.
    """
    lines = [f"## backprop-conformance: {headline(report, comparison)}", ""]
    hyp, suite, env = report.hypothesis, report.suite, report.environment
    commit = f" ({suite['commit'][:12]}{', modified' if suite.get('dirty') else ''})" if suite.get("commit") else ""
    lines.append(
        f"Suite {suite.get('version', '?')}{commit}; Python {env.get('python', '?')}, numpy {env.get('numpy', '?')}, "
        f"{env.get('platform', '?')}; hypothesis profile `{hyp.get('profile', '?')}`, max_examples {hyp.get('max_examples', '?')}."
    )
    if report.backends:
        lines.append(
            "Backends: " + "; ".join(f"{b.name}: {b.framework} {b.version} (accumulation {b.accumulation})" for b in report.backends) + "."
        )
    if report.dispatch:
        lines.append("Dispatch: " + describe(report.dispatch) + ".")
    lines.append("")
    header = ["cell", "examples", "failures", "contract", "exceptions", "worst ratio", "median ratio", "status"]
    if comparison is not None:
        header.insert(-1, "baseline worst → now")
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join([":--", *["--:"] * (len(header) - 2), ":-:"]) + "|"]
    for cell in report.cells:
        row = [
            f"`{cell.id}`",
            str(cell.examples),
            str(cell.failures),
            cell.contract,
            str(cell.exceptions),
            format_ratio(cell.worst),
            format_ratio(cell.median),
        ]
        status = STATUS_MARK[cell.status]
        if comparison is not None:
            change = comparison.cells.get(cell.id)
            row.append(change.markdown() if change is not None else "–")
            if change is not None and change.problems:
                status = "❌ regressed"
        lines.append("| " + " | ".join([*row, status]) + " |")
    lines.append("")
    lines.append("Ratio: the largest |g_framework − g_reference| / bound of an example's gradients and cost; ≤ 1 passes.")
    failing = [c for c in report.cells if c.status in ("failed", "incomplete", "known defect")]
    if failing:
        lines += ["", "### Failing cells", ""]
        for cell in failing:
            lines += _evidence(cell, report.dispatch)
    if report.skipped_backends:
        lines += ["", "Skipped backends:", *(f"- {b.name}: {b.reason}" for b in report.skipped_backends)]
    if report.notes:
        lines += ["", "Notes:", *(f"- {note}" for note in report.notes)]
    if comparison is not None:
        lines.append("")
        lines += [f"- {line}" for line in comparison.summary_lines()]
    return "\n".join(lines) + "\n"


def _evidence(cell: CellResult, machine: Mapping[str, str]) -> list[str]:
    lines = [f"**`{cell.id}`**: {cell.status}"]
    if cell.worst_element is not None:
        lines.append(f"- worst: {describe_element(cell.worst_element)}")
    own = {k: v for k, v in cell.dispatch.items() if k not in machine}
    if own:
        lines.append(f"- dispatch: {describe(own)}")
    lines += [f"- {problem}" for problem in cell.problems]
    lines += [f"- case file: `{path}`" for path in cell.case_files]
    if cell.replay:
        lines.append(f"- replay: `{cell.replay}`")
    lines.append("")
    return lines
