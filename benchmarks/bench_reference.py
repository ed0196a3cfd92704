"""How fast the references are: the vectorized reference against numpy's own matmul, and the slow oracles.

Why these two figures. The vectorized reference (reference/vectorized.py) is run on every case the
suite generates, so it should cost little more than the matrix products backpropagation cannot avoid;
its FLOP rate is therefore reported as a fraction of numpy's float64 matmul rate on exactly the same
shapes, measured in the same run (so the machine's speed and load cancel). The goal is >= 0.5 from
width 512: below that, something other than the products (σ, copies, validation) dominates. The
literal transcription (reference/literal.py) and the mpmath oracle (reference/mpmath_oracle.py) are
per-index Python loops; their time for a ~100-parameter network says how many cases a test can afford.

FLOPs counted (matrix products only, forward + backward, page's layers l = 2..L, batch B):
    z^l = a^{l−1} (w^l)ᵀ                 2·B·n(l)·n(l−1)   every l
    ∂C/∂a^{l−1} = δ^l w^l                2·B·n(l)·n(l−1)   every l except 2 (no ∂C/∂a^1 is needed)
    ∂C/∂w^l = (δ^l)ᵀ a^{l−1}             2·B·n(l)·n(l−1)   every l

Run: ``python -m benchmarks.bench_reference``. It prints figures and asserts nothing about time.
numpy's matmul uses every core OpenBLAS is given while σ and the other elementwise steps use one, so
the ratio falls as cores are added; on a machine shared with other jobs, ``OPENBLAS_NUM_THREADS=1``
gives the steadiest figure.

Allocation matters as much as arithmetic. The reference returns every intermediate, about 18 MB per
call at width 512; allocated as separate arrays, that memory went back to the operating system after
each call and was page-faulted in again on the next, which cost more than all the elementwise work.
``backprop`` therefore takes one block per call (reference/vectorized.py, ``_layer_buffers``); table
(iii) measures the two ways of getting the same amount of memory, so the reason stays checkable on
any machine.
"""

from __future__ import annotations

import importlib
import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from backprop_conformance.reference.literal import literal_gradients
from backprop_conformance.reference.model import Batch, Network
from backprop_conformance.reference.vectorized import backprop

DEPTH = 4
BATCH = 256
WIDTHS = (64, 512, 1024)
ORACLE_WIDTHS = (4, 8, 6, 2)  # 108 parameters, the size the design note quotes for the mpmath oracle
ORACLE_BATCHES = (1, 4)


def random_problem(widths: tuple[int, ...], batch_size: int, seed: int = 0) -> tuple[Network, Batch]:
    """A float64 network with layer widths (n(1), ..., n(L)) and a batch of ``batch_size`` examples."""
    rng = np.random.default_rng(seed)
    w = {l: rng.normal(0.0, 1.0 / np.sqrt(widths[l - 2]), (widths[l - 1], widths[l - 2])) for l in range(2, len(widths) + 1)}
    b = {l: rng.normal(0.0, 1.0, widths[l - 1]) for l in range(2, len(widths) + 1)}
    x = rng.normal(0.0, 1.0, (batch_size, widths[0]))
    y = rng.uniform(0.0, 1.0, (batch_size, widths[-1]))
    return Network(w, b), Batch(x, y)


def matmul_flops(widths: tuple[int, ...], batch_size: int) -> int:
    """The matrix-product FLOPs of one forward + backward pass, as counted in the module docstring."""
    total = 0
    for l in range(2, len(widths) + 1):
        products = 3 if l > 2 else 2
        total += products * 2 * batch_size * widths[l - 1] * widths[l - 2]
    return total


def matmuls_only(network: Network, batch: Batch) -> Callable[[], None]:
    """The products of one backward pass and nothing else, same shapes and operand layouts as the reference.

    The operands are random stand-ins for a, δ (their values do not change a matmul's speed).
    """
    rng = np.random.default_rng(1)
    B = batch.size
    w = dict(network.w)
    a = {l: rng.random((B, n)) for l, n in enumerate(network.widths, start=1)}
    delta = {l: rng.random((B, network.widths[l - 1])) for l in network.layers}
    L = network.depth

    def run() -> None:
        for l in range(2, L + 1):
            a[l - 1] @ w[l].T
        for l in range(L, 2, -1):
            delta[l] @ w[l]
        for l in range(2, L + 1):
            delta[l].T @ a[l - 1]

    return run


def timings(fn: Callable[[], object], repeat: int) -> list[float]:
    """Seconds per call of ``fn`` over ``repeat`` calls, after one warm-up call."""
    fn()
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def flop_rate_table() -> None:
    print(f"(i) vectorized reference vs numpy float64 matmul, depth L = {DEPTH} (all layers the same width), batch B = {BATCH}")
    columns = ("width", "GFLOP", "ref best ms", "ref med ms", "mm best ms", "ref GFLOP/s", "mm GFLOP/s", "ratio")
    header = " ".join(f"{c:>{max(len(c), 6)}}" for c in columns)
    print(header)
    print("-" * len(header))
    for width in WIDTHS:
        widths = (width,) * DEPTH
        network, batch = random_problem(widths, BATCH)
        flops = matmul_flops(widths, BATCH)
        repeat = 15 if width <= 512 else 7
        ref_times: list[float] = []
        mm_times: list[float] = []
        products = matmuls_only(network, batch)
        for _ in range(3):  # interleaved, so load from other processes hits both alike
            ref_times += timings(partial(backprop, network, batch), repeat)
            mm_times += timings(products, repeat)
        ref_best, mm_best = min(ref_times), min(mm_times)
        cells = (
            f"{width}",
            f"{flops / 1e9:.3f}",
            f"{ref_best * 1e3:.2f}",
            f"{statistics.median(ref_times) * 1e3:.2f}",
            f"{mm_best * 1e3:.2f}",
            f"{flops / ref_best / 1e9:.2f}",
            f"{flops / mm_best / 1e9:.2f}",
            f"{mm_best / ref_best:.2f}",
        )
        print(" ".join(f"{cell:>{max(len(c), 6)}}" for cell, c in zip(cells, columns, strict=True)))
    print("ratio = reference FLOP rate / numpy matmul FLOP rate (best of each); goal >= 0.5 from width 512.")


# The arrays one width-512 pass returns per layer l = 2..L: z, a, δ, ∂C/∂a and ∂C/∂w (∂C/∂b is negligible).
PASS_SHAPES = ([(BATCH, 512)] * 4 + [(512, 512)]) * (DEPTH - 1)


def _first_touch_times(one_block: bool) -> list[float]:
    """Seconds to get and fill the memory one width-512 pass returns, freeing it between calls, as the
    separate arrays the reference used to allocate or as one block. Run in a fresh interpreter: glibc
    sizes its thresholds after the largest block freed so far, so earlier tables would skew it."""
    shapes = PASS_SHAPES
    total = sum(math.prod(shape) for shape in shapes)

    def separate() -> list[np.ndarray]:
        arrays = [np.empty(shape) for shape in shapes]
        for array in arrays:
            array.fill(1.0)
        return arrays  # dropped by the caller, as a trace is

    def block() -> np.ndarray:
        array = np.empty(total)
        array.fill(1.0)
        return array

    return timings(block if one_block else separate, 45)


def first_touch_table() -> None:
    print()
    megabytes = sum(math.prod(shape) for shape in PASS_SHAPES) * 8 / 1e6
    print(f"(iii) getting and filling the {megabytes:.1f} MB one width-512 pass returns, each in a fresh interpreter, best of 45 (median)")
    spawn = multiprocessing.get_context("spawn")
    for name, one_block in ((f"{len(PASS_SHAPES)} separate arrays", False), ("one block", True)):
        with spawn.Pool(1) as pool:
            times = pool.apply(_first_touch_times, (one_block,))
        print(f"{name:>20}: {min(times) * 1e3:7.2f} ms ({statistics.median(times) * 1e3:.2f})")
    print("backprop allocated separate arrays before it took one block per call (reference/vectorized.py, _layer_buffers).")


def oracle_table() -> None:
    network, _ = random_problem(ORACLE_WIDTHS, 1)
    print()
    print(f"(ii) per-index oracles, widths {ORACLE_WIDTHS} = {network.parameter_count} parameters, float64 in, best of 9 (median)")
    try:
        mpmath_oracle = importlib.import_module("backprop_conformance.reference.mpmath_oracle")
    except ImportError:
        mpmath_oracle = None
    header = f"{'B':>3} {'vectorized ms':>16} {'literal ms':>16} {'mpmath (50 digits) ms':>24}"
    print(header)
    print("-" * len(header))
    oracles: list[Callable[[Network, Batch], object] | None] = [
        backprop,
        literal_gradients,
        (lambda network, batch: mpmath_oracle.mpmath_backprop(network, batch).gradients) if mpmath_oracle is not None else None,
    ]
    for batch_size in ORACLE_BATCHES:
        network, batch = random_problem(ORACLE_WIDTHS, batch_size)
        cells = []
        for oracle in oracles:
            if oracle is None:
                cells.append("not available")
                continue
            times = timings(partial(oracle, network, batch), 9)
            cells.append(f"{min(times) * 1e3:.3f} ({statistics.median(times) * 1e3:.3f})")
        print(f"{batch_size:>3} {cells[0]:>16} {cells[1]:>16} {cells[2]:>24}")
    print("Each cell is milliseconds for the full gradient, best (median); the oracles are run per case, so this is their cost per case.")


def main() -> None:
    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs visible, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    flop_rate_table()
    oracle_table()
    first_touch_table()


if __name__ == "__main__":
    main()
