"""Training-loop bugs planted in the built-in adapters' training-loop paths: the suite must fail each, and say which.

Each is a built-in adapter (torch, JAX or TensorFlow) with one step of its training loop changed (one hook of
:class:`~backprop_conformance.adapters.torch_adapter.TorchAdapter`, of
:class:`~backprop_conformance.adapters.jax_adapter.JaxAdapter` (:class:`~backprop_conformance.adapters.jax_training.Hooks`)
or of :class:`~backprop_conformance.adapters.tensorflow_adapter.TensorFlowAdapter` overridden), the place where these
bugs live in users' loops and in the libraries they use. Named on the command line as ``--conformance-backend
tests.training_mutants:Name``; ``benchmarks/kill_table.py`` lists them beside :mod:`tests.mutants`' catalogue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from backprop_conformance.adapters.base import Adapter, AdapterOutput, Capabilities
from backprop_conformance.adapters.jax_adapter import JaxAdapter
from backprop_conformance.adapters.jax_model import import_jax
from backprop_conformance.adapters.tensorflow_adapter import TensorFlowAdapter
from backprop_conformance.adapters.torch_adapter import TorchAdapter
from backprop_conformance.adapters.torch_model import build, import_torch
from backprop_conformance.reference.model import Batch, Network
from tests.ddp_mutants import DTYPES, one_path

MODULE = "tests.training_mutants"


class TrainingMutant(Adapter):
    """A built-in adapter narrowed to one training-loop path and two formats; a subclass plants one bug."""

    name: ClassVar[str] = ""
    path: ClassVar[str] = ""
    bug: ClassVar[str] = ""
    """Words the failure message must contain: the diagnosis (or the contract's complaint) naming this bug."""

    def capabilities(self) -> Capabilities:
        return one_path(super().capabilities(), self.name, self.path)


class TorchMutant(TrainingMutant, TorchAdapter):
    """The built-in torch adapter with one training-loop bug."""


class JaxMutant(TrainingMutant, JaxAdapter):
    """The built-in JAX adapter with one training-loop bug (its programs are its own: the hooks key them)."""


class TensorFlowMutant(TrainingMutant, TensorFlowAdapter):
    """The built-in TensorFlow adapter with one training-loop bug."""


class AveragedMicroBatches(TorchMutant):
    """Each micro-batch's cost divided by k before ``backward()``: the accumulation averages instead of summing."""

    name = "train-averaged-micro-batches"
    path = "accumulate"
    bug = "the micro-batch gradients were averaged"

    def micro_batch_cost(self, cost: Any, micro_batches: int) -> Any:
        return cost / micro_batches


class DroppedMicroBatch(TorchMutant):
    """The last micro-batch's ``backward()`` never runs (a step condition off by one): its gradient is lost."""

    name = "train-dropped-micro-batch"
    path = "accumulate"
    bug = "dropped from the accumulation"

    def micro_batch_backward(self, cost: Any, index: int, micro_batches: int) -> None:
        if index < micro_batches - 1 or micro_batches == 1:
            cost.backward()


class GradNotZeroed(TorchMutant):
    """The model is kept from one step to the next and its ``.grad`` never zeroed: each step adds the previous steps' gradients."""

    name = "train-grad-not-zeroed"
    path = "accumulate"
    bug = "gradients must not accumulate"

    def __init__(self) -> None:
        self.models: dict[tuple[Any, ...], Any] = {}

    def fresh_model(self, network: Network, tdtype: Any, device: str) -> Any:
        torch = import_torch()
        key = (network.widths, tdtype, device)
        if key not in self.models:
            self.models[key] = build(network, tdtype, device)
            return self.models[key]
        model = self.models[key]
        linears = [m for m in model if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for l, linear in zip(network.layers, linears, strict=True):
                linear.weight.copy_(torch.tensor(network.w[l], dtype=tdtype))
                linear.bias.copy_(torch.tensor(network.b[l], dtype=tdtype))
        return model


class AveragedPerExample(TorchMutant):
    """The per-example gradients averaged over the batch instead of summed (a DP-SGD step's mean taken as the gradient)."""

    name = "train-averaged-per-example"
    path = "per-example"
    bug = "the per-example gradients were averaged"

    def per_example_sum(self, per_example: Any) -> Any:
        return per_example.mean(0)


class BroadcastFirstExample(TorchMutant):
    """The first example's gradient broadcast to every example (a vmap whose in_dims left the batch unmapped after one)."""

    name = "train-broadcast-example"
    path = "per-example"
    bug = "of example 2 alone"

    def per_example_terms(self, per_example: Any) -> Any:
        return per_example[:1].expand_as(per_example).contiguous()


class StaleRemat(TorchMutant):
    """The recompute of each checkpointed block uses the parameters of the step before (a snapshot never refreshed)."""

    name = "train-stale-remat"
    path = "checkpoint"
    bug = "so the error arises in the gradient step itself"

    def __init__(self) -> None:
        self.previous: dict[tuple[Any, ...], Any] = {}

    def block(self, index: int, linear: Any, sigmoid: Any) -> Any:
        torch = import_torch()
        key = (index, tuple(linear.weight.shape), linear.weight.dtype)
        stale = self.previous.get(key)
        self.previous[key] = linear.weight.detach().clone()
        calls = []

        def forward(a: Any) -> Any:
            calls.append(a)
            if len(calls) == 1 or stale is None:
                return sigmoid(linear(a))
            weight = stale + (linear.weight - linear.weight.detach())  # the stale values, the gradient still reaching w
            return sigmoid(torch.nn.functional.linear(a, weight, linear.bias))

        return forward


class JaxAveragedMicroBatches(JaxMutant):
    """Each micro-batch's cost divided by k inside the accumulation scan: the accumulation averages instead of summing."""

    name = "train-jax-averaged-micro-batches"
    path = "accumulate"
    bug = "the micro-batch gradients were averaged"

    def micro_batch_cost(self, cost: Any, micro_batches: Any) -> Any:
        return cost / micro_batches


class JaxDroppedMicroBatch(JaxMutant):
    """The scan's masks stop one micro-batch short (a loop bound off by one): the last micro-batch's gradient is lost."""

    name = "train-jax-dropped-micro-batch"
    path = "accumulate"
    bug = "dropped from the accumulation"

    def micro_batch_pieces(self, batch: Batch) -> tuple[slice, ...]:
        pieces = batch.pieces
        return pieces[:-1] if len(pieces) > 1 else pieces


class JaxAveragedPerExample(JaxMutant):
    """``vmap(grad)``'s per-example gradients averaged over the batch instead of summed."""

    name = "train-jax-averaged-per-example"
    path = "per-example"
    bug = "the per-example gradients were averaged"

    def per_example_sum(self, per_example: Any) -> Any:
        return per_example.mean(0)


class JaxBroadcastFirstExample(JaxMutant):
    """The first example's gradient broadcast to every example (an ``in_axes`` that maps the batch for one example only)."""

    name = "train-jax-broadcast-example"
    path = "per-example"
    bug = "of example 2 alone"

    def per_example_terms(self, per_example: Any) -> Any:
        return import_jax().numpy.broadcast_to(per_example[:1], per_example.shape)


def _parameters(network: Network) -> list[tuple[str, int, np.ndarray]]:
    return [(kind, l, values[l]) for kind, values in (("w", network.w), ("b", network.b)) for l in network.layers]


class JaxStaleRemat(JaxMutant):
    """The remat's backward pass recomputes each layer with the parameters of the call before (a ``custom_vjp`` whose
    recompute reads a snapshot never refreshed); the forward pass, and so z^l and a^l, use the current ones."""

    name = "train-jax-stale-remat"
    path = "remat"
    bug = "so the error arises in the gradient step itself"

    def __init__(self) -> None:
        self.current: Network | None = None
        self.previous: dict[tuple[str, int, tuple[int, ...], np.dtype], np.ndarray] = {}

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        self.current = network
        try:
            return super().run(network, batch, dtype=dtype, path=path, device=device)
        finally:
            for kind, l, value in _parameters(network):
                self.previous[(kind, l, value.shape, np.dtype(dtype))] = value

    def stale(self, value: np.ndarray) -> np.ndarray:
        """The previous call's value (in this format) of the parameter whose current value is ``value`` (itself on a first call)."""
        assert self.current is not None
        for kind, l, current in _parameters(self.current):
            if current.shape == value.shape and np.array_equal(current, np.asarray(value, dtype=np.float64)):
                return np.asarray(self.previous.get((kind, l, current.shape, value.dtype), current)).astype(value.dtype)
        return np.asarray(value)

    def checkpointed(self, layer: Callable[..., Any], policy: Any) -> Callable[..., Any]:
        jax = import_jax()

        @jax.custom_vjp
        def remat(w: Any, b: Any, a: Any) -> Any:
            return layer(w, b, a)

        def forward(w: Any, b: Any, a: Any) -> Any:
            return layer(w, b, a), (w, b, a)

        def backward(saved: Any, cotangent: Any) -> Any:
            w, b, a = saved
            stale_w = jax.pure_callback(self.stale, jax.ShapeDtypeStruct(w.shape, w.dtype), w)
            stale_b = jax.pure_callback(self.stale, jax.ShapeDtypeStruct(b.shape, b.dtype), b)
            _, pullback = jax.vjp(layer, stale_w, stale_b, a)
            return pullback(cotangent)

        remat.defvjp(forward, backward)
        return remat


class JaxScanFirstLayer(JaxMutant):
    """Every step of the layer scan computes with the stack's first slice (``stacked[0]`` for the step's own): the
    scanned layers 4..L−1 all run layer 3's weights and biases."""

    name = "train-jax-scan-first-layer"
    path = "scan"
    bug = "computed with layer 3's parameters"

    def scan_step_parameters(self, step: tuple[Any, Any], stacked: tuple[Any, Any]) -> tuple[Any, Any]:
        w, b = stacked
        return (w[0], b[0]) if w.shape[0] else step  # an empty stack (L ≤ 3) has no first slice, and no step runs


class TensorFlowStaleRecompute(TensorFlowMutant):
    """``tf.recompute_grad``'s recompute of each block uses the weights of the call before (a snapshot never refreshed)."""

    name = "train-tf-stale-recompute"
    path = "recompute"
    bug = "so the error arises in the gradient step itself"

    def __init__(self) -> None:
        self.previous: dict[tuple[Any, ...], Any] = {}

    def recompute_block(self, index: int, layer: Any) -> Callable[[Any], Any]:
        import tensorflow as tf

        key = (index, tuple(layer.w.shape), layer.w.dtype)
        stale = self.previous.get(key)
        self.previous[key] = tf.identity(layer.w)
        calls = []

        def forward(a: Any) -> Any:
            calls.append(a)
            if len(calls) == 1 or stale is None:
                return layer(a)
            w = stale + (layer.w - tf.stop_gradient(layer.w))  # the stale values, the gradient still reaching w
            z = tf.matmul(a, w) + layer.b
            return z, tf.nn.sigmoid(z)

        return forward


MUTANTS = (
    AveragedMicroBatches,
    DroppedMicroBatch,
    GradNotZeroed,
    AveragedPerExample,
    BroadcastFirstExample,
    StaleRemat,
    JaxAveragedMicroBatches,
    JaxDroppedMicroBatch,
    JaxAveragedPerExample,
    JaxBroadcastFirstExample,
    JaxStaleRemat,
    JaxScanFirstLayer,
    TensorFlowStaleRecompute,
)


def backend_name(adapter: type[TrainingMutant]) -> str:
    """The ``--conformance-backend`` argument that names ``adapter``."""
    return f"{MODULE}:{adapter.__name__}"


def cells(adapter: type[TrainingMutant]) -> list[str]:
    """The ids of ``adapter``'s cells: ``<name>-<path>-<dtype>``."""
    return [f"{adapter.name}-{adapter.path}-{dtype}" for dtype in DTYPES]
