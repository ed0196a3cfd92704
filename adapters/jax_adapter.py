"""The built-in JAX adapter: the page's sigmoid network written as JAX users write an MLP, differentiated by JAX.

The network, its cost and the conversions are :mod:`backprop_conformance.adapters.jax_model`'s, shared with the
``sharded`` path's worker and the process that compiles ahead.

Execution paths, each one of JAX's own ways to get a gradient:

* ``"grad"``: ``jax.grad`` run eagerly (op by op, no ``jax.jit``);
* ``"jit"``: ``jax.jit(jax.grad(...))``, one XLA program for the whole backward pass;
* ``"jacfwd"``: ``jax.jit(jax.jacfwd(...))``, forward mode: a different algorithm from backpropagation, whose
  gradient must still agree. It pushes one tangent per parameter, so its cost grows with the square of the
  parameter count; it is jitted because op-by-op it compiles each of its many primitives anew for every shape,
  and the op-by-op machinery is already on trial in ``"grad"``;
* ``"vjp"``: ``jax.vjp`` with the cotangent 1 applied by hand, the primitive under ``jax.grad``. It also returns
  δ^l = ∂C/∂z^l, by differentiating with respect to a zero perturbation added to every z^l: the cotangent of
  that perturbation is δ^l itself, so the page's error terms come out of the same backward pass for free.
* the training-loop paths (:mod:`backprop_conformance.adapters.jax_training`), all opt-in: ``"accumulate"``
  (gradients accumulated over micro-batches in ``lax.scan``), ``"per-example"`` (``vmap(grad)`` summed), ``"remat"``
  and ``"remat-dots"`` (``jax.checkpoint``), ``"scan"`` (the hidden layers as ``lax.scan`` over stacked weights) and
  ``"jit-donate"`` (``jax.jit`` with the parameters' buffers donated). Their steps where bugs live are the adapter's
  hook methods (:class:`~backprop_conformance.adapters.jax_training.Hooks`).
* ``"sharded"``: ``jax.jit(jax.value_and_grad(...))`` with the batch sharded over a mesh of N CPU devices, so that
  XLA's partitioner inserts the cross-device sum; it runs in a worker process that has N host devices
  (:mod:`backprop_conformance.adapters.jax_sharded`). Opt-in, like every data-parallel path.

Compilation overlaps the run (:meth:`JaxAdapter.prepare`, :mod:`backprop_conformance.adapters.jax_precompile`): the
pooled shapes' programs are compiled ahead, and the examples run the very programs they would have compiled
themselves; a shape they reach first is compiled by them instead. Importing this module does not import JAX
(adapter contract): JAX is imported inside functions.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from backprop_conformance.adapters import jax_sharded, jax_training
from backprop_conformance.adapters.base import Adapter, AdapterOutput, Capabilities, RequestError
from backprop_conformance.adapters.dispatch import xla_configuration, xla_levels
from backprop_conformance.adapters.jax_model import (
    by_layer,
    compute_format,
    differentiated,
    import_jax,
    parameters,
    precision_scope,
    put,
    to_numpy,
)
from backprop_conformance.adapters.jax_precompile import PRECOMPILER, cache_filler
from backprop_conformance.reference.dtypes import float_format
from backprop_conformance.reference.mixed_precision import MixedPolicy
from backprop_conformance.reference.model import Batch, Gradients, Network

DTYPES: tuple[str, ...] = ("float64", "float32", "float16", "bfloat16")
PATHS: tuple[str, ...] = ("grad", "jit", "jacfwd", "vjp", "sharded", *jax_training.PATHS)
DEFAULT_PATHS: tuple[str, ...] = ("jit",)
"""The paths a plain ``pytest conformance`` runs: ``jit``, the canonical ``jax.jit(jax.grad(loss))`` training
step.

``grad`` and ``vjp`` (eager) are supported but opt-in (``--conformance-path grad``, ``--conformance-all-paths``): eager
dispatch compiles every primitive for every new operand shape, several times the cost of compiling ``jit``'s one
program per shape, which alone would take the default run past its time budget. ``jacfwd`` is opt-in too: forward
mode pushes one tangent per parameter, so its time and memory grow with the square of the parameter count, and on
the suite's deepest and widest nets it costs orders of magnitude more time and memory per call than ``jit``; on
small nets it is as fast as the others."""

ACCUMULATION: dict[str, dict[str, str]] = {
    "float16": {"dot": "float32", "cost_sum": "float32"},
    "bfloat16": {"dot": "float32", "cost_sum": "float32"},
}
"""Declared per operation, because XLA on CPU differs per operation (``python -m benchmarks.accumulation``, jax 0.10.2).
float16 and bfloat16 matrix products accumulate in float32 (correctly rounded, as float32 accumulation is, in
every trial), forward products and the transposed products of the weight gradient alike, and so does
``jnp.sum``, the cost's sum. One sum does not: the bias gradient's sum over the batch, which JAX gets as the
transpose of b's broadcast, a reduce_sum kept in the storage format (correctly rounded in only some trials, as a
sum in the format is). It is left out of the mapping, so it is charged at the storage format's own γ_B.
In bfloat16 that γ_B is finite only below 256 examples (B·2^-8 < 1): no bound, and no verdict, exists for a
larger bfloat16 batch summed in bfloat16, and the bound says so instead of judging it."""

_CAST_INSIDE = {"dot": "float32", "cost": "float32", "cost_sum": "float32"}
POLICIES = {name: MixedPolicy.of(name, **_CAST_INSIDE) for name in ("mixed-bfloat16", "mixed-float16")}
"""float32 parameters and inputs cast to the compute format inside the forward pass
(:func:`~backprop_conformance.adapters.jax_model.forward`), as Flax's ``dtype``/``param_dtype`` do: products, σ and
the backward pass in the compute format, the products accumulated in float32 and the bias gradient's batch sum in the
compute format (as in :data:`ACCUMULATION`), the cost in float32 because the float32 targets promote ``y − a``, and
the gradients cast back to the float32 parameters."""


class JaxAdapter(Adapter):
    """The page's network and cost in ``jax.numpy``, differentiated by grad, jit(grad), jacfwd or vjp."""

    requires: ClassVar[tuple[str, ...]] = ("jax",)

    def capabilities(self) -> Capabilities:
        """Paths, dtypes and devices; "gpu" is listed only when ``jax.devices("gpu")`` finds one."""
        jax = import_jax()
        return Capabilities(
            name="jax",
            framework="JAX",
            version=jax.__version__,
            dtypes=(*DTYPES, *POLICIES),
            paths=PATHS,
            default_paths=DEFAULT_PATHS,
            devices=_devices(),
            accumulation=dict(ACCUMULATION),
            shape_compiled_paths=PATHS,
            environment=(jax_sharded.DEVICES_VARIABLE,),
            ranks={"sharded": jax_sharded.device_count()},
            levels=dict.fromkeys(PATHS, xla_levels()),
            policies=POLICIES,
            default_dtypes=DTYPES,
            micro_batch_paths=("accumulate",),
            per_example_paths=("per-example",),
            layer_scan_paths=("scan",),
        )

    def dispatch(self, path: str) -> Mapping[str, str]:
        """The ISA XLA:CPU compiles every path for in this process (:func:`~backprop_conformance.adapters.dispatch.xla_configuration`)."""
        return xla_configuration()

    def use_cache(self, directory: Path) -> str | None:
        """JAX's persistent compilation cache in ``directory``, unless the user configured one (``JAX_COMPILATION_CACHE_DIR``).

        ``jax.jit`` compiles every new shape and format once per process (bfloat16 costs more than the others:
        XLA's CPU backend has no bfloat16 arithmetic and rewrites each op into float32 with conversions around
        it), and a default run compiles many programs. The cache
        keeps them between runs; JAX keys each entry by the program, the compile options, the jaxlib
        version and the device, so a cached program is the very program a fresh compilation would give
        and cannot change a verdict. ``min_compile_time_secs`` is lowered to 0 because most of these
        compilations take less than JAX's default threshold. Both settings are process-wide and stay
        for the rest of the process, which the returned line tells the run's header. Beside it, ``DIR-programs``
        keeps the jitted programs the compiling worker hands over (:mod:`~backprop_conformance.adapters.jax_cache_filler`);
        a cache the user configured gets no such directory, and its programs are not handed over.
        """
        jax = import_jax()
        if jax.config.jax_compilation_cache_dir is not None:
            return f"jax: compilation cache as configured ({jax.config.jax_compilation_cache_dir})"
        jax.config.update("jax_compilation_cache_dir", str(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        PRECOMPILER.store = str(Path(directory).parent / f"{Path(directory).name}-programs")
        return f"jax: persistent compilation cache in {directory} (process-wide; clear it by deleting the directory)"

    def prepare(self, path: str, dtype: str, device: str, shapes: Sequence[tuple[tuple[int, ...], int]]) -> None:
        """Compile ``path``'s program for each of ``shapes`` in ``dtype`` ahead of the examples
        (:mod:`~backprop_conformance.adapters.jax_precompile`).

        Compiling is most of a cold run's JAX time (``python -m benchmarks.bench_suite``), and ahead of need it runs
        on the core the rest of the run leaves idle. For the ``sharded`` path, which compiles in its own worker
        process, start that process instead.
        """
        if path == "sharded":
            jax_sharded.shared_worker(self.caps.ranks_of("sharded")).start(wait=False)
            return
        if path in jax_training.PATHS:  # compiled on first use (:mod:`~backprop_conformance.adapters.jax_training`)
            return
        for widths, batch_size in shapes:
            PRECOMPILER.submit((path, dtype, device, tuple(widths), batch_size))

    def finish(self) -> None:
        """Drop the compilations not yet begun (a run that ends early must not wait for programs it will never run)
        and close the process that compiled ahead."""
        PRECOMPILER.cancel()
        PRECOMPILER.forget()
        cache_filler().close()

    def load_parameters(self, network: Network, *, dtype: str, device: str = "cpu") -> Network:
        """Put w^l and b^l on ``device`` as the (W, b) pairs ``run`` differentiates, and read them back in page layout."""
        with precision_scope(dtype):
            params = parameters(network, dtype, device)
            carrier = float_format(dtype).carrier
            return Network.from_lists([to_numpy(w, carrier) for w, _ in params], [to_numpy(b, carrier) for _, b in params])

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        """∂C/∂w^l and ∂C/∂b^l (l = 2..L) of C = Σ_x 1/2 Σ_j (y_j − a^L_j)², computed by JAX in ``dtype``.

        Returns gradients in page layout and ``dtype``'s carrier (bfloat16 in float32 arrays), the cost, a^l
        (l = 1..L) and z^l (l = 2..L) on every path, and δ^l = ∂C/∂z^l on the ``"vjp"`` path. The request has
        been checked by :meth:`~backprop_conformance.adapters.base.Adapter.compute`.
        """
        if path == "sharded":
            return _run_sharded(network, batch, dtype=dtype, device=device, devices=self.caps.ranks_of("sharded"))
        with precision_scope(dtype):
            if path in jax_training.PATHS:
                return jax_training.run(network, batch, dtype=dtype, path=path, device=device, hooks=self)
            return _run(network, batch, dtype=dtype, path=path, device=device)

    # The training-loop paths' steps (:class:`~backprop_conformance.adapters.jax_training.Hooks`), one method each, so that a
    # planted bug is a subclass overriding one (tests/training_mutants.py). Those that run inside a program are traced.

    def micro_batch_pieces(self, batch: Batch) -> tuple[slice, ...]:
        """The micro-batches ``accumulate`` runs, as slices of the batch: every one, as the batch's split says."""
        return batch.pieces

    def micro_batch_cost(self, cost: Any, micro_batches: Any) -> Any:
        """The cost each micro-batch differentiates: its own part of the page's summed cost, unscaled."""
        return cost

    def per_example_terms(self, per_example: Any) -> Any:
        """The per-example gradients as ``per-example`` returns and sums them: as ``vmap(grad)`` computed them."""
        return per_example

    def per_example_sum(self, per_example: Any) -> Any:
        """∂C/∂θ from the per-example gradients (leading axis: the B examples): their sum, as the page's cost is a sum."""
        return per_example.sum(0)

    def checkpointed(self, layer: Any, policy: Any) -> Any:
        """``layer`` under ``jax.checkpoint(policy=policy)``: the backward pass recomputes what the policy did not save."""
        return import_jax().checkpoint(layer, policy=policy)

    def scan_step_parameters(self, step: tuple[Any, Any], stacked: tuple[Any, Any]) -> tuple[Any, Any]:
        """The (w, b) a step of the layer scan computes with: its own slice of the stack, as ``lax.scan`` hands it over."""
        return step


def _run_sharded(network: Network, batch: Batch, *, dtype: str, device: str, devices: int) -> AdapterOutput:
    """The ``sharded`` path on ``devices`` host devices (the number the bound charges), computed in its worker process;
    the gradient is already the summed cost's (nothing averages)."""
    if device != "cpu":
        raise RequestError(f"jax: the sharded path shards over host (CPU) devices only, not {device!r}")
    result = jax_sharded.shared_worker(devices).call("run", network, batch, dtype)
    return AdapterOutput(gradients=Gradients(result["w"], result["b"]), cost=result["cost"], a=result["a"], z=result["z"])


@functools.cache
def _devices() -> tuple[str, ...]:
    """("cpu",), plus "gpu" when JAX has a GPU backend here (``jax.devices("gpu")`` raises RuntimeError if not)."""
    jax = import_jax()
    try:
        has_gpu = len(jax.devices("gpu")) > 0
    except RuntimeError:
        has_gpu = False
    return ("cpu", "gpu") if has_gpu else ("cpu",)


def _run(network: Network, batch: Batch, *, dtype: str, path: str, device: str) -> AdapterOutput:
    """Put the inputs on ``device`` in ``dtype``, differentiate along ``path``, and bring the results back."""
    key = (path, dtype, device, network.widths, batch.size)
    PRECOMPILER.claim(key)
    program = PRECOMPILER.program(key)
    params = parameters(network, dtype, device)
    x, y = put(batch.x, dtype, device), put(batch.y, dtype, device)
    if program is not None:  # the worker's compilation of jitted(path), checked to be the one made here
        gradients, (cost, zs, activations) = program(params, x, y)
        deltas = None
    else:
        gradients, deltas, (cost, zs, activations) = differentiated(path, compute_format(dtype))(params, x, y)
    carrier = float_format(dtype).carrier
    return AdapterOutput(
        gradients=Gradients(by_layer([w for w, _ in gradients], carrier), by_layer([b for _, b in gradients], carrier)),
        cost=float(cost),
        a=by_layer(activations, carrier, first=1),
        z=by_layer(zs, carrier),
        delta=None if deltas is None else by_layer(deltas, carrier),
    )
