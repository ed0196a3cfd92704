"""The page's network in PyTorch, as a PyTorch user builds it: what every torch path computes with.

The network is an ``nn.Sequential`` of ``nn.Linear(n(l−1), n(l))`` and ``nn.Sigmoid()`` for l = 2..L.
``nn.Linear.weight`` has shape (n(l), n(l−1)) and its element [j−1, k−1] is the page's w^l_jk, so the page-layout
arrays of :class:`~backprop_conformance.reference.model.Network` load unchanged. Forward hooks on those modules
record z^l (each Linear's output) and a^l (each Sigmoid's output) for diagnosis, so the model itself stays exactly
the user's model.

One module for the network, its cost, its recorder, the arithmetic pins and the conversions back to numpy, so that
the single-process paths (:mod:`~backprop_conformance.adapters.torch_adapter`) and every ``ddp`` rank
(:mod:`~backprop_conformance.adapters.torch_ddp_rank`) compute with the very same model. Importing it does not import
torch; torch is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from backprop_conformance.reference.dtypes import MIXED, float_format
from backprop_conformance.reference.model import Batch, Network


def import_torch() -> Any:
    """Import torch on first use only, so that importing this module or listing adapters never imports it."""
    import torch

    return torch


@contextlib.contextmanager
def ieee_arithmetic(device: str) -> Iterator[None]:
    """Pin float32 matrix products to IEEE float32 and float16/bfloat16 reductions to float32 for one call.

    TF32 on CUDA (10-bit significand) and TF32/bf16 through oneDNN on CPU are opt-in speed settings a
    user may have switched on (``torch.set_float32_matmul_precision("high")`` or ``"medium"``); cuBLAS
    reduced-precision float16/bfloat16 reductions are on by default. The error bound assumes IEEE
    arithmetic in the requested format with the declared accumulation, so all of them are switched off
    here and every flag is restored on exit. Recent torch (2.13 here) has per-backend
    ``fp32_precision`` settings, and reading the legacy ``allow_tf32`` after setting those raises
    (measured), so that API is used whenever it exists and the legacy flags only on torch versions
    that predate it.
    """
    torch = import_torch()
    pinned: list[tuple[Callable[[Any], None], Any]] = []

    def pin(getter: Callable[[], Any], setter: Callable[[Any], None], value: Any) -> None:
        pinned.append((setter, getter()))
        setter(value)

    def attribute(obj: Any, name: str, value: Any) -> None:
        pin(lambda: getattr(obj, name), lambda v: setattr(obj, name, v), value)

    backends = torch.backends
    try:
        if hasattr(backends, "fp32_precision"):
            if device == "cuda":
                attribute(backends.cuda.matmul, "fp32_precision", "ieee")
                attribute(backends.cudnn.conv, "fp32_precision", "ieee")
                attribute(backends.cudnn.rnn, "fp32_precision", "ieee")
            else:
                attribute(backends.mkldnn.matmul, "fp32_precision", "ieee")
        else:
            pin(torch.get_float32_matmul_precision, torch.set_float32_matmul_precision, "highest")
            if device == "cuda":
                attribute(backends.cuda.matmul, "allow_tf32", False)
                attribute(backends.cudnn, "allow_tf32", False)
        if device == "cuda":
            matmul = backends.cuda.matmul
            for fmt in ("fp16", "bf16"):
                flag = f"allow_{fmt}_reduced_precision_reduction"
                split_k = f"{flag}_split_k"
                if hasattr(matmul, split_k):
                    # The setter takes (allow, allow_split_k); the getter returns only the first, so read both to restore both.
                    pin(
                        lambda flag=flag, split_k=split_k: (getattr(matmul, flag), getattr(matmul, split_k)),
                        functools.partial(setattr, matmul, flag),
                        False,
                    )
                else:
                    attribute(matmul, flag, False)
            if hasattr(matmul, "allow_fp16_accumulation"):
                attribute(matmul, "allow_fp16_accumulation", False)
        yield
    finally:
        for setter, value in reversed(pinned):
            setter(value)


SERIAL_BELOW = 32768
"""Elements: a call whose every tensor is smaller runs torch with one intra-op thread (:func:`serial_when_small`).

It is torch's own grain size (``at::internal::GRAIN_SIZE``): its CPU kernels split an operation across threads
only from this many elements, so below it they run the same serial code either way, and the only work a second
thread gets is BLAS's and OpenMP's start-up and spin-waiting around each operation."""


@contextlib.contextmanager
def serial_when_small(network: Network, batch: Batch) -> Iterator[None]:
    """One intra-op thread for the call when every tensor of it is under :data:`SERIAL_BELOW` elements; restored after.

    Why: on the suite's networks (width ≤ 192, batch ≤ 192 in the covering design) torch's second thread only waits, and it
    waits by spinning on a core, so it slows the call and anything else the machine runs; beside a process that
    keeps one core busy (as the JAX compilation ahead of need does) the spinning thread competes with it, and a
    cell takes several times longer than with one thread. Larger problems (the ``large`` profile) keep the user's
    thread count, where threads pay and where torch's parallel kernels are what the user runs.
    ``torch.set_num_threads`` is process-wide, so it is set for
    the call only, as the arithmetic flags are.
    """
    torch = import_torch()
    widest = max(network.widths)
    largest = max(batch.size * widest, *(w.size for w in network.w.values()))
    threads = torch.get_num_threads()
    if largest >= SERIAL_BELOW or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def storage_dtype(dtype: str) -> Any:
    """The torch dtype parameters and data are held in: ``dtype`` itself, or a mixed-precision policy's storage (float32)."""
    return getattr(import_torch(), MIXED[dtype][0] if dtype in MIXED else dtype)


def autocast(dtype: str, device: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast(device, dtype=...)`` for a mixed-precision policy, as a user trains with it; nothing for one format.

    Autocast runs ``nn.Linear`` in the compute format (its input, weight and bias cast, the product accumulated in
    float32 on CPU and rounded to the compute format), keeps ``nn.Sigmoid`` in the format of its input, and promotes
    ``y − a`` to float32 because ``y`` is float32: the policy :data:`~backprop_conformance.adapters.torch_adapter.POLICIES`
    declares.
    """
    if dtype not in MIXED:
        return contextlib.nullcontext()
    torch = import_torch()
    return torch.autocast(device, dtype=getattr(torch, MIXED[dtype][1]))


def build(network: Network, tdtype: Any, device: str) -> Any:
    """The page's network as a PyTorch user builds it: Linear(n(l−1), n(l)) then Sigmoid, for l = 2..L.

    The layers are constructed as usual, which draws their random initial values from torch's global
    generator, and the generator's state is restored afterwards, so that building a model leaves the
    caller's random stream where it was; the page's w^l and b^l are then copied in. (``nn.utils.skip_init``
    does the same without drawing, but through the meta device, at five times the cost of a call's
    backward pass.) Built on the CPU, whose generator this is, then moved to ``device``.
    """
    torch = import_torch()
    state = torch.random.get_rng_state()
    try:
        layers = []
        for l in network.layers:
            n_out, n_in = network.w[l].shape
            linear = torch.nn.Linear(n_in, n_out, dtype=tdtype)
            with torch.no_grad():
                linear.weight.copy_(torch.tensor(network.w[l], dtype=tdtype))
                linear.bias.copy_(torch.tensor(network.b[l], dtype=tdtype))
            layers += [linear, torch.nn.Sigmoid()]
    finally:
        torch.random.set_rng_state(state)
    model = torch.nn.Sequential(*layers)
    return model if device == "cpu" else model.to(device)


class Recorder:
    """Forward hooks that record z^l (each Linear's output) and a^l (each Sigmoid's output), l = 2..L.

    Hooks rather than a hand-written loop, so that every path runs the user's ``model(x)`` unchanged.
    Each call builds a new model and recorder, so the lists hold exactly one forward pass.
    """

    def __init__(self, model: Any) -> None:
        torch = import_torch()
        self.z: list[Any] = []
        self.a: list[Any] = []
        self.linears = [m for m in model if isinstance(m, torch.nn.Linear)]
        for module in model:
            record = self.z if isinstance(module, torch.nn.Linear) else self.a
            module.register_forward_hook(lambda _module, _inputs, output, record=record: record.append(output))


def quadratic_cost(a_L: Any, y: Any) -> Any:
    """C = Σ_x ½ Σ_j (y_j − a^L_j)², written out with torch ops (the page's cost, summed over the batch)."""
    torch = import_torch()
    return 0.5 * torch.sum((y - a_L) ** 2)


def mse_cost(a_L: Any, y: Any) -> Any:
    """The same C through torch's own loss: ``mse_loss(reduction="sum")`` is Σ (a − y)², so C is half of it."""
    torch = import_torch()
    return 0.5 * torch.nn.functional.mse_loss(a_L, y, reduction="sum")


def to_numpy(t: Any, dtype: str) -> np.ndarray:
    """A tensor as a numpy array in ``dtype``'s carrier (bfloat16 goes through float32, which holds it exactly)."""
    torch = import_torch()
    t = t.detach().to("cpu")
    if t.dtype == torch.bfloat16:
        t = t.to(torch.float32)
    return np.array(t.numpy(), dtype=float_format(dtype).carrier)


def by_layer(tensors: list[Any], dtype: str, first: int = 2) -> dict[int, np.ndarray]:
    """Tensors of consecutive layers as numpy arrays in ``dtype``'s carrier, keyed by the page's layer l from ``first``."""
    return {l: to_numpy(t, dtype) for l, t in enumerate(tensors, start=first)}


def cost_value(cost: Any) -> float:
    """The cost tensor as a Python float, through float64 (which holds every format's value exactly)."""
    torch = import_torch()
    return float(cost.detach().to("cpu", torch.float64))
