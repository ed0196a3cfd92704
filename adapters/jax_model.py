"""The page's network in JAX, as JAX users write an MLP, and the transformed functions of it that JAX's paths run.

Parameters are a list of (W, b) pairs, one per layer l = 2..L, with W = w^l in page layout (n(l), n(l−1)), so
``W[j-1, k-1]`` is w^l_jk and a layer is ``z = a @ W.T + b`` (z^l_j = Σ_k w^l_jk a^{l−1}_k + b^l_j), a = σ(z) with
``jax.nn.sigmoid``. The cost is the page's C = 1/2 Σ_j (y_j − a^L_j)², summed over the batch too.

One module for the network, its transforms and the conversions to and from numpy, shared by the single-process
paths (:mod:`~backprop_conformance.adapters.jax_adapter`), the process that compiles them ahead
(:mod:`~backprop_conformance.adapters.jax_cache_filler`) and the ``sharded`` path's worker
(:mod:`~backprop_conformance.adapters.jax_sharded_mesh`), so that every one of them differentiates the same
forward pass.

Why the details matter for a verdict:

* Matmuls run at ``precision=HIGHEST``, passed to each product rather than set globally: on GPUs the default
  float32 precision may use TF32 (10-bit significands), which the error bound does not describe and which must
  not leak into, or out of, the user's process.
* float64 runs inside the scoped ``enable_x64`` context (:func:`precision_scope`), never by flipping the global
  ``jax_enable_x64`` flag: the suite runs inside users' processes and must leave their JAX configuration as it
  found it.
* The differentiated functions are built once per path (:func:`differentiated`): ``jax.jit`` caches compiled
  programs per function object, and rebuilding ``jax.jit(jax.grad(f))`` on every call would recompile every time.
  The cache then keys on shapes, dtypes, device and the x64 context, so a repeated architecture never recompiles.
* Importing this module does not import JAX (adapter contract): JAX is imported inside functions.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np

from backprop_conformance.reference.dtypes import MIXED
from backprop_conformance.reference.model import Network


def import_jax() -> Any:
    """Import JAX on first use only, so that listing adapters never imports (or fails on) it."""
    import jax

    return jax


def _x64_context() -> contextlib.AbstractContextManager[Any]:
    """The scoped x64 switch: ``jax.enable_x64(True)`` (JAX ≥ 0.8), else ``jax.experimental.enable_x64(True)``.

    Both restore the previous value on exit and are thread-local, unlike ``jax.config.update``, which would
    switch 64-bit types on for the rest of the user's process.
    """
    jax = import_jax()
    enable_x64 = getattr(jax, "enable_x64", None)
    if enable_x64 is None:
        from jax.experimental import enable_x64
    return enable_x64(True)


def forward(
    params: list[tuple[Any, Any]], x: Any, y: Any, perturbations: list[Any] | None = None, mask: Any = None, compute: str | None = None
) -> tuple[Any, tuple[Any, ...]]:
    """C and the forward trace (C, [z^2..z^L], [a^1..a^L]) of the page's network, in the arrays' own dtype.

    ``compute``, for a mixed-precision policy, is the format the layers compute in: the float32 parameters and inputs
    are cast to it inside the forward pass, as Flax's ``dtype``/``param_dtype`` do, so that the gradient flows back
    through the casts to the float32 parameters. ``y − a^L`` is then promoted to float32 by the float32 targets.

    ``params[l - 2]`` is (w^l, b^l). ``perturbations``, when given, holds one zero array per layer added to
    z^l, so that differentiating with respect to it yields δ^l = ∂C/∂z^l (adding zeros leaves z^l exact).
    ``mask``, when given, is a (B, 1) column that multiplies each example's squared residual: 1 for a real
    example and 0 for the padding the ``sharded`` path adds (:mod:`~backprop_conformance.adapters.jax_sharded`),
    exact either way. Without one the cost is the page's, with no product at all.
    """
    jax = import_jax()
    jnp = jax.numpy
    highest = jax.lax.Precision.HIGHEST
    if compute is not None:
        params = [(w.astype(compute), b.astype(compute)) for w, b in params]
        x = x.astype(compute)
    a = x
    zs = []
    activations = [x]
    for index, (w, b) in enumerate(params):
        # z^l_j = Σ_k w^l_jk a^{l−1}_k + b^l_j, one example per row.
        z = jnp.matmul(a, w.T, precision=highest) + b
        if perturbations is not None:
            z = z + perturbations[index]
        # a^l_j = σ(z^l_j)
        a = jax.nn.sigmoid(z)
        zs.append(z)
        activations.append(a)
    # C = Σ_x 1/2 Σ_j (y_j − a^L_j)²
    cost = 0.5 * jnp.sum((y - a) ** 2) if mask is None else 0.5 * jnp.sum(mask * (y - a) ** 2)
    return cost, (cost, zs, activations)


JITTED_PATHS = ("jit", "jacfwd")
"""The paths whose whole backward pass is one ``jax.jit`` program: the ones a worker can compile and hand over whole
(:mod:`~backprop_conformance.adapters.jax_precompile`)."""


def compute_format(dtype: str) -> str | None:
    """The format a mixed-precision policy's layers compute in (:data:`~backprop_conformance.reference.dtypes.MIXED`), else None."""
    return MIXED[dtype][1] if dtype in MIXED else None


@functools.cache
def _forward_in(compute: str | None) -> Callable[..., tuple[Any, tuple[Any, ...]]]:
    """:func:`forward` computing in ``compute``, one function object per format so that ``jax.jit`` caches per format."""
    return forward if compute is None else functools.partial(forward, compute=compute)


@functools.cache
def jitted(path: str, compute: str | None = None) -> Any:
    """The ``jax.jit`` object of a path of :data:`JITTED_PATHS`: (params, x, y) → (gradients, (C, [z^l], [a^l]))."""
    jax = import_jax()
    f = _forward_in(compute)
    transform = jax.jacfwd(f, has_aux=True) if path == "jacfwd" else jax.grad(f, has_aux=True)
    return jax.jit(transform)


@functools.cache
def differentiated(path: str, compute: str | None = None) -> Callable[[Any, Any, Any], tuple[Any, Any, Any]]:
    """The transformed function for ``path`` (computing in ``compute`` for a mixed-precision policy), built once per
    process so that ``jax.jit``'s cache is reused.

    Each takes (params, x, y) and returns ([(∂C/∂w^l, ∂C/∂b^l)], [δ^l] or None, (C, [z^l], [a^l])).
    """
    jax = import_jax()
    f = _forward_in(compute)
    if path in ("grad", *JITTED_PATHS):
        transform = jitted(path, compute) if path in JITTED_PATHS else jax.grad(f, has_aux=True)

        def gradients_and_trace(params: Any, x: Any, y: Any) -> tuple[Any, Any, Any]:
            gradients, trace = transform(params, x, y)
            return gradients, None, trace

        return gradients_and_trace

    def pulled_back(params: Any, x: Any, y: Any) -> tuple[Any, Any, Any]:
        # One zero perturbation per z^l, on the parameters' device: (B, n(l)).
        dtype = params[0][0].dtype if compute is None else jax.numpy.dtype(compute)  # z^l's format
        zeros = [jax.device_put(np.zeros((x.shape[0], w.shape[0]), dtype=dtype), next(iter(w.devices()))) for w, _ in params]
        cost, pullback, trace = jax.vjp(lambda p, e: f(p, x, y, e), params, zeros, has_aux=True)
        gradients, deltas = pullback(jax.numpy.ones_like(cost))
        return gradients, deltas, trace

    return pulled_back


def precision_scope(dtype: str) -> contextlib.AbstractContextManager[Any]:
    """The scoped x64 switch for float64, nothing for the other formats (which JAX handles without it)."""
    return _x64_context() if dtype == "float64" else contextlib.nullcontext()


def put(array: np.ndarray, dtype: str, device: str) -> Any:
    """``array`` as a JAX array of format ``dtype`` (a mixed-precision policy's storage format) on ``device``.

    numpy converts exactly (the values are representable, checked before); ``jax.numpy.dtype("bfloat16")`` is
    ml_dtypes' bfloat16, which numpy can convert to. Must run inside :func:`precision_scope` for float64.
    """
    jax = import_jax()
    held = MIXED[dtype][0] if dtype in MIXED else dtype
    return jax.device_put(np.asarray(array, dtype=jax.numpy.dtype(held)), jax.devices(device)[0])


def parameters(network: Network, dtype: str, device: str) -> list[tuple[Any, Any]]:
    """The page's w^l, b^l as the JAX user's parameter list: ``params[l - 2] = (W, b)``, W of shape (n(l), n(l−1))."""
    return [(put(network.w[l], dtype, device), put(network.b[l], dtype, device)) for l in network.layers]


def to_numpy(array: Any, carrier: np.dtype) -> np.ndarray:
    """A JAX array as numpy in the format's carrier (bfloat16 widens exactly to float32)."""
    return np.asarray(array).astype(carrier)


def by_layer(arrays: list[Any], carrier: np.dtype, first: int = 2) -> dict[int, np.ndarray]:
    """Arrays of consecutive layers as numpy in ``carrier``, keyed by the page's layer l from ``first``."""
    return {l: to_numpy(array, carrier) for l, array in enumerate(arrays, start=first)}


def zeros(dtype: str, device: str, widths: tuple[int, ...], batch_size: int) -> tuple[Any, Any, Any]:
    """(params, x, y) of zeros in this shape and format, as an example passes them: what a program is compiled for.

    Must run inside :func:`precision_scope` for float64.
    """
    params = [
        (put(np.zeros((widths[i + 1], widths[i])), dtype, device), put(np.zeros(widths[i + 1]), dtype, device))
        for i in range(len(widths) - 1)
    ]
    return params, put(np.zeros((batch_size, widths[0])), dtype, device), put(np.zeros((batch_size, widths[-1])), dtype, device)


def run_on_zeros(path: str, dtype: str, device: str, widths: tuple[int, ...], batch_size: int) -> None:
    """Run ``path``'s differentiated function once on zeros of this shape, as an example calls it: the call that compiles its program."""
    jax = import_jax()
    with precision_scope(dtype):
        jax.block_until_ready(differentiated(path, compute_format(dtype))(*zeros(dtype, device, widths, batch_size)))


def lowered_text(path: str, dtype: str, device: str, widths: tuple[int, ...], batch_size: int) -> str:
    """The StableHLO of a :data:`JITTED_PATHS` program for this shape, lowered with this process's JAX settings.

    Two processes whose texts are equal lower the suite's function to the same program; this is how a program
    compiled in another process is checked before this one runs it.
    """
    with precision_scope(dtype):
        return jitted(path, compute_format(dtype)).lower(*zeros(dtype, device, widths, batch_size)).as_text()


def settings_fingerprint() -> str:
    """A digest of every global JAX setting of this process (``jax.config.values``).

    Equal in two processes, their global settings are equal, compile options included; with equal lowered programs
    (:func:`lowered_text`) a program compiled in one is the program the other would compile.
    """
    jax = import_jax()
    return hashlib.sha256(repr(sorted(jax.config.values.items())).encode()).hexdigest()
