"""The built-in TensorFlow adapter: the page's network as a ``tf.Module``, differentiated by ``tf.GradientTape``.

The network is what the TensorFlow guide "Introduction to modules" writes for a dense layer: a ``tf.Module``
holding ``w`` of shape (n(l−1), n(l)) and ``b`` of shape (n(l),) as ``tf.Variable``\\ s, and computing
``z = tf.matmul(a, w) + b``, ``a = tf.nn.sigmoid(z)``. Its ``w`` is the transpose of the page's w^l
(``w[k−1, j−1]`` is w^l_jk), so :meth:`TensorFlowAdapter.load_parameters` transposes on the way in and out,
and the suite's layout round trip checks that it does so correctly. The cost is the page's C = ½ Σ_j (y_j −
a^L_j)², summed over the batch too, written with ``tf.reduce_sum``.

Why ``tf.Module`` and not ``tf.keras``: since TensorFlow 2.16, ``tf.keras`` *is* Keras 3, a multi-backend
library whose layers go through ``keras.ops`` and its own dtype rules; it is put on trial by the ``keras``
adapter (:mod:`backprop_conformance.adapters.keras_adapter`). This adapter tests TensorFlow itself: its
kernels (MatMul, AddV2, Sigmoid), its gradient registry (SigmoidGrad, the broadcast-add gradient) and its
tape, with nothing in between, and without importing Keras.

Execution paths, each one of TensorFlow's ways to run the same training step:

* ``eager``: ``tf.GradientTape`` op by op (eager execution, TensorFlow's default);
* ``function``: the same step in ``tf.function`` (graph mode, Grappler's optimisations);
* ``xla``: ``tf.function(jit_compile=True)``, the step compiled by XLA;
* ``recompute``: rematerialization, eager, each layer's block through ``tf.recompute_grad``: the tape keeps no
  intermediates of the block, and its gradient recomputes the block's forward first. The recomputed forward must
  give the same gradients. It has no δ^l (the recomputed z^l are not tensors the tape saw).

Every other path returns δ^l = ∂C/∂z^l from the same backward pass as the gradients: the tape is asked for the
gradient with respect to the parameters *and* the recorded z^l in one ``tape.gradient`` call.

What TensorFlow does that the verdicts depend on:

* Subnormals are flushed to zero in all three paths, not only under XLA: measured with TensorFlow 2.21 on
  CPU, float32 σ(−88) comes back 0 (truth 6.05e-39), float64 σ(−709) comes back 0, a subnormal input times
  1000 gives 0 (inputs are read as zero, DAZ) and the tiniest normal times 0.5 gives 0 (results are flushed,
  FTZ); float16 and bfloat16 behave as float32 for bfloat16 (same exponent range) and not at all for float16
  (computed in float32, where float16's subnormals are normal). The error bound's underflow allowance η =
  ``finfo.tiny``, charged per term of every sum, is what covers this (``docs/backends.md``). TensorFlow sets
  the flush mode on its own threads and restores it, so the caller's thread keeps IEEE subnormals.
* bfloat16 matrix products (MatMul, in ``eager`` and ``function``) accumulate in float32, and how the sum
  becomes bfloat16 depends on the CPU: Eigen's kernel (oneDNN off) *truncates* it, oneDNN's (on, TensorFlow's
  default on x86 CPUs with AVX-512 VNNI or BF16) rounds it to nearest (measured: 300 of 300 length-1/7/33 dot
  products equal the truncated float32 sum with oneDNN off, the rounded one with oneDNN on, and about half the
  other); XLA rounds to nearest. See :data:`ACCUMULATION`.
* σ′ is computed as y(1 − y) from the forward output (SigmoidGrad), so it is 0 once σ(z) rounds to 1
  (z ≳ 36.7 in float64), a known upstream defect listed for the fidelity tier.

Process-wide settings are pinned for each call and restored after it (:func:`pinned_numerics`), and
compiled steps are cached per process (:func:`_compiled_step`). Importing this module does not import
TensorFlow (adapter contract): it is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from backprop_conformance.adapters.base import Adapter, AdapterOutput, Capabilities
from backprop_conformance.adapters.dispatch import onednn_levels, tensorflow_configuration
from backprop_conformance.reference.dtypes import MIXED, float_format
from backprop_conformance.reference.mixed_precision import MixedPolicy
from backprop_conformance.reference.model import Batch, Gradients, Network

DTYPES: tuple[str, ...] = ("float64", "float32", "float16", "bfloat16")
PATHS: tuple[str, ...] = ("eager", "function", "xla", "recompute")
SHAPE_COMPILED_PATHS: tuple[str, ...] = ("function", "xla")
"""``tf.function`` traces a new graph, and XLA compiles a new program, for every new input shape."""

DEFAULT_PATHS: tuple[str, ...] = ("eager",)
"""The path a plain run takes: ``eager``, TensorFlow's default execution.

``function`` and ``xla`` are supported but opt-in (``--conformance-path function``, ``--conformance-all-paths``).
``xla`` compiles a new program per network shape and dtype, which makes a run of the backend several times
longer than with ``eager``. ``function`` costs a little more than ``eager`` at the default number of examples (its
tracing per shape included; with many more examples per cell it is the cheaper of the two), but the default run
already covers ``tf.function``: the ``keras`` adapter's ``tensorflow`` path runs
its training step in one, as Keras' trainer does. Measurements and commands: ``docs/backends.md``."""

ACCUMULATION: dict[str, str | dict[str, str]] = {
    "float16": {"dot": "float32", "batch_sum": "float16", "cost_sum": "float16"},
    "bfloat16": "float32",
}
"""The formats TensorFlow's sums accumulate in on CPU, measured (TensorFlow 2.21, 300 random dot products and sums
per row, lengths 7 and 33, eager, ``tf.function`` and XLA; oneDNN on and off give the same formats):

* float16 MatMul (z^l, and the transposed products of the backward pass) equals the float32-accumulated sum
  rounded once to float16 in every trial, in every path. ``tf.reduce_sum`` in float16 -- the bias gradient's
  sum over the batch (the gradient of the broadcast ``+ b``) and the cost's sum -- does not: at length 7 it
  equals the *sequential float16* sum in 300 of 300 trials in ``eager`` and ``function`` (XLA accumulates it in
  float32), with errors up to 1.17 u·Σ|x|, beyond what a correctly rounded float32 sum can make. Declared per
  operation, and at the least precise path, since a declaration holds for every path of a dtype.
* bfloat16 MatMul and ``tf.reduce_sum`` accumulate in float32. With oneDNN off, MatMul then truncates the
  result to bfloat16 in ``eager`` and ``function`` (see the module docstring): an error of up to 2u of the
  result where rounding makes u. The bound has no rounding mode to declare; its z^l term allows 2u for the product's rounding and the
  result's, which truncation alone can use up, and the factor K = 2 is what absorbs the rest in practice
  (worst error/bound ratio of the bfloat16 cells: ``docs/backends.md``).
"""

POLICIES = {
    "mixed-bfloat16": MixedPolicy.of("mixed-bfloat16", dot="float32", cost="float32", batch_sum="float32", cost_sum="float32"),
    "mixed-float16": MixedPolicy.of("mixed-float16", dot="float32", cost="float32", cost_sum="float32"),
}
"""float32 variables cast to the compute format inside each layer (``tf.cast``); products, σ and the backward pass in
the compute format with the sums of :data:`ACCUMULATION` (float16's bias gradient summed in float16); the cost in
float32, from a^L cast to the float32 targets' format, as ``keras.losses.Loss`` does."""

ENVIRONMENT: tuple[str, ...] = ("TF_ENABLE_ONEDNN_OPTS", "TF_XLA_FLAGS", "XLA_FLAGS")
"""Environment variables that change what TensorFlow computes: ``TF_ENABLE_ONEDNN_OPTS`` swaps the CPU kernels
(oneDNN's or Eigen's, with different summation orders; on by default on x86), the two XLA flag variables
change the ``xla`` path's compiler. Recorded in case files, since a replay under other values tests other
kernels."""

CACHE_SIZE = 256
"""Compiled steps kept per process (least recently used first out). A step is a ``tf.function`` bound to one
model, traced for each input shape; the suite's shape pool needs 16 per dtype, so 256 holds every default
shape of every dtype and path, while a long run of freely drawn shapes stays bounded in memory."""


def _tf() -> Any:
    """Import TensorFlow on first use only, so that importing this module or listing adapters never imports it."""
    import tensorflow as tf

    return tf


class TensorFlowAdapter(Adapter):
    """Puts TensorFlow on trial: a ``tf.Module`` MLP of sigmoid layers, quadratic cost summed over the batch."""

    requires: ClassVar[tuple[str, ...]] = ("tensorflow",)

    def capabilities(self) -> Capabilities:
        """Paths, dtypes and accumulation; "gpu" is listed only where TensorFlow sees a GPU."""
        tf = _tf()
        devices = ("cpu", "gpu") if tf.config.list_physical_devices("GPU") else ("cpu",)
        return Capabilities(
            name="tensorflow",
            framework="TensorFlow",
            version=tf.__version__,
            dtypes=(*DTYPES, *POLICIES),
            paths=PATHS,
            default_paths=DEFAULT_PATHS,
            devices=devices,
            accumulation=dict(ACCUMULATION),
            shape_compiled_paths=SHAPE_COMPILED_PATHS,
            environment=ENVIRONMENT,
            levels=dict.fromkeys(PATHS, onednn_levels()),
            policies=POLICIES,
            default_dtypes=DTYPES,
        )

    def dispatch(self, path: str) -> Mapping[str, str]:
        """Whether TensorFlow's oneDNN operations are on in this process
        (:func:`~backprop_conformance.adapters.dispatch.tensorflow_configuration`)."""
        return tensorflow_configuration()

    def load_parameters(self, network: Network, *, dtype: str, device: str = "cpu") -> Network:
        """Build the ``tf.Module`` from ``network`` and read every layer's ``w`` (transposed back) and ``b`` out of it.

        The suite checks that this round trip is the identity: it is the evidence that the adapter's
        transpose puts w^l_jk at ``w[k−1, j−1]``, which a square layer's shapes cannot show.
        """
        tf = _tf()
        with pinned_numerics(), tf.device(_device_name(device)):
            model = _model_class()(network.widths, dtype)
            model.assign(network, dtype)
            carrier = float_format(dtype).carrier
            return Network(
                {l: _to_numpy(layer.w, carrier).T for l, layer in enumerate(model.layers, start=2)},
                {l: _to_numpy(layer.b, carrier) for l, layer in enumerate(model.layers, start=2)},
            )

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        """∂C/∂w^l_jk, ∂C/∂b^l_j of C = Σ_x ½ Σ_j (y_j − a^L_j)², computed by TensorFlow in ``dtype`` on ``device``.

        Returns gradients in page layout and ``dtype``'s carrier (bfloat16 in float32 arrays), the cost, and
        a^l (l = 1..L), z^l and δ^l (l = 2..L) from the same tape. The request has been checked by
        :meth:`~backprop_conformance.adapters.base.Adapter.compute`.
        """
        tf = _tf()
        with pinned_numerics(), tf.device(_device_name(device)):
            if path in ("eager", "recompute"):
                model = _model_class()(network.widths, dtype)
                step: Callable[[Any, Any], tuple[Any, ...]] = (
                    functools.partial(_step, model) if path == "eager" else functools.partial(_recomputed_step, model, self.recompute_block)
                )
            else:
                model, step = _compiled_step(path, network.widths, dtype, device)
            model.assign(network, dtype)
            x, y = _constant(batch.x, dtype), _constant(batch.y, dtype)
            result = _StepResult(*step(x, y))
        return _to_output(result, dtype)

    def recompute_block(self, index: int, layer: Any) -> Callable[[Any], tuple[Any, Any]]:
        """Layer ``index + 2``'s block, a^{l−1} → (z^l, a^l), as the ``recompute`` path hands it to ``tf.recompute_grad``,
        which runs it in the forward pass and again in the backward pass: the layer itself. A hook, so that a planted
        bug is a subclass overriding it (tests/training_mutants.py)."""
        return layer


@contextlib.contextmanager
def pinned_numerics() -> Iterator[None]:
    """Switch TensorFloat-32 off and op determinism on for one call, and restore both after it.

    TensorFlow enables TF32 by default: on an Ampere or later GPU float32 matrix products then round their
    inputs to a 10-bit significand, which the error bound (IEEE float32) does not describe. Op determinism is
    off by default: some kernels may then sum in a thread-dependent order, so that two calls -- or a run and
    its case file's replay -- can differ in the last bits. Both are process-wide flags, so each is set only
    for the call and put back as it was, whatever happens in between: the suite runs in its users' processes.
    ``is_op_determinism_enabled`` and ``disable_op_determinism`` are not exported under ``tf.config``
    (only ``enable_op_determinism`` is), so they are taken from the module that defines all three.
    """
    tf = _tf()
    from tensorflow.python.framework import config as tf_config

    tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
    deterministic = tf_config.is_op_determinism_enabled()
    try:
        if tf32:
            tf.config.experimental.enable_tensor_float_32_execution(False)
        if not deterministic:
            tf.config.experimental.enable_op_determinism()
        yield
    finally:
        if not deterministic:
            tf_config.disable_op_determinism()
        if tf32:
            tf.config.experimental.enable_tensor_float_32_execution(True)


def _device_name(device: str) -> str:
    return "/GPU:0" if device == "gpu" else "/CPU:0"


def _constant(values: np.ndarray, dtype: str) -> Any:
    """``values`` (float64, exactly representable in ``dtype``) as a TensorFlow tensor of format ``dtype``.

    numpy converts exactly; for bfloat16 it converts to ``tf.bfloat16.as_numpy_dtype`` (ml_dtypes' bfloat16,
    which TensorFlow itself uses), so no value passes through a rounding TensorFlow chose.
    """
    tf = _tf()
    tdtype = getattr(tf, MIXED[dtype][0] if dtype in MIXED else dtype)
    return tf.constant(np.asarray(values, dtype=tdtype.as_numpy_dtype), dtype=tdtype)


def _to_numpy(tensor: Any, carrier: np.dtype) -> np.ndarray:
    """A tensor or variable as numpy in the format's carrier (bfloat16 widens exactly to float32)."""
    return np.asarray(tensor.numpy()).astype(carrier)


@functools.cache
def _model_class() -> type:
    """The model class (``MLP`` of ``Dense`` layers), defined on first use: both subclass ``tf.Module``, which needs TensorFlow."""
    tf = _tf()

    class Dense(tf.Module):  # type: ignore[misc,name-defined]
        """The TensorFlow guide's dense layer with a sigmoid: ``z = x @ w + b``, ``a = σ(z)``, ``w`` of shape (in, out).

        For a mixed-precision cell the variables are float32 and the layer casts them and its input to the compute
        format with ``tf.cast``, the placement TensorFlow's mixed-precision guide describes for a custom layer.
        """

        def __init__(self, n_in: int, n_out: int, dtype: str, name: str) -> None:
            super().__init__(name=name)
            stored, self.compute = MIXED[dtype] if dtype in MIXED else (dtype, dtype)
            self.w = tf.Variable(tf.zeros((n_in, n_out), dtype=stored), name="w")
            self.b = tf.Variable(tf.zeros((n_out,), dtype=stored), name="b")

        def __call__(self, x: Any) -> tuple[Any, Any]:
            z = tf.matmul(tf.cast(x, self.compute), tf.cast(self.w, self.compute)) + tf.cast(self.b, self.compute)
            return z, tf.nn.sigmoid(z)

    class MLP(tf.Module):  # type: ignore[misc,name-defined]
        """The page's network: one :class:`Dense` per layer l = 2..L; returns [z^2..z^L] and [a^1..a^L]."""

        def __init__(self, widths: tuple[int, ...], dtype: str) -> None:
            super().__init__(name="page_network")
            self.layers = [
                Dense(n_in, n_out, dtype, name=f"layer_{l}") for l, (n_in, n_out) in enumerate(itertools.pairwise(widths), start=2)
            ]

        def __call__(self, x: Any) -> tuple[list[Any], list[Any]]:
            zs, activations = [], [x]
            for layer in self.layers:
                z, a = layer(activations[-1])
                zs.append(z)
                activations.append(a)
            return zs, activations

        def assign(self, network: Network, dtype: str) -> None:
            """Put the page's w^l (transposed to TensorFlow's (in, out) layout) and b^l into the variables."""
            for l, layer in zip(network.layers, self.layers, strict=True):
                layer.w.assign(_constant(network.w[l].T, dtype))
                layer.b.assign(_constant(network.b[l], dtype))

        @property
        def parameters(self) -> list[Any]:
            """w^2, b^2, ..., w^L, b^L in the page's order (``trainable_variables`` orders them by attribute name)."""
            return [v for layer in self.layers for v in (layer.w, layer.b)]

    return MLP


@dataclass
class _StepResult:
    """One training step's tensors: C, [z^l], [a^l] (l = 1..L), [∂C/∂w^l], [∂C/∂b^l], [δ^l], l = 2..L in order."""

    cost: Any
    zs: list[Any]
    activations: list[Any]
    grad_w: list[Any]
    grad_b: list[Any]
    deltas: list[Any] | None


def _step(model: Any, x: Any, y: Any) -> tuple[Any, ...]:
    """Forward, cost and one ``tape.gradient`` for the parameters and the z^l together, as :class:`_StepResult`'s fields.

    Asking the tape for ∂C/∂z^l beside ∂C/∂w^l and ∂C/∂b^l returns the δ^l that its backward pass computes on the
    way to the parameters, so the intermediates describe the same computation as the gradients. A tuple, not the
    dataclass, because a ``tf.function`` returns only nested tuples, lists and dicts of tensors.
    """
    tf = _tf()
    with tf.GradientTape() as tape:
        zs, activations = model(x)
        # C = Σ_x ½ Σ_j (y_j − a^L_j)²
        cost = 0.5 * tf.reduce_sum(tf.square(y - tf.cast(activations[-1], y.dtype)))  # a mixed cell's cost is float32
    parameters = model.parameters
    gradients = tape.gradient(cost, parameters + zs)
    count = len(parameters)
    return cost, zs, activations, gradients[0:count:2], gradients[1:count:2], gradients[count:]


def _recomputed_step(model: Any, block_of: Callable[[int, Any], Callable[[Any], tuple[Any, Any]]], x: Any, y: Any) -> tuple[Any, ...]:
    """:func:`_step` with each layer's block (``block_of(index, layer)``) under ``tf.recompute_grad``; z^l are the
    forward's, δ^l is None."""
    tf = _tf()
    zs: list[Any] = []

    def block(index: int, layer: Any) -> Callable[[Any], Any]:
        computed = block_of(index, layer)

        def forward(t: Any) -> Any:
            z, a = computed(t)
            if len(zs) < len(model.layers):  # the forward's z^l; the recompute, during tape.gradient, comes after
                zs.append(z)
            return a

        return tf.recompute_grad(forward)

    with tf.GradientTape() as tape:
        activations = [x]
        for index, layer in enumerate(model.layers):
            activations.append(block(index, layer)(activations[-1]))
        # C = Σ_x ½ Σ_j (y_j − a^L_j)², as in _step (a mixed cell's cost is float32)
        cost = 0.5 * tf.reduce_sum(tf.square(y - tf.cast(activations[-1], y.dtype)))
    gradients = tape.gradient(cost, model.parameters)
    return cost, zs, activations, gradients[0::2], gradients[1::2], None


_STEPS: OrderedDict[tuple[str, tuple[int, ...], str, str], tuple[Any, Callable[[Any, Any], tuple[Any, ...]]]] = OrderedDict()


def _compiled_step(path: str, widths: tuple[int, ...], dtype: str, device: str) -> tuple[Any, Callable[[Any, Any], tuple[Any, ...]]]:
    """A model of these widths and its ``tf.function``-wrapped step, built once per process and reused.

    Why a cache of models: a ``tf.function`` traces anew for every Python object it closes over or is passed,
    so a fresh model per call would retrace on every call (and TensorFlow warns after five). A training loop
    keeps one model and assigns new values to its variables; so does this adapter, which is why every call
    starts by assigning every parameter. ``autograph=False``: the step has no tensor-dependent control flow
    (its loop runs over the Python list of layers while tracing), so AutoGraph would only add tracing time.
    """
    tf = _tf()
    key = (path, widths, dtype, device)
    cached = _STEPS.get(key)
    if cached is not None:
        _STEPS.move_to_end(key)
        return cached
    model = _model_class()(widths, dtype)
    compiled = tf.function(functools.partial(_step, model), jit_compile=path == "xla", autograph=False)
    _STEPS[key] = (model, compiled)
    while len(_STEPS) > CACHE_SIZE:
        _STEPS.popitem(last=False)
    return model, compiled


def _to_output(result: _StepResult, dtype: str) -> AdapterOutput:
    """Convert to numpy in the format's carrier dtype, keyed by the page's layer l (a^1 is the input x)."""
    tf = _tf()
    carrier = float_format(dtype).carrier

    def by_layer(tensors: list[Any], first: int = 2) -> dict[int, np.ndarray]:
        return {l: _to_numpy(t, carrier) for l, t in enumerate(tensors, start=first)}

    return AdapterOutput(
        gradients=Gradients(
            {l: _to_numpy(g, carrier).T for l, g in enumerate(result.grad_w, start=2)},
            {l: _to_numpy(g, carrier) for l, g in enumerate(result.grad_b, start=2)},
        ),
        cost=float(tf.cast(result.cost, tf.float64).numpy()),
        a=by_layer(result.activations, first=1),
        z=by_layer(result.zs),
        delta=by_layer(result.deltas) if result.deltas is not None else None,
    )
