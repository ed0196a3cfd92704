"""Machine-readable results of a run: the JSON report, the Markdown summary, and the pytest options for them.

The end-of-run matrix is for a person at a terminal; CI needs the same figures as data: to keep as an
artifact, to compare with a stored baseline (:mod:`backprop_conformance.conformance.baseline`), to plot where a framework's
error grows (:mod:`backprop_conformance.conformance.plot`) and to show on the job's summary page. A report holds, per cell
(backend, path, dtype, device), the examples and failures, the per-example worst error/bound ratio
(the largest |g_framework − g_reference| / bound over every ∂C/∂w^l_jk and ∂C/∂b^l_j), the network's
depth L and its largest |z^l_j|, and the provenance needed to tell two runs apart: framework versions,
Python, numpy, the suite's version and commit, hypothesis' settings and the command line.

The format is documented, field by field, in ``docs/report-schema.md``. JSON has no infinity, and an
infinite ratio (a non-finite gradient) is exactly the value a report must not lose, so non-finite
numbers are written as the strings ``"inf"``, ``"-inf"`` and ``"nan"`` (see :func:`encode_float`).

Everything here runs on the pytest controller only: under pytest-xdist the workers' statistics are
merged into the controller's (``backprop_conformance.conformance.plugin.pytest_testnodedown``) before :func:`finish` runs.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backprop_conformance.conformance import baseline as baseline_module
from backprop_conformance.conformance.cases import suite_version
from backprop_conformance.conformance.cells import Backend, Cell
from backprop_conformance.conformance.stats import QUANTILES, CellStats

SCHEMA = "backprop-conformance/report/1"
"""The report format's name and version; bumped on any change a reader of version 1 would misread."""

NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
"""How JSON carries the floats it has no literal for (JSON's grammar has no Infinity or NaN)."""


class ReportError(ValueError):
    """A report file that cannot be used; the message names the file and the field."""


def encode_float(value: float) -> float | str:
    """``value`` as JSON can carry it: finite floats unchanged, ±inf and NaN as ``"inf"``, ``"-inf"``, ``"nan"``.

    Strings rather than ``null``: ``null`` already means "no value" (a cell that ran no examples has no
    worst ratio), and an infinite ratio is a value, the worst there is.
    """
    value = float(value)
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def decode_float(value: object, where: str) -> float:
    """The inverse of :func:`encode_float`; ``where`` names the field for the error message."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ReportError(f"{where}: expected a number or one of {', '.join(map(repr, NON_FINITE))}, got {value!r}")
    if isinstance(value, str):
        if value not in NON_FINITE:
            raise ReportError(f"{where}: expected a number or one of {', '.join(map(repr, NON_FINITE))}, got {value!r}")
        return NON_FINITE[value]
    return float(value)


@dataclass(frozen=True)
class CellResult:
    """One cell of a report, decoded: its identity, its counts and its per-example series.

    ``ratios[i]``, ``depths[i]`` and ``max_abs_z[i]`` describe the i-th example the cell ran: its worst
    error/bound ratio, the network's depth L and its largest |z^l_j| over l = 2..L and the batch.
    """

    id: str
    backend: str
    path: str
    dtype: str
    device: str
    examples: int
    failures: int
    worst: float | None
    median: float | None
    ratios: tuple[float, ...]
    depths: tuple[int, ...]
    max_abs_z: tuple[float, ...]


@dataclass(frozen=True)
class Report:
    """A parsed report: the cells, and the whole JSON document for the provenance fields."""

    cells: tuple[CellResult, ...]
    data: Mapping[str, Any]
    source: str

    def cell(self, cell_id: str) -> CellResult | None:
        return next((c for c in self.cells if c.id == cell_id), None)


# Building a report.


def cell_entry(cell: Cell, stats: CellStats | None) -> dict[str, Any]:
    """A cell's JSON object; a selected cell that ran no examples (deselected, interrupted) has null statistics."""
    stats = stats or CellStats()
    ran = stats.examples > 0

    def stat(value: float) -> float | str | None:
        return encode_float(value) if ran else None

    return {
        "id": cell.id,
        "backend": cell.backend,
        "path": cell.path,
        "dtype": cell.dtype,
        "device": cell.device,
        "examples": int(stats.examples),
        "failures": int(stats.failures),
        "worst": stat(stats.worst),
        "median": stat(stats.median),
        "quantiles": {f"{q:g}": stat(stats.quantile(q)) for q in QUANTILES},
        "ratios": [encode_float(r) for r in stats.ratios],
        "depths": [int(d) for d in stats.depths],
        "max_abs_z": [encode_float(z) for z in stats.max_abs_z],
    }


def backend_entries(backends: Sequence[Backend]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(loaded backends with framework, version and devices; skipped backends with the reason)."""
    loaded, skipped = [], []
    for backend in backends:
        caps = backend.capabilities
        if caps is None:
            skipped.append({"name": backend.spec.name, "requested_as": backend.spec.requested_as, "reason": backend.unavailable})
            continue
        loaded.append(
            {
                "name": caps.name,
                "requested_as": backend.spec.requested_as,
                "framework": caps.framework,
                "version": caps.version,
                "devices": list(caps.devices),
                "paths": list(caps.paths),
                "dtypes": list(caps.dtypes),
            }
        )
    return loaded, skipped


def hypothesis_settings(profile: str) -> dict[str, Any]:
    """What decides which examples ran: the profile, the example budget, derandomization, the seed, the database.

    ``seed`` is hypothesis' global seed, set by ``--hypothesis-seed`` (``hypothesis.core.global_force_seed``),
    null when not given. With ``derandomize`` true (the ``ci`` profile) the examples are a function of the
    test and the code alone, so a rerun of the same code draws the same networks; with it false and no
    seed they come from fresh randomness and cannot be drawn again. ``database`` says whether examples
    saved by earlier runs (failures first) were replayed.
    """
    import hypothesis
    from hypothesis import core, settings

    current = settings.default
    return {
        "version": hypothesis.__version__,
        "profile": profile,
        "max_examples": current.max_examples,
        "derandomize": current.derandomize,
        "seed": getattr(core, "global_force_seed", None),
        "database": current.database is not None,
    }


def suite_checkout() -> dict[str, Any]:
    """The git commit of the suite's own checkout and whether tracked files differ from it; nulls when not a checkout.

    Asked in the package's directory, and only believed when the checkout's top level is the directory
    that holds the package: an installed copy inside some other repository (a virtual environment in a
    user's project) would otherwise report that project's commit. ``--no-optional-locks`` keeps
    ``git status`` from rewriting the index of a checkout it only reads.
    """
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "--no-optional-locks", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def build(
    stats: Mapping[str, CellStats],
    backends: Sequence[Backend],
    cells: Sequence[Cell],
    *,
    profile: str,
    command: Mapping[str, Any],
    exitstatus: int,
    comparison: baseline_module.Comparison | None = None,
) -> dict[str, Any]:
    """The report of a run, as a JSON-ready dict (see ``docs/report-schema.md``).

    Cells are the run's selected cells in id order, each with its statistics; ``comparison`` is the
    baseline comparison of this run, when one was asked for.
    """
    loaded, skipped = backend_entries(backends)
    return {
        "schema": SCHEMA,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "exitstatus": int(exitstatus),
        "command": dict(command),
        "suite": {"version": suite_version(), **suite_checkout()},
        "environment": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "numpy": np.__version__,
        },
        "hypothesis": hypothesis_settings(profile),
        "backends": loaded,
        "skipped_backends": skipped,
        "cells": [cell_entry(cell, stats.get(cell.id)) for cell in sorted(cells, key=lambda c: c.id)],
        "baseline": comparison.to_json() if comparison is not None else None,
    }


PER_EXAMPLE = ("ratios", "depths", "max_abs_z")


def dumps(report: Mapping[str, Any]) -> str:
    """The report as JSON text: indented, except that each per-example array stays on one line.

    A cell of a 2,000-example run would otherwise take 6,000 lines; one line per array keeps the file
    (often a baseline kept in version control) readable and its diffs one line per changed series.
    ``allow_nan=False`` makes a non-finite float that escaped :func:`encode_float` an error here
    instead of invalid JSON in the file.
    """
    arrays: dict[str, str] = {}

    def compact(entry: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(entry)
        for name in PER_EXAMPLE:
            if name in out:
                key = f"@@{len(arrays)}@@"
                arrays[json.dumps(key)] = json.dumps(out[name], allow_nan=False)
                out[name] = key
        return out

    shallow = {**report, "cells": [compact(cell) for cell in report.get("cells", [])]}
    text = json.dumps(shallow, indent=1, allow_nan=False, ensure_ascii=False)
    for placeholder, array in arrays.items():
        text = text.replace(placeholder, array, 1)
    return text + "\n"


def write(report: Mapping[str, Any], path: Path) -> None:
    """Write ``report`` to ``path`` atomically: a reader (or a crash) never sees half a file.

    The text goes to a temporary file in the same directory, then :func:`os.replace` renames it over
    ``path`` (atomic within one file system). The temporary file is created private (0600); it gets
    the mode an ordinary new file would have (0666 less the umask) before it takes ``path``'s place.
    """
    text = dumps(report)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# Reading a report.


def read(path: Path) -> Report:
    """Read and validate a report file; :class:`ReportError` says what is wrong with which file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"report file {path} does not exist") from None
    except IsADirectoryError:
        raise ReportError(f"{path} is a directory, not a report file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"cannot read report file {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON ({exc})") from None
    return parse(data, str(path))


def parse(data: object, source: str) -> Report:
    """Validate a report's structure (the fields this package reads) and decode its cells."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ReportError(f"{source}: not a backprop-conformance report (schema {found!r}, expected {SCHEMA!r})")
    entries = data.get("cells")
    if not isinstance(entries, list):
        raise ReportError(f"{source}: field 'cells' must be a list, got {type(entries).__name__}")
    return Report(tuple(_parse_cell(entry, f"{source}: cells[{i}]") for i, entry in enumerate(entries)), data, source)


def _parse_cell(entry: object, where: str) -> CellResult:
    if not isinstance(entry, dict):
        raise ReportError(f"{where} must be an object, got {type(entry).__name__}")

    def field(name: str, kind: type | tuple[type, ...]) -> Any:
        if name not in entry:
            raise ReportError(f"{where}: missing field {name!r}")
        value = entry[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ReportError(f"{where}: field {name!r} has the wrong type ({type(value).__name__}: {value!r})")
        return value

    def optional_float(name: str) -> float | None:
        value = field(name, (int, float, str, type(None)))
        return None if value is None else decode_float(value, f"{where}.{name}")

    ratios = tuple(decode_float(v, f"{where}.ratios[{i}]") for i, v in enumerate(field("ratios", list)))
    depths = field("depths", list)
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in depths):
        raise ReportError(f"{where}: field 'depths' must be a list of integers")
    zs = tuple(decode_float(v, f"{where}.max_abs_z[{i}]") for i, v in enumerate(field("max_abs_z", list)))
    examples = field("examples", int)
    if not len(ratios) == len(depths) == len(zs) == examples:
        raise ReportError(
            f"{where}: 'examples' is {examples} but 'ratios', 'depths' and 'max_abs_z' have {len(ratios)}, {len(depths)}, {len(zs)} entries"
        )
    return CellResult(
        id=field("id", str),
        backend=field("backend", str),
        path=field("path", str),
        dtype=field("dtype", str),
        device=field("device", str),
        examples=examples,
        failures=field("failures", int),
        worst=optional_float("worst"),
        median=optional_float("median"),
        ratios=ratios,
        depths=tuple(depths),
        max_abs_z=zs,
    )


# The Markdown summary.


def _ratio(value: float | None) -> str:
    if value is None:
        return "–"
    return "∞" if value == math.inf else f"{value:.3g}"


def markdown(report: Report, comparison: baseline_module.Comparison | None = None) -> str:
    """The matrix as a GitHub-flavoured Markdown section: one table row per cell, and the baseline's verdict.

    Written for ``$GITHUB_STEP_SUMMARY``, which GitHub renders on the job's page; each run appends
    its own section, so several runs in one job (a matrix of backends) each get theirs.
    """
    data = report.data
    failed_cells = [c for c in report.cells if c.failures]
    regressions = comparison.regressions if comparison is not None else []
    verdict = "❌ failures" if failed_cells else "❌ regressions against the baseline" if regressions else "✅ all cells within the bound"
    lines = [f"## backprop-conformance: {verdict}", ""]
    hyp = data.get("hypothesis", {})
    suite = data.get("suite", {})
    env = data.get("environment", {})
    commit = f" ({suite['commit'][:12]}{', modified' if suite.get('dirty') else ''})" if suite.get("commit") else ""
    lines.append(
        f"Suite {suite.get('version', '?')}{commit}; Python {env.get('python', '?')}, numpy {env.get('numpy', '?')}, "
        f"{env.get('platform', '?')}; hypothesis profile `{hyp.get('profile', '?')}`, max_examples {hyp.get('max_examples', '?')}."
    )
    backends = [f"{b['name']}: {b['framework']} {b['version']}" for b in data.get("backends", [])]
    if backends:
        lines.append("Backends: " + "; ".join(backends) + ".")
    lines.append("")
    header = ["cell", "examples", "failures", "worst ratio", "median ratio", "verdict"]
    if comparison is not None:
        header.insert(-1, "baseline worst → now")
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join([":--", *["--:"] * (len(header) - 2), ":-:"]) + "|"]
    for cell in report.cells:
        row = [f"`{cell.id}`", str(cell.examples), str(cell.failures), _ratio(cell.worst), _ratio(cell.median)]
        status = "❌" if cell.failures else "✅" if cell.examples else "–"
        if comparison is not None:
            change = comparison.cells.get(cell.id)
            row.append(change.markdown() if change is not None else "–")
            if change is not None and change.problems:
                status = "❌"
        lines.append("| " + " | ".join([*row, status]) + " |")
    lines.append("")
    lines.append("Ratio: the largest |g_framework − g_reference| / bound of an example's gradients; ≤ 1 passes.")
    skipped = data.get("skipped_backends", [])
    if skipped:
        lines += ["", "Skipped backends:", *(f"- {b['name']}: {b['reason']}" for b in skipped)]
    if comparison is not None:
        lines.append("")
        lines += [f"- {line}" for line in comparison.summary_lines()]
    return "\n".join(lines) + "\n"


def append_text(text: str, path: Path) -> None:
    """Append ``text`` to ``path`` (created if absent), after a blank line if the file already has content.

    Appending is what GitHub's ``$GITHUB_STEP_SUMMARY`` expects: other steps write to the same file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    separator = "\n" if path.exists() and path.stat().st_size else ""
    with path.open("a", encoding="utf-8") as f:
        f.write(separator + text)


# pytest options and hooks (wired into backprop_conformance.conformance.plugin).

REPORT_OPTION = "--conformance-report"
BASELINE_OPTION = "--baseline"
UPDATE_OPTION = "--update-baseline"
MARKDOWN_OPTION = "--markdown-summary"

BASELINE_KEY = pytest.StashKey[Report | None]()
OUTCOME_KEY = pytest.StashKey[list[str]]()


def add_options(group: pytest.OptionGroup) -> None:
    """Register the report, baseline and summary options in the suite's option group."""
    group.addoption(REPORT_OPTION, metavar="PATH", default=None, help="write the run's results as JSON (docs/report-schema.md)")
    group.addoption(
        BASELINE_OPTION,
        metavar="PATH",
        default=None,
        help="compare with a stored report: fail when a cell's worst ratio grows beyond "
        f"{baseline_module.FACTOR:g} × max(baseline, {baseline_module.FLOOR:g}) or a passing cell fails",
    )
    group.addoption(
        UPDATE_OPTION,
        action="store_true",
        help="write this run's report to the --baseline PATH instead of failing on the comparison "
        "(only after a passing run; never over a file that is not a report)",
    )
    group.addoption(
        MARKDOWN_OPTION,
        metavar="PATH",
        default=None,
        help="append a Markdown table of the matrix to PATH (e.g. $GITHUB_STEP_SUMMARY)",
    )


def _path(config: pytest.Config, value: str) -> Path:
    """An option's path, relative to the directory pytest was invoked from (not wherever a test chdir'd to)."""
    return Path(config.invocation_params.dir) / value


def configure(config: pytest.Config) -> None:
    """Check the options before any test runs: a bad baseline must not cost a whole run to find out.

    ``--baseline PATH`` alone needs a readable report at PATH. With ``--update-baseline``, PATH may be
    missing (a first baseline), but an existing PATH that is not a report is never overwritten: it
    may be a file given by mistake. Workers of pytest-xdist skip this; the controller has checked.
    """
    if hasattr(config, "workerinput"):
        return
    config.stash[OUTCOME_KEY] = []
    config.stash[BASELINE_KEY] = None
    for option in (REPORT_OPTION, MARKDOWN_OPTION):
        value = config.getoption(option)
        if value is not None and _path(config, value).is_dir():
            raise pytest.UsageError(f"{option} {value}: is a directory; give a file name")
    value = config.getoption(BASELINE_OPTION)
    update = config.getoption(UPDATE_OPTION)
    if value is None:
        if update:
            raise pytest.UsageError(f"{UPDATE_OPTION} writes the file named by {BASELINE_OPTION} PATH; give {BASELINE_OPTION} too")
        return
    path = _path(config, value)
    if update and not path.exists():
        return
    try:
        config.stash[BASELINE_KEY] = read(path)
    except ReportError as exc:
        if update:
            raise pytest.UsageError(
                f"{UPDATE_OPTION}: refusing to overwrite {value}, which is not a usable report: {exc}; "
                "delete it or name another file to write a new baseline"
            ) from None
        raise pytest.UsageError(
            f"{BASELINE_OPTION}: {exc}; to create a baseline, run with {BASELINE_OPTION} {value} {UPDATE_OPTION} (on a passing run)"
        ) from None


def finish(
    session: pytest.Session, stats: Mapping[str, CellStats], backends: Sequence[Backend], cells: Sequence[Cell], profile: str
) -> None:
    """At the end of the run, on the controller: compare with the baseline, write the report, summary and baseline.

    A regression against the baseline turns a passing run into a failed one (exit status 1) by setting
    ``session.exitstatus``, which pytest returns after this hook. With ``--update-baseline`` the
    comparison is still made and shown (it says what the new baseline changes) but does not fail the
    run, and the baseline is written only when the run passed and ran examples: a baseline is a
    known-good state. What was done is kept for :func:`terminal_summary`.
    """
    config = session.config
    if hasattr(config, "workerinput"):
        return
    outcome = config.stash.setdefault(OUTCOME_KEY, [])
    report_value, markdown_value = config.getoption(REPORT_OPTION), config.getoption(MARKDOWN_OPTION)
    baseline_value, update = config.getoption(BASELINE_OPTION), config.getoption(UPDATE_OPTION)
    if report_value is None and markdown_value is None and baseline_value is None:
        return
    command = {
        "executable": sys.executable,
        "argv": list(sys.argv),
        "pytest_args": list(config.invocation_params.args),
        "cwd": str(config.invocation_params.dir),
    }

    def current(status: int, comparison: baseline_module.Comparison | None = None) -> dict[str, Any]:
        return build(stats, backends, cells, profile=profile, command=command, exitstatus=status, comparison=comparison)

    old = config.stash.get(BASELINE_KEY, None)
    comparison = baseline_module.compare(old, parse(current(session.exitstatus), "this run")) if old is not None else None
    if comparison is not None:
        outcome.append(f"compared with baseline {baseline_value}:")
        outcome += [f"  {line}" for line in comparison.summary_lines()]
        if comparison.regressions and not update and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            outcome.append(f"  the run fails: {len(comparison.regressions)} regression(s) against the baseline")
    data = current(session.exitstatus, comparison)

    def save(what: str, done: str, value: str, writer: Callable[[Path], None]) -> None:
        # An output that cannot be written fails a run that passed: CI would otherwise go green without its artifact.
        try:
            writer(_path(config, value))
        except OSError as exc:
            outcome.append(f"ERROR: cannot write the {what} to {value}: {exc.strerror or exc}")
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.USAGE_ERROR
        else:
            outcome.append(f"{what} {done} {value}")

    if report_value is not None:
        save("report", "written to", report_value, lambda path: write(data, path))
    if markdown_value is not None:
        save(
            "Markdown summary", "appended to", markdown_value, lambda path: append_text(markdown(parse(data, "this run"), comparison), path)
        )
    if update:
        if session.exitstatus != pytest.ExitCode.OK:
            outcome.append(f"baseline {baseline_value} NOT updated: the run did not pass (exit status {int(session.exitstatus)})")
        elif not any(s.examples for s in stats.values()):
            outcome.append(f"baseline {baseline_value} NOT updated: the run ran no examples")
        else:
            save("baseline", "updated:" if old is not None else "created:", baseline_value, lambda path: write(data, path))


def terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Print what :func:`finish` compared and wrote, after the matrix."""
    lines = config.stash.get(OUTCOME_KEY, [])
    if not lines:
        return
    terminalreporter.section("conformance report and baseline")
    for line in lines:
        terminalreporter.write_line(line)
