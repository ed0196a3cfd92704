"""The kill table: run the real suite against every planted bug of ``tests/mutants.py`` and say what caught it.

    python benchmarks/kill_table.py            # one run, as a user's first run (default profile, fresh database)
    python benchmarks/kill_table.py --runs 10  # also count in how many of 10 fresh runs each mutant was caught

Prints a Markdown table: the mutant, its bug, the items that failed (``gradients float64``,
``contract float32``), and the evidence: the worst error/bound ratio of a gradient failure, or the
first line of the contract's message. The correct variants follow, with their worst passing ratio
taken from the suite's own matrix. Each run is one ``pytest conformance`` subprocess with every
adapter of the catalogue, exactly what ``tests/test_mutants.py`` runs.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, so that ``tests.mutants`` imports when run as a script

from tests.mutants import CORRECT, MUTANTS, ManualBackprop, Outcome, SuiteRun, bug, run_suite, worst_ratio

MAX_MESSAGE = 160
"""Characters of a contract message kept in the table."""

CONTRACT_PREFIX = re.compile(r"^(?:[\w.]+\.)?AdapterContractError: adapter '[^']*', path '[^']*', dtype \w+: ")


def _item(outcome: Outcome) -> str:
    """``test_gradients[mut-no-half-manual-float64]`` -> ``gradients float64``."""
    test = outcome.test.split("[", 1)[0].removeprefix("test_")
    return f"{test} {outcome.cell.rsplit('-', 1)[1]}"


def _evidence(failed: list[Outcome]) -> str:
    """The contract's complaint when the contract caught it, else each failing gradient cell's worst ratio."""
    contract = [o for o in failed if o.test.startswith("test_contract[")]
    if contract:
        first = contract[0].message.splitlines()[0] if contract[0].message else "(no message)"
        text = CONTRACT_PREFIX.sub("", first)
        return "contract: " + (text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…")
    parts = []
    for outcome in failed:
        ratio = worst_ratio(outcome.message)
        parts.append(f"{_item(outcome)}: " + (f"ratio {ratio:.3g}" if ratio is not None else outcome.message.splitlines()[0][:MAX_MESSAGE]))
    return "; ".join(parts) or "-"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _matrix_worst(run: SuiteRun, adapter: type[ManualBackprop]) -> str:
    """The worst ratio per dtype from the suite's terminal matrix (``<cell> <examples> <failures> <worst> <median>``)."""
    found = []
    for dtype in adapter.dtypes:
        match = re.search(rf"^{re.escape(adapter.name)}-\w+-{dtype}\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)$", run.output, re.MULTILINE)
        if match:
            found.append(f"{dtype}: worst {match.group(3)} over {match.group(1)} examples")
    return "; ".join(found) or "(not in the matrix)"


def table(runs: list[SuiteRun]) -> str:
    first = runs[0]
    counted = len(runs) > 1
    head = "| mutant | bug | caught by | evidence |" + (" caught in fresh runs |" if counted else "")
    rule = "|---|---|---|---|" + ("---|" if counted else "")
    lines = [head, rule]
    for mutant in MUTANTS:
        failed = [o for o in first.of(mutant) if o.failed]
        caught = ", ".join(_item(o) for o in failed) or "**nothing: not caught**"
        evidence = _evidence(failed)
        row = f"| `{mutant.__name__}` | {_cell(bug(mutant))} | {caught} | {_cell(evidence)} |"
        if counted:
            kills = sum(any(o.failed for o in run.of(mutant)) for run in runs)
            row += f" {kills}/{len(runs)} |"
        lines.append(row)
    lines += ["", "| correct variant | how it rounds differently | result | worst ratio |", "|---|---|---|---|"]
    for variant in CORRECT:
        outcomes = [o for run in runs for o in run.of(variant)]
        result = "passed" if outcomes and all(o.outcome == "passed" for o in outcomes) else "**FAILED**"
        if counted:
            result += f" in {len(runs)}/{len(runs)} runs" if result == "passed" else ""
        how = _cell(bug(variant).removeprefix("Correct: "))
        lines.append(f"| `{variant.__name__}` | {how} | {result} | {_matrix_worst(first, variant)} |")
    seconds = ", ".join(f"{run.seconds:.0f}" for run in runs)
    lines += ["", f"{len(MUTANTS)} mutants, {len(CORRECT)} correct variants; wall time per run (s): {seconds}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="independent fresh runs of the suite (default 1)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    with tempfile.TemporaryDirectory(prefix="kill-table-") as tmp:
        runs = [run_suite((*CORRECT, *MUTANTS), Path(tmp) / f"run{i}") for i in range(args.runs)]
    print(table(runs))
    missed = [m.__name__ for m in MUTANTS if not all(any(o.failed for o in run.of(m)) for run in runs)]
    wrong = [v.__name__ for v in CORRECT if not all(o.outcome == "passed" for run in runs for o in run.of(v))]
    return 1 if missed or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
