"""Where the time of a ``pytest conformance`` run goes, cell by cell and backend by backend. Prints figures; asserts nothing.

    python -m benchmarks.bench_suite                                  # the default run, as `pytest conformance` runs it
    python -m benchmarks.bench_suite --conformance-backend torch      # any pytest conformance options pass through
    python -m benchmarks.bench_suite --xdist                          # also time `-n 0` against `-n 2` on the thorough profile

How to read it. One line per cell of the property test (``test_gradients``): examples run, examples
per second, and the cell's wall time split into the framework's own gradient calls (``Adapter.compute``: the
adapter's call with the request and output checks every adapter gets), the float64
reference, the error bound and comparison, hypothesis' generation of networks, and "other" (the
hypothesis engine between examples, pytest). Then one line per backend (its cells' totals, and the harness's
milliseconds per example), and the
whole run: its wall time, the same split over every test (contract and fidelity included), and the
harness overhead: everything that is neither the framework nor the reference, as a fraction of the
wall time. The figures are in docs/speed.md.

Each run is a fresh ``python -m pytest conformance`` subprocess (:func:`backprop_conformance.conformance.runner.run_suite`,
fresh hypothesis database), and every figure is read from its JSON report.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from backprop_conformance.conformance.report import TIME_CATEGORIES, CellResult, Report
from backprop_conformance.conformance.runner import SuiteRun, run_suite

COLUMNS = (*TIME_CATEGORIES, "other")


def split(timing: dict[str, float], wall: float) -> dict[str, float]:
    """Seconds per category, with "other" the part of ``wall`` no category accounts for."""
    seconds = {c: timing.get(c, 0.0) for c in TIME_CATEGORIES}
    seconds["other"] = max(wall - sum(seconds.values()), 0.0)
    return seconds


def _shares(seconds: dict[str, float], wall: float) -> str:
    return " ".join(f"{100 * seconds[c] / wall:>9.1f}%" if wall else f"{'-':>10}" for c in COLUMNS)


def cell_table(report: Report) -> list[str]:
    lines = [f"{'cell':<30} {'examples':>8} {'ex/s':>7} {'wall s':>7}  " + " ".join(f"{c:>10}" for c in COLUMNS)]
    for cell in report.cells:
        wall = cell.timing.get("wall", 0.0)
        rate = cell.examples / wall if wall else 0.0
        lines.append(f"{cell.id:<30} {cell.examples:>8} {rate:>7.0f} {wall:>7.2f}  {_shares(split(cell.timing, wall), wall)}")
    return lines


def backend_table(report: Report) -> list[str]:
    """Per backend, the totals of its cells' property tests: examples, wall time, framework time, and the harness's
    time per example (the property tests' wall time less framework and reference, over their examples): the
    harness's own cost, which unlike its share of the wall time does not grow when a framework gets faster."""
    by_backend: dict[str, list[CellResult]] = {}
    for cell in report.cells:
        by_backend.setdefault(cell.backend, []).append(cell)
    lines = [f"{'backend':<16} {'cells':>5} {'examples':>8} {'wall s':>8} {'framework s':>12} {'harness ms/example':>19}"]
    for name, cells in sorted(by_backend.items()):
        wall = sum(c.timing.get("wall", 0.0) for c in cells)
        framework = sum(c.timing.get("framework", 0.0) for c in cells)
        reference = sum(c.timing.get("reference", 0.0) for c in cells)
        examples = sum(c.examples for c in cells)
        per_example = f"{1000 * (wall - framework - reference) / examples:>19.2f}" if examples else f"{'-':>19}"
        lines.append(f"{name:<16} {len(cells):>5} {examples:>8} {wall:>8.1f} {framework:>12.1f} {per_example}")
    return lines


def whole_run(run: SuiteRun) -> list[str]:
    assert run.report is not None
    timing = dict(run.report.timing)
    wall = run.seconds
    seconds = split(timing, wall)
    harness = wall - seconds["framework"] - seconds["reference"]
    fewest = min((c.examples for c in run.report.cells), default=0)
    return [
        f"whole run: {wall:.1f} s wall (exit status {run.returncode}); time in tests {timing.get('tests', 0.0):.1f} s",
        "split of the whole run: " + ", ".join(f"{c} {seconds[c]:.1f} s ({100 * seconds[c] / wall:.0f} %)" for c in COLUMNS),
        f"harness overhead (neither framework nor reference): {harness:.1f} s = {100 * harness / wall:.0f} % of wall time",
        f"fewest examples in a cell: {fewest}",
    ]


def profiled_run(args: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = run_suite(["-q", *args], Path(tmp))
    if run.report is None:
        print(run.explain())
        raise SystemExit(2)
    print("\n".join(["", *cell_table(run.report), "", *backend_table(run.report), "", *whole_run(run)]))


def xdist_comparison(args: list[str]) -> None:
    common = ["-q", "--hypothesis-profile", "thorough", "-k", "test_gradients", *args]
    with tempfile.TemporaryDirectory() as tmp:
        serial = run_suite(["-n", "0", *common], Path(tmp) / "serial")
        parallel = run_suite(["-n", "2", *common], Path(tmp) / "parallel")
    assert serial.report is not None and parallel.report is not None, serial.explain() + parallel.explain()
    print(
        f"\nthorough profile, test_gradients: -n 0 {serial.seconds:.1f} s, -n 2 {parallel.seconds:.1f} s, "
        f"speed-up {serial.seconds / parallel.seconds:.2f}x"
    )
    rows0 = {c.id: c for c in serial.report.cells}
    rows2 = {c.id: c for c in parallel.report.cells}
    # Examples are drawn afresh in each run; what must agree is the cells and their verdicts.
    same = {c: r.status for c, r in rows0.items()} == {c: r.status for c, r in rows2.items()}
    print(f"same cells and statuses in both runs: {same}")
    print(f"{'cell':<30} {'-n 0 examples':>14} {'status':>8} {'worst':>8}   {'-n 2 examples':>14} {'status':>8} {'worst':>8}")
    for cell_id in sorted(set(rows0) | set(rows2)):
        a, b = rows0.get(cell_id), rows2.get(cell_id)
        left = f"{a.examples:>14} {a.status:>8} {a.worst or 0:>8.3g}" if a else f"{'-':>14} {'-':>8} {'-':>8}"
        right = f"{b.examples:>14} {b.status:>8} {b.worst or 0:>8.3g}" if b else f"{'-':>14} {'-':>8} {'-':>8}"
        print(f"{cell_id:<30} {left}   {right}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--xdist", action="store_true", help="also compare -n 0 with -n 2 on the thorough profile (takes minutes)")
    known, rest = parser.parse_known_args()
    profiled_run(rest)
    if known.xdist:
        xdist_comparison(rest)


if __name__ == "__main__":
    sys.exit(main())
