"""Which format each kind of sum accumulates in, per framework, for float16 and bfloat16: the evidence behind the declarations.

    nice python -m benchmarks.accumulation               # 20 trials per row
    nice python -m benchmarks.accumulation --trials 50

An adapter declares, per dtype, the accumulation format of three operations (``Capabilities.accumulation``):
``dot`` (the matrix products: z^l, ∂C/∂a^l and the weight gradient's sum over the batch), ``batch_sum``
(the bias gradient's sum over the batch) and ``cost_sum`` (the cost's sum over the batch and the
outputs). This prints, for each, how often the framework returns the *correctly rounded* exact result
for positive random terms (no cancellation): accumulation in float32 then one rounding to the format
does so in practically every trial, accumulation in the format itself (sequential, pairwise or blocked)
in few. Each operation is computed the way the adapters and the example plug-in compute it: the bias
gradient through the framework's own autodiff (torch: Linear's bias gradient; JAX: the transpose of
b's broadcast, under jit), the cost's sum with the framework's sum, the products with its matmul. It
prints figures and asserts nothing.

It calls each framework's operations directly, for the three frameworks whose declarations it documents; to
measure any adapter (a plug-in included) through the adapter itself, run the public probe,
``python -m backprop_conformance accumulation BACKEND`` (:mod:`backprop_conformance.conformance.accumulation_probe`),
whose exact sums and rounding check this reuses.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from backprop_conformance.conformance.accumulation_probe import correctly_rounded, exact_dot, exact_sum
from backprop_conformance.reference.dtypes import round_to

SIZES = (16, 1024)
"""Terms per sum: a batch of the default profile's largest size, and a large one."""

Op = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, list[Fraction]]]
"""(p, q) of shape (n, 2), values of the format in float64 -> (computed, exact) for 2 sums of n terms."""


def torch_ops(dtype: str) -> dict[str, Op]:
    import torch

    t = getattr(torch, dtype)

    def dot(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # each column pair as one (1, n) @ (n, 1) product, as in a Linear layer of fan-in n
        got = [float(torch.tensor(p[:, j][None, :], dtype=t) @ torch.tensor(q[:, j][:, None], dtype=t)) for j in range(p.shape[1])]
        return np.array(got), exact_dot(p, q)

    def batch_sum(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        linear = torch.nn.Linear(1, p.shape[1], dtype=t)
        out = linear(torch.zeros(p.shape[0], 1, dtype=t))
        out.backward(torch.tensor(p, dtype=t))
        return linear.bias.grad.float().numpy().astype(np.float64), exact_sum(p)

    def cost_sum(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        got = [float(torch.sum(torch.tensor(p[:, j], dtype=t))) for j in range(p.shape[1])]
        return np.array(got), exact_sum(p)

    return {"dot": dot, "batch_sum": batch_sum, "cost_sum": cost_sum}


def jax_ops(dtype: str) -> dict[str, Op]:
    import jax
    import jax.numpy as jnp

    t = jnp.dtype(dtype)
    matmul = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
    total = jax.jit(jnp.sum)

    @jax.jit
    def bias_gradient(g: jax.Array) -> jax.Array:
        _, pull = jax.vjp(lambda b: jnp.zeros(g.shape, g.dtype) + b, jnp.zeros(g.shape[1], g.dtype))
        return pull(g)[0]

    def dot(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        got = [float(matmul(jnp.asarray(p[:, j][None, :], t), jnp.asarray(q[:, j][:, None], t))[0, 0]) for j in range(p.shape[1])]
        return np.array(got), exact_dot(p, q)

    def batch_sum(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(bias_gradient(jnp.asarray(p, t))).astype(np.float64), exact_sum(p)

    def cost_sum(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        got = [float(total(jnp.asarray(p[:, j], t))) for j in range(p.shape[1])]
        return np.array(got), exact_sum(p)

    return {"dot": dot, "batch_sum": batch_sum, "cost_sum": cost_sum}


def numpy_ops(dtype: str) -> dict[str, Op]:
    """numpy as the example plug-in uses it (float16), and ml_dtypes' bfloat16 as the sweep's NumpyBfloat16 does."""
    if dtype == "bfloat16":
        from ml_dtypes import bfloat16 as t
    else:
        t = np.dtype(dtype)

    def dot(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        got = [float(np.asarray(p[:, j][None, :].astype(t) @ q[:, j][:, None].astype(t)).astype(t)[0, 0]) for j in range(p.shape[1])]
        return np.array(got), exact_dot(p, q)

    def batch_sum(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return p.astype(t).sum(axis=0).astype(np.float64), exact_sum(p)  # δ's (B, n(l)) rows added: the bias gradient

    def cost_sum(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.array([float(np.sum(p[:, j].astype(t))) for j in range(p.shape[1])]), exact_sum(p)

    return {"dot": dot, "batch_sum": batch_sum, "cost_sum": cost_sum}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    frameworks = {"torch": torch_ops, "jax": jax_ops, "numpy": numpy_ops}
    sizes = ", ".join(map(str, SIZES))
    print(f"correctly rounded results out of {args.trials} trials x 2 sums, positive uniform terms; terms per sum: {sizes}")
    print(
        f"{'framework':<10} {'dtype':<9} "
        + " ".join(f"{op + ' n=' + str(n):>17}" for op in ("dot", "batch_sum", "cost_sum") for n in SIZES)
    )
    for name, make in frameworks.items():
        for dtype in ("float16", "bfloat16"):
            try:
                ops = make(dtype)
            except ImportError as exc:
                print(f"{name:<10} {dtype:<9} not installed ({exc.name})")
                break
            cells = []
            for op in ("dot", "batch_sum", "cost_sum"):
                for n in SIZES:
                    hits = 0
                    for _ in range(args.trials):
                        p = round_to(dtype, rng.uniform(0.0, 1.0, (n, 2))).astype(np.float64)
                        q = round_to(dtype, rng.uniform(0.0, 1.0, (n, 2))).astype(np.float64)
                        got, exact = ops[op](p, q)
                        hits += correctly_rounded(dtype, got, exact)
                    cells.append(f"{hits:>8}/{2 * args.trials:<8}")
            print(f"{name:<10} {dtype:<9} " + " ".join(cells))


if __name__ == "__main__":
    main()
