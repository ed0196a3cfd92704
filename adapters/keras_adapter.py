"""The built-in Keras 3 adapter: a ``keras.Sequential`` of ``Dense(activation="sigmoid")`` layers, on each Keras backend.

The network is what a Keras user writes: ``keras.Sequential([keras.Input((n(1),)), Dense(n(2), activation="sigmoid"),
..., Dense(n(L), activation="sigmoid")])``, every layer with ``dtype`` set to the format under test. A Dense kernel has
shape (n(l−1), n(l)), the transpose of the page's w^l, so parameters are transposed on the way in and out (the
suite's layout round trip checks it). The cost is the page's C = ½ Σ (y − a^L)², summed over the batch and the
outputs, written with ``keras.ops`` as a user would write a custom loss.

**Paths are the Keras backends**: ``torch``, ``tensorflow`` and ``jax``; the first two are default paths where
installed, ``jax`` is opt-in (:data:`DEFAULT_PATHS`). Each runs the training step the way ``model.fit`` runs it by
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
for that path and reused for the rest of the run; the worker hosts :class:`KerasInProcess`, which runs Keras on
whatever backend its process imported. So one ``pytest conformance`` covers all three backends, importing this
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
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from backprop_conformance.adapters import worker as workers
from backprop_conformance.adapters.base import Adapter, AdapterContractError, AdapterOutput, Capabilities, CapabilitiesError, RequestError
from backprop_conformance.adapters.dispatch import (
    Level,
    aten_levels,
    onednn_levels,
    tensorflow_configuration,
    torch_configuration,
    xla_configuration,
    xla_levels,
)
from backprop_conformance.reference.dtypes import float_format
from backprop_conformance.reference.model import Batch, Gradients, Network

DTYPES: tuple[str, ...] = ("float64", "float32", "float16", "bfloat16")

BACKENDS: dict[str, str] = {"torch": "torch", "tensorflow": "tensorflow", "jax": "jax"}
"""Keras backend (the path's name) → the import name of its framework."""

DEFAULT_PATHS: tuple[str, ...] = ("torch", "tensorflow")
"""The backends a plain run covers (those of them installed): torch and TensorFlow.

``jax`` is supported but opt-in (``--conformance-path jax``, ``--conformance-all-paths``): Keras' JAX step is
compiled by XLA per network shape and dtype, and compiling ``value_and_grad`` of a Keras model took 0.6-3.4 s
per shape on 2 CPU cores (1 s for a depth-8 net, where the ``jax`` adapter's hand-written network compiles in
0.2 s). A run of the ``jax`` path alone took 121 s, where ``torch`` and ``tensorflow`` together took 71 s, worker
start-ups included (100 examples per cell; ``docs/backends.md``)."""

SHAPE_COMPILED_PATHS: tuple[str, ...] = ("jax", "tensorflow")
"""``jax.jit`` compiles and ``tf.function`` traces the step anew for every network shape; torch runs eagerly."""

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
            dtypes=DTYPES,
            paths=tuple(BACKENDS),
            default_paths=tuple(p for p in DEFAULT_PATHS if p in installed),
            accumulation=dict(ACCUMULATION),
            shape_compiled_paths=SHAPE_COMPILED_PATHS,
            environment=ENVIRONMENT,
            levels={path: levels() for path, levels in LEVELS.items()},
        )

    def dispatch(self, path: str) -> Mapping[str, str]:
        """The configuration of ``path``'s backend, as its framework reports it in the backend's worker."""
        if not _installed(BACKENDS[path]):
            return {}
        return self._worker(path).call("dispatch", path)

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
        """The gradients of C on the ``path`` backend, computed in its worker process by :class:`KerasInProcess`."""
        if not _installed(BACKENDS[path]):
            raise RequestError(f"adapter 'keras': path {path!r} needs Keras' {path} backend, and {BACKENDS[path]} is not installed")
        return self._worker(path).call("run", network, batch, dtype=dtype, path=path, device=device)

    def prepare(self, path: str, dtype: str, device: str, shapes: Sequence[tuple[tuple[int, ...], int]]) -> None:
        """Start ``path``'s worker process now, and warm it up in the background until this run first needs it.

        Importing Keras and its backend there takes 5-7 s on 2 CPU cores, and its first model and training step
        another 3-5 s; a backend that compiles per shape traces its step anew for each of ``shapes`` (0.1-1 s each).
        All of it then overlaps the tests that run before this backend's first one (:class:`_Warming`).
        """
        if path in BACKENDS and _installed(BACKENDS[path]):
            _shared_worker(path).start(wait=False)
            _warming(path).add([(widths, batch_size, dtype, device) for widths, batch_size in shapes or [FIRST_STEP_SHAPE]])

    def finish(self) -> None:
        """Stop the warm-ups still queued (a run that ends early must not wait for them)."""
        for warming in _WARMING.values():
            warming.stop()

    def _worker(self, path: str) -> workers.Worker:
        """``path``'s worker, for a request of this run: its warm-up stops here (:class:`_Warming`)."""
        if path not in self._used:
            self._used.append(path)
        _warming(path).stop()
        return _shared_worker(path)


FIRST_STEP_SHAPE: tuple[tuple[int, ...], int] = ((2, 3, 2), 2)
"""The (widths, batch size) of the one warm-up step a backend that draws its shapes freely gets: any small network
makes the worker import and initialise what every step needs."""


class _Warming:
    """A background thread that sends warm-up steps to one backend's worker until the run's first request for it.

    Each warm-up is :meth:`KerasInProcess.warm`: one training step on zeros, through the same :meth:`KerasInProcess.run`
    an example takes, so that the worker has imported and initialised everything a step needs and, on a backend
    that compiles per shape, holds the cached model and traced step of that shape -- the very ones the example
    would have built. The thread only waits on the worker's pipe. It stops for good at the first real request
    (:meth:`stop`): the worker serves one call at a time, so a request then waits for one warm-up step at most,
    and never queues behind the rest. A warm-up that fails is dropped: the example that meets the same step
    raises the error where it belongs.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._jobs: list[tuple[tuple[int, ...], int, str, str]] = []
        self._lock = threading.Lock()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def add(self, jobs: list[tuple[tuple[int, ...], int, str, str]]) -> None:
        with self._lock:
            if self._stopped:
                return
            self._jobs += jobs
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=f"backprop-conformance-keras-{self.path}-warm-up", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._jobs.clear()

    def _serve(self) -> None:
        worker = _shared_worker(self.path)
        while threading.main_thread().is_alive():
            with self._lock:
                if self._stopped or not self._jobs:
                    self._thread = None
                    return
                widths, batch_size, dtype, device = self._jobs.pop(0)
            try:
                worker.call("warm", widths, batch_size, dtype=dtype, device=device)
            except workers.WorkerError:  # the worker died: the next call would start another; leave that to the run
                self.stop()
            except Exception:  # a hint only: the request that meets the same step raises the error itself
                pass


_WARMING: dict[str, _Warming] = {}


def _warming(path: str) -> _Warming:
    """The process's warm-up thread for ``path``'s worker (created on first use)."""
    return _WARMING.setdefault(path, _Warming(path))


def _shared_worker(path: str) -> workers.Worker:
    """The process's worker for Keras on the ``path`` backend (one per backend, shared by every user)."""
    return workers.shared(f"{__name__}:KerasInProcess", WORKER_ENVIRONMENT[path], name=f"keras-{path}")


def _first_installed(caps: Capabilities) -> str:
    """The first installed default path, else the first installed path: the backend a round trip goes through first."""
    for path in (*caps.default_paths, *caps.paths):
        if _installed(BACKENDS[path]):
            return path
    raise RequestError(f"adapter 'keras': none of Keras' backends ({', '.join(BACKENDS)}) is installed; install one of them")


def _keras() -> Any:
    """Import Keras on first use only (and with it the backend ``KERAS_BACKEND`` names)."""
    import keras

    return keras


class KerasInProcess(Adapter):
    """Keras on the backend this process imported: one path, the backend's name.

    The worker processes of :class:`KerasAdapter` host it. It also runs directly, one backend per process, as a
    plug-in: ``KERAS_BACKEND=torch python -m pytest conformance --conformance-backend
    backprop_conformance.adapters.keras_adapter:KerasInProcess`` (its cells are then named ``keras-in-process-*``,
    and the known defects listed for ``keras`` do not apply to them).
    """

    requires: ClassVar[tuple[str, ...]] = ("keras",)

    def capabilities(self) -> Capabilities:
        """The imported backend as the only path; float64 on JAX only when 64-bit mode is on (else Keras stores it in float32)."""
        keras = _keras()
        backend = keras.backend.backend()
        if backend not in BACKENDS:
            raise CapabilitiesError(f"adapter 'keras-in-process': Keras backend {backend!r} is not one of {', '.join(BACKENDS)}")
        dtypes = DTYPES
        if backend == "jax":
            import jax

            if not jax.config.jax_enable_x64:
                dtypes = tuple(d for d in DTYPES if d != "float64")
        return Capabilities(
            name="keras-in-process",
            framework=f"Keras on {backend}",
            version=keras.__version__,
            dtypes=dtypes,
            paths=(backend,),
            default_paths=(backend,),
            accumulation={d: ACCUMULATION[d] for d in ACCUMULATION if d in dtypes},
            shape_compiled_paths=(backend,) if backend in SHAPE_COMPILED_PATHS else (),
            environment=("KERAS_BACKEND", "JAX_ENABLE_X64", *ENVIRONMENT),
            levels={backend: LEVELS[backend]()},
        )

    def dispatch(self, path: str) -> Mapping[str, str]:
        """The configuration that picks this process's backend's kernels (:data:`CONFIGURATIONS`)."""
        return CONFIGURATIONS[_keras().backend.backend()]()

    def load_parameters(self, network: Network, *, dtype: str, device: str = "cpu") -> Network:
        """Build the Sequential, set every kernel (w^l transposed) and bias, and read them back in page layout."""
        keras = _keras()
        with _pinned_numerics(keras.backend.backend(), device):
            model = _Model(network.widths, dtype)
            model.assign(network, dtype)
            carrier = float_format(dtype).carrier
            return Network(
                {l: _to_numpy(layer.kernel, carrier).T for l, layer in enumerate(model.layers, start=2)},
                {l: _to_numpy(layer.bias, carrier) for l, layer in enumerate(model.layers, start=2)},
            )

    def cached_models(self) -> list[tuple[tuple[int, ...], str]]:
        """The (widths, dtype) of the models this process keeps (:func:`_model`), oldest first: what a warm-up left."""
        return list(_MODELS)

    def warm(self, widths: tuple[int, ...], batch_size: int, *, dtype: str, device: str = "cpu") -> None:
        """One training step on zeros of this shape, its result thrown away: what :class:`_Warming` sends ahead of need."""
        network = Network.from_lists(
            [np.zeros((n_out, n_in)) for n_in, n_out in itertools.pairwise(widths)], [np.zeros(n_out) for n_out in widths[1:]]
        )
        batch = Batch(np.zeros((batch_size, widths[0])), np.zeros((batch_size, widths[-1])))
        self.run(network, batch, dtype=dtype, path=_keras().backend.backend(), device=device)

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        """∂C/∂w^l and ∂C/∂b^l of C = Σ_x ½ Σ_j (y_j − a^L_j)² on this process's backend, with a^l from the same pass."""
        keras = _keras()
        backend = keras.backend.backend()
        with _pinned_numerics(backend, device):
            model = _model(network.widths, dtype)
            model.assign(network, dtype)
            x, y = _tensor(batch.x, dtype), _tensor(batch.y, dtype)
            cost, activations, grad_w, grad_b = _STEPS[backend](model, x, y)
        carrier = float_format(dtype).carrier

        def by_layer(values: list[Any], first: int = 2, transpose: bool = False) -> dict[int, np.ndarray]:
            return {l: (_to_numpy(v, carrier).T if transpose else _to_numpy(v, carrier)) for l, v in enumerate(values, start=first)}

        return AdapterOutput(
            gradients=Gradients(by_layer(grad_w, transpose=True), by_layer(grad_b)),
            cost=float(_to_numpy(cost, np.dtype(np.float64))),
            a=by_layer([x, *activations], first=1),
        )


@contextlib.contextmanager
def _pinned_numerics(backend: str, device: str) -> Iterator[None]:
    """The backend's own adapter's pins for the call: IEEE float32 products and TF op determinism, restored after.

    torch: :func:`backprop_conformance.adapters.torch_adapter._ieee_arithmetic`; TensorFlow:
    :func:`backprop_conformance.adapters.tensorflow_adapter._pinned_numerics`; JAX: ``jax.default_matmul_precision
    ("highest")``, a scoped configuration (Keras' ``matmul`` passes no precision of its own).
    """
    if backend == "torch":
        from backprop_conformance.adapters.torch_adapter import _ieee_arithmetic

        with _ieee_arithmetic(device):
            yield
    elif backend == "tensorflow":
        from backprop_conformance.adapters.tensorflow_adapter import _pinned_numerics as tensorflow_pins

        with tensorflow_pins():
            yield
    else:
        import jax

        with jax.default_matmul_precision("highest"):
            yield


def _tensor(values: np.ndarray, dtype: str) -> Any:
    """``values`` (float64, exactly representable in ``dtype``) as a backend tensor of ``dtype``; exact, since representable."""
    keras = _keras()
    return keras.ops.cast(keras.ops.convert_to_tensor(np.asarray(values, dtype=float_format(dtype).carrier)), dtype)


def _to_numpy(value: Any, carrier: np.dtype) -> np.ndarray:
    """A backend tensor or Keras variable as numpy in the format's carrier, through float32 or float64 (both exact).

    Widened first because numpy has no bfloat16, and not every backend's tensors convert from it.
    """
    keras = _keras()
    if isinstance(value, keras.Variable):
        value = value.value
    wide = "float64" if keras.backend.standardize_dtype(value.dtype) == "float64" else "float32"
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(value, wide))).astype(carrier)


class _Model:
    """The user's ``keras.Sequential`` and a functional view of its layers that returns every a^l (l = 2..L).

    ``kernel_initializer="zeros"`` (the bias's default already): every parameter is assigned before each use, and
    the default random initializer only costs time -- on JAX it compiles its random ops for every new shape,
    0.5 s of the 0.6 s a model took to build.
    """

    def __init__(self, widths: tuple[int, ...], dtype: str) -> None:
        keras = _keras()
        self.sequential = keras.Sequential(
            [keras.Input((widths[0],), dtype=dtype)]
            + [
                keras.layers.Dense(n_out, activation="sigmoid", dtype=dtype, name=f"layer_{l}", kernel_initializer="zeros")
                for l, n_out in enumerate(widths[1:], start=2)
            ]
        )
        self.layers = list(self.sequential.layers)
        self.view = keras.Model(self.sequential.inputs, [layer.output for layer in self.layers])
        self.variables = [v for layer in self.layers for v in (layer.kernel, layer.bias)]
        self.compiled: Callable[..., Any] | None = None

    def assign(self, network: Network, dtype: str) -> None:
        """Every kernel to w^l transposed (Keras' (in, out) layout), every bias to b^l."""
        for l, layer in zip(network.layers, self.layers, strict=True):
            layer.kernel.assign(_tensor(network.w[l].T, dtype))
            layer.bias.assign(_tensor(network.b[l], dtype))


CACHE_SIZE = 256
"""Models kept per worker (least recently used first out): one per (widths, dtype), with its compiled step on a backend
that compiles per shape, as in :data:`~backprop_conformance.adapters.tensorflow_adapter.CACHE_SIZE`. A training loop
keeps its model and assigns it new values; so does the adapter, which assigns every parameter before each step. On
torch it also saves building the model anew for every call (8.6 ms of a 17.9 ms call on a 5-8-8-3 net)."""

_MODELS: OrderedDict[tuple[tuple[int, ...], str], _Model] = OrderedDict()


def _model(widths: tuple[int, ...], dtype: str) -> _Model:
    """The cached model of these widths and dtype (:data:`CACHE_SIZE`): on a backend that compiles its step per shape,
    a new model would be a new compilation."""
    key = (widths, dtype)
    model = _MODELS.get(key)
    if model is None:
        model = _MODELS[key] = _Model(widths, dtype)
        while len(_MODELS) > CACHE_SIZE:
            _MODELS.popitem(last=False)
    _MODELS.move_to_end(key)
    return model


def _as_list(outputs: Any) -> list[Any]:
    """The view's outputs [a^2, ..., a^L] as a list: a functional model with one output (L = 2) returns the tensor itself."""
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _cost(a_L: Any, y: Any) -> Any:
    """C = Σ_x ½ Σ_j (y_j − a^L_j)², in ``keras.ops``; ``y − a`` with the operator, as Keras' own ``mean_squared_error`` writes it."""
    keras = _keras()
    return 0.5 * keras.ops.sum(keras.ops.square(y - a_L))


def _tensorflow_step(model: _Model, x: Any, y: Any) -> tuple[Any, list[Any], list[Any], list[Any]]:
    """``tf.GradientTape`` in a ``tf.function`` per model, as Keras' TensorFlow trainer runs ``train_step``."""
    import tensorflow as tf

    if model.compiled is None:

        def step(x: Any, y: Any) -> tuple[Any, list[Any], list[Any]]:
            with tf.GradientTape() as tape:
                activations = _as_list(model.view(x))
                cost = _cost(activations[-1], y)
            return cost, activations, tape.gradient(cost, model.variables)

        model.compiled = tf.function(step, autograph=False)
    cost, activations, gradients = model.compiled(x, y)
    return cost, _as_list(activations), gradients[0::2], gradients[1::2]


def _torch_step(model: _Model, x: Any, y: Any) -> tuple[Any, list[Any], list[Any], list[Any]]:
    """Autograd, eagerly, as Keras' torch trainer runs ``train_step``: forward, ``backward()``, each variable's ``.grad``.

    Every ``.grad`` is set to None first, as the trainer's ``zero_grad`` does each step: the model is reused from one
    call to the next (:func:`_model`), and ``backward()`` adds to a gradient it finds.
    """
    import torch

    for v in model.variables:
        v.value.grad = None
    with torch.enable_grad():
        activations = _as_list(model.view(x))
        cost = _cost(activations[-1], y)
        cost.backward()
    gradients = [v.value.grad for v in model.variables]
    return cost.detach(), [a.detach() for a in activations], gradients[0::2], gradients[1::2]


def _jax_step(model: _Model, x: Any, y: Any) -> tuple[Any, list[Any], list[Any], list[Any]]:
    """``jax.jit(jax.value_and_grad(...))`` of ``stateless_call``, as Keras' JAX trainer computes gradients."""
    import jax

    if model.compiled is None:
        non_trainable = [v.value for v in model.view.non_trainable_variables]

        def cost_of(values: list[Any], x: Any, y: Any) -> tuple[Any, list[Any]]:
            # stateless_call takes the view's trainable variables in its own order; map ours onto them.
            outputs, _ = model.view.stateless_call(_ordered(model, values), non_trainable, x)
            activations = _as_list(outputs)
            return _cost(activations[-1], y), activations

        model.compiled = jax.jit(jax.value_and_grad(cost_of, has_aux=True))
    (cost, activations), gradients = model.compiled([v.value for v in model.variables], x, y)
    return cost, activations, gradients[0::2], gradients[1::2]


def _ordered(model: _Model, values: list[Any]) -> list[Any]:
    """``values`` (in :attr:`_Model.variables` order) rearranged into ``model.view.trainable_variables`` order."""
    position = {id(v): i for i, v in enumerate(model.variables)}
    return [values[position[id(v)]] for v in model.view.trainable_variables]


_STEPS: dict[str, Callable[[_Model, Any, Any], tuple[Any, list[Any], list[Any], list[Any]]]] = {
    "tensorflow": _tensorflow_step,
    "torch": _torch_step,
    "jax": _jax_step,
}
