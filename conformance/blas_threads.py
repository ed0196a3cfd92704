"""numpy's BLAS on one thread while the suite computes the reference and the bound of a network of moderate size.

Why. The reference and the error bound are a few float64 matrix products per layer, of the network's own sizes.
OpenBLAS splits any product above about 2^18 multiply-adds over every core, and its threads then wait for each
other at every product. On a machine whose cores are busy -- with other jobs, or with the framework's own thread
pool, which keeps spinning for a while after its call returns -- a waiting thread is often not running, and the
product takes many times its serial time. ``python -m benchmarks.bench_verdict`` and docs/speed.md have the figures:
on the 2-core development machine under load, one thread was faster at every size measured, up to width 1024 and
B = 512.

Products far larger than the default profile draws (width 1024, B = 512: the ``large`` profile) keep numpy's
threads, because there each thread has milliseconds of work per product and a machine with idle cores gains from
them. The limit is set for the suite's own calls and restored after each (threadpoolctl), so a user's process,
the framework's calls and a caller's own numpy are left as they were.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import cache

from threadpoolctl import ThreadpoolController

from backprop_conformance.reference.model import Network

THREADED_FROM = 2**24
"""Multiply-adds of the network's largest product (B·n(l)·n(l−1)) from which numpy keeps its BLAS threads: about a
millisecond of one core's work."""


@cache
def _blas() -> ThreadpoolController:
    """numpy's BLAS libraries, found once: looking them up walks every loaded library, far dearer than a limit."""
    return ThreadpoolController().select(user_api="blas")


def largest_product(network: Network, batch_size: int) -> int:
    """Multiply-adds of the largest matrix product of a backward pass through ``network`` with ``batch_size`` examples."""
    widths = network.widths
    return batch_size * max(widths[i] * widths[i + 1] for i in range(len(widths) - 1))


class _OneThread:
    """numpy's BLAS libraries on one thread inside, each given back its own count after.

    threadpoolctl's ``limit`` does the same, but gathers every library's description at each entry: a hundredth of a
    small network's whole check, twice per check. This reads and sets the counts through the controllers found once,
    and touches only a library not already on one thread (a count it cannot read is left alone).
    """

    __slots__ = ("_restore",)

    def __enter__(self) -> None:
        self._restore = [(lib, n) for lib in _blas().lib_controllers if (n := lib.num_threads) is not None and n != 1]
        for lib, _ in self._restore:
            lib.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        for lib, n in self._restore:
            lib.set_num_threads(n)


def serial_blas(network: Network, batch_size: int) -> AbstractContextManager[object]:
    """A context in which numpy's BLAS runs on one thread, unless ``network``'s products are large enough to share."""
    if largest_product(network, batch_size) >= THREADED_FROM:
        return nullcontext()
    return _OneThread()
