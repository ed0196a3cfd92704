"""The built-in MLX adapter: the page's sigmoid network written as MLX users write an MLP, on MLX's CPU backend.

The model is an ``mlx.nn.Module`` holding one ``mlx.nn.Linear`` per layer l = 2..L, whose ``weight`` is w^l in page
layout (n(l), n(l−1)) (``Linear`` computes ``x @ weight.T + bias``), with ``mx.sigmoid`` between them. The cost is
the page's C = 1/2 Σ_j (y_j − a^L_j)², summed over the batch too.

Execution paths, MLX's two ways to run a training step:

* ``"value_and_grad"``: ``mx.value_and_grad`` run eagerly, op by op (MLX is lazy: the graph is built, then evaluated
  by ``mx.eval``);
* ``"compile"``: the same function under ``mx.compile``, which fuses element-wise chains into generated CPU kernels.

Both return δ^l = ∂C/∂z^l from the same backward pass, the recipe of the JAX adapter's ``vjp`` path: a zero array
is added to every z^l and the function is differentiated with respect to those zeros too; their cotangents are
δ^l, and adding zeros leaves z^l exact.

Why the details below matter for a verdict:

* Every computation runs in an ``mx.stream(mx.cpu)`` scope, never by changing MLX's default device: the suite runs
  inside users' processes and must leave their configuration as it found it. MLX's float64 exists on the CPU only.
* The differentiated functions are built once per path (:func:`_differentiated`): ``mx.compile`` caches its traces
  per function object, so rebuilding it on every call would retrace every time.
* ``compile`` is not shape-compiled (:attr:`Capabilities.shape_compiled_paths`): its first call in a process builds
  the fused kernels (about a second), and every later shape, depth or batch size retraces in about a millisecond
  and reuses them (``python -m benchmarks.bench_suite``-style timings in docs/backends.md, "MLX"), so networks may
  take their shapes freely.
* Importing this module does not import MLX (adapter contract): MLX is imported inside functions.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import itertools
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np

from backprop_conformance.adapters import zero_probes
from backprop_conformance.adapters.base import Adapter, AdapterOutput, Capabilities
from backprop_conformance.reference.dtypes import float_format
from backprop_conformance.reference.model import Batch, Gradients, Network

DTYPES: tuple[str, ...] = ("float64", "float32", "float16", "bfloat16")
PATHS: tuple[str, ...] = ("value_and_grad", "compile")

ACCUMULATION: dict[str, str] = {"float16": "float32", "bfloat16": "float32"}
"""Measured with ``python -m backprop_conformance accumulation mlx`` (mlx 0.32.4, CPU, both paths): in float16 and
bfloat16 every sum -- the forward products, the weight gradient's and the bias gradient's sums over the batch, the
cost's ``mx.sum`` -- is correctly rounded in every trial, as float32 accumulation is. float32 and float64 sums are
not (they accumulate in their own format)."""


def _mx() -> Any:
    import mlx.core as mx

    return mx


def _dtype(dtype: str) -> Any:
    return getattr(_mx(), dtype)


@contextlib.contextmanager
def _on_cpu() -> Iterator[None]:
    """MLX's CPU stream for the scope, leaving the process's default device alone."""
    mx = _mx()
    with mx.stream(mx.cpu):
        yield


def _put(array: np.ndarray, dtype: str) -> Any:
    """``array`` as an MLX array of format ``dtype``: exact, the values are representable (checked before).

    The format is always named: ``mx.array`` turns a float64 numpy array into float32 unless told otherwise.
    bfloat16 comes from its float32 carrier (numpy has no bfloat16), exactly."""
    return _mx().array(np.asarray(array, dtype=float_format(dtype).carrier), dtype=_dtype(dtype))


def _to_numpy(array: Any, carrier: np.dtype) -> np.ndarray:
    """An MLX array as numpy in the format's carrier (bfloat16 widens exactly to float32 first)."""
    mx = _mx()
    if array.dtype == mx.bfloat16:
        array = array.astype(mx.float32)
    return np.array(array).astype(carrier)


def _model(network: Network, dtype: str) -> Any:
    """The MLX user's model with the page's parameters: ``model.layers[l - 2]`` is the ``nn.Linear`` of layer l."""
    import mlx.nn as nn

    class MLP(nn.Module):
        def __init__(self, widths: tuple[int, ...]) -> None:
            super().__init__()
            self.layers = [nn.Linear(n_in, n_out) for n_in, n_out in itertools.pairwise(widths)]

        def __call__(self, x: Any, perturbations: list[Any]) -> tuple[Any, list[Any], list[Any]]:
            # z^l = a^{l−1} (w^l)ᵀ + b^l plus the zero whose cotangent is δ^l, a^l = σ(z^l)
            return zero_probes.forward(self.layers, nn.sigmoid, x, perturbations)

    model = MLP(network.widths)
    model.update({"layers": [{"weight": _put(network.w[l], dtype), "bias": _put(network.b[l], dtype)} for l in network.layers]})
    return model


def _cost(model: Any, parameters: Any, perturbations: list[Any], x: Any, y: Any) -> tuple[Any, list[Any], list[Any]]:
    """C = Σ_x 1/2 Σ_j (y_j − a^L_j)² with the model's parameters replaced by ``parameters``, and the forward trace."""
    import mlx.nn as nn

    model.update(parameters)
    a, zs, activations = model(x, perturbations)
    return 0.5 * nn.losses.mse_loss(a, y, reduction="sum"), zs, activations


@functools.cache
def _differentiated(path: str, depth: int) -> Callable[..., Any]:
    """``(model, parameters, zeros, x, y) -> ((C, [z^l], [a^l]), (∂C/∂parameters, [δ^l]))`` for ``path`` and a network of
    ``depth`` layers, built once per process so that ``mx.compile``'s traces are reused.

    One function per depth, closed over a model of that depth whose parameters each call replaces: ``mx.compile``
    traces array arguments only, so the model object cannot be an argument of the compiled function.
    """
    mx = _mx()
    holder: dict[str, Any] = {}

    def cost(parameters: Any, perturbations: list[Any], x: Any, y: Any) -> tuple[Any, list[Any], list[Any]]:
        return _cost(holder["model"], parameters, perturbations, x, y)

    step = mx.value_and_grad(cost, argnums=(0, 1))
    if path == "compile":
        step = mx.compile(step)

    def call(model: Any, parameters: Any, perturbations: list[Any], x: Any, y: Any) -> Any:
        holder["model"] = model
        return step(parameters, perturbations, x, y)

    return call


class MlxAdapter(Adapter):
    """The page's network as an ``mlx.nn`` MLP on MLX's CPU backend, differentiated by ``mx.value_and_grad``, eager or
    under ``mx.compile``."""

    requires: ClassVar[tuple[str, ...]] = ("mlx.core",)

    def capabilities(self) -> Capabilities:
        return Capabilities(
            name="mlx",
            framework="MLX",
            version=importlib.metadata.version("mlx"),
            dtypes=DTYPES,
            paths=PATHS,
            default_paths=PATHS,
            accumulation=dict(ACCUMULATION),
        )

    def load_parameters(self, network: Network, *, dtype: str, device: str = "cpu") -> Network:
        """Build the model with w^l, b^l and read its ``Linear`` layers' weight and bias back in page layout."""
        carrier = float_format(dtype).carrier
        with _on_cpu():
            layers = _model(network, dtype).layers
            return Network.from_lists([_to_numpy(m.weight, carrier) for m in layers], [_to_numpy(m.bias, carrier) for m in layers])

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        """∂C/∂w^l and ∂C/∂b^l (l = 2..L), with a^l, z^l and δ^l from the same pass, computed by MLX in ``dtype``."""
        mx = _mx()
        carrier = float_format(dtype).carrier
        with _on_cpu():
            model = _model(network, dtype)
            x, y = _put(batch.x, dtype), _put(batch.y, dtype)
            zeros = [mx.zeros((batch.size, width), dtype=_dtype(dtype)) for width in network.widths[1:]]
            (cost, zs, activations), (grads, deltas) = _differentiated(path, network.depth)(
                model, model.trainable_parameters(), zeros, x, y
            )
            mx.eval(cost, zs, activations, grads, deltas)

            def by_layer(arrays: list[Any], first: int = 2) -> dict[int, np.ndarray]:
                return {l: _to_numpy(array, carrier) for l, array in enumerate(arrays, start=first)}

            layers = grads["layers"]
            return AdapterOutput(
                gradients=Gradients(by_layer([g["weight"] for g in layers]), by_layer([g["bias"] for g in layers])),
                cost=float(cost.astype(mx.float32).item()) if dtype == "bfloat16" else float(cost.item()),
                a=by_layer(activations, first=1),
                z=by_layer(zs),
                delta=by_layer(deltas),
            )
