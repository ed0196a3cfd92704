"""Where the time of a ``pytest conformance`` run goes, cell by cell. Prints figures; asserts nothing.

    python benchmarks/bench_suite.py                      # the default run, as `pytest conformance` runs it
    python benchmarks/bench_suite.py --backend torch      # any pytest conformance options pass through
    python benchmarks/bench_suite.py --xdist              # also time `-n 0` against `-n 2` on the thorough profile

How to read it. One line per cell of the property test (``test_gradients``): examples run, examples
per second, and the cell's wall time split into the framework's own gradient calls, the float64
reference, the error bound and comparison, hypothesis' generation of networks, and "other" (the
hypothesis engine between examples, pytest). Then the whole run: its wall time, the same split over
every test (contract and fidelity included), and the harness overhead: everything that is neither
the framework nor the reference, as a fraction of the wall time. The targets (README, "Speed"):
whole default run ≤ 60 s with ≥ 100 examples per cell, harness overhead ≤ 30 %, ``-n 2`` ≥ 1.7×
faster than ``-n 0`` on the thorough profile with the same results.

The run happens in this process (``pytest.main``), so that the plugin's timers can be read directly;
``--xdist`` runs its two timed runs as subprocesses, each on a fresh interpreter.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backprop_conformance.conformance.plugin import SESSION_TIME_KEY, STATS_KEY  # noqa: E402
from backprop_conformance.conformance.stats import CellStats  # noqa: E402
from backprop_conformance.conformance.timing import CATEGORIES  # noqa: E402


class Capture:
    """A pytest plugin that keeps the session's statistics when the run ends."""

    stats: dict[str, CellStats]
    session: CellStats

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.stats = session.config.stash.get(STATS_KEY, {})
        self.session = session.config.stash.get(SESSION_TIME_KEY, CellStats())


def split(stats: CellStats) -> tuple[dict[str, float], float]:
    """The category shares of a wall time (with "other" the unaccounted rest), and that wall time."""
    seconds = {c: stats.seconds.get(c, 0.0) for c in CATEGORIES}
    seconds["other"] = max(stats.wall - sum(seconds.values()), 0.0)
    return seconds, stats.wall


def profiled_run(args: list[str]) -> None:
    capture = Capture()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        code = pytest.main(["conformance", "-q", "-p", "no:cacheprovider", "--case-dir", tmp, *args], plugins=[capture])
        wall = time.perf_counter() - start
    columns = [*CATEGORIES, "other"]
    print(f"\n{'cell':<28} {'examples':>8} {'ex/s':>7} {'wall s':>7}  " + " ".join(f"{c:>10}" for c in columns))
    for cell_id in sorted(capture.stats):
        s = capture.stats[cell_id]
        seconds, cell_wall = split(s)
        shares = " ".join(f"{100 * seconds[c] / cell_wall:>9.1f}%" if cell_wall else f"{'-':>10}" for c in columns)
        print(f"{cell_id:<28} {s.examples:>8} {s.examples / cell_wall if cell_wall else 0:>7.0f} {cell_wall:>7.2f}  {shares}")
    # Whole run: the framework's share includes importing it; "other" is everything unaccounted for
    # (pytest's collection and reporting, the hypothesis engine, the suite's own imports).
    seconds = {c: capture.session.seconds.get(c, 0.0) for c in CATEGORIES}
    seconds["other"] = max(wall - sum(seconds.values()), 0.0)
    print(f"\nwhole run: {wall:.1f} s wall (pytest exit status {int(code)}); time in tests {capture.session.wall:.1f} s")
    print("split of the whole run: " + ", ".join(f"{c} {seconds[c]:.1f} s ({100 * seconds[c] / wall:.0f} %)" for c in columns))
    harness = wall - seconds["framework"] - seconds["reference"]
    print(f"harness overhead (neither framework nor reference): {harness:.1f} s = {100 * harness / wall:.0f} % of wall time")
    min_examples = min((s.examples for s in capture.stats.values()), default=0)
    print(f"fewest examples in a cell: {min_examples}")


def timed_subprocess(args: list[str]) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, HYPOTHESIS_STORAGE_DIRECTORY=tmp)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "conformance", "-q", "-p", "no:cacheprovider", "--case-dir", tmp, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        return time.perf_counter() - start, done.stdout


def matrix_rows(output: str) -> dict[str, tuple[int, int, str]]:
    """cell -> (examples, failures, worst ratio) from the terminal matrix."""
    rows = re.findall(r"^(\S+-\S+)\s+(\d+)\s+(\d+)\s+(\S+)\s+\S+$", output, re.MULTILINE)
    return {cell: (int(examples), int(failures), worst) for cell, examples, failures, worst in rows}


def xdist_comparison(args: list[str]) -> None:
    common = ["--hypothesis-profile", "thorough", "-k", "test_gradients", *args]
    serial, out0 = timed_subprocess(["-n", "0", *common])
    parallel, out2 = timed_subprocess(["-n", "2", *common])
    rows0, rows2 = matrix_rows(out0), matrix_rows(out2)
    print(f"\nthorough profile, test_gradients: -n 0 {serial:.1f} s, -n 2 {parallel:.1f} s, speed-up {serial / parallel:.2f}x")
    # Examples are drawn afresh in each run, so counts can differ by a few (shrinking, target phase);
    # what must agree is the cells and their verdicts.
    same = {c: r[1] for c, r in rows0.items()} == {c: r[1] for c, r in rows2.items()}
    print(f"same cells and failure counts in both runs: {same}")
    print(f"{'cell':<28} {'-n 0 examples':>14} {'failures':>9} {'worst':>8}   {'-n 2 examples':>14} {'failures':>9} {'worst':>8}")
    for cell in sorted(set(rows0) | set(rows2)):
        a, b = rows0.get(cell, ("-", "-", "-")), rows2.get(cell, ("-", "-", "-"))
        print(f"{cell:<28} {a[0]:>14} {a[1]:>9} {a[2]:>8}   {b[0]:>14} {b[1]:>9} {b[2]:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--xdist", action="store_true", help="also compare -n 0 with -n 2 on the thorough profile (takes minutes)")
    known, rest = parser.parse_known_args()
    profiled_run(rest)
    if known.xdist:
        xdist_comparison(rest)


if __name__ == "__main__":
    main()
