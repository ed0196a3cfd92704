"""The suite's test items: one per cell (and per fidelity case), known defects as strict xfails, their order and time limit.

Every test function of the suite that takes a ``cell`` is parametrized here over the run's cell table; a backend
that cannot run here stays in the run as one skipped item with the reason, so that a missing framework is visible.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pytest

from backprop_conformance.conformance import fidelity, known_defects
from backprop_conformance.conformance.cells import Backend, Cell
from backprop_conformance.reference.dtypes import MIXED

CONFORMANCE_TESTS = known_defects.CONFORMANCE_TESTS


def item_key(nodeid: str) -> str:
    """``test_gradients[torch-eager-float32]`` from any node id of the suite (clone or installed, any directory)."""
    return nodeid.rsplit("::", 1)[-1]


def item_names(cells: Sequence[Cell]) -> dict[str, tuple[str, str]]:
    """Every test item the cell table makes, by name (:func:`item_key`): its cell's id and its test function.

    Known from the table, not from collection, because under xdist the controller, which merges the results,
    never collects.
    """
    names: dict[str, tuple[str, str]] = {}
    for c in cells:
        names.update({f"{test}[{c.id}]": (c.id, test) for test in CONFORMANCE_TESTS})
        names.update({f"{test}[{c.id}-{case}]": (c.id, test) for test, cases_ in fidelity.FIDELITY_TESTS.items() for case in cases_})
    return names


KnownDefect = Callable[[str, Cell, "str | None"], list[pytest.MarkDecorator]]
"""The strict xfail marks of a test of a cell (and fidelity case), from the run's known defects."""


def parametrize(metafunc: pytest.Metafunc, cells: Sequence[Cell], backends: Sequence[Backend], known_defect: KnownDefect) -> None:
    """Parametrize a test function that takes ``cell`` over ``cells`` (and its fidelity cases); a usage error for any other."""
    name = metafunc.definition.originalname
    arity = 2 if name in fidelity.FIDELITY_TESTS else 1
    skipped = [
        pytest.param(*[None] * arity, id=b.spec.name, marks=pytest.mark.skip(reason=b.unavailable)) for b in backends if b.unavailable
    ]
    if name in fidelity.FIDELITY_TESTS:
        params = [
            pytest.param(cell, case, id=f"{cell.id}-{case}", marks=known_defect(name, cell, case))
            for cell in cells
            if cell.dtype not in MIXED
            for case in fidelity.FIDELITY_TESTS[name]
        ]
        metafunc.parametrize(("cell", "fidelity_case"), params + skipped)
    elif name in CONFORMANCE_TESTS:
        params = [pytest.param(cell, id=cell.id, marks=known_defect(name, cell, None)) for cell in cells]
        metafunc.parametrize("cell", params + skipped)
    else:
        raise pytest.UsageError(f"{name} takes a cell but is neither a conformance test nor listed in conformance.fidelity.FIDELITY_TESTS")


def known_defect_marks(
    defects: Sequence[known_defects.Defect],
    test: str,
    cell: Cell,
    version: str,
    case: str | None,
    configuration: Mapping[str, str] | None = None,
) -> list[pytest.MarkDecorator]:
    """The xfail of the first known-defect entry covering the test, strict unless ``--conformance-builtin-defects`` made
    the entry non-strict; entries limited to dispatch configurations are considered once ``configuration`` is known (as
    each test starts)."""
    defect = known_defects.find(defects, test, cell.backend, version, cell.path, cell.dtype, case, configuration)
    return [pytest.mark.xfail(strict=defect.strict, reason=defect.reason)] if defect else []


def by_backend_compiled_last(
    items: list[pytest.Item],
    names: Mapping[str, tuple[str, str]],
    cells: Sequence[Cell],
    backends: Sequence[Backend],
    compiled: Callable[[Cell], bool],
) -> None:
    """The tests grouped by backend, and the tests of cells whose path compiles per shape (``compiled``) after all others.

    Both orders give the work adapters start ahead of need (:meth:`~backprop_conformance.adapters.base.Adapter.prepare`)
    time to finish on another core while this one runs other backends' tests: JAX compiles its shapes in another
    process, and Keras imports its backends in its worker processes, so their first tests find the work done, or
    nearly. Within a group the order is pytest's: contract, fidelity, then the property, cell by cell.
    """
    by_id = {c.id: c for c in cells}
    position = {b.name: i for i, b in enumerate(backends)}

    def key(item: pytest.Item) -> tuple[bool, int]:
        known = names.get(item_key(item.nodeid))
        if known is None:
            return (False, -1)
        cell = by_id[known[0]]
        return (compiled(cell), position[cell.backend])

    items[:] = sorted(items, key=key)


def add_timeouts(config: pytest.Config, items: Sequence[pytest.Item], names: Mapping[str, tuple[str, str]], timeout: float | None) -> None:
    """The per-test time limit: pytest-timeout's own settings when the user gave any, else ``timeout`` seconds."""
    if not timeout or not config.pluginmanager.hasplugin("timeout"):
        return
    import pytest_timeout

    if pytest_timeout.get_env_settings(config).timeout is not None:
        return
    for item in items:
        if item_key(item.nodeid) in names and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(timeout))
