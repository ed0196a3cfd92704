"""The end of a run: the typed report built once from the settled cells, compared with the baseline, and written.

Built once and then only read, so that the JSON report, the Markdown summary, the baseline and the terminal all say
the same thing. The baseline gates the run: a regression fails a run that passed, and a baseline is only written
from a run in which every selected cell ran and passed (or failed only by a known defect). An output that cannot be
written fails a run that passed: CI would otherwise go green without its artifact.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest

from backprop_conformance.adapters import dispatch
from backprop_conformance.conformance import baseline as baselines
from backprop_conformance.conformance import outputs, provenance, report
from backprop_conformance.conformance.cells import Backend
from backprop_conformance.conformance.markdown_summary import markdown
from backprop_conformance.conformance.options import RunOptions
from backprop_conformance.conformance.report import BackendEntry, CellResult, Report
from backprop_conformance.conformance.reproducers import relative


def build(
    config: pytest.Config,
    backends: Sequence[Backend],
    cells: Sequence[CellResult],
    exitstatus: int,
    *,
    profile: str,
    notes: Sequence[str],
    timing: dict[str, float],
) -> Report:
    """The run's report: its settled cells by id, its backends (loaded and skipped), how it was run and where."""
    loaded, skipped = [], []
    for b in backends:
        caps = b.capabilities
        if caps is None:
            skipped.append(BackendEntry(b.spec.name, b.spec.requested_as, reason=b.unavailable))
            continue
        loaded.append(
            BackendEntry(
                caps.name,
                b.spec.requested_as,
                caps.framework,
                caps.version,
                caps.devices,
                caps.paths,
                caps.dtypes,
                caps.describe_accumulation(),
                {name: os.environ.get(name) for name in caps.environment},
                policies={name: policy.describe() for name, policy in caps.policies.items()},
            )
        )
    return Report(
        cells=sorted(cells, key=lambda c: c.id),
        backends=loaded,
        skipped_backends=skipped,
        exitstatus=exitstatus,
        timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        command={
            "executable": sys.executable,
            "argv": list(sys.argv),
            "pytest_args": list(config.invocation_params.args),
            "cwd": str(config.invocation_params.dir),
        },
        suite=provenance.suite(),
        environment=provenance.environment(),
        dispatch=dispatch.machine(),
        hypothesis=provenance.hypothesis_settings(profile, config.getoption("hypothesis_seed", None)),
        notes=list(notes),
        timing=timing,
    )


@dataclass
class Ending:
    """The run's exit status as the report, the baseline and the outputs leave it, and the lines that say why."""

    exitstatus: int
    lines: list[str] = field(default_factory=list)

    def save(self, what: str, done: str, path: Path, writer: Callable[[Path], object], here: Path) -> None:
        """Write one output; a failure to write it is a line, and turns a passing run into a usage error."""
        shown = relative(path, here)
        try:
            writer(path)
        except OSError as exc:
            self.lines.append(f"ERROR: cannot write the {what} to {shown}: {exc.strerror or exc}")
            if self.exitstatus == pytest.ExitCode.OK:
                self.exitstatus = pytest.ExitCode.USAGE_ERROR
        else:
            self.lines.append(f"{what} {done} {shown}")


def conclude(rep: Report, opts: RunOptions, baseline: Report | None, exitstatus: int, here: Path) -> Ending:
    """Compare ``rep`` with ``baseline``, gate the run on it, and write the report, the summary and the baseline asked for.

    ``exitstatus`` is the run's so far; ``here`` the directory it was started in (paths are shown relative to it).
    """
    end = Ending(exitstatus)
    comparison = baselines.compare(baseline, rep) if baseline is not None else None
    if comparison is not None:
        rep.baseline = comparison.to_json()
        end.lines.append(f"compared with baseline {opts.baseline}:")
        end.lines += [f"  {line}" for line in comparison.summary_lines()]
        if comparison.regressions and not opts.update_baseline and end.exitstatus == pytest.ExitCode.OK:
            end.exitstatus = pytest.ExitCode.TESTS_FAILED
            end.lines.append(f"  the run fails: {len(comparison.regressions)} regression(s) against the baseline")
    rep.exitstatus = int(end.exitstatus)
    if opts.report is not None:
        end.save("report", "written to", opts.report, lambda path: report.write(rep, path), here)
    if opts.markdown is not None:
        end.save("Markdown summary", "appended to", opts.markdown, lambda path: outputs.append_text(markdown(rep, comparison), path), here)
    if opts.update_baseline:
        assert opts.baseline is not None
        if end.exitstatus != pytest.ExitCode.OK:
            end.lines.append(f"baseline {opts.baseline} NOT updated: the run did not pass (exit status {int(end.exitstatus)})")
        elif not any(c.status == "passed" for c in rep.cells) or any(c.status not in ("passed", "known defect") for c in rep.cells):
            end.lines.append(f"baseline {opts.baseline} NOT updated: not every selected cell ran and passed")
        else:
            verb = "updated:" if baseline is not None else "created:"
            end.save("baseline", verb, opts.baseline, lambda path: report.write(rep, path), here)
    return end
