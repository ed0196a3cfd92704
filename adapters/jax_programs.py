"""The store of compiled JAX programs that the compiling worker hands over: one file per program, read by the worker
and by the run's own process.

Why a store of its own, beside JAX's persistent cache. A compiled CPU program that JAX loaded from its persistent
cache cannot be serialized again (loading the result fails with "Function ... not found", jax 0.10.2, measured), so
the programs handed over are compiled fresh, serialized, and kept here. An entry is named by everything that decides
the program without lowering it -- the path, format, device and shape, this process's JAX settings, the JAX and
jaxlib versions, ``XLA_FLAGS``, the CPU's model and features (XLA compiles for the host's instruction set), and the
source of :mod:`~backprop_conformance.adapters.jax_model` -- so that a warm store serves a program with one file read.
The entry keeps the digest of the program's lowered text and the settings it was compiled with, which the run's
process checks before running it (:meth:`~backprop_conformance.adapters.jax_precompile.Precompiler.program`).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

from backprop_conformance.adapters import jax_model
from backprop_conformance.adapters.dispatch import machine
from backprop_conformance.adapters.jax_model import import_jax, settings_fingerprint

Key = tuple[str, str, str, tuple[int, ...], int]
"""(path, dtype, device, widths, batch size): what one compiled program is specialised to."""

Entry = tuple[Any, Any, Any, str, str]
"""(payload, in_tree, out_tree, digest of the lowered text, settings fingerprint): a program as it is handed over."""


def entry_path(store: Path, key: Key) -> Path:
    """Where ``key``'s program compiled in this process's circumstances lives in ``store`` (see the module)."""
    import jaxlib

    jax = import_jax()
    host = machine()
    decided = [repr(key), settings_fingerprint(), jax.__version__, jaxlib.__version__, os.environ.get("XLA_FLAGS", "")]
    decided += [host.get("cpu.model", ""), host.get("cpu.features", ""), hashlib.sha256(Path(jax_model.__file__).read_bytes()).hexdigest()]
    return store / f"{hashlib.sha256(chr(10).join(decided).encode()).hexdigest()}.pickle"


def read(store: Path, key: Key) -> Entry | None:
    """``key``'s entry, or None when the store has none (or an unreadable one, which only costs a compilation)."""
    try:
        entry = pickle.loads(entry_path(store, key).read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError):
        return None
    return entry if isinstance(entry, tuple) and len(entry) == 5 else None


def write(store: Path, key: Key, entry: Entry) -> None:
    """Keep ``entry`` atomically; a store that cannot be written is only a slower next run."""
    target = entry_path(store, key)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".tmp-", delete=False) as handle:
            handle.write(pickle.dumps(entry))
        os.replace(handle.name, target)
    except OSError:
        pass
