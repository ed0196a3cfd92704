"""The torch adapter's cost per call against what a PyTorch user pays for the same gradients. Prints figures; asserts nothing.

    python -m benchmarks.bench_torch_adapter

Three ways to get ∂C/∂w^l and ∂C/∂b^l of the same 5-8-8-3 network, batch 4, float32, each timed over many
calls in this one process (so the ratios hold on a shared machine even when the absolute times drift):

* ``fresh module``: what a user writes -- an ``nn.Sequential`` of ``nn.Linear`` and ``nn.Sigmoid`` built for the
  call, the page's parameters copied in, the cost, ``.backward()``;
* ``bare autograd``: ``torch.autograd.grad`` on bare tensors, no module at all (the floor);
* ``adapter``: :meth:`TorchAdapter.run` on the ``eager`` path, which also pins IEEE arithmetic for the call and
  restores the caller's flags, leaves torch's random number generator untouched, records z^l, a^l and δ^l,
  and converts everything to numpy in page layout; and :meth:`~backprop_conformance.adapters.base.Adapter.compute`,
  which adds the request and contract checks every adapter gets.

The goal (issue 14): the adapter's call at most 2× the fresh module's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from backprop_conformance.adapters.torch_adapter import TorchAdapter
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.reference.model import Batch, Network

WIDTHS = (5, 8, 8, 3)
BATCH = 4
CALLS = 2000


def problem() -> Problem:
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((WIDTHS[i + 1], WIDTHS[i])) for i in range(len(WIDTHS) - 1)]
    biases = [rng.standard_normal(WIDTHS[i + 1]) for i in range(len(WIDTHS) - 1)]
    return Problem.rounded(
        Network.from_lists(weights, biases),
        Batch(rng.standard_normal((BATCH, WIDTHS[0])), rng.uniform(size=(BATCH, WIDTHS[-1]))),
        "float32",
    )


def per_call(fn: Callable[[], object]) -> float:
    """Milliseconds per call, best of three batches of :data:`CALLS` after a warm-up."""
    for _ in range(100):
        fn()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(CALLS):
            fn()
        best = min(best, (time.perf_counter() - start) / CALLS)
    return best * 1e3


def main() -> None:
    p = problem()
    adapter = TorchAdapter()
    adapter.caps  # noqa: B018
    w = [torch.tensor(p.network.w[l], dtype=torch.float32) for l in p.network.layers]
    b = [torch.tensor(p.network.b[l], dtype=torch.float32) for l in p.network.layers]
    x, y = torch.tensor(p.batch.x, dtype=torch.float32), torch.tensor(p.batch.y, dtype=torch.float32)

    def fresh_module() -> None:
        layers: list[torch.nn.Module] = []
        for W, B in zip(w, b, strict=True):
            linear = torch.nn.Linear(W.shape[1], W.shape[0])
            with torch.no_grad():
                linear.weight.copy_(W)
                linear.bias.copy_(B)
            layers += [linear, torch.nn.Sigmoid()]
        cost = 0.5 * ((y - torch.nn.Sequential(*layers)(x)) ** 2).sum()
        cost.backward()

    def bare_autograd() -> None:
        params = [t.clone().requires_grad_() for pair in zip(w, b, strict=True) for t in pair]
        a = x
        for i in range(0, len(params), 2):
            a = torch.sigmoid(a @ params[i].T + params[i + 1])
        torch.autograd.grad(0.5 * ((y - a) ** 2).sum(), params)

    figures = {
        "fresh module": per_call(fresh_module),
        "bare autograd": per_call(bare_autograd),
        "adapter run()": per_call(lambda: adapter.run(p.network, p.batch, dtype="float32", path="eager")),
        "adapter compute()": per_call(lambda: adapter.compute(p.network, p.batch, dtype="float32", path="eager")),
    }
    base = figures["fresh module"]
    print(f"{'-'.join(map(str, WIDTHS))} network, batch {BATCH}, float32, {torch.__version__}, {torch.get_num_threads()} threads")
    for name, ms in figures.items():
        print(f"{name:<18} {ms:7.3f} ms per call   {ms / base:5.2f}× the fresh module")


if __name__ == "__main__":
    main()
