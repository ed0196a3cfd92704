"""Command line: ``python -m backprop_conformance replay CASE.json [--backend NAME ...]`` and ``... plot REPORT.json``.

Replays a reproducer case file (written by a failing ``pytest conformance`` run) against any
adapter, without hypothesis: the exact network and batch, the same verdict, the same message. This is
the command a framework maintainer runs from a bug report. Exit status: 0 when every replay passes,
1 when one fails, 2 for a usage error (unknown backend, unreadable case).

``plot`` draws a run's JSON report (``pytest conformance --conformance-report REPORT.json``) as PNG
files: error/bound ratios against depth, against saturation, and per cell (:mod:`backprop_conformance.conformance.plot`;
needs the ``plot`` extra). Exit status 0, or 2 for an unreadable report or missing matplotlib.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from backprop_conformance.adapters.registry import UnknownAdapter
from backprop_conformance.adapters.selfcheck import AdapterContractError
from backprop_conformance.conformance import cases
from backprop_conformance.conformance.cells import Cell, SelectionError, load_backends
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.conformance.verdict import run_and_judge


def replay(case_path: str, backends: Sequence[str], paths: Sequence[str], dtype: str | None, device: str | None) -> int:
    """Replay one case; print each verdict; return the exit status."""
    try:
        case = cases.read(case_path)
        loaded = load_backends(list(backends) or [case.adapter])
    except (cases.CaseError, UnknownAdapter, SelectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"case {case_path}: {case.problem.describe()}, found in {case.cell.id}")
    status = 0
    for backend in loaded:
        caps = backend.capabilities
        if caps is None or backend.adapter is None:
            print(f"{backend.spec.name}: {backend.unavailable}")
            status = max(status, 2)
            continue
        want_dtype = dtype or case.cell.dtype
        if want_dtype not in caps.dtypes:
            print(f"error: {caps.name} does not support dtype {want_dtype}; it offers {', '.join(caps.dtypes)}", file=sys.stderr)
            return 2
        chosen = list(paths) or ([case.cell.path] if case.cell.path in caps.paths else list(caps.default_paths))
        unknown = [p for p in chosen if p not in caps.paths]
        if unknown:
            print(f"error: {caps.name} has no path {', '.join(unknown)}; it offers {', '.join(caps.paths)}", file=sys.stderr)
            return 2
        problem = case.problem if want_dtype == case.cell.dtype else Problem.rounded(case.problem.network, case.problem.batch, want_dtype)
        for path in chosen:
            cell = Cell(caps.name, path, want_dtype, device or case.cell.device)
            try:
                verdict = run_and_judge(backend.adapter, cell, problem)
            except AdapterContractError as exc:
                print(f"FAIL (adapter contract) {exc}")
                status = max(status, 1)
                continue
            print(("PASS " if verdict.passed else "FAIL ") + verdict.message())
            status = max(status, 0 if verdict.passed else 1)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backprop_conformance", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay", help="replay a reproducer case file against one or more adapters")
    rp.add_argument("case", help="a case file written by a failing run (conformance-cases/*.json)")
    rp.add_argument("--backend", action="append", default=[], help="adapter name or module:Attribute (repeatable); default: the case's own")
    rp.add_argument(
        "--path",
        action="append",
        default=[],
        help="path(s) to replay on; default: the case's path if the backend has it, else its default paths",
    )
    rp.add_argument("--dtype", default=None, help="format to replay in (the case is re-rounded to it); default: the case's")
    rp.add_argument("--device", default=None, help="device; default: the case's")
    pp = sub.add_parser("plot", help="draw a run's JSON report (--conformance-report) as PNG plots")
    pp.add_argument("report", help="a report written by pytest conformance --conformance-report REPORT.json")
    pp.add_argument("--out", default="conformance-plots", help="directory for the PNG files (default: ./conformance-plots)")
    args = parser.parse_args(argv)
    if args.command == "plot":
        from backprop_conformance.conformance.plot import main as plot_main

        return plot_main(args.report, args.out)
    return replay(args.case, args.backend, args.path, args.dtype, args.device)


if __name__ == "__main__":
    sys.exit(main())
