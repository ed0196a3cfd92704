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

Handing the program over. Found in the cache, a program still costs the example its tracing and lowering, which
for the small networks of a pool is most of what the first call of a shape costs. So for a jitted path the worker
compiles the program into a store of its own (:mod:`~backprop_conformance.adapters.jax_programs`) and returns it
serialized, and the example runs it as it is (:meth:`Precompiler.program`), from the worker or, for a shape the
worker has not reached yet, from the store left by an earlier run; but only where this process would have compiled
the same program: the worker's global JAX settings must equal this
process's (:func:`~backprop_conformance.adapters.jax_model.settings_fingerprint`, compared at every call, so a
setting changed mid-run is noticed), and the first program of each (path, dtype, device) is lowered here too and its
text compared with the worker's, which covers what settings alone cannot (a JAX function patched in this process).
Anything else, and the example traces and compiles as it would have without the worker, from the cache.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

from backprop_conformance.adapters import jax_programs
from backprop_conformance.adapters import worker as workers
from backprop_conformance.adapters.ahead import Ahead
from backprop_conformance.adapters.jax_model import import_jax, lowered_text, precision_scope, run_on_zeros, settings_fingerprint

Key = jax_programs.Key
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
        self.store: str | None = None
        """The store of programs the worker hands over (:mod:`~backprop_conformance.adapters.jax_programs`); None, as
        when the user configured JAX's cache, hands none over."""
        self._handed: dict[Key, jax_programs.Entry] = {}
        self._loaded: dict[Key, tuple[Any, str]] = {}
        self._checked: dict[tuple[str, str, str], bool] = {}
        self._programs_lock = threading.Lock()

    def work(self, key: Key) -> None:
        """Have ``key``'s program compiled in the worker process (into the store, handed over, for a jitted path; into
        JAX's persistent cache otherwise), or else compile it here."""
        options = persistent_cache_options() if key[2] == "cpu" and not self._filler_failed else None
        if options is None:
            run_on_zeros(*key)
            return
        filler = cache_filler()
        try:
            if options != self._filler_options or not filler.alive:
                filler.call("configure", options, self.store)
                self._filler_options = options
        except Exception:  # the process cannot be started or configured: compile here from now on
            self._filler_failed = True
        else:
            try:
                handed = filler.call("compile", *key)  # the program's own compilation error propagates: a hint only
            except workers.WorkerError:  # the process died: compile here from now on
                self._filler_failed = True
            else:
                if handed is not None:
                    with self._programs_lock:
                        self._handed[key] = handed
                return
        run_on_zeros(*key)

    def program(self, key: Key) -> Any | None:
        """The worker's compiled program for ``key``, loaded, when this process would have compiled the same one
        (see the module); None when the example must trace and compile it itself. Call it after :meth:`claim`."""
        with precision_scope(key[1]):  # the settings an example sees: float64 runs in the x64 context
            return self._program(key)

    def _program(self, key: Key) -> Any | None:
        if key not in self._loaded:
            with self._programs_lock:
                handed = self._handed.get(key)
            if handed is None and self.store is not None and key[2] == "cpu":
                handed = jax_programs.read(Path(self.store), key)  # a warm store serves a shape the worker has not reached
            if handed is None:
                return None
            payload, in_tree, out_tree, digest, settings = handed
            if settings != settings_fingerprint():
                return None
            family = key[:3]
            if family not in self._checked:
                self._checked[family] = hashlib.sha256(lowered_text(*key).encode()).hexdigest() == digest
            if not self._checked[family]:
                return None
            from jax.experimental import serialize_executable

            self._loaded[key] = (serialize_executable.deserialize_and_load(payload, in_tree, out_tree), settings)
        program, settings = self._loaded[key]
        return program if settings == settings_fingerprint() else None  # a setting changed mid-run: compile afresh

    def forget(self) -> None:
        """Drop the programs handed over and loaded (they hold compiled code): at the end of a run."""
        with self._programs_lock:
            self._handed.clear()
        self._loaded.clear()
        self._checked.clear()


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
