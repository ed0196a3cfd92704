"""How a data-parallel path counts its ranks and splits a batch over them: one rule for every such path.

Shared by the adapters' data-parallel paths (torch's ``ddp``, JAX's ``sharded``) and by the suite's diagnosis of a
wrong data-parallel gradient (:mod:`backprop_conformance.conformance.data_parallel`), which must know which examples
each rank held to say whose share is missing.
"""

from __future__ import annotations

import os

from backprop_conformance.adapters.base import AdapterError


def count_from_environment(variable: str, default: int, maximum: int, what: str) -> int:
    """A data-parallel path's number of ranks or devices from ``$variable``, else ``default``.

    Anything but a whole number from 1 to ``maximum`` is an :class:`AdapterError` naming the variable and
    ``what`` it counts, raised when the adapter declares its capabilities, so that a typo is a usage error at
    start-up and never a run that silently tests another configuration.
    """
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= maximum:
        raise AdapterError(f"${variable} is {text!r}; give {what}, a whole number from 1 to {maximum}")
    return count


def shards(batch_size: int, ranks: int) -> tuple[slice, ...]:
    """How a data-parallel path splits a batch of B examples over R ranks: contiguous slices of ⌈B/R⌉, the last ones shorter or empty.

    One rule for every data-parallel path, so that the suite can tell which rank's share is missing
    from a wrong gradient (:mod:`backprop_conformance.conformance.data_parallel`). ⌈B/R⌉ because that
    is what a framework that pads the batch to a multiple of R (JAX's sharding) computes; a rank whose
    slice is empty still takes part in every all-reduce, with zero gradients (B = 1 on 2 ranks).
    """
    if ranks < 1 or batch_size < 0:
        raise ValueError(f"need ranks ≥ 1 and batch_size ≥ 0, got {ranks} and {batch_size}")
    size = -(-batch_size // ranks)
    return tuple(slice(min(r * size, batch_size), min((r + 1) * size, batch_size)) for r in range(ranks))
