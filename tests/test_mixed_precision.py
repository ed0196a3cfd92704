"""Mixed-precision policies: declared per operation, validated, and a bound that covers their exact simulation, tightly.

The simulation (:func:`~backprop_conformance.reference.mixed_precision.simulate`) rounds through every format the policy
names and accumulates term by term in the declared accumulation format, the worst order Higham's γ_n describes. The
bound must cover it on every network (ratio ≤ 1 with no safety factor K), must not be loose (the worst ratio over the
sample is not far below 1), and a computation that rounds coarser than the declared policy must leave it.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import suite

from backprop_conformance.adapters.base import Capabilities, CapabilitiesError
from backprop_conformance.reference.dtypes import float_format, is_representable, round_to
from backprop_conformance.reference.error_bound import EVALUATION_MARGIN, VacuousBound
from backprop_conformance.reference.mixed_precision import (
    POLICY_OPERATIONS,
    MixedPolicy,
    PolicyError,
    Simulation,
    accumulate,
    cast_parameters_error,
    largest_exact_loss_scale,
    mixed_error_bounds,
    rounding_error,
    simulate,
)
from backprop_conformance.reference.model import Batch, Network
from backprop_conformance.reference.vectorized import backprop

WIDE = {op: "float32" for op in ("dot", "cost", "batch_sum", "cost_sum")}
"""torch.autocast's float32 operations on CPU."""

POLICIES = {
    "autocast-bfloat16": MixedPolicy.of("mixed-bfloat16", **WIDE),
    "autocast-float16": MixedPolicy.of("mixed-float16", **WIDE),
    "all-bfloat16": MixedPolicy.of("mixed-bfloat16"),
    "jax-bfloat16": MixedPolicy.of("mixed-bfloat16", dot="float32", cost_sum="float32"),
    "float32-products": MixedPolicy.of("mixed-bfloat16", **WIDE, matmul="float32", sigma="float32", gradient="float32"),
}


def _networks(count: int, seed: int) -> list[tuple[Network, Batch]]:
    """Random float32 networks (depth 2–5, widths 1–40, batch 1–15) at the strategy's scales: unit and 4/√n weights,
    biases 0.1 to 10 (some units saturate), uniform targets."""
    rng = np.random.default_rng(seed)
    made = []
    for _ in range(count):
        L = int(rng.integers(2, 6))
        widths = rng.integers(1, 41, size=L)
        B = int(rng.integers(1, 16))

        def f32(values: np.ndarray) -> np.ndarray:
            return round_to("float32", values).astype(np.float64)

        ws = [f32(rng.standard_normal((widths[i + 1], widths[i])) * rng.choice([1.0, 4.0]) / np.sqrt(widths[i])) for i in range(L - 1)]
        bs = [f32(rng.standard_normal(widths[i + 1]) * rng.choice([0.1, 1.0, 10.0])) for i in range(L - 1)]
        made.append((Network.from_lists(ws, bs), Batch(f32(rng.standard_normal((B, widths[0]))), f32(rng.uniform(size=(B, widths[-1]))))))
    return made


NETWORKS = _networks(120, 25)


def _worst_ratio(network: Network, batch: Batch, computed: MixedPolicy, declared: MixedPolicy) -> float | None:
    """max |simulated − reference| / E(declared) over the gradients and the cost, K = 1; None when the bound is vacuous."""
    trace = backprop(network, batch)
    got = simulate(network, batch, computed)
    try:
        bound = mixed_error_bounds(network, batch, trace, declared)
    except VacuousBound:
        return None
    ratios = [abs(got.cost - trace.cost) / bound.cost]
    for kind, l, g in trace.gradients.items():
        mine = (got.gradients.w if kind == "w" else got.gradients.b)[l].astype(np.float64)
        limit = (bound.gradients.w if kind == "w" else bound.gradients.b)[l]
        ratios.append(float(np.max(np.abs(mine - g) / limit)))
    return max(ratios)


@pytest.mark.parametrize("name", POLICIES)
def test_bound_covers_the_exact_simulation_and_is_not_loose(name: str) -> None:
    policy = POLICIES[name]
    ratios = [r for network, batch in NETWORKS if (r := _worst_ratio(network, batch, policy, policy)) is not None]
    assert len(ratios) >= len(NETWORKS) // 2, f"{name}: only {len(ratios)} networks judged"
    assert max(ratios) <= 1.0, f"{name}: the simulation leaves the bound, worst ratio {max(ratios):.3g}"
    # Measured worst ratios 0.11–0.64 over these networks (docs/error-bound.md, "Mixed precision"): a bound 20 times
    # looser than the worst rounding it covers would hide the planted bugs of tests/mutants.py.
    assert max(ratios) >= 0.05, f"{name}: the bound is loose, worst ratio {max(ratios):.3g}"


@pytest.mark.parametrize(
    ("declared", "computed"),
    [
        ("float32-products", "autocast-bfloat16"),  # products, σ and gradients rounded to bfloat16 where float32 is declared
        ("autocast-bfloat16", "all-bfloat16"),  # every sum accumulated in bfloat16 where float32 is declared
    ],
)
def test_a_coarser_computation_leaves_the_declared_bound(declared: str, computed: str) -> None:
    ratios = [r for n, b in NETWORKS if (r := _worst_ratio(n, b, POLICIES[computed], POLICIES[declared])) is not None]
    assert max(ratios) > 2.0, f"{computed} judged as {declared}: worst ratio {max(ratios):.3g}, not caught"


def test_the_conversion_terms_are_raised_like_the_equations() -> None:
    """The terms the chain adds for conversions stay upper bounds after their own float64 rounding: each is raised by the
    evaluation margin, exactly as every equation is (docs/error-bound.md, "The bound's own rounding")."""
    raised = (1 + Fraction(EVALUATION_MARGIN)) * (1 - Fraction(2**-50))  # the margin, less a few float64 roundings
    u = Fraction(2**-8)
    value = np.array([1 / 3, -2.5, 0.1])
    got = rounding_error(2.0**-8, value)
    for g, v in zip(got, value, strict=True):
        assert Fraction(g) >= u * abs(Fraction(v)) * raised, (g, v)
    operand, error, w, b = np.array([[0.3, -0.7]]), np.array([[1e-3, 2e-3]]), np.array([[0.9], [1.1]]), np.array([0.2])
    terms = zip(operand[0], error[0], w[:, 0], strict=True)
    exact = u * (sum((abs(Fraction(o)) + Fraction(e)) * Fraction(v) for o, e, v in terms) + Fraction(b[0]))
    got_reads = cast_parameters_error(2.0**-8, operand, error, w, b)
    assert Fraction(got_reads[0, 0]) >= exact * raised, (got_reads, float(exact))


def test_accumulate_rounds_every_partial_sum() -> None:
    # In float16, 2048 + 1 rounds back to 2048: 4096 ones summed one by one stop there.
    assert accumulate("float16", np.ones(4096), axis=0) == 2048.0
    assert accumulate("float32", np.ones(4096), axis=0) == 4096.0


def test_simulated_values_are_in_their_formats() -> None:
    network, batch = NETWORKS[0]
    got = simulate(network, batch, POLICIES["autocast-bfloat16"])
    for l in network.layers:
        assert got.gradients.w[l].dtype == np.float32
        assert is_representable("bfloat16", got.gradients.w[l]) and is_representable("bfloat16", got.a[l])


def test_policy_fills_the_compute_format_and_describes_itself() -> None:
    policy = POLICIES["autocast-float16"]
    assert set(policy.formats) == set(POLICY_OPERATIONS)
    assert policy.formats["sigma"] == "float16" and policy.formats["dot"] == "float32"
    assert policy.storage == "float32" and policy.compute == "float16"
    assert policy.eta == float_format("float16").tiny
    assert policy.describe().startswith("float32 storage; float16 inputs/weights/matmul/sigma/gradient; float32 dot/cost")
    assert policy.cast("sigma", "cost") == 0.0 and policy.cast("cost", "sigma") == 2.0**-11
    assert policy.constants() != POLICIES["autocast-bfloat16"].constants()


@pytest.mark.parametrize(
    ("name", "formats", "message"),
    [
        ("mixed-float8", {}, r"unknown mixed-precision policy 'mixed-float8'; the suite knows mixed-bfloat16, mixed-float16"),
        ("mixed-bfloat16", {"softmax": "float32"}, r"unknown operation\(s\) 'softmax'; the operations are inputs, weights, dot"),
        ("mixed-float16", {"dot": "bfloat16"}, r"dot in bfloat16 is coarser than the compute format float16; a declaration may not loosen"),
        ("mixed-bfloat16", {"cost": "float64"}, r"cost in float64 is finer than the storage format float32"),
        ("mixed-bfloat16", {"sigma": "fp32"}, r"sigma is 'fp32'; the formats are float64, float32, float16, bfloat16"),
    ],
)
def test_bad_policies_are_refused_by_name(name: str, formats: dict[str, str], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        MixedPolicy.of(name, **formats)


def test_a_policy_needs_every_operation() -> None:
    with pytest.raises(PolicyError, match=r"no format for weights, dot, matmul"):
        MixedPolicy("mixed-bfloat16", {"inputs": "bfloat16"})


def _caps(**changes: object) -> Capabilities:
    fields: dict[str, object] = {
        "name": "mixed",
        "framework": "Mixed",
        "version": "1",
        "dtypes": ("float32", "mixed-bfloat16"),
        "paths": ("eager",),
        "default_paths": ("eager",),
        "policies": {"mixed-bfloat16": {"dot": "float32"}},
    }
    return Capabilities(**(fields | changes))  # type: ignore[arg-type]


def test_capabilities_build_the_declared_policy() -> None:
    caps = _caps()
    policy = caps.precision("mixed-bfloat16")
    assert isinstance(policy, MixedPolicy) and policy.formats["dot"] == "float32" and policy.formats["cost"] == "bfloat16"
    assert caps.describe_policies() == [f"mixed-bfloat16: {policy.describe()}"]
    assert caps.describe_accumulation() == "in storage format"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"policies": {}}, r"dtype 'mixed-bfloat16' is a mixed-precision policy; declare the format of each operation"),
        ({"dtypes": ("float32",)}, r"policies names 'mixed-bfloat16', not among its dtypes \['float32'\]"),
        ({"policies": {"mixed-bfloat16": {"dot": "float16"}}}, r"adapter 'mixed': policy mixed-bfloat16: dot in float16, whose range"),
        ({"policies": {"mixed-bfloat16": MixedPolicy.of("mixed-float16")}}, r"is the policy 'mixed-float16'"),
        ({"policies": {"mixed-bfloat16": "float32"}}, r"must be a MixedPolicy or a mapping operation -> format"),
        ({"accumulation": {"mixed-bfloat16": "float32"}}, r"accumulation names the mixed-precision policy 'mixed-bfloat16'"),
        ({"dtypes": ("mixed-float8",), "policies": {}}, r"unknown dtype 'mixed-float8'; the suite knows .* mixed-precision policies"),
    ],
)
def test_capabilities_refuse_bad_policies(changes: dict[str, object], message: str) -> None:
    with pytest.raises(CapabilitiesError, match=message):
        _caps(**changes)


def test_a_power_of_two_loss_scale_changes_no_rounding_below_the_largest_exact_scale() -> None:
    """In bfloat16 (float32's range, no value near underflow here) scaling by 2^10 gives the very same gradients."""
    policy = POLICIES["autocast-bfloat16"]
    for network, batch in NETWORKS[:20]:
        bounds = mixed_error_bounds(network, batch, backprop(network, batch), policy)
        assert largest_exact_loss_scale(network, backprop(network, batch), bounds, policy) >= 2.0**10
        plain, scaled = simulate(network, batch, policy), Simulation(policy, loss_scale=2.0**10).run(network, batch)
        for kind, l, g in plain.gradients.items():
            assert np.array_equal(g, (scaled.gradients.w if kind == "w" else scaled.gradients.b)[l])


def test_a_loss_scale_beyond_the_largest_exact_scale_can_overflow_float16() -> None:
    policy = POLICIES["autocast-float16"]
    overflowed = 0
    for network, batch in NETWORKS[:40]:
        trace = backprop(network, batch)
        try:
            largest = largest_exact_loss_scale(network, trace, mixed_error_bounds(network, batch, trace, policy), policy)
        except VacuousBound:
            continue
        safe = Simulation(policy, loss_scale=largest).run(network, batch)
        assert all(np.all(np.isfinite(g)) for _, _, g in safe.gradients.items())
        assert _worst_ratio(network, batch, policy, policy) is not None
        with np.errstate(over="ignore", invalid="ignore"):
            over = Simulation(policy, loss_scale=largest * 2.0**8).run(network, batch)
        overflowed += not all(np.all(np.isfinite(g)) for _, _, g in over.gradients.items())
    assert overflowed > 0, "no network overflowed at 256 times the largest exact scale: the scale is not the largest"


@pytest.mark.parametrize(
    ("backend", "paths"),
    [
        ("torch", ("checkpoint", "checkpoint-reentrant", "accumulate", "per-example")),
        ("jax", ("remat", "remat-dots", "accumulate", "per-example")),
        ("tensorflow", ("recompute",)),
    ],
)
def test_mixed_cells_on_the_training_loop_paths(tmp_path: Path, backend: str, paths: tuple[str, ...]) -> None:
    """A policy runs on every training-loop path that computes in one piece, and passes there: a path written without
    the policy's casts (a remat computing in float32, a recompute whose cost stays in bfloat16) is refused by the contract.
    Paths that add partial sums (micro-batches, per-example gradients) get no mixed cell: the policy's bound has no
    term for them."""
    pytest.importorskip({"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}[backend])
    selection = [a for p in paths for a in ("--conformance-path", p)]
    run = suite(
        tmp_path,
        "--conformance-backend",
        backend,
        *selection,
        "--conformance-dtype",
        "mixed-bfloat16",
        "--conformance-max-examples",
        "5",
    )
    assert run.returncode == 0, run.explain()
    assert run.report is not None, run.explain()
    one_piece = [p for p in paths if p not in ("accumulate", "per-example")]
    assert sorted(c.id for c in run.report.cells) == sorted(f"{backend}-{p}-mixed-bfloat16" for p in one_piece)
    assert all(c.status == "passed" and c.examples == 5 for c in run.report.cells), run.explain()


def test_mixed_cells_pass_with_onednn_off(tmp_path: Path) -> None:
    """TensorFlow's mixed cells (and Keras' on TensorFlow, loss scaling included) at the dispatch level that turns oneDNN
    off, in a worker process: another set of bfloat16 and float16 kernels, judged by the same declared policy."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("keras")
    selection = [
        *("--conformance-backend", "tensorflow", "--conformance-backend", "keras"),
        *("--conformance-path", "eager", "--conformance-path", "tensorflow-loss-scale"),
    ]
    run = suite(
        tmp_path,
        *selection,
        *("--conformance-dtype", "mixed-bfloat16", "--conformance-dtype", "mixed-float16"),
        *("--conformance-dispatch", "onednn-off", "--conformance-max-examples", "5"),
    )
    assert run.returncode == 0, run.explain()
    assert run.report is not None, run.explain()
    assert sorted(c.id for c in run.report.cells) == [
        f"{cell}-{dtype}-onednn-off"
        for cell in ("keras-tensorflow-loss-scale", "tensorflow-eager")
        for dtype in ("mixed-bfloat16", "mixed-float16")
    ]
    assert all(c.status == "passed" and c.examples == 5 for c in run.report.cells), run.explain()
