"""The adapter contract: how a framework is put on trial.

An adapter builds the page's sigmoid network with a framework's own building blocks, evaluates the
page's cost summed over the batch, and differentiates it with the framework's own machinery. It is a
small class; third parties write one to put their framework through the suite (see
``docs/adapters.md`` and ``examples/``).

Contract, in short:

* Input: a :class:`~backprop_conformance.reference.model.Network` (parameters in page layout, numpy float64 arrays whose
  values are exactly representable in ``dtype``: the suite rounds them first), a
  :class:`~backprop_conformance.reference.model.Batch`, a format name (``"float64"``, ``"float32"``, ``"float16"``,
  ``"bfloat16"``), an execution path and a device, all among the adapter's declared capabilities.
* Output: an :class:`AdapterOutput`: ∂C/∂w^l and ∂C/∂b^l as numpy arrays in page layout, in the
  requested format's carrier dtype (:data:`backprop_conformance.reference.dtypes.FORMATS`; bfloat16 values are carried in
  float32 arrays), the cost, and the forward activations a^l (plus z^l and δ^l where the framework
  can give them) for diagnosis.
* No state between calls: the same input gives the same gradients (in particular, gradients must not
  accumulate from one call into the next).
* Importing the adapter's module must not import its framework; do that inside the methods, so that
  listing adapters never pays for, or fails on, a framework that is not used.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from backprop_conformance.reference.model import Batch, Gradients, Network


@dataclass(frozen=True)
class Capabilities:
    """What an adapter can be asked to do; the suite generates one test cell per (path, dtype).

    Attributes:
        name: the adapter's short name, used in test ids and on the command line ("torch").
        framework: the framework's display name ("PyTorch").
        version: the framework's version string, recorded in reports and reproducers.
        dtypes: format names the adapter supports, from :data:`backprop_conformance.reference.dtypes.FORMATS`.
        paths: every execution path it supports ("eager", "jit", ...).
        default_paths: the paths run when the user does not ask for specific ones; a slow path
            (e.g. ``torch.compile``) is supported but opt-in by leaving it out of this tuple.
        devices: devices it can run on ("cpu", "cuda", ...).
        accumulation: for each dtype, the format its dot products accumulate in (float16 on CPU
            accumulates in float32 in both torch and jax); the error bound needs it.
    """

    name: str
    framework: str
    version: str
    dtypes: tuple[str, ...]
    paths: tuple[str, ...]
    default_paths: tuple[str, ...]
    devices: tuple[str, ...] = ("cpu",)
    accumulation: Mapping[str, str] = field(default_factory=dict)

    def accumulation_of(self, dtype: str) -> str:
        """The accumulation format for ``dtype``: as declared, else the dtype itself."""
        return self.accumulation.get(dtype, dtype)


@dataclass(frozen=True)
class AdapterOutput:
    """What one adapter call returns, keyed by the page's layer number l.

    ``gradients.w[l]`` has shape (n(l), n(l−1)), ``gradients.b[l]`` shape (n(l),), both in the
    requested format's carrier dtype. ``a`` (l = 1..L), ``z`` and ``delta`` (l = 2..L) are per
    example, shape (B, n(l)), or None where the framework cannot expose them.
    """

    gradients: Gradients
    cost: float
    a: Mapping[int, np.ndarray] | None = None
    z: Mapping[int, np.ndarray] | None = None
    delta: Mapping[int, np.ndarray] | None = None


class Adapter(abc.ABC):
    """Base class of every adapter (built-in or third-party).

    Subclasses set :attr:`requires` to the import names of what they need, so that a missing
    framework is reported as a skip with a reason without importing anything, and implement
    :meth:`capabilities`, :meth:`load_parameters` and :meth:`run`.
    """

    requires: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """Declare name, version, dtypes, paths, devices and accumulation formats."""

    @abc.abstractmethod
    def load_parameters(self, network: Network, *, dtype: str, device: str = "cpu") -> Network:
        """Build the framework's model from ``network`` and read its parameters back in page layout.

        The suite checks that this round trip is the identity: a layout transposed on the way in is
        invisible in the shapes of a square layer and would otherwise show only as wrong gradients.
        """

    @abc.abstractmethod
    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        """Compute the gradients of C = Σ_x 1/2 Σ_j (y_j − a^L_j)² with the framework."""
