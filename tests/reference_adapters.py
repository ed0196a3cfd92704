"""Adapters built on the suite's own float64 reference, named on the suite's command line as ``tests.reference_adapters:Name``.

:class:`ReferenceAdapter` is correct by construction; its variants are not installed
(:class:`NeedsMissingFramework`), claim its name while being wrong (:class:`ImpostorOfReference`), or
log every hint the suite gives them (:class:`PreparationRecorder`, :class:`EagerRecorder`). This module
imports nothing from the tests' harness, so that the suite's subprocess can import it from the
repository root.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar

import numpy as np

from backprop_conformance.adapters.base import Adapter, AdapterOutput, Capabilities
from backprop_conformance.reference.dtypes import float_format, is_representable, round_to
from backprop_conformance.reference.model import Batch, Gradients, Network
from backprop_conformance.reference.vectorized import backprop

HERE = "tests.reference_adapters"
"""This module's import name in the suite's subprocess, which runs from the repository root."""
MISSING_MODULE = "no_such_framework_for_conformance_tests"


class ReferenceAdapter(Adapter):
    """Correct by construction: the suite's float64 reference gradients, rounded once to the requested format.

    Rounding a float64 result once costs at most half an ulp of the format, well inside the error bound
    of any computation in that format. The adapter refuses inputs that are not values of the format,
    as a framework with a strict typed API would; that makes the replay command's re-rounding
    (``--dtype``) observable.
    """

    name: ClassVar[str] = "reference-as-adapter"
    gradient_factor: ClassVar[float] = 1.0

    def capabilities(self) -> Capabilities:
        return Capabilities(
            name=self.name,
            framework="the suite's own float64 reference",
            version=f"numpy {np.__version__}",
            dtypes=("float64", "float32"),
            paths=("vectorized",),
            default_paths=("vectorized",),
        )

    def _check_inputs(self, dtype: str, arrays: Sequence[np.ndarray]) -> None:
        if not all(is_representable(dtype, a) for a in arrays):
            raise ValueError(f"{self.name}: an input is not a {dtype} value; round it to {dtype} first")

    def load_parameters(self, network: Network, *, dtype: str, device: str = "cpu") -> Network:
        self._check_inputs(dtype, [*network.w.values(), *network.b.values()])
        return network.astype(float_format(dtype).carrier)

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        self._check_inputs(dtype, [*network.w.values(), *network.b.values(), batch.x, batch.y])
        trace = backprop(network, batch)

        def rounded(g: np.ndarray) -> np.ndarray:
            return round_to(dtype, self.gradient_factor * g)

        return AdapterOutput(
            Gradients({l: rounded(g) for l, g in trace.gradients.w.items()}, {l: rounded(g) for l, g in trace.gradients.b.items()}),
            trace.cost,
        )


class NeedsMissingFramework(ReferenceAdapter):
    """A correct adapter whose framework is not installed: the suite must skip it with the reason, never import it."""

    requires = (MISSING_MODULE,)
    name = "needs-missing-framework"


class ImpostorOfReference(ReferenceAdapter):
    """A wrong adapter (every gradient doubled) that declares the same name as :class:`ReferenceAdapter`."""

    gradient_factor = 2.0


class PreparationRecorder(ReferenceAdapter):
    """Correct, with a path that compiles per shape declared *before* an eager one; logs every hint and request.

    The log (``$BACKPROP_CONFORMANCE_TEST_LOG``) shows what the suite told the adapter before its tests
    (:meth:`Adapter.prepare`) and after them (:meth:`Adapter.finish`), and the order in which its cells ran.
    """

    name = "prep"

    def capabilities(self) -> Capabilities:
        return Capabilities(
            name=self.name,
            framework="the suite's own float64 reference",
            version=f"numpy {np.__version__}",
            dtypes=("float64",),
            paths=("compiled", "eager"),
            default_paths=("compiled", "eager"),
            shape_compiled_paths=("compiled",),
        )

    def _log(self, line: str) -> None:
        with open(os.environ["BACKPROP_CONFORMANCE_TEST_LOG"], "a") as log:
            log.write(line + "\n")

    def prepare(self, path: str, dtype: str, device: str, shapes: Sequence[tuple[tuple[int, ...], int]]) -> None:
        self._log(f"prepare {path} {dtype} {device} {len(shapes)}")

    def finish(self) -> None:
        self._log("finish")

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        self._log(f"run {self.name}-{path}")
        return super().run(network, batch, dtype=dtype, path=path, device=device)


class EagerRecorder(PreparationRecorder):
    """A second backend, eager only, named after the first: its cells must run between the first's eager and compiled ones."""

    name = "prep2"

    def capabilities(self) -> Capabilities:
        return replace(super().capabilities(), name=self.name, paths=("eager",), default_paths=("eager",), shape_compiled_paths=())
