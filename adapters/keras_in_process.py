"""Keras on the backend this process imported: the model a Keras user writes, its training step, and the adapter that runs them.

Keras fixes its backend when it is imported, so :class:`~backprop_conformance.adapters.keras_adapter.KerasAdapter`
runs each backend in a worker process of its own, and each worker hosts :class:`KerasInProcess` (see that module's
docstring for the paths, the layout and what each backend's step is). The model, the steps and the conversions live
here because only a process that has imported Keras on a backend can build them; the backends' declarations
(dtypes, accumulation, dispatch levels) are the parent adapter's, so both sides declare the same.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import numpy as np

from backprop_conformance.adapters.base import Adapter, AdapterOutput, Capabilities, CapabilitiesError
from backprop_conformance.adapters.keras_adapter import (
    ACCUMULATION,
    BACKENDS,
    CONFIGURATIONS,
    DTYPES,
    ENVIRONMENT,
    KERAS_POLICIES,
    LEVELS,
    LOSS_SCALE,
    LOSS_SCALED_DTYPES,
    POLICIES,
    SHAPE_COMPILED_PATHS,
)
from backprop_conformance.reference.dtypes import MIXED, float_format
from backprop_conformance.reference.model import Batch, Gradients, Network


def _keras() -> Any:
    """Import Keras on first use only (and with it the backend ``KERAS_BACKEND`` names)."""
    import keras

    return keras


class KerasInProcess(Adapter):
    """Keras on the backend this process imported: the backend's name as its path, and its loss-scaling path.

    The worker processes of :class:`~backprop_conformance.adapters.keras_adapter.KerasAdapter` host it. It also runs
    directly, one backend per process, as a plug-in: ``KERAS_BACKEND=torch python -m pytest conformance
    --conformance-backend backprop_conformance.adapters.keras_in_process:KerasInProcess`` (its cells are then named ``keras-in-process-*``,
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
        scaled = backend + LOSS_SCALE
        if backend == "jax":
            import jax

            if not jax.config.jax_enable_x64:
                dtypes = tuple(d for d in DTYPES if d != "float64")
        return Capabilities(
            name="keras-in-process",
            framework=f"Keras on {backend}",
            version=keras.__version__,
            dtypes=(*dtypes, *POLICIES),
            paths=(backend, scaled),
            default_paths=(backend,),
            accumulation={d: ACCUMULATION[d] for d in ACCUMULATION if d in dtypes},
            shape_compiled_paths=tuple(p for p in (backend, scaled) if p in SHAPE_COMPILED_PATHS),
            environment=("KERAS_BACKEND", "JAX_ENABLE_X64", *ENVIRONMENT),
            levels=dict.fromkeys((backend, scaled), LEVELS[backend]()),
            policies=POLICIES,
            default_dtypes=dtypes,
            path_dtypes={scaled: LOSS_SCALED_DTYPES},
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
        """One training step on zeros of this shape, its result thrown away: the warm-up
        :class:`~backprop_conformance.adapters.keras_adapter.KerasAdapter` sends ahead of need."""
        network = Network.from_lists(
            [np.zeros((n_out, n_in)) for n_in, n_out in itertools.pairwise(widths)], [np.zeros(n_out) for n_out in widths[1:]]
        )
        batch = Batch(np.zeros((batch_size, widths[0])), np.zeros((batch_size, widths[-1])))
        self.run(network, batch, dtype=dtype, path=_keras().backend.backend(), device=device)

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        """∂C/∂w^l and ∂C/∂b^l of C = Σ_x ½ Σ_j (y_j − a^L_j)² on this process's backend, with a^l from the same pass."""
        keras = _keras()
        backend = keras.backend.backend()
        with _pinned_numerics(backend, device), _threads(backend, network, batch):
            model = _model(network.widths, dtype)
            model.assign(network, dtype)
            x, y = _tensor(batch.x, dtype), _tensor(batch.y, dtype)
            if path.endswith(LOSS_SCALE):
                cost, activations, grad_w, grad_b, scale = _loss_scaled_step(backend, model, x, y)
            else:
                cost, activations, grad_w, grad_b = _STEPS[backend](model, x, y, None)
                scale = None
        carrier = float_format(dtype).carrier

        def by_layer(values: list[Any], first: int = 2, transpose: bool = False) -> dict[int, np.ndarray]:
            return {l: (_to_numpy(v, carrier).T if transpose else _to_numpy(v, carrier)) for l, v in enumerate(values, start=first)}

        return AdapterOutput(
            gradients=Gradients(by_layer(grad_w, transpose=True), by_layer(grad_b)),
            cost=float(_to_numpy(cost, np.dtype(np.float64))),
            a=by_layer([x, *activations], first=1),
            loss_scale=scale,
        )


@contextlib.contextmanager
def _pinned_numerics(backend: str, device: str) -> Iterator[None]:
    """The backend's own adapter's pins for the call: IEEE float32 products and TF op determinism, restored after.

    torch: :func:`backprop_conformance.adapters.torch_model.ieee_arithmetic`; TensorFlow:
    :func:`backprop_conformance.adapters.tensorflow_adapter.pinned_numerics`; JAX: ``jax.default_matmul_precision
    ("highest")``, a scoped configuration (Keras' ``matmul`` passes no precision of its own).
    """
    if backend == "torch":
        from backprop_conformance.adapters.torch_model import ieee_arithmetic

        with ieee_arithmetic(device):
            yield
    elif backend == "tensorflow":
        from backprop_conformance.adapters.tensorflow_adapter import pinned_numerics

        with pinned_numerics():
            yield
    else:
        import jax

        with jax.default_matmul_precision("highest"):
            yield


def _threads(backend: str, network: Network, batch: Batch) -> contextlib.AbstractContextManager[Any]:
    """On torch, one intra-op thread for a call whose tensors are all small, as the ``torch`` adapter runs it
    (:func:`~backprop_conformance.adapters.torch_model.serial_when_small`); the other backends' thread pools as they are.

    Why: torch's kernels are serial below its grain size anyway, and its second thread spins around every operation
    meanwhile. In this worker that spinning was most of a default run's Keras torch cells: the covering design's
    networks (batches and widths up to 192) cost three to five times the CPU with two threads (``docs/speed.md``).
    """
    if backend != "torch":
        return contextlib.nullcontext()
    from backprop_conformance.adapters.torch_model import serial_when_small

    return serial_when_small(network, batch)


def _tensor(values: np.ndarray, dtype: str) -> Any:
    """``values`` (float64, exactly representable in ``dtype``) as a backend tensor of ``dtype``; exact, since representable."""
    keras = _keras()
    return keras.ops.cast(keras.ops.convert_to_tensor(np.asarray(values, dtype=float_format(dtype).carrier)), _stored(dtype))


def _stored(dtype: str) -> str:
    """The format values of ``dtype`` are held in: a mixed-precision policy's storage format (float32), else ``dtype``."""
    return MIXED[dtype][0] if dtype in MIXED else dtype


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
    the default random initializer only costs time -- on JAX it compiles its random ops for every new shape, most
    of what building a model costs.
    """

    def __init__(self, widths: tuple[int, ...], dtype: str) -> None:
        keras = _keras()
        policy = KERAS_POLICIES.get(dtype, dtype)  # a mixed cell's layers take Keras' own mixed dtype policy
        self.sequential = keras.Sequential(
            [keras.Input((widths[0],), dtype=_stored(dtype))]
            + [
                keras.layers.Dense(n_out, activation="sigmoid", dtype=policy, name=f"layer_{l}", kernel_initializer="zeros")
                for l, n_out in enumerate(widths[1:], start=2)
            ]
        )
        self.layers = list(self.sequential.layers)
        self.view = keras.Model(self.sequential.inputs, [layer.output for layer in self.layers])
        self.variables = [v for layer in self.layers for v in (layer.kernel, layer.bias)]
        self.compiled: Callable[..., Any] | None = None
        self.loss_scaling: _LossScaling | None = None

    def assign(self, network: Network, dtype: str) -> None:
        """Every kernel to w^l transposed (Keras' (in, out) layout), every bias to b^l."""
        for l, layer in zip(network.layers, self.layers, strict=True):
            layer.kernel.assign(_tensor(network.w[l].T, dtype))
            layer.bias.assign(_tensor(network.b[l], dtype))


CACHE_SIZE = 256
"""Models kept per worker (least recently used first out): one per (widths, dtype), with its compiled step on a backend
that compiles per shape, as in :data:`~backprop_conformance.adapters.tensorflow_adapter.CACHE_SIZE`. A training loop
keeps its model and assigns it new values; so does the adapter, which assigns every parameter before each step. On
torch it also saves building the model anew for every call, which would be about half of a small net's call."""

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
    """C = Σ_x ½ Σ_j (y_j − a^L_j)², in ``keras.ops``; ``y − a`` with the operator, as Keras' own ``mean_squared_error`` writes it.

    a^L is first cast to the targets' format, as ``keras.losses.Loss`` casts predictions to its own float32 dtype: a
    no-op for one format, exact widening for a mixed-precision cell, whose cost is float32 on every backend (on
    TensorFlow the operator would not promote a bfloat16 a^L itself).
    """
    keras = _keras()
    return 0.5 * keras.ops.sum(keras.ops.square(y - keras.ops.cast(a_L, y.dtype)))


def _tensorflow_step(model: _Model, x: Any, y: Any, scale: Any) -> tuple[Any, list[Any], list[Any], list[Any]]:
    """``tf.GradientTape`` in a ``tf.function`` per model, as Keras' TensorFlow trainer runs ``train_step``.

    Every step returns the cost, the a^l and the gradients of the cost multiplied by ``scale`` (a loss scale, as
    ``optimizer.scale_loss`` multiplies it in Keras' trainers), or of the cost itself when ``scale`` is None."""
    import tensorflow as tf

    if model.compiled is None:

        def step(x: Any, y: Any, scale: Any) -> tuple[Any, list[Any], list[Any]]:
            with tf.GradientTape() as tape:
                activations = _as_list(model.view(x))
                cost = _cost(activations[-1], y)
                scaled = cost if scale is None else cost * scale
            return cost, activations, tape.gradient(scaled, model.variables)

        model.compiled = tf.function(step, autograph=False)
    cost, activations, gradients = model.compiled(x, y, scale)
    return cost, _as_list(activations), gradients[0::2], gradients[1::2]


def _torch_step(model: _Model, x: Any, y: Any, scale: Any) -> tuple[Any, list[Any], list[Any], list[Any]]:
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
        (cost if scale is None else cost * scale).backward()
    gradients = [v.value.grad for v in model.variables]
    return cost.detach(), [a.detach() for a in activations], gradients[0::2], gradients[1::2]


def _jax_step(model: _Model, x: Any, y: Any, scale: Any) -> tuple[Any, list[Any], list[Any], list[Any]]:
    """``jax.jit(jax.value_and_grad(...))`` of ``stateless_call``, as Keras' JAX trainer computes gradients."""
    import jax

    if model.compiled is None:
        non_trainable = [v.value for v in model.view.non_trainable_variables]

        def cost_of(values: list[Any], x: Any, y: Any, scale: Any) -> tuple[Any, tuple[Any, list[Any]]]:
            # stateless_call takes the view's trainable variables in its own order; map ours onto them.
            outputs, _ = model.view.stateless_call(_ordered(model, values), non_trainable, x)
            activations = _as_list(outputs)
            cost = _cost(activations[-1], y)
            return (cost if scale is None else cost * scale), (cost, activations)

        model.compiled = jax.jit(jax.value_and_grad(cost_of, has_aux=True))
    (_, (cost, activations)), gradients = model.compiled([v.value for v in model.variables], x, y, scale)
    return cost, activations, gradients[0::2], gradients[1::2]


def _ordered(model: _Model, values: list[Any]) -> list[Any]:
    """``values`` (in :attr:`_Model.variables` order) rearranged into ``model.view.trainable_variables`` order."""
    position = {id(v): i for i, v in enumerate(model.variables)}
    return [values[position[id(v)]] for v in model.view.trainable_variables]


_STEPS: dict[str, Callable[[_Model, Any, Any, Any], tuple[Any, list[Any], list[Any], list[Any]]]] = {
    "tensorflow": _tensorflow_step,
    "torch": _torch_step,
    "jax": _jax_step,
}


class _LossScaling:
    """A model's ``keras.optimizers.LossScaleOptimizer``, its ``stateless_apply`` (jitted on JAX, as the JAX trainer
    runs it) and its variables' values as built, from which every call starts (scale 2^15, Keras' default)."""

    def __init__(self, backend: str, model: _Model) -> None:
        keras = _keras()
        self.optimizer = keras.optimizers.LossScaleOptimizer(_hands_back()(learning_rate=0.0))
        self.optimizer.build(model.variables)
        self.initial = [keras.ops.convert_to_tensor(v.value) for v in self.optimizer.variables]
        self.scale_index = next(i for i, v in enumerate(self.optimizer.variables) if v is self.optimizer.dynamic_scale)
        if backend == "jax":
            import jax

            self.apply: Callable[..., Any] = jax.jit(self.optimizer.stateless_apply)
        else:
            self.apply = self.optimizer.stateless_apply


@functools.cache
def _hands_back() -> type[Any]:
    """An inner optimizer whose step replaces each variable by the gradient it is given (the class, made once Keras is imported).

    ``LossScaleOptimizer`` hands its inner optimizer the unscaled gradients, and only when they are finite; with this
    one inside, the variables its ``stateless_apply`` returns are those gradients, as the optimizer would have stepped
    with them, and the variables unchanged when it skipped the step.
    """
    keras = _keras()

    class HandsBack(keras.optimizers.SGD):  # type: ignore[misc, name-defined]
        def stateless_apply(
            self, optimizer_variables: list[Any], grads: list[Any], trainable_variables: list[Any]
        ) -> tuple[list[Any], list[Any]]:
            return list(grads), [keras.ops.convert_to_tensor(v) for v in optimizer_variables]

    return HandsBack


def _loss_scaled_step(backend: str, model: _Model, x: Any, y: Any) -> tuple[Any, list[Any], list[Any], list[Any], float]:
    """The backend's step on the cost scaled by ``LossScaleOptimizer.dynamic_scale``, the gradients unscaled by its
    ``stateless_apply``; a step whose gradients overflowed is skipped and the scale halved by the optimizer, and the step
    runs again at the halved scale, as the next training step would. Returns the scale of the step taken beside the rest.
    """
    keras = _keras()
    if model.loss_scaling is None:
        model.loss_scaling = _LossScaling(backend, model)
    scaling = model.loss_scaling
    state = list(scaling.initial)
    values = [keras.ops.convert_to_tensor(v.value) for v in model.variables]
    while True:
        scale = keras.ops.convert_to_tensor(state[scaling.scale_index])
        cost, activations, grad_w, grad_b = _STEPS[backend](model, x, y, scale)
        gradients = [g for pair in zip(grad_w, grad_b, strict=True) for g in pair]
        unscaled, state = scaling.apply(state, gradients, values)
        used = float(keras.ops.convert_to_numpy(scale))
        if float(keras.ops.convert_to_numpy(state[scaling.scale_index])) >= used or used <= 1:
            return cost, activations, list(unscaled[0::2]), list(unscaled[1::2]), used
