"""An adapter run at a forced dispatch level: hosted in a worker process whose environment forces it.

torch reads ``ATEN_CPU_CAPABILITY``, TensorFlow ``TF_ENABLE_ONEDNN_OPTS`` and XLA ``XLA_FLAGS`` once, when they
start; none can be changed in a process that has imported the framework. To test a framework at a level other than
the one this process runs (:class:`~backprop_conformance.adapters.dispatch.Level`), :class:`AtLevel` builds a copy
of the adapter in a :class:`~backprop_conformance.adapters.worker.Worker` started with the level's environment, and
sends it every call that computes. An adapter that already runs its framework in workers of its own (Keras) needs
nothing special: its workers inherit the level's environment from the one hosting it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backprop_conformance.adapters import worker as workers
from backprop_conformance.adapters.base import Adapter, AdapterOutput, Capabilities
from backprop_conformance.adapters.dispatch import Level
from backprop_conformance.reference.model import Batch, Network


class AtLevel(Adapter):
    """``adapter`` (loaded in this process from ``target``, ``package.module:Attribute``) run at ``level``.

    The capabilities are the loaded adapter's: a level changes which kernels run, never what the adapter declares.
    :meth:`load_parameters`, :meth:`run`, :meth:`dispatch`, :meth:`prepare`, :meth:`use_cache` and :meth:`finish` go
    to the copy in the worker; the suite's checks around them (:meth:`Adapter.compute`, :meth:`Adapter.round_trip`)
    stay in this process, as for any adapter.
    """

    def __init__(self, adapter: Adapter, target: str, level: Level, cache: Path | None = None) -> None:
        self.hosted = adapter
        self.target = target
        self.level = level
        self.cache = cache
        self._worker = workers.shared(target, level.environment, name=f"{adapter.caps.name}-{level.name}")
        self._starts_with_cache = -1

    def capabilities(self) -> Capabilities:
        return self.hosted.caps

    def load_parameters(self, network: Network, *, dtype: str, device: str = "cpu") -> Network:
        return self._call("load_parameters", network, dtype=dtype, device=device)

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        return self._call("run", network, batch, dtype=dtype, path=path, device=device)

    def dispatch(self, path: str) -> Mapping[str, str]:
        """What the copy in the worker reports: the level's configuration, as the framework applied it."""
        return self._call("dispatch", path)

    def use_cache(self, directory: Path) -> str | None:
        """Keep ``directory`` for the worker's copy, which is offered it as it starts (a cache is keyed by the compile
        options, the ISA cap among them, so levels share one directory without sharing entries)."""
        self.cache = directory
        return None

    def prepare(self, path: str, dtype: str, device: str, shapes: Sequence[tuple[tuple[int, ...], int]]) -> None:
        """Start the worker now and pass the hint on; a worker that cannot start is left to the first request to report."""
        try:
            self._call("prepare", path, dtype, device, shapes)
        except Exception:  # a hint: the cell's own requests meet the same error where it belongs
            pass

    def finish(self) -> None:
        if self._worker.alive:
            self._worker.call("finish")

    def _call(self, method: str, /, *args: object, **kwargs: object) -> Any:
        """``method`` in the worker; a worker (re)started since the cache was last offered is offered it first."""
        if self.cache is not None and (not self._worker.alive or self._worker.starts != self._starts_with_cache):
            self._worker.start()
            self._worker.call("use_cache", self.cache)
            self._starts_with_cache = self._worker.starts
        return self._worker.call(method, *args, **kwargs)
