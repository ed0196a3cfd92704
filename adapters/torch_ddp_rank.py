"""One rank of the torch adapter's ``ddp`` path, hosted in a worker process: it joins the process group, then computes
its slice of the batch under ``DistributedDataParallel``.

The parent's side -- starting the R rank processes, running a call on all of them at once, killing them all when one
fails -- is :mod:`backprop_conformance.adapters.torch_ddp`, whose docstring says what DDP computes and why each rank
keeps its models and takes a warm-up step. The network, its cost and the arithmetic pins are the single-process
paths' own (:mod:`backprop_conformance.adapters.torch_model`), so a rank computes exactly what the ``eager`` path
computes, on its slice. Only the worker process imports this module (and torch).
"""

from __future__ import annotations

import datetime
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from backprop_conformance.adapters.base import AdapterError
from backprop_conformance.adapters.torch_model import Recorder, build, by_layer, cost_value, ieee_arithmetic, quadratic_cost
from backprop_conformance.reference.dtypes import FORMATS
from backprop_conformance.reference.model import Network

COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=120)
"""How long a rank waits in a collective for the others: a rank that died is noticed by the parent first (its
pipe closes), which then kills the rest, so this matters only for a rank that hangs."""


class DdpRank:
    """One rank, hosted in a worker process: joins the process group, then computes its slice under DDP."""

    def __init__(self) -> None:
        import torch

        torch.set_num_threads(1)  # R processes share the machine's cores; oversubscribed threads only slow them all
        self._torch = torch
        self._store: Any = None
        self._models: dict[tuple[tuple[int, ...], str], tuple[Any, Any, Any]] = {}
        self._hook: Callable[..., Any] | None = None
        self._device = "cpu"

    def host(self, ranks: int) -> int:
        """Open the rendezvous on 127.0.0.1 at a port the OS chooses, and return the port (rank 0 only)."""
        distributed = self._torch.distributed
        self._store = distributed.TCPStore("127.0.0.1", 0, ranks, is_master=True, timeout=COLLECTIVE_TIMEOUT, wait_for_workers=False)
        return int(self._store.port)

    def join(self, rank: int, ranks: int, port: int, hook: str | None, device: str) -> None:
        """Join the process group of ``ranks`` processes as ``rank``: gloo on the CPU, nccl on CUDA (one GPU per rank)."""
        torch = self._torch
        distributed = torch.distributed
        if device == "cuda":
            if torch.cuda.device_count() < ranks:
                raise AdapterError(f"torch ddp on cuda needs one GPU per rank: {ranks} ranks, {torch.cuda.device_count()} GPUs")
            torch.cuda.set_device(rank)
            self._device = f"cuda:{rank}"
        if self._store is None:
            self._store = distributed.TCPStore("127.0.0.1", port, ranks, is_master=False, timeout=COLLECTIVE_TIMEOUT)
        backend = "nccl" if device == "cuda" else "gloo"
        distributed.init_process_group(backend, store=self._store, rank=rank, world_size=ranks, timeout=COLLECTIVE_TIMEOUT)
        if hook is not None:
            module, _, attribute = hook.partition(":")
            self._hook = getattr(importlib.import_module(module), attribute)

    def run(self, network: Network, x: np.ndarray, y: np.ndarray, dtype: str) -> dict[str, Any]:
        """Forward and backward of this rank's slice (possibly empty) under DDP: its cost, DDP's (mean) gradients, z, a, δ.

        Returned as numpy arrays in ``dtype``'s carrier; gradients, cost and δ in the same format as the torch
        adapter's other paths, so that the parent only scales and concatenates.
        """
        torch = self._torch
        tdtype = getattr(torch, dtype)
        model, ddp, recorder = self._model(network, dtype)
        with ieee_arithmetic(self._device), torch.enable_grad():
            with torch.no_grad():
                for l, linear in zip(network.layers, recorder.linears, strict=True):
                    linear.weight.copy_(torch.tensor(network.w[l], dtype=tdtype))
                    linear.bias.copy_(torch.tensor(network.b[l], dtype=tdtype))
            for parameter in model.parameters():
                parameter.grad = None
            recorder.z.clear()
            recorder.a.clear()
            xt = torch.tensor(np.asarray(x, dtype=FORMATS[dtype].carrier), dtype=tdtype, device=self._device)
            yt = torch.tensor(np.asarray(y, dtype=FORMATS[dtype].carrier), dtype=tdtype, device=self._device)
            a_L = ddp(xt)
            for z in recorder.z:
                z.retain_grad()
            cost = quadratic_cost(a_L, yt)
            cost.backward()

        return {
            "w": by_layer([m.weight.grad for m in recorder.linears], dtype),
            "b": by_layer([m.bias.grad for m in recorder.linears], dtype),
            "cost": cost_value(cost),
            "a": by_layer([xt, *recorder.a], dtype, first=1),
            "z": by_layer(recorder.z, dtype),
            "delta": by_layer([z.grad for z in recorder.z], dtype),
        }

    def _model(self, network: Network, dtype: str) -> tuple[Any, Any, Any]:
        """The cached (model, DDP wrapper, recorder) for this architecture and dtype; built collectively on first use."""
        key = (network.widths, dtype)
        if key not in self._models:
            torch = self._torch
            model = build(network, getattr(torch, dtype), self._device)
            recorder = Recorder(model)
            ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=None if self._device == "cpu" else [self._device])
            if self._hook is not None:
                ddp.register_comm_hook(None, self._hook)
            # One step on an empty batch: DDP rebuilds its gradient buckets after its first step (see the module docstring).
            ddp(torch.zeros((0, network.widths[0]), dtype=getattr(torch, dtype), device=self._device)).sum().backward()
            self._models[key] = (model, ddp, recorder)
        return self._models[key]
