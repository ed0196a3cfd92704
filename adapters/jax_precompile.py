"""The JAX adapter's compilation ahead of need: the programs of a run's pooled shapes, compiled before its examples.

:meth:`~backprop_conformance.adapters.jax_adapter.JaxAdapter.prepare` submits each (path, dtype, device, widths,
batch size) the run will test; one background thread (:class:`~backprop_conformance.adapters.ahead.Ahead`) has them
compiled, shape after shape, and an example claims its shape before it runs (:meth:`Precompiler.claim`).

Where the compilation runs. With JAX's persistent compilation cache in force on this process (the suite's default,
:meth:`~backprop_conformance.adapters.jax_adapter.JaxAdapter.use_cache`) and a CPU program, in a worker process
(:class:`~backprop_conformance.adapters.jax_cache_filler.CacheFiller`) that writes it into the cache; the example's
own first call of the shape then traces it, finds it in the cache and loads it. The thread only waits on the
worker's pipe meanwhile. Compiling in this process instead competes with the tests running beside it for the GIL
(JAX traces and lowers in Python) and, at the run's priority, for the CPU, which slows every other framework's
tests (``python -m benchmarks.bench_suite`` shows by how much). Without a persistent cache (or for a GPU program,
which a second process would need GPU memory for), the thread compiles in this process, into ``jax.jit``'s own
in-memory cache.

Why it cannot change a result: it calls the same jitted function objects
(:func:`~backprop_conformance.adapters.jax_model.differentiated`) with arrays of the same shapes, formats, device and
x64 context as an example's, so the program compiled is the one the example would have compiled for itself; the
zeros are computed on and thrown away. In the worker, JAX keys each cache entry by the program, the compile
options, the XLA flags and the jaxlib version, so a program lowered differently there (a JAX setting changed in
this process and not copied, see :data:`CACHE_OPTIONS`) is a cache miss that the example compiles for itself,
never a different program. The thread is not a daemon, so it is never stopped inside XLA at exit.
"""

from __future__ import annotations

from typing import Any

from backprop_conformance.adapters import worker as workers
from backprop_conformance.adapters.ahead import Ahead
from backprop_conformance.adapters.jax_model import import_jax, run_on_zeros

Key = tuple[str, str, str, tuple[int, ...], int]
"""(path, dtype, device, widths, batch size): what one compiled program is specialised to."""

CACHE_OPTIONS: tuple[str, ...] = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
    "jax_compilation_cache_max_size",
    "jax_enable_x64",
    "jax_default_matmul_precision",
)
"""The JAX settings the compiling worker copies from this process: where the cache is and what it keeps, and the
two global settings that change how the suite's functions lower (64-bit types, default matmul precision). The
worker inherits this process's environment (``XLA_FLAGS``, ``JAX_*`` variables) when it starts. A cache the user
configured keeps its own thresholds: with JAX's default ``min_compile_time_secs`` most of these programs are not
written, and the examples compile them again (slower, never different)."""

FILLER_TARGET = "backprop_conformance.adapters.jax_cache_filler:CacheFiller"


class Precompiler(Ahead[Key]):
    """Compiles each submitted shape's program ahead, in the worker process when it can, else here (see the module)."""

    def __init__(self) -> None:
        super().__init__("backprop-conformance-jax-precompile", daemon=False)
        self._filler_options: dict[str, Any] | None = None
        self._filler_failed = False

    def work(self, key: Key) -> None:
        """Compile ``key``'s program into the persistent cache in the worker process, or else here."""
        options = persistent_cache_options() if key[2] == "cpu" and not self._filler_failed else None
        if options is None:
            run_on_zeros(*key)
            return
        filler = cache_filler()
        try:
            if options != self._filler_options or not filler.alive:
                filler.call("configure", options)
                self._filler_options = options
        except Exception:  # the process cannot be started or configured: compile here from now on
            self._filler_failed = True
        else:
            try:
                filler.call("compile", *key)  # the program's own compilation error propagates: a hint only
                return
            except workers.WorkerError:  # the process died: compile here from now on
                self._filler_failed = True
        run_on_zeros(*key)


def persistent_cache_options() -> dict[str, Any] | None:
    """This process's :data:`CACHE_OPTIONS` when a persistent compilation cache is in force here, else None."""
    jax = import_jax()
    if not jax.config.jax_enable_compilation_cache or jax.config.jax_compilation_cache_dir is None:
        return None
    return {name: getattr(jax.config, name) for name in CACHE_OPTIONS}


def cache_filler() -> workers.Worker:
    """The process's worker that compiles ahead into the persistent cache (created, not started, on first use)."""
    return workers.shared(FILLER_TARGET, name="jax-compile-ahead", nice=workers.AHEAD_OF_NEED)


PRECOMPILER = Precompiler()
"""The process's one precompiler, shared by every JAX adapter object."""
