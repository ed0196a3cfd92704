"""Before the first test: the hypothesis profile every test of the suite runs under, and every output and the baseline checked.

A bad output location or an unreadable baseline found at the end would cost the whole run; found here, it costs
nothing. Each problem is a :class:`pytest.UsageError` (exit status 4) that names the option and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from backprop_conformance.conformance import cases, options, outputs, report
from backprop_conformance.conformance.cells import Cell
from backprop_conformance.conformance.report import Report

RUN_PROFILE = "backprop-conformance-run"


def load_profile(max_examples: int | None) -> None:
    """The profile in force, with what every conformance test needs on top: no deadline (a framework's first
    call compiles), no too-slow health check, one bug per cell (so that "examples" counts examples tried:
    :mod:`~backprop_conformance.conformance.trial`), and ``--conformance-max-examples`` if given."""
    extra: dict[str, Any] = {
        "deadline": None,
        "report_multiple_bugs": False,
        "suppress_health_check": [*settings.default.suppress_health_check, HealthCheck.too_slow],
    }
    if max_examples is not None:
        extra["max_examples"] = max_examples
    settings.register_profile(RUN_PROFILE, parent=settings.default, **extra)
    settings.load_profile(RUN_PROFILE)


def check_outputs(config: pytest.Config, opts: options.RunOptions, cells: Sequence[Cell]) -> Report | None:
    """Every output location, and every pair of them, then the baseline: its report, or None when there is none to read."""
    files = {f"{options.PREFIX}report": opts.report, f"{options.PREFIX}markdown": opts.markdown}
    junit = config.getoption("xmlpath", None)
    if junit:
        files["--junitxml"] = Path(config.invocation_params.dir) / junit
    read_only: dict[str, Path] = {}
    if opts.baseline is not None:  # written only with --conformance-update-baseline; else it may be read-only
        (files if opts.update_baseline else read_only)[f"{options.PREFIX}baseline"] = opts.baseline
    chosen = {option: path for option, path in files.items() if path is not None}
    longest = max((cases.file_name_length(c.id) for c in cells), default=0)
    try:
        outputs.check_locations(chosen, {f"{options.PREFIX}case-dir": opts.case_dir}, longest, read_only)
    except outputs.OutputError as exc:
        raise pytest.UsageError(str(exc)) from None
    if opts.baseline is None or (opts.update_baseline and not opts.baseline.exists()):
        return None
    try:
        baseline = report.read(opts.baseline)
    except report.ReportError as exc:
        if opts.update_baseline:
            raise pytest.UsageError(
                f"{options.PREFIX}update-baseline: refusing to overwrite {opts.baseline}, which is not a usable report: {exc}; "
                "delete it or name another file to write a new baseline"
            ) from None
        raise pytest.UsageError(
            f"{options.PREFIX}baseline: {exc}; to create a baseline, run with {options.PREFIX}baseline {opts.baseline} "
            f"{options.PREFIX}update-baseline (on a passing run)"
        ) from None
    if not opts.update_baseline and not {c.id for c in baseline.cells if c.examples} & {c.id for c in cells}:
        raise pytest.UsageError(
            f"{options.PREFIX}baseline {opts.baseline}: shares no cell with this run's selection "
            f"({', '.join(c.id for c in cells) or 'none'}); nothing could be compared"
        )
    return baseline
