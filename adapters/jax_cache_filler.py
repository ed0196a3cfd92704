"""Hosted in a worker process: compiles the JAX adapter's programs into JAX's persistent compilation cache.

:class:`~backprop_conformance.adapters.jax_precompile.Precompiler` starts it at the lowest priority, configures it
with the parent's :data:`~backprop_conformance.adapters.jax_precompile.CACHE_OPTIONS`, then sends it one program at a
time, each compiled exactly as the parent would compile it (:func:`~backprop_conformance.adapters.jax_model.run_on_zeros`).
Only the worker process imports this module (and JAX).
"""

from __future__ import annotations

from typing import Any

from backprop_conformance.adapters.jax_model import import_jax, run_on_zeros


class CacheFiller:
    """The worker's object: takes the parent's cache settings, then compiles what it is sent."""

    def configure(self, options: dict[str, Any]) -> None:
        """Apply the parent's JAX settings (where the cache is, what it keeps, how the functions lower)."""
        jax = import_jax()
        for name, value in options.items():
            jax.config.update(name, value)

    def compile(self, path: str, dtype: str, device: str, widths: tuple[int, ...], batch_size: int) -> None:
        """Compile ``path``'s program for this shape, which writes it into the cache."""
        run_on_zeros(path, dtype, device, widths, batch_size)
