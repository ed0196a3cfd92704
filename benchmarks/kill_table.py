"""The kill table: run the real suite against every planted bug of ``tests/mutants.py`` and say what caught it.

    python -m benchmarks.kill_table            # one run, as a user's first run (default profile, fresh database)
    python -m benchmarks.kill_table --runs 10  # also count in how many of 10 fresh runs each mutant was caught

Run from the repository root (``-m`` puts it on the import path, so ``tests.mutants`` imports without any
path manipulation). Prints a Markdown table: the mutant, its bug, the items that failed (``gradients
float64``, ``contract float32``), and the evidence: the worst element's error/bound ratio from the run's
JSON report, or the first line of the contract's message. The correct variants follow, with their worst
passing ratio from the same report. Each run is one ``pytest conformance`` subprocess with every adapter
of the catalogue (:func:`backprop_conformance.conformance.runner.run_suite`), exactly what
``tests/test_mutants.py`` runs. The training-loop bugs planted in torch's, JAX's and TensorFlow's training-loop paths
(``tests/training_mutants.py``: accumulation, per-example gradients, rematerialization, the layer scan) run in the same
subprocess and follow in a table of their own, with the words of the message that name each (the accumulation or
layer diagnosis, the first divergence, or the contract's complaint).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from backprop_conformance.conformance.runner import Outcome, SuiteRun, run_suite
from tests import training_mutants
from tests.mutants import CONFORMANCE_ONLY, CORRECT, MUTANTS, PATH, ManualBackprop, backend_name, bug, cells

MAX_MESSAGE = 160
"""Characters of a contract message kept in the table."""

CONTRACT_PREFIX = re.compile(r"^(?:[\w.]+\.)?AdapterContractError: adapter '[^']*', path '[^']*', dtype \w+: ")


def _item(outcome: Outcome, path: str = PATH) -> str:
    """``test_gradients[mut-no-half-manual-float64]`` -> ``gradients float64`` (``gradients mixed-bfloat16`` for a policy);
    ``path`` is the cell's path (a training-loop mutant's is its own)."""
    test = outcome.test.split("[", 1)[0].removeprefix("test_")
    return f"{test} {outcome.cell.split(f'-{path}-', 1)[1]}"


def _conformance_items(run: SuiteRun, adapter: type[ManualBackprop] | type[training_mutants.TrainingMutant]) -> list[Outcome]:
    ids = training_mutants.cells(adapter) if issubclass(adapter, training_mutants.TrainingMutant) else cells(adapter)  # type: ignore[arg-type]
    return [o for o in run.items(ids) if o.test.startswith(("test_contract[", "test_gradients["))]


def _naming(failed: list[Outcome]) -> str:
    """The line of the failures' messages that names the bug: the accumulation or layer diagnosis, the contract's
    complaint, else the first divergence (a remat bug's: none, the error arises in the gradient step), else the first line."""
    contract = "gradients must not accumulate"
    lines = [line.strip() for outcome in failed for line in outcome.message.splitlines()]
    for line in lines:
        if contract in line:
            return _trimmed("contract: " + line[line.index(contract) :])
        if line.startswith(("accumulation: ", "layers: ")):
            return _trimmed(line.split(": ", 1)[1])
    divergence = next((line for line in lines if line.startswith("first divergence: ")), None)
    if divergence is not None:
        return _trimmed(divergence)
    return failed[0].message.splitlines()[0][:MAX_MESSAGE] if failed and failed[0].message else "-"


def _trimmed(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _evidence(run: SuiteRun, failed: list[Outcome]) -> str:
    """The contract's complaint when the contract caught it, else each failing gradient cell's worst ratio (from the report)."""
    contract = [o for o in failed if o.test.startswith("test_contract[")]
    if contract:
        first = contract[0].message.splitlines()[0] if contract[0].message else "(no message)"
        text = CONTRACT_PREFIX.sub("", first)
        return "contract: " + (text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…")
    parts = []
    for outcome in failed:
        cell = run.report.cell(outcome.cell) if run.report is not None else None
        element = cell.worst_element if cell is not None else None
        parts.append(
            f"{_item(outcome)}: " + (f"ratio {element['ratio']:.3g}" if element else outcome.message.splitlines()[0][:MAX_MESSAGE])
        )
    return "; ".join(parts) or "-"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _worst(run: SuiteRun, adapter: type[ManualBackprop]) -> str:
    """The worst ratio per cell of a correct variant, from the run's report."""
    found = []
    for cell_id in cells(adapter):
        cell = run.report.cell(cell_id) if run.report is not None else None
        if cell is not None and cell.worst is not None:
            found.append(f"{cell.dtype}: worst {cell.worst:.3g} over {cell.examples} examples")
    return "; ".join(found) or "(not in the report)"


def table(runs: list[SuiteRun]) -> str:
    first = runs[0]
    counted = len(runs) > 1
    head = "| mutant | bug | caught by | evidence |" + (" caught in fresh runs |" if counted else "")
    rule = "|---|---|---|---|" + ("---|" if counted else "")
    lines = [head, rule]
    for mutant in MUTANTS:
        failed = [o for o in _conformance_items(first, mutant) if o.failed]
        caught = ", ".join(_item(o) for o in failed) or "**nothing: not caught**"
        row = f"| `{mutant.__name__}` | {_cell(bug(mutant))} | {caught} | {_cell(_evidence(first, failed))} |"
        if counted:
            kills = sum(any(o.failed for o in _conformance_items(run, mutant)) for run in runs)
            row += f" {kills}/{len(runs)} |"
        lines.append(row)
    lines += ["", "| training-loop mutant | path | bug | caught by | named as |", "|---|---|---|---|---|"]
    for mutant in training_mutants.MUTANTS:
        failed = [o for o in _conformance_items(first, mutant) if o.failed]
        caught = ", ".join(_item(o, mutant.path) for o in failed) or "**nothing: not caught**"
        named = _naming(failed) if failed else "-"
        mark = "" if mutant.bug in " ".join(o.message for o in failed) else " **(not named)**"
        lines.append(f"| `{mutant.__name__}` | {mutant.path} | {_cell(bug(mutant))} | {caught} | {_cell(named)}{mark} |")
    lines += ["", "| correct variant | how it rounds differently | result | worst ratio |", "|---|---|---|---|"]
    for variant in CORRECT:
        outcomes = [o for run in runs for o in _conformance_items(run, variant)]
        result = "passed" if outcomes and all(o.outcome == "passed" for o in outcomes) else "**FAILED**"
        if counted and result == "passed":
            result += f" in {len(runs)}/{len(runs)} runs"
        how = _cell(bug(variant).removeprefix("Correct: "))
        lines.append(f"| `{variant.__name__}` | {how} | {result} | {_worst(first, variant)} |")
    seconds = ", ".join(f"{run.seconds:.0f}" for run in runs)
    lines += [
        "",
        f"{len(MUTANTS)} mutants, {len(training_mutants.MUTANTS)} training-loop mutants, {len(CORRECT)} correct variants; "
        f"wall time per run (s): {seconds}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="independent fresh runs of the suite (default 1)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    backends = [arg for adapter in (*CORRECT, *MUTANTS) for arg in ("--conformance-backend", backend_name(adapter))]
    backends += [arg for mutant in training_mutants.MUTANTS for arg in ("--conformance-backend", training_mutants.backend_name(mutant))]
    with tempfile.TemporaryDirectory(prefix="kill-table-") as tmp:
        runs = [run_suite([*backends, *CONFORMANCE_ONLY], Path(tmp) / f"run{i}") for i in range(args.runs)]
    print(table(runs))
    missed = [
        m.__name__
        for m in (*MUTANTS, *training_mutants.MUTANTS)
        if not all(any(o.failed for o in _conformance_items(run, m)) for run in runs)
    ]
    wrong = [v.__name__ for v in CORRECT if not all(o.outcome == "passed" for run in runs for o in _conformance_items(run, v))]
    return 1 if missed or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
