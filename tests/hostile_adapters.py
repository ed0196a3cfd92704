"""Adapters that misbehave on purpose -- raise, hang, die, wait for Ctrl-C, declare nonsense -- to test what the suite makes of them.

They are named on the suite's command line as ``tests.hostile_adapters:ClassName`` (the suite's
subprocess runs from the repository root). They derive from the fast numpy adapters of
:mod:`tests.mutants` and misbehave only on hypothesis' examples, never on the contract test's fixed
input (:func:`is_contract_input`), so that each fails exactly where it is meant to.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

try:  # this directory's convention (tests/ is on sys.path) ...
    from mutants import CrossEntropyShortcut, ManualBackprop
except ImportError:  # ... and the suite's subprocess, which imports this module as tests.hostile_adapters from the repository root
    from tests.mutants import CrossEntropyShortcut, ManualBackprop

from backprop_conformance.adapters.base import AdapterOutput, Capabilities
from backprop_conformance.conformance.problems import contract_problem
from backprop_conformance.reference.model import Batch, Gradients, Network

HERE = "tests.hostile_adapters"
"""This module's import name in the suite's subprocess."""


def is_contract_input(batch: Batch, dtype: str) -> bool:
    """True for the contract test's fixed input, which the hostile adapters leave alone so that their cells' contracts pass."""
    contract = contract_problem(dtype).batch
    return batch.x.shape == contract.x.shape and bool(np.array_equal(batch.x, contract.x))


class RaisesFromTheThirdExample(ManualBackprop):
    """Correct on its first two examples of each format, then raises on every call, as a framework that breaks on some inputs."""

    name = "hostile-raises"

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        if not is_contract_input(batch, dtype):
            self.calls[dtype] = self.calls.get(dtype, 0) + 1
            if self.calls[dtype] >= 3:
                raise RuntimeError(f"the framework gave up on widths {network.widths}")
        return super().run(network, batch, dtype=dtype, path=path, device=device)


HANG_SECONDS = 300.0
"""How long the hanging adapters sleep: far beyond any limit the checks set, so that only a timeout ends the call."""


class HangsOnAnExample(ManualBackprop):
    """Never returns from a hypothesis example (sleeps :data:`HANG_SECONDS`): a framework call that hangs."""

    name = "hostile-hangs"

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        if not is_contract_input(batch, dtype):
            time.sleep(HANG_SECONDS)
        return super().run(network, batch, dtype=dtype, path=path, device=device)


class DiesOnAnExample(ManualBackprop):
    """Kills its own process (``os._exit``) on a hypothesis example: a framework that segfaults, as pytest-xdist sees it."""

    name = "hostile-dies"

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        if not is_contract_input(batch, dtype):
            os._exit(17)
        return super().run(network, batch, dtype=dtype, path=path, device=device)


MARKER_VARIABLE = "HOSTILE_MARKER"


class WaitsForCtrlC(ManualBackprop):
    """On a hypothesis example, creates the file named by ``$HOSTILE_MARKER`` and waits: the moment a user presses Ctrl-C."""

    name = "hostile-waits"

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        if not is_contract_input(batch, dtype):
            Path(os.environ[MARKER_VARIABLE]).write_text("waiting\n", encoding="utf-8")
            time.sleep(HANG_SECONDS)
        return super().run(network, batch, dtype=dtype, path=path, device=device)


class WrongCostOnly(ManualBackprop):
    """Every gradient right, the cost doubled: a verdict must not count the cost among the gradient elements."""

    name = "hostile-cost-only"

    def cost(self, a_L: np.ndarray, y: np.ndarray) -> float:
        return 2 * super().cost(a_L, y)


class Float64Accumulation(ManualBackprop):
    """Correct, and honest about accumulating float32 sums in float64: it computes in float64 and rounds the results once."""

    name = "hostile-acc64"
    dtypes = ("float32",)

    def capabilities(self) -> Capabilities:
        declared = super().capabilities()
        return Capabilities(
            name=declared.name,
            framework=declared.framework,
            version=declared.version,
            dtypes=declared.dtypes,
            paths=declared.paths,
            default_paths=declared.default_paths,
            accumulation={"float32": "float64"},
        )

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        exact = super().run(network, batch, dtype="float64", path=path, device=device)
        w, b = exact.gradients.w, exact.gradients.b
        return AdapterOutput(
            Gradients({l: g.astype(np.float32) for l, g in w.items()}, {l: g.astype(np.float32) for l, g in b.items()}), exact.cost
        )


CAPABILITIES_VARIABLE = "HOSTILE_CAPABILITIES"


class DeclaresFromEnvironment(CrossEntropyShortcut):
    """A failing adapter (δ^L without σ′) declaring valid capabilities overridden by ``$HOSTILE_CAPABILITIES`` (JSON).

    Failing, so that a declaration slipping through would write case files, named after its name and path.
    """

    def capabilities(self) -> Capabilities:
        fields: dict[str, object] = {
            "name": "hostile-declares",
            "framework": "NumPy hand-written backprop (tests/hostile_adapters.py)",
            "version": np.__version__,
            "dtypes": ("float64", "float32"),
            "paths": ("manual",),
            "default_paths": ("manual",),
        }
        fields.update(json.loads(os.environ.get(CAPABILITIES_VARIABLE, "{}")))
        return Capabilities(**fields)  # type: ignore[arg-type]


class ConstructorRaises(ManualBackprop):
    """A plug-in whose constructor raises (a framework initialised eagerly, a GPU that is not there)."""

    def __init__(self) -> None:
        raise RuntimeError("no accelerator found while initialising the framework")


class CapabilitiesRaise(ManualBackprop):
    """A plug-in whose ``capabilities()`` raises."""

    def capabilities(self) -> Capabilities:
        raise KeyError("version")


class CapabilitiesOfTheWrongType(ManualBackprop):
    """A plug-in whose ``capabilities()`` returns a dict instead of :class:`Capabilities`."""

    def capabilities(self) -> Capabilities:
        return {"name": "wrong-type", "dtypes": ["float64"]}  # type: ignore[return-value]
