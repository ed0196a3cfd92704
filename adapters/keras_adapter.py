"""The built-in Keras 3 adapter: a ``keras.Sequential`` of ``Dense(activation="sigmoid")`` layers, on each Keras backend.

The network is what a Keras user writes: ``keras.Sequential([keras.Input((n(1),)), Dense(n(2), activation="sigmoid"),
..., Dense(n(L), activation="sigmoid")])``, every layer with ``dtype`` set to the format under test. A Dense kernel has
shape (n(l−1), n(l)), the transpose of the page's w^l, so parameters are transposed on the way in and out (the
suite's layout round trip checks it). The cost is the page's C = ½ Σ (y − a^L)², summed over the batch and the
outputs, written with ``keras.ops`` as a user would write a custom loss.

**Paths are the Keras backends**: ``torch``, ``tensorflow`` and ``jax``; the first two are default paths where
installed, ``jax`` is opt-in (:data:`DEFAULT_PATHS`). Each backend also has an opt-in loss-scaling path,
``torch-loss-scale`` and so on (:data:`LOSS_SCALED_PATHS`): the same step on the cost scaled by
``keras.optimizers.LossScaleOptimizer``, whose unscaled gradients are returned. Each runs the training step the way ``model.fit`` runs it by
default on a CPU with that backend: torch's autograd eagerly, TensorFlow's ``tf.GradientTape`` inside a
``tf.function`` (Keras enables XLA only where there is an accelerator), JAX's ``jax.value_and_grad`` of
``model.stateless_call`` under ``jax.jit``. The a^l come from the same forward pass as
the gradients: the step differentiates a functional view of the model's own layers,
``keras.Model(model.inputs, [layer.output for layer in model.layers])``, whose last output is the model's.
``Dense(activation="sigmoid")`` applies the sigmoid inside the layer, so z^l and δ^l are not observable, and the
adapter returns a^l only.

**How one run covers every backend.** Keras fixes its backend when it is imported (``KERAS_BACKEND``), once per
process. :class:`KerasAdapter` therefore runs each backend in a worker process of its own
(:mod:`backprop_conformance.adapters.worker`), started with ``KERAS_BACKEND`` set to the path on the first request
for that path and reused for the rest of the run; the worker hosts
:class:`~backprop_conformance.adapters.keras_in_process.KerasInProcess`, which runs Keras on whatever backend its
process imported. So one ``pytest conformance`` covers all three backends, importing this
module imports nothing (not even Keras: versions come from package metadata), and a run that does not select a
backend never starts its worker (nor pays for importing TensorFlow). The JAX worker also gets
``JAX_ENABLE_X64=1``, which JAX needs for float64 at all (without it Keras silently stores a float64 Dense's
variables in float32).

Known upstream defect, shown by this suite: on the torch backend Keras' ``result_type`` maps float64 to float32,
so a ``Dense(dtype="float64")`` does its matrix product in float32 (keras-team/keras#23704); the
``keras-torch-float64`` cell is a strict known-defect xfail that still prints its verdict.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import numpy as np

from backprop_conformance.adapters import worker as workers
from backprop_conformance.adapters.ahead import Ahead
from backprop_conformance.adapters.base import Adapter, AdapterContractError, AdapterOutput, Capabilities, RequestError
from backprop_conformance.adapters.dispatch import (
    Level,
    aten_levels,
    onednn_levels,
    tensorflow_configuration,
    torch_configuration,
    xla_configuration,
    xla_levels,
)
from backprop_conformance.reference.mixed_precision import MixedPolicy
from backprop_conformance.reference.model import Batch, Network

DTYPES: tuple[str, ...] = ("float64", "float32", "float16", "bfloat16")

BACKENDS: dict[str, str] = {"torch": "torch", "tensorflow": "tensorflow", "jax": "jax"}
"""Keras backend (the path's name) → the import name of its framework."""

DEFAULT_PATHS: tuple[str, ...] = ("torch", "tensorflow")
"""The backends a plain run covers (those of them installed): torch and TensorFlow.

``jax`` is supported but opt-in (``--conformance-path jax``, ``--conformance-all-paths``): Keras' JAX step is
compiled by XLA per network shape and dtype, and compiling ``value_and_grad`` of a Keras model costs several times
what the ``jax`` adapter's hand-written network does, so the ``jax`` path alone takes longer than ``torch`` and
``tensorflow`` together (figures and commands: ``docs/backends.md``)."""

LOSS_SCALE = "-loss-scale"
"""The suffix of a backend's loss-scaling path: ``torch-loss-scale`` runs the ``torch`` backend's step on the cost
scaled by ``keras.optimizers.LossScaleOptimizer``, and returns the gradients it unscales (``keras_in_process``)."""

LOSS_SCALED_PATHS: tuple[str, ...] = tuple(f"{backend}{LOSS_SCALE}" for backend in BACKENDS)
"""One loss-scaling path per backend, opt-in."""

LOSS_SCALED_DTYPES: tuple[str, ...] = ("float32", "mixed-bfloat16", "mixed-float16")
"""What the loss-scaling paths run: float32 variables, which ``LossScaleOptimizer`` divides in float32, as in Keras'
mixed policies (the optimizer wraps a ``mixed_float16`` model's by default)."""

SHAPE_COMPILED_PATHS: tuple[str, ...] = ("jax", "tensorflow", "jax" + LOSS_SCALE, "tensorflow" + LOSS_SCALE)
"""``jax.jit`` compiles and ``tf.function`` traces the step anew for every network shape; torch runs eagerly."""


def backend_of(path: str) -> str:
    """The Keras backend a path runs on: the path itself, or a loss-scaling path's without :data:`LOSS_SCALE`."""
    return path.removesuffix(LOSS_SCALE)


WORKER_TARGET = "backprop_conformance.adapters.keras_in_process:KerasInProcess"
"""What each backend's worker process hosts: Keras on the backend that process imported."""

WORKER_ENVIRONMENT: dict[str, dict[str, str]] = {
    "jax": {"KERAS_BACKEND": "jax", "JAX_ENABLE_X64": "1"},
    "torch": {"KERAS_BACKEND": "torch"},
    "tensorflow": {"KERAS_BACKEND": "tensorflow"},
}
"""What each backend's worker process is started with, on top of the run's own environment."""

LEVELS: dict[str, Callable[[], tuple[Level, ...]]] = {"torch": aten_levels, "tensorflow": onednn_levels, "jax": xla_levels}
"""Each backend's dispatch levels are its framework's: ATen's CPU capabilities, TensorFlow's oneDNN on and off, XLA's ISA
caps. A level's environment reaches the backend's worker, which inherits the environment of the process hosting the
adapter (:mod:`~backprop_conformance.adapters.at_level`)."""

CONFIGURATIONS: dict[str, Callable[[], dict[str, str]]] = {
    "torch": torch_configuration,
    "tensorflow": tensorflow_configuration,
    "jax": xla_configuration,
}
"""How each backend's framework reports the configuration that picks its kernels, asked in the backend's worker."""

ENVIRONMENT: tuple[str, ...] = ("KERAS_HOME", "TF_ENABLE_ONEDNN_OPTS", "XLA_FLAGS", "ATEN_CPU_CAPABILITY")
"""Variables the workers inherit from the run that change what Keras computes: ``KERAS_HOME`` holds ``keras.json``
(its ``floatx`` types Python numbers in ``keras.ops``), ``TF_ENABLE_ONEDNN_OPTS`` chooses TensorFlow's CPU kernels,
``XLA_FLAGS`` the JAX (and TensorFlow) compiler's options, ``ATEN_CPU_CAPABILITY`` torch's CPU kernels.
``KERAS_BACKEND`` is not among them: each worker's is set from its path, whatever the run's is."""

ACCUMULATION: dict[str, str | dict[str, str]] = {
    "float16": {"dot": "float32", "batch_sum": "float16", "cost_sum": "float16"},
    "bfloat16": {"dot": "float32", "batch_sum": "bfloat16", "cost_sum": "float32"},
}
"""Declared per dtype, so for the least precise backend of each sum (a declaration holds for every path). Measured
with Keras 3.15.1 on CPU, through this adapter (60 trials per row; the bias gradient of a one-unit layer with w = 0 is
Σ_x δ_x, exactly the batch sum):

* matrix products accumulate in float32 on all three backends: Keras' torch ``matmul`` computes float16 in float32
  on CPU and torch accumulates bfloat16 in float32 (:data:`~backprop_conformance.adapters.torch_adapter.ACCUMULATION`),
  XLA and TensorFlow accumulate both in float32 (``jax_adapter``, ``tensorflow_adapter``);
* the bias gradient's sum over the batch (the gradient of Dense's broadcast bias add) equals the sequential sum *in
  the storage format* on JAX, float16 and bfloat16, at B = 7 and 16 (60 of 60), with errors up to 1.69 u·Σ|δ|, and
  on TensorFlow in float16 at B = 7; torch's, and TensorFlow's in bfloat16, are correctly rounded (60 of 60);
* the cost's ``keras.ops.sum`` is a float16 reduction on TensorFlow (errors up to 1.09 u·C over 64 terms, beyond a
  correctly rounded float32 sum); in bfloat16 every backend accumulates it in float32 (errors at most 0.93 u·C).

The torch backend, whose sums all accumulate in float32, is judged by a bound a little looser than it needs.
"""

POLICIES = {name: MixedPolicy.of(name, dot="float32", cost="float32", cost_sum="float32") for name in ("mixed-bfloat16", "mixed-float16")}
"""Keras' ``mixed_bfloat16`` and ``mixed_float16`` dtype policies, the same on every backend: ``Dense`` casts its
float32 input, kernel and bias to the compute format and computes its product (accumulated in float32, as in
:data:`ACCUMULATION`), bias add and sigmoid there; the bias gradient's batch sum is in the compute format (JAX's, the
coarsest of the backends, :data:`ACCUMULATION`); ``y − a`` is promoted to float32 by the float32 targets, so the
cost and its sum are float32; the gradients come back to the float32 variables through the casts."""

KERAS_POLICIES = {"mixed-bfloat16": "mixed_bfloat16", "mixed-float16": "mixed_float16"}
"""The suite's mixed-precision cells → Keras' dtype policy names."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def _distribution_versions() -> dict[str, str]:
    """Installed versions of Keras' backends by import name, from package metadata (no import)."""
    distributions = importlib.metadata.packages_distributions()
    versions = {}
    for module in BACKENDS.values():
        for dist in distributions.get(module, []):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                versions[module] = importlib.metadata.version(dist)
                break
    return versions


class KerasAdapter(Adapter):
    """Puts Keras 3 on trial on every installed backend, each in its own worker process (see the module docstring)."""

    requires: ClassVar[tuple[str, ...]] = ("keras",)

    def __init__(self) -> None:
        self._used: list[str] = []

    def capabilities(self) -> Capabilities:
        """A path per Keras backend; the default ones among those installed. From package metadata, without importing Keras.

        Every backend is declared, installed or not, so that the known-defect entries for each backend's path stay
        valid in an environment that lacks one; a backend that is not installed is never a default path, and
        naming it (``--conformance-path jax``) fails each example with the reason.
        """
        installed = [path for path, module in BACKENDS.items() if _installed(module)]
        versions = _distribution_versions()
        return Capabilities(
            name="keras",
            # The backends' versions travel with Keras' own into the header, reports and case files.
            framework="Keras (backends: "
            + ", ".join(f"{path} {versions.get(module, 'not installed')}" for path, module in BACKENDS.items())
            + ")",
            version=importlib.metadata.version("keras"),
            dtypes=(*DTYPES, *POLICIES),
            paths=(*BACKENDS, *LOSS_SCALED_PATHS),
            default_paths=tuple(p for p in DEFAULT_PATHS if p in installed),
            accumulation=dict(ACCUMULATION),
            shape_compiled_paths=SHAPE_COMPILED_PATHS,
            environment=ENVIRONMENT,
            levels={path: LEVELS[backend_of(path)]() for path in (*BACKENDS, *LOSS_SCALED_PATHS)},
            policies=POLICIES,
            default_dtypes=DTYPES,
            path_dtypes=dict.fromkeys(LOSS_SCALED_PATHS, LOSS_SCALED_DTYPES),
        )

    def dispatch(self, path: str) -> Mapping[str, str]:
        """The configuration of ``path``'s backend, as its framework reports it in the backend's worker."""
        backend = backend_of(path)
        if not _installed(BACKENDS[backend]):
            return {}
        return self._worker(backend).call("dispatch", backend)

    def load_parameters(self, network: Network, *, dtype: str, device: str = "cpu") -> Network:
        """The layout round trip through every backend whose worker is running, which must all agree.

        ``load_parameters`` has no path, so it cannot name a backend. It uses every backend this adapter has
        already run -- from the second cell of a backend on, the round trip covers that backend -- and, before
        any has run, the first installed default path (the one a plain run starts with anyway).
        """
        paths = self._used or [_first_installed(self.caps)]
        results = [(path, self._worker(path).call("load_parameters", network, dtype=dtype, device=device)) for path in paths]
        first_path, first = results[0]
        for path, other in results[1:]:
            for kind, mine, theirs in (("w", first.w, other.w), ("b", first.b, other.b)):
                for l in network.layers:
                    if not np.array_equal(mine[l], theirs[l]):
                        raise AdapterContractError(
                            f"adapter 'keras', dtype {dtype}: the {first_path} and {path} backends read back different {kind}^{l}"
                        )
        return first

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        """The gradients of C on ``path``'s backend, computed in its worker process (``KerasInProcess.run``)."""
        backend = backend_of(path)
        if not _installed(BACKENDS[backend]):
            raise RequestError(f"adapter 'keras': path {path!r} needs Keras' {backend} backend, and {BACKENDS[backend]} is not installed")
        return self._worker(backend).call("run", network, batch, dtype=dtype, path=path, device=device)

    def prepare(self, path: str, dtype: str, device: str, shapes: Sequence[tuple[tuple[int, ...], int]]) -> None:
        """Start ``path``'s worker process now, and warm it up in the background until this run first needs it.

        Importing Keras and its backend there, and building its first model and training step, are the slowest part
        of a backend's first request; a backend that compiles per shape traces its step anew for each of ``shapes``.
        All of it then overlaps the tests that run before this backend's first one (:class:`_Warming`).
        """
        backend = backend_of(path)
        if backend in BACKENDS and _installed(BACKENDS[backend]):
            _shared_worker(backend).start(wait=False)
            warming = _warming(backend)
            for widths, batch_size in shapes or [FIRST_STEP_SHAPE]:
                warming.submit((tuple(widths), batch_size, dtype, device))

    def finish(self) -> None:
        """Stop the warm-ups still queued (a run that ends early must not wait for them)."""
        for warming in _WARMING.values():
            warming.stop()

    def _worker(self, backend: str) -> workers.Worker:
        """``backend``'s worker, for a request of this run: its warm-up stops here (:class:`_Warming`)."""
        if backend not in self._used:
            self._used.append(backend)
        _warming(backend).stop()
        return _shared_worker(backend)


FIRST_STEP_SHAPE: tuple[tuple[int, ...], int] = ((2, 3, 2), 2)
"""The (widths, batch size) of the one warm-up step a backend that draws its shapes freely gets: any small network
makes the worker import and initialise what every step needs."""


Warm = tuple[tuple[int, ...], int, str, str]
"""(widths, batch size, dtype, device): one warm-up step."""


class _Warming(Ahead[Warm]):
    """Sends warm-up steps to one backend's worker until the run's first request for it (:mod:`~backprop_conformance.adapters.ahead`).

    Each warm-up is :meth:`~backprop_conformance.adapters.keras_in_process.KerasInProcess.warm`: one training step on
    zeros, through the same ``run`` an example takes, so that the worker has imported and initialised everything a
    step needs and, on a backend that compiles per shape, holds the cached model and traced step of that shape --
    the very ones the example would have built. The thread only waits on the worker's pipe, so it is a daemon. It
    stops for good at the first real request (:meth:`stop`): the worker serves one call at a time, so a request
    then waits for one warm-up step at most, and never queues behind the rest. A worker that died ends the
    warm-up: the next call would start another, which is left to the run.
    """

    def __init__(self, path: str) -> None:
        super().__init__(f"backprop-conformance-keras-{path}-warm-up", daemon=True)
        self.path = path

    def work(self, key: Warm) -> None:
        """One warm-up step in ``path``'s worker."""
        widths, batch_size, dtype, device = key
        try:
            _shared_worker(self.path).call("warm", widths, batch_size, dtype=dtype, device=device)
        except workers.WorkerError:
            self.stop()


_WARMING: dict[str, _Warming] = {}


def _warming(path: str) -> _Warming:
    """The process's warm-up thread for ``path``'s worker (created on first use)."""
    return _WARMING.setdefault(path, _Warming(path))


def _shared_worker(path: str) -> workers.Worker:
    """The process's worker for Keras on the ``path`` backend (one per backend, shared by every user)."""
    return workers.shared(WORKER_TARGET, WORKER_ENVIRONMENT[path], name=f"keras-{path}")


def _first_installed(caps: Capabilities) -> str:
    """The first installed default path, else the first installed path: the backend a round trip goes through first."""
    for path in (*caps.default_paths, *caps.paths):
        if _installed(BACKENDS[backend_of(path)]):
            return backend_of(path)
    raise RequestError(f"adapter 'keras': none of Keras' backends ({', '.join(BACKENDS)}) is installed; install one of them")
