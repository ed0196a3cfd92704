"""``backprop-conformance page REPORT... --out site/``: a compatibility page, one static HTML file, for a person to look at.

A matrix's merged report answers "did it pass"; a maintainer also wants to see at a glance which framework, version
and path is exact on which machine. The page is a table: one row per cell (its coordinates and framework version),
one column per machine configuration (operating system, architecture, Python, CPU and numpy's kernels), each square
the cell's status and worst error/bound ratio, coloured by how much of its bound the framework used. A click on a
square opens its evidence: the worst element with both values and the bound, the problems, the case files (copied
beside the page, so that the artifact is whole) and the replay command; known upstream defects link to their issues.

The reports are merged first (:mod:`~backprop_conformance.conformance.merge`, with its refusals), so the page shows
exactly what ``merge`` would give. The page is one file with its style inline and no script: it needs no server and
no network, opens from a CI artifact or a file manager, and a click works by CSS ``:target`` alone. The HTML is a
Jinja2 template (``page.html.j2``, autoescaped: cell ids, problems and paths come from files strangers write); Jinja2
is the ``page`` extra.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backprop_conformance.adapters.dispatch import MACHINE_KEYS, describe
from backprop_conformance.conformance import known_defects, merge
from backprop_conformance.conformance.markdown_summary import headline
from backprop_conformance.conformance.outputs import OutputError, check_locations, write_atomically
from backprop_conformance.conformance.ratios import describe_element, format_ratio
from backprop_conformance.conformance.report import CellResult, Report, ReportError

TEMPLATE = "page.html.j2"
PAGE = "index.html"
CASES = "cases"
"""The directory, beside the page, that holds copies of the case files it links."""

URL = re.compile(r"https?://[^\s)<>\"']+")

COLUMN_PARTS = ("os", "machine", "python")
"""The parts of a cell's configuration that name its column, with the CPU and numpy's kernels (MACHINE_KEYS)."""


@dataclass
class Square:
    """One cell under one configuration: what the square shows, and the evidence its click opens."""

    cell: CellResult
    anchor: str
    colour: str
    ratio: str
    defects: list[known_defects.Defect]
    case_links: list[tuple[str, str | None]]
    problems: list[list[tuple[str, bool]]]
    worst_element: str | None
    configuration: Mapping[str, str]
    dispatch: str


@dataclass
class Row:
    coordinates: str
    backend: str
    framework: str
    squares: dict[str, list[Square]] = field(default_factory=dict)


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    details: tuple[str, ...]


def colour(cell: CellResult) -> str:
    """The square's background: green for a cell that used little of its bound, through yellow to amber at the bound;
    red for a failure, violet for a known defect, grey for a cell that did not finish or did not run."""
    if cell.status == "failed":
        return "hsl(0, 80%, 72%)"
    if cell.status == "known defect":
        return "hsl(275, 55%, 80%)"
    if cell.status != "passed" or cell.worst is None:
        return "hsl(0, 0%, 82%)"
    used = min(max(cell.worst, 0.0), 1.0)
    return f"hsl({130 - 85 * used:.0f}, 65%, {82 - 12 * used:.0f}%)"


def linkified(text: str) -> list[tuple[str, bool]]:
    """``text`` cut into (piece, is a URL) pairs, for the template to escape each piece and link the URLs."""
    pieces: list[tuple[str, bool]] = []
    last = 0
    for match in URL.finditer(text):
        pieces += [(text[last : match.start()], False), (match.group(), True)]
        last = match.end()
    return [*pieces, (text[last:], False)]


def _column(cell: CellResult) -> Column:
    config = cell.configuration
    machine = {k: cell.dispatch[k] for k in MACHINE_KEYS if k in cell.dispatch}
    key = "|".join([*(config.get(p, "?") for p in COLUMN_PARTS), *(f"{k}={v}" for k, v in sorted(machine.items()))])
    title = f"{config.get('os', '?')} {config.get('machine', '?')}, Python {config.get('python', '?')}"
    details = (machine.get("cpu.model", "CPU unknown"), f"numpy BLAS core {machine.get('numpy.blas_core', '?')}")
    return Column(hashlib.sha256(key.encode()).hexdigest()[:10], title, details)


def _case_links(cell: CellResult, out: Path, roots: Sequence[Path]) -> list[tuple[str, str | None]]:
    """Each case file of ``cell`` copied under ``out/cases`` and linked, or shown unlinked when no copy is found."""
    links: list[tuple[str, str | None]] = []
    for name in cell.case_files:
        found = next((root / name for root in roots if (root / name).is_file()), None)
        if found is None:
            links.append((name, None))
            continue
        target = out / CASES / Path(name).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found, target)
        links.append((name, f"{CASES}/{target.name}"))
    return links


def _defects(cell: CellResult, defects: Sequence[known_defects.Defect]) -> list[known_defects.Defect]:
    """The suite's known-defect entries for the cell's backend, version, path and dtype, any test or case (one per issue)."""
    version = cell.configuration.get("version", "")
    found: dict[str, known_defects.Defect] = {}
    for defect in defects:
        if any(defect.matches(test, cell.backend, version, cell.path, cell.dtype) for test in defect.tests):
            found.setdefault(defect.issue + defect.summary, defect)
    return list(found.values())


def build(rep: Report, out: Path, roots: Sequence[Path]) -> dict[str, Any]:
    """What the template shows of ``rep``, a merged report: rows, columns, squares, and the run's headline."""
    defects = known_defects.load()
    rows: dict[tuple[str, str], Row] = {}
    columns: dict[str, Column] = {}
    for i, cell in enumerate(rep.cells):
        column = _column(cell)
        columns.setdefault(column.key, column)
        coordinates = cell.id.split("@", 1)[0]
        framework = f"{cell.configuration.get('framework', '?')} {cell.configuration.get('version', '?')}"
        row = rows.setdefault((coordinates, framework), Row(coordinates, cell.backend, framework))
        square = Square(
            cell=cell,
            anchor=f"cell-{i}",
            colour=colour(cell),
            ratio=format_ratio(cell.worst),
            defects=_defects(cell, defects),
            case_links=_case_links(cell, out, roots),
            problems=[linkified(p) for p in cell.problems],
            worst_element=None if cell.worst_element is None else describe_element(cell.worst_element),
            configuration=cell.configuration,
            dispatch=describe(cell.dispatch),
        )
        row.squares.setdefault(column.key, []).append(square)
    ordered = sorted(rows.values(), key=lambda r: (r.backend, r.framework, r.coordinates))
    return {
        "headline": headline(rep, None).split(" ", 1)[1],  # the words, without the Markdown's emoji (fonts may lack them)
        "verdict": "bad" if rep.counts["failed"] or rep.counts["incomplete"] else "good" if rep.cells else "none",
        "report": rep,
        "columns": list(columns.values()),
        "rows": ordered,
        "squares": [s for r in ordered for squares in r.squares.values() for s in squares],
        "counts": {s: n for s, n in rep.counts.items() if n},
    }


def render(context: Mapping[str, Any]) -> str:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template(TEMPLATE).render(**context)


def main(paths: Sequence[str], out_dir: str) -> int:
    """Write ``out_dir/index.html`` (and the case files it links) for the reports ``paths``, merged.

    Exit status 0; 2 for reports :mod:`~backprop_conformance.conformance.merge` refuses, an output directory that
    cannot be written, or Jinja2 missing.
    """
    try:
        import jinja2  # noqa: F401
    except ImportError:
        print("error: the page needs Jinja2: pip install 'backprop-conformance[page]'", file=sys.stderr)
        return merge.USAGE
    out = Path(out_dir)
    try:
        check_locations({}, {"--out": out})
        reports = merge.read_all([Path(p) for p in paths])
        merged = merge.merge(reports)
    except (merge.MergeError, ReportError, OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return merge.USAGE
    roots = list(dict.fromkeys([Path.cwd(), *(Path(p).resolve().parent for p in paths)]))
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(render(build(merged, out, roots)), out / PAGE)
    print(f"compatibility page written to {out / PAGE} ({len(merged.cells)} cells)")
    return 0
