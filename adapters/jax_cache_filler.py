"""Hosted in a worker process: compiles the JAX adapter's programs ahead, into JAX's persistent compilation cache, and
hands the jitted ones back whole.

:class:`~backprop_conformance.adapters.jax_precompile.Precompiler` starts it at the lowest priority, configures it
with the parent's :data:`~backprop_conformance.adapters.jax_precompile.CACHE_OPTIONS`, then sends it one program at a
time, each compiled exactly as the parent would compile it. Only the worker process imports this module (and JAX).

Why a store of its own for the programs it hands over. A compiled CPU program that JAX loaded from its persistent
cache cannot be serialized again: the serialized form runs into "Function ... not found" when loaded (jax 0.10.2,
measured). So a jitted path's program is compiled here with JAX's cache off for that one compilation, serialized,
and kept in the store (a directory beside JAX's cache that the suite manages), keyed by everything that decides the
program: its lowered text, this process's JAX settings, the JAX and jaxlib versions, ``XLA_FLAGS``, and the CPU's
model and features (XLA compiles for the host's instruction set). A later run finds it there without compiling.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

from backprop_conformance.adapters.dispatch import machine
from backprop_conformance.adapters.jax_model import (
    JITTED_PATHS,
    import_jax,
    jitted,
    precision_scope,
    run_on_zeros,
    settings_fingerprint,
    zeros,
)


class CacheFiller:
    """The worker's object: takes the parent's cache settings, then compiles what it is sent."""

    def __init__(self) -> None:
        self._store: Path | None = None

    def configure(self, options: dict[str, Any], store: str | None = None) -> str:
        """Apply the parent's JAX settings (where the cache is, what it keeps, how the functions lower) and take the
        directory of handed-over programs (None: hand none over); return the digest of this process's settings,
        which the parent compares with its own."""
        jax = import_jax()
        for name, value in options.items():
            jax.config.update(name, value)
        self._store = None if store is None else Path(store)
        return settings_fingerprint()

    def compile(self, path: str, dtype: str, device: str, widths: tuple[int, ...], batch_size: int) -> tuple[Any, ...] | None:
        """Compile ``path``'s program for this shape.

        For a :data:`~backprop_conformance.adapters.jax_model.JITTED_PATHS` program with a store, return it
        serialized, ``(payload, in_tree, out_tree, digest of its lowered text)``, so that the parent can run it
        without tracing and lowering it again. Otherwise compile it into JAX's persistent cache (the parent's first
        call of the shape finds it there) and return None.
        """
        if path not in JITTED_PATHS or self._store is None:
            run_on_zeros(path, dtype, device, widths, batch_size)
            return None
        jax = import_jax()
        with precision_scope(dtype):
            lowered = jitted(path).lower(*zeros(dtype, device, widths, batch_size))
        digest = hashlib.sha256(lowered.as_text().encode()).hexdigest()
        entry = self._store / f"{self._key(digest)}.pickle"
        try:
            return (*pickle.loads(entry.read_bytes()), digest)
        except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError):
            pass
        from jax.experimental import serialize_executable

        enabled = jax.config.jax_enable_compilation_cache
        jax.config.update("jax_enable_compilation_cache", False)  # a freshly compiled program: one that serializes
        try:
            with precision_scope(dtype):
                compiled = lowered.compile()
        finally:
            jax.config.update("jax_enable_compilation_cache", enabled)
        handed = serialize_executable.serialize(compiled)
        self._keep(entry, pickle.dumps(handed))
        return (*handed, digest)

    def _key(self, digest: str) -> str:
        """The store's name for a program: everything that decides what XLA compiles it to (see the module)."""
        import jaxlib

        jax = import_jax()
        host = machine()
        decided = [digest, settings_fingerprint(), jax.__version__, jaxlib.__version__, os.environ.get("XLA_FLAGS", "")]
        decided += [host.get("cpu.model", ""), host.get("cpu.features", "")]
        return hashlib.sha256("\n".join(decided).encode()).hexdigest()

    def _keep(self, entry: Path, data: bytes) -> None:
        """Write ``data`` to ``entry`` atomically; a store that cannot be written is only a slower next run."""
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=entry.parent, prefix=".tmp-", delete=False) as handle:
                handle.write(data)
            os.replace(handle.name, entry)
        except OSError:
            pass
