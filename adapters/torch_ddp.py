"""The torch adapter's ``ddp`` path: ``DistributedDataParallel`` over gloo, one worker process per rank.

What is on trial: torch's own data-parallel machinery. R processes (:data:`RANKS_VARIABLE`, 2 by default)
each hold the page's ``nn.Sequential`` wrapped in ``torch.nn.parallel.DistributedDataParallel`` and a
contiguous slice of the batch (:func:`~backprop_conformance.adapters.ranks.shards`); each computes its
slice's cost C_r = Σ_{x in slice r} ½ Σ_j (y_j − a^L_j)² and calls ``backward()``, and DDP's reducer
all-reduces the bucketed gradients while the backward pass runs.

What DDP computes, and what the adapter returns: DDP divides each rank's gradient by R before the
all-reduce, so every rank ends with the **mean** over ranks, (1/R) Σ_r ∂C_r/∂w. The page's cost is the
*sum* C = Σ_r C_r, whose gradient is R times that mean; the adapter returns rank 0's gradients times R
(exact for R a power of 2) and the sum of the ranks' costs. The suite then judges them against the
whole-batch reference, with the bound charging the cross-rank combination
(:func:`~backprop_conformance.reference.error_bound.cross_rank_reduction_bound`).

Life cycle, so that an example costs a computation and not a process start:

* The group starts once per session: R :class:`~backprop_conformance.adapters.worker.Worker` processes, each
  hosting a :class:`~backprop_conformance.adapters.torch_ddp_rank.DdpRank` (an
  adapter's ``prepare`` launches them while other cells run); rank 0 opens the rendezvous, a ``TCPStore``
  bound to 127.0.0.1 on a port the OS picks (never a fixed port, never another interface), and every
  rank joins the gloo process group, whose own sockets are on the loopback interface too
  (``GLOO_SOCKET_IFNAME=lo``).
* Each rank keeps one DDP model per (layer widths, dtype): constructing DDP is itself a collective
  (rank 0 broadcasts its parameters), which costs more than a call. Every call copies the page's parameters in and
  clears the gradients (set to None), so nothing accumulates from one call into the next.
* A new model takes one step on an empty batch before its first call. DDP assigns gradients to buckets
  anew after its first step, and with 3 or more ranks the new buckets change the order in which an
  element's partial sums are added: the first and second calls with the same input then differed in
  the last bit (measured, R = 3, every dtype), which the suite's contract rightly reports as state
  carried between calls. After the warm-up step every call runs with the same buckets.
* Teardown: the workers are closed at session end and at interpreter exit; if any rank fails or the
  call is interrupted (Ctrl-C, a timeout), every rank is killed at once, since the others would
  otherwise wait in an all-reduce that never completes, and the next call starts a fresh group. A rank
  whose parent dies exits by itself (the worker's watchdog), so no process and no port outlives a run.

``BACKPROP_CONFORMANCE_DDP_COMM_HOOK=package.module:hook`` registers a DDP communication hook on every
model (``DistributedDataParallel.register_comm_hook(None, hook)``), to put a custom hook on trial (a lossy
compression hook is expected to fail); the suite's own tests use it to plant the data-parallel bugs it
must catch.

Importing this module does not import torch; the rank processes do.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from backprop_conformance.adapters import worker
from backprop_conformance.adapters.base import AdapterError
from backprop_conformance.adapters.ranks import count_from_environment, shards
from backprop_conformance.reference.model import Batch, Network

RANKS_VARIABLE = "BACKPROP_CONFORMANCE_DDP_RANKS"
HOOK_VARIABLE = "BACKPROP_CONFORMANCE_DDP_COMM_HOOK"
DEFAULT_RANKS = 2
MAX_RANKS = 64
"""More processes than this on one machine is a typo, not a test."""

TARGET = "backprop_conformance.adapters.torch_ddp_rank:DdpRank"
"""The class each rank process hosts (:class:`~backprop_conformance.adapters.torch_ddp_rank.DdpRank`)."""


def world_size() -> int:
    """R from :data:`RANKS_VARIABLE` (default 2); anything but a whole number 1..64 is an :class:`AdapterError` saying so."""
    return count_from_environment(RANKS_VARIABLE, DEFAULT_RANKS, MAX_RANKS, "the number of torch DDP ranks")


def comm_hook() -> str | None:
    """The communication hook named by :data:`HOOK_VARIABLE` (``package.module:function``), or None."""
    text = os.environ.get(HOOK_VARIABLE, "").strip()
    if text and (text.count(":") != 1 or not all(part.strip() for part in text.split(":"))):
        raise AdapterError(f"torch: ${HOOK_VARIABLE} is {text!r}; give a DDP communication hook as package.module:function")
    return text or None


class DdpGroup:
    """The parent's handle on R rank processes: starts them, joins them into one process group, runs calls on all at once."""

    def __init__(self, ranks: int, hook: str | None, device: str) -> None:
        self.ranks = ranks
        self.hook = hook
        self.device = device
        environment = {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
        self.workers = [
            worker.Worker(TARGET, {**environment, "BACKPROP_CONFORMANCE_DDP_RANK": str(r)}, name=f"torch DDP rank {r}/{ranks}")
            for r in range(ranks)
        ]
        self._joined = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Launch the rank processes without waiting: their torch import overlaps whatever runs next."""
        for each in self.workers:
            each.start(wait=False)

    def run(self, network: Network, batch: Batch, dtype: str) -> list[dict[str, Any]]:
        """Every rank's result for its slice of ``batch``, in rank order (see :meth:`DdpRank.run`)."""
        with self._lock:
            if not self._joined:
                self.start()
                port = self.workers[0].call("host", self.ranks)
                self._on_every_rank(lambda r, w: w.call("join", r, self.ranks, port, self.hook, self.device))
                self._joined = True
            slices = shards(batch.size, self.ranks)
            return self._on_every_rank(lambda r, w: w.call("run", network, batch.x[slices[r]], batch.y[slices[r]], dtype))

    def close(self) -> None:
        """Close every rank (they leave the process group by exiting) and forget the group."""
        with self._lock:
            for each in self.workers:
                each.close()
            self._joined = False

    def _on_every_rank(self, call: Callable[[int, worker.Worker], Any]) -> list[Any]:
        """``call(rank, worker)`` for every rank at once (collectives need all of them), results in rank order.

        If one rank raises, or the caller is interrupted, every rank is killed: the others are blocked in a
        collective that will never complete. The first rank's own error is raised, not the WorkerErrors of
        the ranks killed because of it.
        """
        results: list[Any] = [None] * self.ranks
        errors: list[tuple[int, BaseException]] = []

        def one(rank: int) -> None:
            try:
                results[rank] = call(rank, self.workers[rank])
            except BaseException as exc:  # recorded for the caller, who decides what to raise
                errors.append((rank, exc))
                self._abort()

        threads = [threading.Thread(target=one, args=(r,), name=f"ddp-rank-{r}", daemon=True) for r in range(1, self.ranks)]
        try:
            for thread in threads:
                thread.start()
            one(0)
            for thread in threads:
                thread.join()
        except BaseException:
            self._abort()
            raise
        if errors:
            self._joined = False
            causes = [exc for _, exc in errors if not isinstance(exc, worker.WorkerError)] or [exc for _, exc in errors]
            raise causes[0]
        return results

    def _abort(self) -> None:
        self._joined = False
        for each in self.workers:
            each.abort()


_GROUPS: dict[tuple[int, str | None, str], DdpGroup] = {}
_GROUPS_LOCK = threading.Lock()


def group(ranks: int, hook: str | None, device: str) -> DdpGroup:
    """This process's group of ``ranks`` processes with ``hook`` on ``device``, created (not started) on first request."""
    with _GROUPS_LOCK:
        key = (ranks, hook, device)
        if key not in _GROUPS:
            _GROUPS[key] = DdpGroup(ranks, hook, device)
        return _GROUPS[key]


def close_groups() -> None:
    """Close every group this process started (at session end; the workers' own atexit hook covers the rest)."""
    with _GROUPS_LOCK:
        groups = list(_GROUPS.values())
        _GROUPS.clear()
    for each in groups:
        each.close()


def gather(parts: Sequence[dict[str, Any]], key: str) -> dict[int, np.ndarray] | None:
    """One per-example quantity (``a``, ``z``, ``delta``) of the whole batch: the ranks' slices, concatenated in rank order."""
    if any(part[key] is None for part in parts):
        return None
    return {l: np.concatenate([part[key][l] for part in parts], axis=0) for l in parts[0][key]}
