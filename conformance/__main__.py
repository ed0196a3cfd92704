"""``python -m backprop_conformance`` commands: ``replay``, ``plot``, ``merge``, ``page``, ``bisect`` and ``accumulation``.

``replay`` replays a reproducer case file (written by a failing run) against any adapter, without
hypothesis (:mod:`~backprop_conformance.conformance.replay`). Exit status: 0 when every replay passes, 1
when one fails, 2 for a usage error (unknown backend, unreadable or malformed case, an adapter the file
names that is not built in or installed).

``plot`` draws a run's JSON report as PNG files: error/bound ratios against depth, against saturation,
and per cell (:mod:`~backprop_conformance.conformance.plot`; needs the ``plot`` extra). Exit status 0, or
2 for an unreadable report or missing matplotlib.

``accumulation`` measures what an adapter's framework accumulates its sums in, the evidence for its declared
accumulation (:mod:`~backprop_conformance.conformance.accumulation_probe`). Exit status 0, or 2 for a backend
that cannot be loaded.

``merge`` joins the reports of a CI matrix's jobs and shards into one report and one verdict
(:mod:`~backprop_conformance.conformance.merge`). Exit status 0, 1 when a merged cell failed or regressed against
``--baseline``, 2 for reports it refuses (the message names the file).

``bisect`` replays a case file against each requested version of its framework, each in a cached virtual environment
(:mod:`~backprop_conformance.conformance.version_bisect`), and names the versions where the verdict changes. Exit
status 0, or 2 for a request it cannot make.

``page`` writes the compatibility page of one or more reports, merged: a static HTML table of cells by configuration
(:mod:`~backprop_conformance.conformance.page`; needs the ``page`` extra). Exit status 0, or 2 as ``merge``.

Ctrl-C ends any of them with exit status 130 and one line, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from backprop_conformance.conformance.version_bisect import DEFAULT_MAX_DOWNLOAD_MB

INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backprop_conformance", description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay", help="replay a reproducer case file against one or more adapters")
    rp.add_argument("case", help="a case file written by a failing run (conformance-cases/*.json)")
    rp.add_argument(
        "--backend",
        action="append",
        default=[],
        help="adapter name or module:Attribute (repeatable); default: the case's own, if it is built in or an installed plug-in",
    )
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
    mp = sub.add_parser("merge", help="merge the reports of a CI matrix's jobs and shards into one report")
    mp.add_argument("reports", nargs="+", metavar="REPORT", help="reports written with --conformance-report (one per job or shard)")
    mp.add_argument("--out", required=True, help="the merged report to write")
    mp.add_argument("--baseline", default=None, help="compare the merged report with this baseline report (exit status 1 on a regression)")
    mp.add_argument("--markdown", default=None, help="append a Markdown summary of the merged report to this file ($GITHUB_STEP_SUMMARY)")
    gp = sub.add_parser("page", help="write a static HTML compatibility page of one or more reports")
    gp.add_argument("reports", nargs="+", metavar="REPORT", help="reports (a run's, a merged one, or a matrix's to merge)")
    gp.add_argument(
        "--out", default="conformance-page", help="directory for index.html and the case files it links (default: ./conformance-page)"
    )
    bp = sub.add_parser("bisect", help="replay a case file against versions of its framework, each in its own virtual environment")
    bp.add_argument("case", nargs="?", default=None, help="a case file written by a failing run (conformance-cases/*.json)")
    bp.add_argument(
        "--fidelity",
        default=None,
        metavar="TEST_ID",
        help="bisect a fidelity test's cell instead of a case file: test_sigmoid_prime_fidelity[jax-jit-float64-saturated]",
    )
    bp.add_argument("--versions", nargs="+", required=True, metavar="VERSION", help="versions of the framework to try (any order)")
    bp.add_argument("--package", default=None, help="distribution to install at each version; default: the built-in backend's framework")
    bp.add_argument("--backend", action="append", default=[], help="adapter to replay with (as for replay); default: the case's own")
    bp.add_argument("--index-url", default=None, help="package index to install from (default: pip's configuration, e.g. PyPI)")
    bp.add_argument("--find-links", action="append", default=[], metavar="DIR_OR_URL", help="extra place for pip to find wheels")
    bp.add_argument("--cache-dir", default=None, help="where the environments are kept (default: the suite's cache directory/bisect)")
    bp.add_argument(
        "--max-download-mb",
        type=float,
        default=DEFAULT_MAX_DOWNLOAD_MB,
        help=f"refuse a version whose download would exceed this many MB (default {DEFAULT_MAX_DOWNLOAD_MB:g})",
    )
    sub.add_parser("accumulation", help="measure what an adapter's framework accumulates its sums in", add_help=False)
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["accumulation"]:
        from backprop_conformance.conformance.accumulation_probe import main as accumulation_main

        try:
            return accumulation_main(arguments[1:])
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return INTERRUPTED
    args = parser.parse_args(arguments)
    try:
        if args.command == "plot":
            from backprop_conformance.conformance.plot import main as plot_main

            return plot_main(args.report, args.out)
        if args.command == "merge":
            from backprop_conformance.conformance.merge import main as merge_main

            return merge_main(args.reports, args.out, args.baseline, args.markdown)
        if args.command == "bisect":
            from backprop_conformance.conformance.version_bisect import main as bisect_main

            return bisect_main(
                args.case,
                args.fidelity,
                args.versions,
                args.package,
                args.backend,
                args.index_url,
                args.find_links,
                args.cache_dir,
                args.max_download_mb,
            )
        if args.command == "page":
            from backprop_conformance.conformance.page import main as page_main

            return page_main(args.reports, args.out)
        from backprop_conformance.conformance.replay import replay

        return replay(args.case, args.backend, args.path, args.dtype, args.device, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
