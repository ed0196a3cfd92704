"""Loss-scaling paths: torch's ``GradScaler`` (``grad-scaler``) and Keras' ``LossScaleOptimizer`` (``<backend>-loss-scale``).

A power-of-two loss scale changes no rounding unless a scaled value overflows, so the gradients a scaler unscales
must be the gradients of the path without it, bit for bit where the formats have float32's range (bfloat16), and pass
the policy's own bound. In float16 a scaled value may keep digits its unscaled one lost below float16's smallest
normal number (6.1e-5), which only makes the scaled computation more accurate, within the underflow allowance.
Where the first scale overflows, the scaler must skip the step, halve the scale and succeed at a smaller one, which
the path reports. A failing verdict on a loss-scaled path says whether its scale could have changed a rounding
(``conformance/loss_scale.py``).
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
from conftest import suite

from backprop_conformance.adapters.base import Adapter, AdapterContractError, AdapterOutput
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.conformance.verdict import judge
from backprop_conformance.reference.dtypes import round_to
from backprop_conformance.reference.model import Batch, Gradients, Network

POLICIES = ("mixed-float16", "mixed-bfloat16", "float32")


def _problem(dtype: str, seed: int, batch_size: int = 5) -> Problem:
    rng = np.random.default_rng(seed)
    widths = (3, 5, 4, 2)

    def f32(values: np.ndarray) -> np.ndarray:
        return round_to("float32", values).astype(np.float64)

    network = Network.from_lists(
        [f32(rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)) for n_in, n_out in itertools.pairwise(widths)],
        [f32(rng.standard_normal(n_out) * 0.5) for n_out in widths[1:]],
    )
    batch = Batch(f32(rng.standard_normal((batch_size, widths[0]))), f32(rng.uniform(size=(batch_size, widths[-1]))))
    return Problem.rounded(network, batch, dtype)


def _overflowing(dtype: str) -> Problem:
    """Every a^l = 1/2 (zero weights and biases) and every target 0, over 16 examples: each output δ is S/8 and each
    last-layer weight gradient 16 · S/8 · 1/2 = S, which a float16 gradient holds only for S ≤ 2^15 (65504 is its largest)."""
    network = Network.from_lists([np.zeros((4, 3)), np.zeros((2, 4))], [np.zeros(4), np.zeros(2)])
    return Problem.rounded(network, Batch(np.ones((16, 3)), np.zeros((16, 2))), dtype)


def _same(a: Gradients, b: Gradients) -> bool:
    return all(np.array_equal(g, (b.w if kind == "w" else b.b)[l]) for kind, l, g in a.items())


def _check_path(adapter: Adapter, plain: str, scaled: str, first_scale: float) -> None:
    for dtype in POLICIES:
        for seed in range(3):
            problem = _problem(dtype, seed)
            got = adapter.compute(problem.network, problem.batch, dtype=dtype, path=scaled)
            want = adapter.compute(problem.network, problem.batch, dtype=dtype, path=plain)
            assert got.loss_scale == first_scale, f"{scaled} {dtype}: scale {got.loss_scale}, expected the first one"
            if dtype != "mixed-float16":
                assert _same(got.gradients, want.gradients), f"{scaled} {dtype} seed {seed}: unscaled gradients differ from {plain}'s"
            verdict = judge(f"{scaled}-{dtype}", problem, got, adapter.caps.precision(dtype))
            assert verdict.passed, verdict.message()
    problem = _overflowing("mixed-float16")
    got = adapter.compute(problem.network, problem.batch, dtype="mixed-float16", path=scaled)
    want = adapter.compute(problem.network, problem.batch, dtype="mixed-float16", path=plain)
    assert got.loss_scale == 2.0**14, f"{scaled}: scale {got.loss_scale}; every scale above 2^14 overflows a float16 gradient"
    assert _same(got.gradients, want.gradients)
    assert judge(scaled, problem, got, adapter.caps.precision("mixed-float16")).passed


def test_torch_grad_scaler_returns_the_unscaled_gradients_and_halves_an_overflowing_scale() -> None:
    pytest.importorskip("torch")
    from backprop_conformance.adapters.torch_adapter import INITIAL_LOSS_SCALE, TorchAdapter

    _check_path(TorchAdapter(), "eager", "grad-scaler", INITIAL_LOSS_SCALE)


@pytest.mark.parametrize("backend", ["torch", "tensorflow", "jax"])
def test_keras_loss_scale_optimizer_returns_the_unscaled_gradients_and_halves_an_overflowing_scale(backend: str) -> None:
    if importlib.util.find_spec("keras") is None or importlib.util.find_spec(backend) is None:
        pytest.skip(f"Keras on {backend} is not installed")
    from backprop_conformance.adapters.keras_adapter import KerasAdapter

    _check_path(KerasAdapter(), backend, f"{backend}-loss-scale", 2.0**15)  # LossScaleOptimizer's initial_scale


def test_a_path_refuses_the_formats_its_scaler_cannot_unscale() -> None:
    pytest.importorskip("torch")
    from backprop_conformance.adapters.base import RequestError
    from backprop_conformance.adapters.torch_adapter import TorchAdapter

    problem = _problem("float16", 0)
    with pytest.raises(RequestError, match=r"dtype 'float16' is not supported on path 'grad-scaler'; there: float64, float32"):
        TorchAdapter().compute(problem.network, problem.batch, dtype="float16", path="grad-scaler")


def _scaled_output(problem: Problem, factor: float, used: float) -> AdapterOutput:
    """The reference's gradients times ``factor``, reported as computed at loss scale ``used``."""
    grads = problem.trace.gradients
    return AdapterOutput(
        Gradients(
            {l: (g * factor).astype(np.float32) for l, g in grads.w.items()},
            {l: (g * factor).astype(np.float32) for l, g in grads.b.items()},
        ),
        problem.trace.cost,
        loss_scale=used,
    )


def test_a_failing_loss_scaled_verdict_says_the_scale_was_exact() -> None:
    from backprop_conformance.reference.mixed_precision import MixedPolicy

    problem = _problem("mixed-float16", 1)
    policy = MixedPolicy.of("mixed-float16", dot="float32", cost="float32", batch_sum="float32", cost_sum="float32")
    verdict = judge("kept", problem, _scaled_output(problem, 2.0**16, 2.0**16), policy)
    assert not verdict.passed
    assert "a loss scale of 2^16 not removed" in verdict.loss_scale
    assert "computed with a loss scale of 2^16 and divided by it; scaling by up to 2^" in verdict.loss_scale
    assert "the scale is not the cause" in verdict.message()


def test_a_failing_loss_scaled_verdict_says_when_the_scale_may_have_overflowed() -> None:
    from backprop_conformance.reference.mixed_precision import MixedPolicy

    problem = _overflowing("mixed-float16")
    policy = MixedPolicy.of("mixed-float16", dot="float32", cost="float32", batch_sum="float32", cost_sum="float32")
    verdict = judge("overflowed", problem, _scaled_output(problem, 0.5, 2.0**16), policy)
    assert not verdict.passed
    assert "computed with a loss scale of 2^16, above 2^14, the largest that keeps every scaled value finite" in verdict.loss_scale


@pytest.mark.parametrize("scale", [3.0, 0.0, -2.0, float("inf"), True])
def test_the_contract_refuses_a_loss_scale_that_is_not_a_power_of_two(scale: float) -> None:
    from backprop_conformance.adapters.base import check_output

    problem = _problem("float32", 0)
    output = _scaled_output(problem, 1.0, 1.0)
    output = AdapterOutput(output.gradients, output.cost, loss_scale=scale)
    with pytest.raises(AdapterContractError, match=r"loss_scale is .*; a loss scale is a positive power of two"):
        check_output("here", problem.network, problem.batch, "float32", output)


def test_loss_scaled_cells_are_opt_in_and_pass_in_the_suite(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    selection = ("--conformance-backend", "torch", "--conformance-path", "grad-scaler")
    run = suite(
        tmp_path, *selection, *("--conformance-dtype", "mixed-float16", "--conformance-dtype", "float16", "--conformance-max-examples", "5")
    )
    assert run.returncode == 0, run.explain()
    assert run.report is not None, run.explain()
    assert [c.id for c in run.report.cells] == ["torch-grad-scaler-mixed-float16"], "float16 has no grad-scaler cell"
    assert all(c.status == "passed" and c.examples == 5 for c in run.report.cells), run.explain()
