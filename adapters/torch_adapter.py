"""The built-in PyTorch adapter: the page's network built from ``torch.nn`` and differentiated by torch.

The network is what a PyTorch user writes, an ``nn.Sequential`` of ``nn.Linear`` and ``nn.Sigmoid``, with forward
hooks that record z^l and a^l (:mod:`backprop_conformance.adapters.torch_model`, shared with the ``ddp`` ranks).

Execution paths, each putting a different piece of torch's machinery on trial:

* ``eager``: C = ½ Σ (y − a^L)² written with torch ops, ``C.backward()`` (autograd's tape);
* ``func``: the same cost as a pure function of the parameters through ``torch.func.functional_call``,
  differentiated by ``torch.func.grad`` (functorch's transforms, not the tape);
* ``mse``: C = ½ · ``mse_loss(a^L, y, reduction="sum")``, ``C.backward()``: the framework's own loss and
  its backward formula are on trial, not ours;
* ``compile``: the forward pass and cost through ``torch.compile`` (TorchDynamo + Inductor, which also
  compiles the backward graph), then ``C.backward()``. Supported but not a default path: it compiles anew
  for every architecture, batch size and dtype, and its first compilation in a process is the slowest of all
  (``python -m benchmarks.bench_torch_adapter``).
* ``accumulate``: gradient accumulation, as a training loop with micro-batches writes it: the batch split as
  :attr:`~backprop_conformance.reference.model.Batch.micro_batches` says (drawn by the suite, uneven splits included),
  ``cost_i.backward()`` once per micro-batch into the same ``.grad``, the k costs added. Autograd's accumulation of
  ``.grad`` (``AccumulateGrad``) is on trial, and the bound charges its k − 1 additions;
* ``per-example``: ``torch.func.vmap(torch.func.grad(cost of one example))``, the per-example gradients of DP-SGD
  libraries, summed over the batch; the per-example gradients are returned too and judged one by one;
* ``checkpoint`` and ``checkpoint-reentrant``: rematerialization, each Linear + Sigmoid block through
  ``torch.utils.checkpoint.checkpoint`` (``use_reentrant=False``, the recommended implementation, and ``True``, the
  older one, whose input must require grad for the parameters to get gradients): the forward keeps no
  intermediates, and ``backward()`` recomputes each block before differentiating it. The recomputed forward must
  give the same gradients;
* ``compile-dynamic``: ``compile`` with ``dynamic=True``, one graph with symbolic sizes for many shapes (the bugs of
  symbolic-shape code live there); opt-in, and pooled like ``compile``;
* ``compile-func``: ``torch.compile`` around ``torch.func.grad`` of the network written as a function of its
  parameters (pytorch/pytorch#136662 was a silent wrong gradient of that composition); opt-in, pooled;
* ``grad-scaler``: ``torch.amp.GradScaler``, the loss scaling of a float16 training loop: the cost multiplied by S
  (2^16 to start, GradScaler's default) before ``backward()``, the gradients divided by S with ``unscale_``, and a step
  whose gradients overflowed skipped and S halved (``update()``), the step then retried as the next one would be. The
  gradients returned are the ones the optimizer steps with, and the scale is returned beside them
  (:attr:`~backprop_conformance.adapters.base.AdapterOutput.loss_scale`). Opt-in; it runs the formats whose parameters
  are float32 or wider and the mixed-precision policies, since GradScaler refuses to unscale float16 gradients;
* ``ddp``: ``DistributedDataParallel`` over gloo in R rank processes, each with a slice of the batch; DDP
  returns the mean over ranks of their gradients and the adapter returns R times it, the gradient of the
  summed cost (:mod:`backprop_conformance.adapters.torch_ddp`). Opt-in: it starts R processes.

Why the care about global state: a conformance suite must measure the framework as configured for
exact float32 arithmetic, and must not change how the rest of the user's process computes. Each call
builds a fresh model (no gradient can accumulate from one call into the next), initialises it without
touching torch's random number generator (its state is restored after construction), pins float32 matrix products to IEEE
arithmetic (no TF32 on CUDA, no bf16 through oneDNN on CPU, no reduced-precision float16/bfloat16
reductions in cuBLAS) only for the duration of the call, and restores every flag it touched. Small calls run
with one intra-op thread, where torch's kernels are serial anyway (:func:`~backprop_conformance.adapters.torch_model.serial_when_small`),
restored too.

Importing this module does not import torch (see :mod:`backprop_conformance.adapters.base`); torch is imported inside the
methods.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from backprop_conformance.adapters import torch_ddp
from backprop_conformance.adapters.base import Adapter, AdapterOutput, Capabilities
from backprop_conformance.adapters.dispatch import aten_levels, torch_configuration
from backprop_conformance.adapters.torch_model import (
    Recorder,
    autocast,
    build,
    by_layer,
    cost_value,
    ieee_arithmetic,
    import_torch,
    mse_cost,
    quadratic_cost,
    serial_when_small,
    storage_dtype,
    to_numpy,
)
from backprop_conformance.reference.dtypes import round_to
from backprop_conformance.reference.mixed_precision import MixedPolicy
from backprop_conformance.reference.model import Batch, Gradients, Network

DTYPES = ("float64", "float32", "float16", "bfloat16")
PATHS = (
    "eager",
    "func",
    "mse",
    "accumulate",
    "per-example",
    "checkpoint",
    "checkpoint-reentrant",
    "compile",
    "compile-dynamic",
    "compile-func",
    "grad-scaler",
    "ddp",
)
DEFAULT_PATHS = ("eager", "func", "mse")
ACCUMULATION = {"float16": "float32", "bfloat16": "float32"}
"""float16 and bfloat16 dot products and sums accumulate in float32 in torch on CPU. Measured (torch
2.13, AVX2): every reduction the paths use -- Linear forward, its input, weight and bias gradients,
``torch.sum``, ``mse_loss(reduction="sum")`` -- returned the correctly rounded sum of 4096 terms in
200 of 200 trials, where summing in the format itself (pairwise or sequentially) missed it in 22–100 %.
On CUDA the same is expected of cuBLAS with its reduced-precision reductions switched off, which
:func:`ieee_arithmetic` does for the call (not measured here: no GPU was available)."""

_AUTOCAST = {"dot": "float32", "cost": "float32", "batch_sum": "float32", "cost_sum": "float32"}
POLICIES = {name: MixedPolicy.of(name, **_AUTOCAST) for name in ("mixed-bfloat16", "mixed-float16")}
"""What ``torch.autocast("cpu")`` computes in, per operation: ``nn.Linear`` casts its input, weight and bias to the compute
format and returns its product there, accumulated in float32 (as every float16 and bfloat16 reduction of torch on CPU,
:data:`ACCUMULATION`); ``nn.Sigmoid`` and its backward run in the format of their input, the compute format; the cost's
``y − a`` is promoted to float32 by the float32 target, so the cost, its sums and ∂C/∂a^L are float32 until autograd
casts ∂C/∂a^L back to the compute format; the weight and bias gradients come out of the compute-format backward and
are cast to the float32 parameters' format."""


INITIAL_LOSS_SCALE = 2.0**16
"""The ``grad-scaler`` path's first loss scale: ``GradScaler``'s own default ``init_scale``."""
LOSS_SCALED_DTYPES = ("float64", "float32", *POLICIES)
"""The dtypes of the ``grad-scaler`` path: ``unscale_`` raises "Attempting to unscale FP16 gradients" for float16
parameters (and bfloat16's), so loss scaling runs with float32 parameters, as a mixed-precision policy keeps them."""


RECOMPILE_LIMIT = 4096
"""Dynamo's limits on compiled variants of one function, lifted while the compile path runs.

Each new architecture, batch size, dtype or device compiles anew, and the default
limit (8) is reached by any suite that tries 4 dtypes on a few architectures. Past it Dynamo runs the
function *eagerly*, with nothing but a logged warning (measured, torch 2.13), so the compile path
would pass while testing nothing. The limits are lifted for the call, and the function is compiled
with ``fullgraph=True``, which turns any fallback to eager (a graph break, or a limit reached after
all) into an error."""


class TorchAdapter(Adapter):
    """Puts PyTorch on trial: ``nn.Linear`` + ``nn.Sigmoid`` network, quadratic cost summed over the batch."""

    requires: ClassVar[tuple[str, ...]] = ("torch",)
    ddp_comm_hook: ClassVar[str | None] = None
    """A DDP communication hook (``package.module:function``) registered on the ``ddp`` path's models, else the one
    named by ``$BACKPROP_CONFORMANCE_DDP_COMM_HOOK``, else none (DDP's own all-reduce)."""

    def capabilities(self) -> Capabilities:
        """Declare dtypes, paths, accumulation and the ``ddp`` path's ranks; "cuda" is listed only where torch can use a GPU."""
        torch = import_torch()
        devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
        torch_ddp.comm_hook()  # read here too, so that a malformed $BACKPROP_CONFORMANCE_DDP_COMM_HOOK is a usage error at load
        return Capabilities(
            name="torch",
            framework="PyTorch",
            version=torch.__version__,
            dtypes=(*DTYPES, *POLICIES),
            paths=PATHS,
            default_paths=DEFAULT_PATHS,
            devices=devices,
            accumulation=dict(ACCUMULATION),
            shape_compiled_paths=("compile", "compile-dynamic", "compile-func"),
            environment=(torch_ddp.RANKS_VARIABLE, torch_ddp.HOOK_VARIABLE),
            ranks={"ddp": torch_ddp.world_size()},
            levels=dict.fromkeys(PATHS, aten_levels()),
            policies=POLICIES,
            default_dtypes=DTYPES,
            micro_batch_paths=("accumulate",),
            per_example_paths=("per-example",),
            path_dtypes={"grad-scaler": LOSS_SCALED_DTYPES},
        )

    def dispatch(self, path: str) -> Mapping[str, str]:
        """ATen's CPU capability in this process: it picks the vectorised kernels of every path (sigmoid, its backward,
        the elementwise cost), and is forced per level by ``ATEN_CPU_CAPABILITY``."""
        return torch_configuration()

    def prepare(self, path: str, dtype: str, device: str, shapes: Sequence[tuple[tuple[int, ...], int]]) -> None:
        """Start the ``ddp`` path's rank processes ahead of its first example, so that their torch import overlaps other cells."""
        if path == "ddp":
            self._ddp_group(device).start()

    def finish(self) -> None:
        """Close the ``ddp`` path's rank processes."""
        torch_ddp.close_groups()

    def load_parameters(self, network: Network, *, dtype: str, device: str = "cpu") -> Network:
        """Build the ``nn.Sequential`` from ``network`` and read each ``nn.Linear``'s weight and bias back out.

        The suite checks that this round trip is the identity: it is the evidence that
        ``nn.Linear.weight[j−1, k−1]`` really is the page's w^l_jk, which a square layer's shapes
        cannot show. Returned in ``dtype``'s carrier dtype, like the gradients.
        """
        torch = import_torch()
        model = build(network, storage_dtype(dtype), device)
        linears = [m for m in model if isinstance(m, torch.nn.Linear)]
        return Network(
            {l: to_numpy(m.weight, dtype) for l, m in enumerate(linears, start=2)},
            {l: to_numpy(m.bias, dtype) for l, m in enumerate(linears, start=2)},
        )

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        """∂C/∂w^l_jk, ∂C/∂b^l_j of C = Σ_x ½ Σ_j (y_j − a^L_j)², computed by torch in ``dtype`` on ``device``.

        Returns gradients in page layout and in ``dtype``'s carrier (bfloat16 values in float32 arrays),
        the cost, a^l (l = 1..L) and z^l (l = 2..L) on every path, and δ^l = ∂C/∂z^l (l = 2..L) on the
        paths that run autograd's tape on the uncompiled model (``eager``, ``mse``), where they are the
        ``.grad`` of the retained Linear outputs. The request has been checked by
        :meth:`~backprop_conformance.adapters.base.Adapter.compute`.
        """
        if path == "ddp":
            return self._run_ddp(network, batch, dtype, device)
        torch = import_torch()
        tdtype = storage_dtype(dtype)
        with ieee_arithmetic(device), serial_when_small(network, batch), torch.inference_mode(False), torch.enable_grad():
            model = self.fresh_model(network, tdtype, device)
            x = torch.tensor(batch.x, dtype=tdtype, device=device)
            y = torch.tensor(batch.y, dtype=tdtype, device=device)
            recorder = Recorder(model)
            with autocast(dtype, device):
                if path == "accumulate":
                    result = self._accumulate(model, recorder, x, y, self.micro_batch_pieces(batch))
                elif path == "per-example":
                    result = self._per_example(model, recorder, x, y)
                elif path == "grad-scaler":
                    result = self._grad_scaled(model, recorder, x, y, device)
                elif path.startswith("checkpoint"):
                    result = self._checkpointed(model, recorder, x, y, reentrant=path == "checkpoint-reentrant")
                else:
                    result = _PATHS[path](model, recorder, x, y)
        return _to_output(result, x, dtype)

    # The training-loop paths' steps, one public method each, so that a planted bug is a subclass overriding one
    # (tests/training_mutants.py).

    def fresh_model(self, network: Network, tdtype: Any, device: str) -> Any:
        """The model a call computes with: built anew, so that its ``.grad`` starts empty (no step's gradient leaks into the next)."""
        return build(network, tdtype, device)

    def micro_batch_pieces(self, batch: Batch) -> tuple[slice, ...]:
        """The micro-batches the ``accumulate`` path runs, as slices of the batch: every one, as the batch's split says."""
        return batch.pieces

    def micro_batch_cost(self, cost: Any, micro_batches: int) -> Any:
        """The cost each micro-batch differentiates: its own part of the page's summed cost, unscaled."""
        return cost

    def per_example_sum(self, per_example: Any) -> Any:
        """∂C/∂θ from the per-example gradients (leading axis: the B examples): their sum, as the page's cost is a sum."""
        return per_example.sum(0)

    def per_example_terms(self, per_example: Any) -> Any:
        """The per-example gradients as the path returns and sums them: as ``vmap(grad)`` computed them."""
        return per_example

    def micro_batch_backward(self, cost: Any, index: int, micro_batches: int) -> None:
        """Micro-batch ``index`` (0-based) of ``micro_batches``: its cost's gradient accumulated into ``.grad``."""
        cost.backward()

    def block(self, index: int, linear: Any, sigmoid: Any) -> Callable[[Any], Any]:
        """Layer ``index + 2``'s block as the function ``checkpoint`` runs, in the forward and again in the recompute."""

        def forward(a: Any) -> Any:
            return sigmoid(linear(a))

        return forward

    def _checkpointed(self, model: Any, recorder: Recorder, x: Any, y: Any, *, reentrant: bool) -> _PathResult:
        """Every block through ``torch.utils.checkpoint.checkpoint``, then ``backward()``, which recomputes each block.

        z^l and a^l are the forward's (the recompute records them again, after); δ^l is not available, since the
        forward's z^l are not the tensors backward differentiates. The reentrant implementation needs an input that
        requires grad (else the first block's parameters get none), as its documentation says; x is given one.
        """
        from torch.utils.checkpoint import checkpoint

        a = x.detach().requires_grad_(True) if reentrant else x
        modules = list(model)
        for index in range(len(modules) // 2):
            a = checkpoint(self.block(index, modules[2 * index], modules[2 * index + 1]), a, use_reentrant=reentrant)
        depth = len(recorder.linears)
        cost = quadratic_cost(a, y)
        z, activations = recorder.z[:depth], recorder.a[:depth]
        cost.backward()
        return dataclasses.replace(_tape_result(recorder, cost, None), z=[v.detach() for v in z], a=[v.detach() for v in activations])

    def _grad_scaled(self, model: Any, recorder: Recorder, x: Any, y: Any, device: str) -> _PathResult:
        """``scaler.scale(cost).backward()``, ``scaler.unscale_(optimizer)``, ``scaler.step``, ``scaler.update()``, as the
        training loop of torch's AMP recipe writes it, until a step is taken.

        The optimizer is SGD at learning rate 0, so that a step leaves the parameters as they are; the gradients are
        then ``.grad`` as ``unscale_`` left it, the ones the step used. A step is skipped when ``unscale_`` found a
        non-finite gradient, which ``update()`` shows by halving the scale: the forward and backward passes then run
        again at the halved scale. δ^l is not returned: z^l's ``.grad`` holds S·δ^l, in the compute format.
        """
        torch = import_torch()
        scaler = torch.amp.GradScaler(device, init_scale=INITIAL_LOSS_SCALE)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        while True:
            recorder.z.clear()
            recorder.a.clear()
            optimizer.zero_grad(set_to_none=True)
            cost = quadratic_cost(model(x), y)
            scaler.scale(cost).backward()
            scaler.unscale_(optimizer)
            scale = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            if scaler.get_scale() >= scale or scale <= 1:
                return dataclasses.replace(_tape_result(recorder, cost, None), loss_scale=scale)

    def _accumulate(self, model: Any, recorder: Recorder, x: Any, y: Any, pieces: tuple[slice, ...]) -> _PathResult:
        """``cost_i.backward()`` once per micro-batch, into the same ``.grad``; the costs added, in the format, in order.

        z^l, a^l and δ^l (the retained z^l's ``.grad``) of the micro-batches are joined back into the batch's.
        """
        torch = import_torch()
        total = None
        for index, piece in enumerate(pieces):
            first = len(recorder.z)
            a_L = model(x[piece])
            for z in recorder.z[first:]:
                z.retain_grad()
            cost = self.micro_batch_cost(quadratic_cost(a_L, y[piece]), len(pieces))
            self.micro_batch_backward(cost, index, len(pieces))
            total = cost.detach() if total is None else total + cost.detach()
        depth = len(recorder.linears)

        def joined(values: list[Any]) -> list[Any]:
            return [torch.cat([v.detach() for v in values[l::depth]]) for l in range(depth)]

        grads = [z.grad for z in recorder.z]
        result = _tape_result(recorder, total, joined(grads) if all(g is not None for g in grads) else None)
        return dataclasses.replace(result, z=joined(recorder.z), a=joined(recorder.a))

    def _per_example(self, model: Any, recorder: Recorder, x: Any, y: Any) -> _PathResult:
        """``vmap(grad(cost of one example))`` over the batch; the B gradients summed, and kept for their own verdict.

        z^l and a^l are auxiliary outputs of the one traced forward pass (stacked by vmap), as on the ``func`` path.
        """
        torch = import_torch()
        params = {name: p.detach() for name, p in model.named_parameters()}
        depth = len(recorder.linears)

        def cost_of(parameters: dict[str, Any], x_one: Any, y_one: Any) -> tuple[Any, tuple[Any, list[Any], list[Any]]]:
            a_L = torch.func.functional_call(model, parameters, (x_one,))
            cost = quadratic_cost(a_L, y_one)
            return cost, (cost, list(recorder.z[-depth:]), list(recorder.a[-depth:]))

        grads, (costs, z, a) = torch.func.vmap(torch.func.grad(cost_of, has_aux=True), in_dims=(None, 0, 0))(params, x, y)
        terms = {name: self.per_example_terms(g) for name, g in grads.items()}
        names = [name for name, _ in model.named_parameters()]
        weights = [n for n in names if n.endswith("weight")]
        biases = [n for n in names if n.endswith("bias")]
        return _PathResult(
            grad_w=[self.per_example_sum(terms[n]) for n in weights],
            grad_b=[self.per_example_sum(terms[n]) for n in biases],
            cost=costs.sum(),
            z=z,
            a=a,
            delta=None,
            per_example_w=[terms[n] for n in weights],
            per_example_b=[terms[n] for n in biases],
        )

    def _ddp_group(self, device: str) -> torch_ddp.DdpGroup:
        return torch_ddp.group(self.caps.ranks_of("ddp"), self.ddp_comm_hook or torch_ddp.comm_hook(), device)

    def _run_ddp(self, network: Network, batch: Batch, dtype: str, device: str) -> AdapterOutput:
        """The ``ddp`` path: every rank's slice under DDP; rank 0's gradients (DDP's mean) made the summed cost's."""
        group = self._ddp_group(device)
        parts = group.run(network, batch, dtype)
        mean = Gradients(parts[0]["w"], parts[0]["b"])
        return AdapterOutput(
            gradients=self.gradient_of_sum(mean, group.ranks, dtype),
            cost=float(sum(part["cost"] for part in parts)),
            a=torch_ddp.gather(parts, "a"),
            z=torch_ddp.gather(parts, "z"),
            delta=torch_ddp.gather(parts, "delta"),
        )

    def gradient_of_sum(self, mean: Gradients, ranks: int, dtype: str) -> Gradients:
        """R times DDP's mean over ranks, rounded once to ``dtype``: the gradient of the page's cost, which sums over the batch.

        DDP divides each rank's gradient by R before it all-reduces (it assumes a loss averaged over the global
        batch); the page's C is a sum, whose gradient is Σ_r ∂C_r = R · mean. Exact when R is a power of 2.
        """

        def scaled(g: np.ndarray) -> np.ndarray:
            return round_to(dtype, np.asarray(g, dtype=np.float64) * ranks)

        return Gradients({l: scaled(g) for l, g in mean.w.items()}, {l: scaled(g) for l, g in mean.b.items()})


@dataclass
class _PathResult:
    """What a path computed, as torch tensors: per layer l = 2..L in order, ∂C/∂w^l, ∂C/∂b^l, z^l, a^l, δ^l."""

    grad_w: list[Any]
    grad_b: list[Any]
    cost: Any
    z: list[Any]
    a: list[Any]
    delta: list[Any] | None
    per_example_w: list[Any] | None = None
    per_example_b: list[Any] | None = None
    loss_scale: float | None = None


def _tape_result(recorder: Recorder, cost: Any, delta: list[Any] | None) -> _PathResult:
    """The gradients autograd left in the Linear layers' ``.grad``, with the forward values the hooks recorded."""
    return _PathResult(
        grad_w=[m.weight.grad for m in recorder.linears],
        grad_b=[m.bias.grad for m in recorder.linears],
        cost=cost,
        z=list(recorder.z),
        a=list(recorder.a),
        delta=delta,
    )


def _tape(model: Any, recorder: Recorder, x: Any, y: Any, cost_fn: Callable[[Any, Any], Any]) -> _PathResult:
    """Autograd's tape: forward, retain the Linear outputs z^l, ``backward()``; δ^l is then ``z^l.grad``."""
    a_L = model(x)
    for z in recorder.z:
        z.retain_grad()
    cost = cost_fn(a_L, y)
    cost.backward()
    return _tape_result(recorder, cost, delta=[z.grad for z in recorder.z])


def _eager(model: Any, recorder: Recorder, x: Any, y: Any) -> _PathResult:
    return _tape(model, recorder, x, y, quadratic_cost)


def _mse(model: Any, recorder: Recorder, x: Any, y: Any) -> _PathResult:
    return _tape(model, recorder, x, y, mse_cost)


def _func(model: Any, recorder: Recorder, x: Any, y: Any) -> _PathResult:
    """``torch.func.grad`` of the cost as a pure function of the parameters (``functional_call``).

    z^l and a^l are returned as auxiliary outputs; δ^l is not: the transform differentiates with
    respect to the parameters only.
    """
    torch = import_torch()
    params = {name: p.detach() for name, p in model.named_parameters()}

    def cost_of(parameters: dict[str, Any]) -> tuple[Any, tuple[Any, list[Any], list[Any]]]:
        a_L = torch.func.functional_call(model, parameters, (x,))
        cost = quadratic_cost(a_L, y)
        return cost, (cost, list(recorder.z), list(recorder.a))

    grads, (cost, z, a) = torch.func.grad(cost_of, has_aux=True)(params)
    names = [name for name, _ in model.named_parameters()]
    return _PathResult(
        grad_w=[grads[n] for n in names if n.endswith("weight")],
        grad_b=[grads[n] for n in names if n.endswith("bias")],
        cost=cost,
        z=z,
        a=a,
        delta=None,
    )


@functools.cache
def _compiled_forward_cost(dynamic: bool = False) -> Callable[[Any, Any, Any], Any]:
    """One ``torch.compile``-d forward-and-cost function per process (and per ``dynamic``).

    Created once so that Dynamo's cache (keyed by this function's code) is reused: a second call with
    the same architecture, dtype and device runs the compiled graphs again, even though every call
    builds a new model (parameters are graph inputs, not constants). ``dynamic=True`` asks for one graph with
    symbolic sizes for many shapes, where the bugs of symbolic-shape code live.
    """
    import torch

    def forward_cost(model: Any, x: Any, y: Any) -> Any:
        return quadratic_cost(model(x), y)

    return torch.compile(forward_cost, fullgraph=True, dynamic=dynamic or None)


def _recompiles_unlimited() -> contextlib.AbstractContextManager[Any]:
    """Dynamo's recompile limits lifted for the call (:data:`RECOMPILE_LIMIT`)."""
    import torch._dynamo

    return torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, accumulated_recompile_limit=RECOMPILE_LIMIT)


def _compile(model: Any, recorder: Recorder, x: Any, y: Any, *, dynamic: bool = False) -> _PathResult:
    """Forward and cost compiled by ``torch.compile``; ``backward()`` runs the backward graph compiled with it.

    δ^l is not available: the recorded z^l are outputs of the compiled graph beside the cost, not on
    the path from the parameters to it, so autograd never fills their ``.grad``.
    """
    with _recompiles_unlimited():
        cost = _compiled_forward_cost(dynamic)(model, x, y)
        cost.backward()
    return _tape_result(recorder, cost, delta=None)


@functools.cache
def _compiled_grad() -> Callable[[Any, Any, Any], Any]:
    """``torch.compile(torch.func.grad(cost))`` of the network written as a function of its (w^l, b^l) list, once per process.

    A pure function of the parameters, as a torch.func user writes it (``F.linear``, ``torch.sigmoid``), so that no
    module object is a guard of the compiled graph; z^l and a^l are auxiliary outputs.
    """
    import torch

    def cost_of(params: list[tuple[Any, Any]], x: Any, y: Any) -> tuple[Any, tuple[Any, list[Any], list[Any]]]:
        a, zs, activations = x, [], []
        for w, b in params:
            z = torch.nn.functional.linear(a, w, b)
            a = torch.sigmoid(z)
            zs.append(z)
            activations.append(a)
        cost = quadratic_cost(a, y)
        return cost, (cost, zs, activations)

    return torch.compile(torch.func.grad(cost_of, has_aux=True), fullgraph=True)


def _compile_func(model: Any, recorder: Recorder, x: Any, y: Any) -> _PathResult:
    """``torch.compile`` around ``torch.func.grad``: the functorch transform traced and compiled by Dynamo and Inductor."""
    params = [(m.weight.detach(), m.bias.detach()) for m in recorder.linears]
    with _recompiles_unlimited():
        grads, (cost, z, a) = _compiled_grad()(params, x, y)
    return _PathResult(grad_w=[w for w, _ in grads], grad_b=[b for _, b in grads], cost=cost, z=z, a=a, delta=None)


_PATHS: dict[str, Callable[[Any, Recorder, Any, Any], _PathResult]] = {
    "eager": _eager,
    "func": _func,
    "mse": _mse,
    "compile": _compile,
    "compile-dynamic": functools.partial(_compile, dynamic=True),
    "compile-func": _compile_func,
}


def _to_output(result: _PathResult, x: Any, dtype: str) -> AdapterOutput:
    """Convert to numpy in the format's carrier dtype, keyed by the page's layer l (a^1 is the input x)."""
    return AdapterOutput(
        gradients=Gradients(by_layer(result.grad_w, dtype), by_layer(result.grad_b, dtype)),
        cost=cost_value(result.cost),
        a=by_layer([x, *result.a], dtype, first=1),
        z=by_layer(result.z, dtype),
        delta=by_layer(result.delta, dtype) if result.delta is not None else None,
        per_example=(
            Gradients(by_layer(result.per_example_w, dtype), by_layer(result.per_example_b or [], dtype))
            if result.per_example_w is not None
            else None
        ),
        loss_scale=result.loss_scale,
    )
