"""What a verdict costs next to the gradient call it judges (issue 27). Prints figures; asserts nothing.

    python -m benchmarks.bench_verdict              # the three tables below, one run
    python -m benchmarks.bench_verdict --no-suite   # without table (iii), the `pytest conformance` run

(i) ``check_gradients`` against the anchors of the field, float64, median per check, on the issue's three
networks: torch's ``gradcheck`` (fast mode: one random projection; slow mode: every element by finite
differences, on the smallest network only), JAX's ``check_grads`` in reverse mode (one random direction), and
the bare ``torch.autograd.grad`` call (forward and backward on tensors made once): the computation a check
judges, the physical limit. The last column is check_gradients / bare call. Then where a check's time goes:
the judged function's own call (numpy in, numpy out), the float64 reference, the error bound, the comparison.

(ii) One example at the ``large`` profile's limits all at once (width 1024, depth 16, B = 512), float32 as
torch's ``eager`` path computes it: the framework's time (``Adapter.compute``), the verdict's (the float64
reference, the bound and the comparison) and their ratio, and the memory numpy allocates for the verdict
(tracemalloc's peak while judging, and what the example still holds once judged). Then the matrix products of that
example timed alone (:func:`product_floor`): the framework's in float32, the reference's and the bounds' in float64,
the arithmetic floor of today's verdict, and what it would be without the reference's own bound and with the
framework's bound in float32 -- the designs the issue's 3x would need, which the suite does not ship.

(iii) A warm default ``pytest conformance`` run on torch and JAX, through :mod:`benchmarks.bench_suite`: the
harness's milliseconds per example (wall time less the framework and the reference) for each backend.

Every figure of one run comes from the same machine in the same minutes, so ratios between them hold where
absolute figures drift with the machine's load. Tables (i) and (ii) run torch and numpy's BLAS on one thread
unless ``--threads`` says otherwise: on a shared machine a second thread's figure measures the other jobs more
than the code (the suite itself runs small torch calls on one thread, adapters/torch_adapter.py, and the
reference of a moderate network with one BLAS thread, conformance/blas_threads.py). The figures are in
docs/speed.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import tracemalloc
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from backprop_conformance.conformance.api import check_gradients
from backprop_conformance.conformance.blas_threads import serial_blas
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.conformance.verdict import compare_gradients, judge
from backprop_conformance.reference.error_bound import FLOAT64, gradient_tolerance, tolerance
from backprop_conformance.reference.model import Batch, Network
from backprop_conformance.reference.vectorized import backprop
from benchmarks.bench_reference import random_problem, timings

NETWORKS = (((5, 8, 8, 3), 4), ((32, 64, 64, 10), 16), ((128, 256, 256, 10), 32))
"""The issue's three networks: (widths, batch size)."""

LARGE = ((1024,) * 16, 512)
"""The ``large`` profile's limits reached all at once (conformance/strategies.py, LARGE_LIMITS)."""


def median_seconds(fn: Callable[[], object], calls: int) -> float:
    """Median seconds per call over ``calls`` calls, after a warm-up call."""
    return statistics.median(timings(fn, calls))


def _torch_functions(torch: Any) -> tuple[Callable, Callable]:
    """(cost of tensors, ``grad_fn`` of numpy arrays as check_gradients takes it), both the page's network in torch."""

    def cost(w: list, b: list, x: object, y: object) -> object:
        a = x
        for w_l, b_l in zip(w, b, strict=True):
            a = torch.sigmoid(a @ w_l.T + b_l)
        return 0.5 * ((a - y) ** 2).sum()

    def grad_fn(w: list[np.ndarray], b: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[list, list, float]:
        wt = [torch.from_numpy(v).requires_grad_() for v in w]
        bt = [torch.from_numpy(v).requires_grad_() for v in b]
        c = cost(wt, bt, torch.from_numpy(x), torch.from_numpy(y))
        grads = torch.autograd.grad(c, wt + bt)
        return [g.numpy() for g in grads[: len(w)]], [g.numpy() for g in grads[len(w) :]], float(c.detach())

    return cost, grad_fn


def anchor_table(calls: int) -> None:
    import torch

    jax = _jax()
    cost, grad_fn = _torch_functions(torch)
    print(f"(i) one check, float64, median ms per check ({calls} calls; gradcheck slow and check_grads fewer)")
    columns = ("network", "params", "check_gradients", "gradcheck fast", "gradcheck slow", "check_grads rev", "bare grad call", "ratio")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    splits = []
    for widths, size in NETWORKS:
        network, batch = random_problem(widths, size)
        print("| " + " | ".join(anchor_row(torch, cost, grad_fn, jax, network, batch, calls)) + " |")
        splits.append((widths, size, check_split(grad_fn, network, batch, calls)))
    print()
    print("where a check_gradients call goes, median ms per part (measured one part at a time):")
    print(f"{'network':<22} {'grad_fn':>8} {'reference':>10} {'bound':>8} {'compare':>8} {'rest':>8} {'total':>8}")
    for widths, size, parts in splits:
        rest = parts["total"] - sum(v for k, v in parts.items() if k != "total")
        row = (parts["grad_fn"], parts["reference"], parts["bound"], parts["compare"], max(rest, 0.0), parts["total"])
        label = "-".join(map(str, widths)) + f", B={size}"
        print(f"{label:<22} " + " ".join(f"{v * 1e3:>{n}.3f}" for v, n in zip(row, (8, 10, 8, 8, 8, 8), strict=True)))


def anchor_row(
    torch: Any, cost: Callable, grad_fn: Callable, jax: Callable[[Network, Batch], float] | None, network: Network, batch: Batch, calls: int
) -> tuple[str, ...]:
    """One row of table (i): each check of ``network`` and ``batch``, and the bare gradient call."""
    w = [torch.tensor(network.w[l], requires_grad=True) for l in network.layers]
    b = [torch.tensor(network.b[l], requires_grad=True) for l in network.layers]
    x, y = torch.tensor(batch.x), torch.tensor(batch.y)
    depth = len(w)

    def of_flat(*params: object) -> object:
        return cost(list(params[:depth]), list(params[depth:]), x, y)

    bare = median_seconds(lambda: torch.autograd.grad(cost(w, b, x, y), w + b), calls)
    checked = median_seconds(lambda: check_gradients(grad_fn, network, batch, "float64"), calls)
    fast = median_seconds(lambda: torch.autograd.gradcheck(of_flat, (*w, *b), fast_mode=True), max(calls // 4, 5))
    slow = median_seconds(lambda: torch.autograd.gradcheck(of_flat, (*w, *b)), 5) if network.parameter_count < 1000 else None
    rev = jax(network, batch) if jax is not None else None
    return (
        "-".join(map(str, network.widths)) + f", B={batch.size}",
        f"{network.parameter_count:,}",
        f"{checked * 1e3:.2f} ms",
        f"{fast * 1e3:.2f} ms",
        f"{slow * 1e3:.1f} ms" if slow is not None else "-",
        f"{rev * 1e3:.2f} ms" if rev is not None else "jax not installed",
        f"{bare * 1e3:.3f} ms",
        f"{checked / bare:.1f}x",
    )


def check_split(grad_fn: Callable, network: Network, batch: Batch, calls: int) -> dict[str, float]:
    """Median seconds of each part of one check_gradients call, and of the whole call."""
    problem = Problem(network, batch, "float64")
    trace = problem.trace
    judged = tolerance(problem.network, problem.batch, trace, FLOAT64)
    bound = gradient_tolerance if problem.judges_lean else tolerance  # what judge computes for a passing example
    w = [np.array(problem.network.w[l]) for l in problem.network.layers]
    b = [np.array(problem.network.b[l]) for l in problem.network.layers]
    return {
        "grad_fn": median_seconds(lambda: grad_fn(w, b, problem.batch.x.copy(), problem.batch.y.copy()), calls),
        "reference": median_seconds(lambda: _serial(backprop, problem.network, problem.batch), calls),
        "bound": median_seconds(lambda: _serial(bound, problem.network, problem.batch, trace, FLOAT64), calls),
        "compare": median_seconds(lambda: compare_gradients(trace.gradients, trace.gradients, judged.gradients), calls),
        "total": median_seconds(lambda: check_gradients(grad_fn, problem.network, problem.batch, "float64"), calls),
    }


def _serial(part: Callable[..., object], network: Network, batch: Batch, *rest: object) -> object:
    """``part(network, batch, *rest)`` with numpy's BLAS threads as the suite sets them for it (conformance/blas_threads.py)."""
    with serial_blas(network, batch.size):
        return part(network, batch, *rest)


def _jax() -> Callable[[Network, Batch], float] | None:
    """Median seconds of ``jax.test_util.check_grads`` in reverse mode on a network, or None without JAX."""
    try:
        import jax
        import jax.numpy as jnp
        from jax.test_util import check_grads
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)

    def measure(network: Network, batch: Batch) -> float:
        layers = list(network.layers)
        params = [jnp.asarray(network.w[l]) for l in layers] + [jnp.asarray(network.b[l]) for l in layers]
        x, y = jnp.asarray(batch.x), jnp.asarray(batch.y)
        depth = len(layers)

        def cost(*p: object) -> object:
            a = x
            for w_l, b_l in zip(p[:depth], p[depth:], strict=True):
                a = jax.nn.sigmoid(a @ w_l.T + b_l)
            return 0.5 * jnp.sum((a - y) ** 2)

        return median_seconds(lambda: check_grads(cost, tuple(params), order=1, modes=("rev",)), 20)

    return measure


def large_example() -> float | None:
    """Table (ii); returns the framework's best time, or None without torch."""
    from backprop_conformance.adapters.registry import AdapterUnavailable, resolve

    widths, size = LARGE
    print()
    print(f"(ii) one example at the large profile's limits: widths 1024 x {len(widths)}, B = {size}, torch eager, float32")
    try:
        adapter = resolve("torch").load()
    except AdapterUnavailable as exc:
        print(f"torch is not available: {exc}")
        return None
    network, batch = random_problem(widths, size)
    problem = Problem.rounded(network, batch, "float32")
    precision = adapter.caps.precision("float32", "eager")
    framework, verdict, peak, kept = [], [], 0, 0
    for _ in range(3):
        fresh = Problem(problem.network, problem.batch, "float32")
        start = time.perf_counter()
        output = adapter.compute(fresh.network, fresh.batch, dtype="float32", path="eager")
        framework.append(time.perf_counter() - start)
        tracemalloc.start()
        start = time.perf_counter()
        result = judge("torch-eager-float32", fresh, output, precision)
        verdict.append(time.perf_counter() - start)
        kept, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert result.passed, result.message()
    f, v = min(framework), min(verdict)
    print(f"framework {f:.2f} s, verdict (reference + bound + comparison) {v:.2f} s: {v / f:.1f}x the framework (best of 3)")
    per_example = 4 * size * sum(widths[1:]) * 8
    print(
        f"memory the verdict allocates: peak {peak / 2**20:.0f} MiB, kept after it {kept / 2**20:.0f} MiB "
        f"(one float64 array of B x n(l) over every layer: {per_example / 4 / 2**20:.0f} MiB)"
    )
    return f


def product_floor(framework_seconds: float | None) -> None:
    """The matrix products of the ``large`` example timed alone, numpy's BLAS against itself: the arithmetic floor of
    each part, and of the verdict under designs the suite does not ship.

    Per layer (n(l) = n(l − 1) = 1024, B = 512) the framework computes z^l (B·n² multiply-adds), the weight gradient's
    sum over the batch (B·n²) and, from layer 3 on, (w^l)ᵀδ^l (B·n²), in float32. The reference computes the same
    products in float64. Each precision's bound computes E_z^l = |W|(E_a + c|a|), E_h = |W|ᵀ(E_δ + γ|δ|) and the weight
    gradient's bound as one product over 2B stacked terms (``reference/error_bound.py``): 4·B·n² per layer. The last
    two rows price what the issue's 3x would take away: the reference's bound (about 2^−29 of a float32 framework's,
    but still four products), and then the framework's bound computed in float32 (which needs a proven inflation for
    its own rounding, not derived).
    """
    widths, size = LARGE
    layers, n = len(widths) - 1, widths[0]
    rng = np.random.default_rng(0)

    def products(dtype: type, rows: int) -> float:
        """Seconds for one layer's (rows x n) @ (n x n) product in ``dtype``, median of 5."""
        left, right = rng.random((rows, n)).astype(dtype), rng.random((n, n)).astype(dtype)
        return median_seconds(lambda: left @ right, 5)

    f32, f64, f64_stacked = products(np.float32, size), products(np.float64, size), products(np.float64, 2 * size)
    f32_stacked = products(np.float32, 2 * size)
    framework = (3 * layers - 1) * f32
    reference = (3 * layers - 1) * f64
    bound64 = (2 * layers - 1) * f64 + layers * f64_stacked
    bound32 = (2 * layers - 1) * f32 + layers * f32_stacked
    print(f"the products alone ({layers} layers, {3 * layers - 1} products of B x n x n each for a gradient), against the framework's:")
    rows = (
        ("the framework's, float32", framework),
        ("the reference's, float64", reference),
        ("one precision's bound, float64", bound64),
        ("the verdict's today: reference + two bounds, float64", reference + 2 * bound64),
        ("without the reference's bound: reference + one bound", reference + bound64),
        ("and that bound in float32: reference + one float32 bound", reference + bound32),
    )
    whole = f" {'x its whole call':>18}" if framework_seconds else ""
    print(f"  {'':<58} {'':>8}  {'x its products':>14}{whole}")
    for label, seconds in rows:
        against_call = f" {seconds / framework_seconds:17.1f}x" if framework_seconds else ""
        print(f"  {label:<58} {seconds:6.2f} s  {seconds / framework:13.1f}x{against_call}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per median in table (i) (default 200)")
    parser.add_argument("--no-suite", action="store_true", help="skip table (iii), the pytest conformance run")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch's intra-op threads and numpy's BLAS threads in tables (i) and (ii) (default 1)"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    try:
        import torch
    except ImportError:
        raise SystemExit("bench_verdict needs torch: pip install 'backprop-conformance[torch]'") from None
    torch.set_num_threads(args.threads)
    threadpool_limits(limits=args.threads, user_api="blas")
    print(f"numpy {np.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, {args.threads} thread(s) for torch and numpy's BLAS")
    anchor_table(args.calls)
    product_floor(large_example())
    if not args.no_suite:
        from benchmarks.bench_suite import profiled_run

        print()
        print("(iii) a default pytest conformance run on torch and JAX (harness ms/example: wall less framework and reference)")
        profiled_run(["--conformance-backend", "torch", "--conformance-backend", "jax"])


if __name__ == "__main__":
    main()
