"""Adapters that declare dispatch levels, for ``tests/test_dispatch.py``: a level's environment selects their kernels.

Each is the numpy example adapter with one level-dependent code path, so that the suite's handling of levels can be
seen without a framework: the environment variable :data:`VARIABLE` is what a level sets before the adapter's worker
imports anything, and :meth:`dispatch` reports the value the process started with, as a framework reports the
configuration it picked.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from backprop_conformance.adapters.base import AdapterOutput, Capabilities
from backprop_conformance.adapters.dispatch import Level
from backprop_conformance.adapters.example_numpy import NumpyAdapter
from backprop_conformance.reference.model import Batch, Gradients, Network

VARIABLE = "BACKPROP_CONFORMANCE_TEST_KERNEL"
KEY = "numpy-example.kernel"
STARTED_WITH = os.environ.get(VARIABLE, "plain")
"""The kernel this process was started with: read once, at import, as frameworks read their dispatch variables."""

LEVELS = tuple(Level(f"kernel-{name}", {VARIABLE: name}, {KEY: name}, f"the {name} kernel") for name in ("plain", "wide"))


class Levelled(NumpyAdapter):
    """Correct at every level; its ``wide`` level is the one a known-defect entry will name."""

    def capabilities(self) -> Capabilities:
        caps = super().capabilities()
        return Capabilities(
            name="levelled",
            framework=caps.framework,
            version=caps.version,
            dtypes=("float64",),
            paths=caps.paths,
            default_paths=caps.default_paths,
            accumulation={},
            levels={"manual": LEVELS},
        )

    def dispatch(self, path: str) -> Mapping[str, str]:
        return {KEY: STARTED_WITH}


class WideKernelBug(Levelled):
    """Wrong only when started with the ``wide`` kernel: ∂C/∂b^L doubled, the kind of bug one CPU's kernels have."""

    def capabilities(self) -> Capabilities:
        return dataclasses.replace(super().capabilities(), name="wide-kernel-bug")

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        output = super().run(network, batch, dtype=dtype, path=path, device=device)
        if STARTED_WITH != "wide":
            return output
        L = network.depth
        b = {l: (2 * g if l == L else g) for l, g in output.gradients.b.items()}
        return AdapterOutput(Gradients(dict(output.gradients.w), b), output.cost, output.a, output.z, output.delta)
