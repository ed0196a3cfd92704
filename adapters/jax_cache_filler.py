"""Hosted in a worker process: compiles the JAX adapter's programs ahead, and hands the jitted ones over whole.

:class:`~backprop_conformance.adapters.jax_precompile.Precompiler` starts it at the lowest priority, configures it
with the parent's :data:`~backprop_conformance.adapters.jax_precompile.CACHE_OPTIONS` and the store of handed-over
programs (:mod:`~backprop_conformance.adapters.jax_programs`), then sends it one program at a time, each compiled
exactly as the parent would compile it. Only the worker process imports this module (and JAX).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from backprop_conformance.adapters import jax_programs
from backprop_conformance.adapters.jax_model import (
    JITTED_PATHS,
    compute_format,
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
        store of handed-over programs (None: hand none over); return the digest of this process's settings, which the
        parent compares with its own."""
        jax = import_jax()
        for name, value in options.items():
            jax.config.update(name, value)
        self._store = None if store is None else Path(store)
        return settings_fingerprint()

    def compile(self, path: str, dtype: str, device: str, widths: tuple[int, ...], batch_size: int) -> jax_programs.Entry | None:
        """Compile ``path``'s program for this shape.

        For a :data:`~backprop_conformance.adapters.jax_model.JITTED_PATHS` program with a store, return it as the
        store keeps it (:data:`~backprop_conformance.adapters.jax_programs.Entry`): read from the store, or compiled
        fresh, with JAX's persistent cache off for that compilation (a program loaded from that cache cannot be
        serialized), and kept there. Otherwise compile it into JAX's persistent cache, where the parent's first call
        of the shape finds it, and return None.
        """
        if path not in JITTED_PATHS or self._store is None:
            run_on_zeros(path, dtype, device, widths, batch_size)
            return None
        key = (path, dtype, device, widths, batch_size)
        with precision_scope(dtype):  # the settings an example sees: float64 runs in the x64 context
            kept = jax_programs.read(self._store, key)
            if kept is not None:
                return kept
            from jax.experimental import serialize_executable

            jax = import_jax()
            enabled = jax.config.jax_enable_compilation_cache
            jax.config.update("jax_enable_compilation_cache", False)
            try:
                lowered = jitted(path, compute_format(dtype)).lower(*zeros(dtype, device, widths, batch_size))
                compiled = lowered.compile()
            finally:
                jax.config.update("jax_enable_compilation_cache", enabled)
            digest = hashlib.sha256(lowered.as_text().encode()).hexdigest()
            entry = (*serialize_executable.serialize(compiled), digest, settings_fingerprint())
            jax_programs.write(self._store, key, entry)
        return entry
