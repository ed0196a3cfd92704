"""Fixed networks and everything the verdict computes for them, for a bit-for-bit comparison across code changes.

A speed-up of the error bound or of the comparison must not move a single bit of a tolerance or a ratio
(issue 27), unless it is a documented change of evaluation order, proven to keep the bound an upper bound, that
makes the file again. ``tests/data/bound_snapshot.json`` holds, for the networks of :data:`SHAPES` in the formats of
:data:`PRECISIONS`, a SHA-256 digest of the bytes of every array of
:func:`~backprop_conformance.reference.error_bound.tolerance` (per-example intermediates included), of
:func:`~backprop_conformance.reference.error_bound.error_bounds` with ``stable_sigma_prime``, the float64
reference's trace (one digest per group), and, written out in hexadecimal, the verdict's worst ratio and
first failing elements (all of them in a digest) for two framework outputs (a float32 computation and the same with
one gradient element moved).

How the file was made: ``python -m tests.bound_snapshot`` on the 2-core AMD EPYC (Zen 4, AVX-512) development
machine with numpy 2.4.6 and ``OPENBLAS_NUM_THREADS=1`` (and again with numpy's two threads: the same file), first
at commit c1c6bd3 (main before issue 27's changes, which the copy-free bound and comparison then matched bit for
bit), and again when the bound grouped its sums with the same matrix into one product (issue 27): a change of
evaluation order that moved bounds and ratios in their last digits (worst ratios by at most 6.7·10^−16 relative),
changed no verdict and no count of failing elements, and is proven to keep the bound an upper bound in
docs/error-bound.md, "The bound's own rounding". numpy's float64 products may round
differently on another CPU or BLAS build (OpenBLAS picks its kernels per core type), so
``tests/test_bound_snapshot.py`` compares against the file only where it was made.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from backprop_conformance.adapters.base import AdapterOutput
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.conformance.verdict import judge
from backprop_conformance.reference.error_bound import FLOAT64, Precision, error_bounds, tolerance
from backprop_conformance.reference.model import Batch, Gradients, Network
from backprop_conformance.reference.vectorized import backprop

SNAPSHOT = Path(__file__).parent / "data" / "bound_snapshot.json"

SHAPES = (
    ((5, 8, 8, 3), 4, 1.0),
    ((32, 64, 64, 10), 16, 1.0),
    ((7, 1, 9, 2), 1, 1.0),
    ((3, 33, 17, 5), 7, 6.0),  # saturated: weights of about 6/sqrt(n)
    ((4, 6, 6, 6, 6, 2), 3, 3.0),
)
"""(widths, batch size, weight scale) of the fixed networks."""

PRECISIONS: dict[str, tuple[str, Precision]] = {
    "float64": ("float64", FLOAT64),
    "float32": ("float32", Precision.of("float32")),
    "float32-r3": ("float32", Precision.of("float32", ranks=3)),
    "float32-r4": ("float32", Precision.of("float32", ranks=4)),
    "float16": ("float16", Precision.of("float16")),
    "float16-acc32": ("float16", Precision.of("float16", accumulation="float32")),
    "float16-dot32": ("float16", Precision.of("float16", accumulation={"dot": "float32"})),
    "bfloat16-acc32": ("bfloat16", Precision.of("bfloat16", accumulation="float32")),
}
"""Name → (the format the problem is rounded to, the framework's precision)."""

MAX_WRITTEN = 3
"""Failing elements written out in full per verdict; the others are in its digest."""


def network(widths: tuple[int, ...], size: int, scale: float, seed: int) -> tuple[Network, Batch]:
    rng = np.random.default_rng(seed)
    w = [rng.normal(0.0, scale / np.sqrt(widths[i]), (widths[i + 1], widths[i])) for i in range(len(widths) - 1)]
    b = [rng.normal(0.0, scale, widths[i + 1]) for i in range(len(widths) - 1)]
    batch = Batch(rng.normal(0.0, 1.0, (size, widths[0])), rng.uniform(0.0, 1.0, (size, widths[-1])))
    return Network.from_lists(w, b), batch


def _framework_output(problem: Problem, moved: bool) -> AdapterOutput:
    """The gradients as a float32 computation returns them, widened; ``moved`` shifts ∂C/∂w^2_11 by a relative 1e-3."""
    trace32 = backprop(problem.network, problem.batch, np.float32)
    w = {l: v.astype(np.float64) for l, v in trace32.gradients.w.items()}
    b = {l: v.astype(np.float64) for l, v in trace32.gradients.b.items()}
    if moved:
        w[2][0, 0] = w[2][0, 0] * (1 + 1e-3) + 1e-12
    return AdapterOutput(Gradients(w, b), float(trace32.cost))


def _arrays(prefix: str, fields: dict[str, object]) -> Iterator[tuple[str, np.ndarray]]:
    for field, value in fields.items():
        if isinstance(value, Gradients):
            for kind, l, array in value.items():
                yield f"{prefix}/{field}-{kind}/{l}", np.asarray(array)
        elif isinstance(value, Mapping):
            for l, array in value.items():
                yield f"{prefix}/{field}/{l}", np.asarray(array)
        else:
            yield f"{prefix}/{field}", np.asarray(value)


def digest(arrays: Iterator[tuple[str, np.ndarray]]) -> str:
    """SHA-256 of the names, dtypes, shapes and bytes of ``arrays``: equal digests mean equal bits."""
    sha = hashlib.sha256()
    for name, array in arrays:
        contiguous = np.ascontiguousarray(array)
        sha.update(f"{name}:{contiguous.dtype.str}:{contiguous.shape};".encode())
        sha.update(contiguous.tobytes())
    return sha.hexdigest()


def compute() -> dict[str, object]:
    """Everything the snapshot holds, computed by the code as it is now."""
    out: dict[str, object] = {}
    for index, (widths, size, scale) in enumerate(SHAPES):
        raw_network, raw_batch = network(widths, size, scale, seed=index)
        for name, (dtype, precision) in PRECISIONS.items():
            problem = Problem.rounded(raw_network, raw_batch, dtype)
            prefix = f"{index}/{name}"
            trace = problem.trace
            fields = {f: getattr(trace, f) for f in ("z", "a", "dC_da", "delta", "gradients", "cost")}
            out[f"{prefix}/trace"] = digest(_arrays("trace", fields))
            tol = tolerance(problem.network, problem.batch, trace, precision)
            stable = error_bounds(problem.network, problem.batch, trace, precision, stable_sigma_prime=True)
            for what, bounds in (("tolerance", tol), ("stable", stable)):
                fields = {f: getattr(bounds, f) for f in ("z", "a", "sigma_prime", "dC_da", "delta", "gradients", "cost")}
                out[f"{prefix}/{what}"] = digest(_arrays(what, fields))
            for moved in (False, True):
                verdict = judge("snapshot", problem, _framework_output(problem, moved), precision)
                key = f"{prefix}/verdict-{'moved' if moved else 'float32'}"
                out[f"{key}/worst"] = verdict.worst_ratio.hex()
                mismatches = verdict.gradients.mismatches
                values = np.array([(m.framework, m.reference, m.bound, m.ratio) for m in mismatches]).reshape(-1, 4)
                out[f"{key}/mismatches"] = [len(mismatches), digest(iter([("mismatches", values)]))]
                out[f"{key}/first mismatches"] = [[m.name, m.bound.hex(), m.ratio.hex()] for m in mismatches[:MAX_WRITTEN]]
    return out


def made_here() -> bool:
    """Whether this machine computes as the one the snapshot was made on (see the module docstring)."""
    if platform.machine() != "x86_64" or np.__version__ != "2.4.6":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512f" in flags and "AuthenticAMD" in flags


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(compute(), indent=0, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT} ({SNAPSHOT.stat().st_size} bytes)")
