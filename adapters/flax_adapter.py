"""The built-in Flax adapter: the page's sigmoid network written as Flax NNX users write an MLP.

The model is an ``nnx.Module`` holding one ``nnx.Linear`` per layer l = 2..L with ``nnx.sigmoid`` between them.
``nnx.Linear`` keeps its kernel as (n(l−1), n(l)), the transpose of the page's w^l, and computes
``a @ kernel + bias``; the adapter transposes on the way in and out, which the suite's layout round trip checks.
The cost is the page's C = 1/2 Σ_j (y_j − a^L_j)², summed over the batch too.

Execution paths, NNX's two ways to get a gradient:

* ``"jit"``: ``nnx.jit(nnx.grad(...))``, the canonical NNX training step, one XLA program per shape;
* ``"grad"``: ``nnx.grad`` run eagerly, op by op. Opt-in, for the reason JAX's eager ``grad`` is: JAX compiles
  every primitive for every new operand shape, about a second per new network shape on 2 CPU cores, so a default
  run of its cells would take minutes (docs/backends.md, "Flax").

Both return δ^l = ∂C/∂z^l from the same backward pass: a zero array is added to every z^l and ``nnx.grad``
differentiates with respect to those zeros too (``argnums=(0, 1)``); their cotangents are δ^l.

Why the details below matter for a verdict, and for a run's cost:

* The model is built from the page's parameters by its layers' initialisers (``kernel_init``), and every array
  reaches JAX by transfer (``jax.device_put``), never by a computation: eager JAX compiles each operation for every
  new shape, so drawing random initial kernels, or making the zero perturbations with ``jnp.zeros``, would cost a
  compilation per new network shape outside the differentiated program (a trial run that built its model with
  random initialisation, and ran the eager ``grad`` path by default, took 157 s for 8 cells).
* Matmuls run at ``precision=HIGHEST`` (an ``nnx.Linear`` argument), and float64 runs inside JAX's scoped x64
  switch, for the reasons the JAX adapter gives (:mod:`backprop_conformance.adapters.jax_adapter`).
* Flax's σ is ``jax.nn.sigmoid`` and its gradient JAX's, so Flax's known defects are JAX's: the adapter declares
  the JAX version it runs on (:attr:`Capabilities.frameworks`), which known-defect entries can be keyed by.
* Importing this module does not import Flax or JAX (adapter contract).

Mixed precision (opt-in cells ``mixed-bfloat16`` and ``mixed-float16``) is Flax's own: every ``nnx.Linear`` gets
``param_dtype=float32`` and ``dtype`` the compute format, so it keeps float32 parameters and casts its input, kernel
and bias to the compute format inside the forward pass, as the JAX adapter's policy does by hand; the policy is the
JAX adapter's (:data:`~backprop_conformance.adapters.jax_adapter.POLICIES`), since the arithmetic is XLA's in both.
The zero perturbations are in the compute format, so that adding them leaves z^l where the layer rounded it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from backprop_conformance.adapters import zero_probes
from backprop_conformance.adapters.base import Adapter, AdapterOutput, Capabilities
from backprop_conformance.adapters.jax_adapter import POLICIES
from backprop_conformance.reference.dtypes import MIXED, float_format
from backprop_conformance.reference.model import Batch, Gradients, Network

DTYPES: tuple[str, ...] = ("float64", "float32", "float16", "bfloat16")
PATHS: tuple[str, ...] = ("jit", "grad")
DEFAULT_PATHS: tuple[str, ...] = ("jit",)

ACCUMULATION: dict[str, dict[str, str]] = {
    "float16": {"dot": "float32", "cost_sum": "float32"},
    "bfloat16": {"dot": "float32", "cost_sum": "float32"},
}
"""Measured with ``python -m backprop_conformance accumulation flax`` (flax 0.12.8 on jax 0.10.2): XLA's, as for the
JAX adapter: half-precision products and ``jnp.sum`` correctly rounded in every trial, the bias gradient's batch sum
kept in the format."""


def _modules() -> tuple[Any, Any]:
    import jax
    from flax import nnx

    return jax, nnx


def _precision_scope(dtype: str) -> contextlib.AbstractContextManager[Any]:
    """JAX's scoped x64 switch for float64 (never the global flag: the suite runs inside users' processes)."""
    if dtype != "float64":
        return contextlib.nullcontext()
    jax, _ = _modules()
    enable_x64 = getattr(jax, "enable_x64", None)
    if enable_x64 is None:
        from jax.experimental import enable_x64
    return enable_x64(True)


@functools.cache
def _model_class() -> type:
    """The Flax user's MLP class, defined once Flax is imported: ``nnx.Linear`` layers whose initialisers give the
    page's parameters, as a model is built from known weights."""
    jax, nnx = _modules()

    def given(value: Any) -> Callable[..., Any]:
        return lambda key, shape, dtype: value

    class MLP(nnx.Module):
        def __init__(self, parameters: list[tuple[Any, Any]], dtype: Any, param_dtype: Any, rngs: Any) -> None:
            highest = jax.lax.Precision.HIGHEST
            self.layers = nnx.List(
                [
                    nnx.Linear(
                        *kernel.shape,
                        dtype=dtype,
                        param_dtype=param_dtype,
                        precision=highest,
                        kernel_init=given(kernel),
                        bias_init=given(bias),
                        rngs=rngs,
                    )
                    for kernel, bias in parameters
                ]
            )

        def __call__(self, x: Any, perturbations: list[Any]) -> tuple[Any, list[Any], list[Any]]:
            # z^l = a^{l−1} (w^l)ᵀ + b^l plus the zero whose cotangent is δ^l, a^l = σ(z^l)
            return zero_probes.forward(self.layers, nnx.sigmoid, x, perturbations)

    return MLP


def _formats(dtype: str) -> tuple[Any, Any]:
    """(parameter format, compute format) as JAX dtypes: a format's own twice, or a mixed policy's storage and compute."""
    jax, _ = _modules()
    storage, compute = MIXED.get(dtype, (dtype, dtype))
    return jax.numpy.dtype(storage), jax.numpy.dtype(compute)


def _model(network: Network, dtype: str) -> Any:
    """The model holding w^l (as the kernel (w^l)ᵀ) and b^l, in the parameter format, computing in the compute format."""
    _, nnx = _modules()
    stored, computed = _formats(dtype)
    parameters = [(_put(network.w[l].T, stored), _put(network.b[l], stored)) for l in network.layers]
    return _model_class()(parameters, computed, stored, nnx.Rngs(0))


def _put(array: np.ndarray, dtype: Any) -> Any:
    """``array`` as a JAX array of ``dtype``: a transfer, exact (the values are representable), and no computation,
    which eager JAX would compile for every new shape."""
    jax, _ = _modules()
    return jax.device_put(np.asarray(array, dtype=dtype))


def _cost(model: Any, perturbations: list[Any], x: Any, y: Any) -> tuple[Any, tuple[Any, list[Any], list[Any]]]:
    """C = Σ_x 1/2 Σ_j (y_j − a^L_j)², with the forward trace (C, [z^l], [a^l]) as auxiliary output."""
    jax, _ = _modules()
    a, zs, activations = model(x, perturbations)
    cost = 0.5 * jax.numpy.sum((y - a) ** 2)
    return cost, (cost, zs, activations)


@functools.cache
def _differentiated(path: str) -> Callable[..., Any]:
    """``nnx.grad`` of the cost with respect to the model and the zero perturbations, jitted for ``"jit"``; built
    once per process so that ``nnx.jit``'s cache is reused."""
    _, nnx = _modules()
    step = nnx.grad(_cost, argnums=(0, 1), has_aux=True)
    return nnx.jit(step) if path == "jit" else step


class FlaxAdapter(Adapter):
    """The page's network as a Flax NNX MLP, differentiated by ``nnx.grad``, jitted or eager."""

    requires: ClassVar[tuple[str, ...]] = ("flax.nnx", "jax")

    def capabilities(self) -> Capabilities:
        jax, _ = _modules()
        return Capabilities(
            name="flax",
            framework="Flax NNX",
            version=importlib.metadata.version("flax"),
            dtypes=(*DTYPES, *POLICIES),
            paths=PATHS,
            default_paths=DEFAULT_PATHS,
            accumulation=dict(ACCUMULATION),
            shape_compiled_paths=PATHS,
            frameworks={"jax": jax.__version__},
            policies=POLICIES,
            default_dtypes=DTYPES,
        )

    def use_cache(self, directory: Path) -> str | None:
        """JAX's persistent compilation cache, as the JAX adapter sets it (``nnx.jit`` compiles through ``jax.jit``).

        The cache is JAX's, one per process: in a run with the JAX backend it is already set, in JAX's directory,
        and the header line says that Flax shares it rather than repeating JAX's line under JAX's name.
        """
        from backprop_conformance.adapters.jax_adapter import JaxAdapter
        from backprop_conformance.adapters.jax_model import import_jax

        configured = import_jax().config.jax_compilation_cache_dir
        if configured is not None:
            return f"flax: shares JAX's compilation cache ({configured}): nnx.jit compiles through jax.jit"
        line = JaxAdapter().use_cache(directory)
        return None if line is None else "flax: " + line.removeprefix("jax: ")

    def load_parameters(self, network: Network, *, dtype: str, device: str = "cpu") -> Network:
        """Build the model with w^l, b^l and read its ``Linear`` layers' kernel (transposed back) and bias."""
        carrier = float_format(dtype).carrier
        with _precision_scope(dtype):
            layers = _model(network, dtype).layers
            return Network.from_lists(
                [_to_numpy(m.kernel[...], carrier).T for m in layers], [_to_numpy(m.bias[...], carrier) for m in layers]
            )

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        """∂C/∂w^l and ∂C/∂b^l (l = 2..L), with a^l, z^l and δ^l from the same pass, computed by Flax in ``dtype``."""
        carrier = float_format(dtype).carrier
        with _precision_scope(dtype):
            stored, computed = _formats(dtype)
            model = _model(network, dtype)
            x, y = _put(batch.x, stored), _put(batch.y, stored)
            zeros = [_put(np.zeros((batch.size, width)), computed) for width in network.widths[1:]]
            (grads, deltas), (cost, zs, activations) = _differentiated(path)(model, zeros, x, y)

            def by_layer(arrays: list[Any], first: int = 2) -> dict[int, np.ndarray]:
                return {l: _to_numpy(array, carrier) for l, array in enumerate(arrays, start=first)}

            layers = [grads["layers"][i] for i in range(network.depth - 1)]
            return AdapterOutput(
                gradients=Gradients(
                    {l: _to_numpy(g["kernel"][...], carrier).T for l, g in zip(network.layers, layers, strict=True)},
                    {l: _to_numpy(g["bias"][...], carrier) for l, g in zip(network.layers, layers, strict=True)},
                ),
                cost=float(cost),
                a=by_layer(activations, first=1),
                z=by_layer(zs),
                delta=by_layer(deltas),
            )


def _to_numpy(array: Any, carrier: np.dtype) -> np.ndarray:
    """A JAX array as numpy in the format's carrier (bfloat16 widens exactly to float32)."""
    return np.asarray(array).astype(carrier)
