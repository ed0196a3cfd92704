"""A fidelity test's cell as a case file, so that ``replay`` and ``bisect`` can judge it like a failure's.

The fidelity tier writes no case files: its problems are not drawn but fixed, one per test, case and format
(:mod:`~backprop_conformance.conformance.fidelity`), and its known defects are expected failures. The question a
defect raises is still "since which release?", which ``bisect`` answers by replaying a case file in each version's
environment. A fidelity case file is an ordinary case file (the exact network and batch, the cell) that also names
the fidelity test and case, so that replay judges it with that test's exactness bound
(:func:`~backprop_conformance.conformance.fidelity.judge`) instead of the conformance bound. Because the problem is
fixed, the file is made from the test id alone -- ``test_sigmoid_prime_fidelity[jax-jit-float64-saturated]``, as a
run prints it and the known-defect entries describe it -- with no run of the framework here: the environment that
bisects need not have the framework at all.
"""

from __future__ import annotations

import re
from pathlib import Path

from backprop_conformance.adapters.registry import known_specs
from backprop_conformance.conformance import cases
from backprop_conformance.conformance.cells import Cell
from backprop_conformance.conformance.fidelity import FIDELITY_TESTS, problem_of
from backprop_conformance.reference.dtypes import FORMATS


class FidelityIdError(ValueError):
    """A fidelity test id that does not name a test, a case and a cell; the message says what is allowed."""


def parse(test_id: str) -> tuple[str, str, Cell]:
    """The test, the fidelity case and the cell of a fidelity test id.

    The cell id is read as backend, path and format. Names may hold hyphens (``numpy-example``, ``per-example``), so
    the backend is the longest built-in or installed adapter name that starts the id, the path what follows it; for
    an adapter known by no name (``module:Attribute``) the path is the one part before the format and the backend the
    rest, as for the suite's own example (``numpy-example-manual-float64``). Only cells on the CPU at the native
    dispatch level are read (nothing may follow the format but the case).
    """
    shape = "TEST[BACKEND-PATH-FORMAT-CASE], e.g. test_sigmoid_prime_fidelity[jax-jit-float64-saturated]"
    match = re.fullmatch(r"(\w+)\[([^\]]+)\]", test_id)
    if match is None:
        raise FidelityIdError(f"--fidelity {test_id!r} is not a fidelity test id; give {shape}")
    test, inner = match.groups()
    if test not in FIDELITY_TESTS:
        raise FidelityIdError(f"--fidelity {test_id!r}: {test!r} is not a fidelity test; the suite has {', '.join(FIDELITY_TESTS)}")
    case = next((c for c in sorted(FIDELITY_TESTS[test], key=len, reverse=True) if inner.endswith(f"-{c}")), None)
    if case is None:
        raise FidelityIdError(f"--fidelity {test_id!r}: the id must end with one of {test}'s cases: {', '.join(FIDELITY_TESTS[test])}")
    cell_id = inner[: -len(case) - 1]
    parts = cell_id.split("-")
    formats = [i for i, part in enumerate(parts) if part in FORMATS and i >= 2]
    if not formats:
        raise FidelityIdError(f"--fidelity {test_id!r}: the cell {cell_id!r} names none of the formats {', '.join(FORMATS)}; give {shape}")
    at = formats[0]
    if at != len(parts) - 1:
        raise FidelityIdError(
            f"--fidelity {test_id!r}: {'-'.join(parts[at + 1 :])!r} follows the format; bisect --fidelity takes cells on the CPU at the "
            f"native dispatch level ({shape})"
        )
    names = [name for name in known_specs() if cell_id.startswith(f"{name}-") and len(name.split("-")) < at]
    backend = max(names, key=len, default="-".join(parts[: at - 1]))
    path = cell_id[len(backend) + 1 : -len(parts[at]) - 1]
    return test, case, Cell(backend, path, parts[at])


def write(test_id: str, directory: Path) -> Path:
    """Write the case file of ``test_id`` in ``directory`` and return its path (named as the run names case files)."""
    test, case, cell = parse(test_id)
    found = cases.Case(
        problem_of(test, case, cell.dtype),
        cell,
        cell.backend,
        {},
        f"{test_id}: the fidelity test's fixed problem, written from the suite's tables (no framework was run)",
        kind="fixed",
        fidelity=(test, case),
    )
    return cases.write(found, directory)
