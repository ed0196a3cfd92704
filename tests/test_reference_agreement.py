"""The float64 reference (reference/vectorized.py) against the literal transcription and two independent oracles.

Each check is :func:`strategies.reference_verdicts`: the vectorized gradients must be within the
design note's float64 error bound of

* the literal per-index transcription of the page (reference/literal.py) -- K·(E + E), both are float64;
* the complex step (reference/complex_step.py), which differentiates the cost without any formula of
  the page -- K·(E + E) plus its documented underflow allowance;
* the mpmath evaluation (reference/mpmath_oracle.py), exact to float64 rounding -- K·E.

E is "a few ulps", but per element and scaled to that element's conditioning (fan-in through γ_n,
cancellation through |W||a| and |W|ᵀ|δ|, depth through the recursion, saturation through σ′, and an
underflow floor η), so a well-conditioned gradient must match to a few ulps and an ill-conditioned one
is allowed what float64 can lose on it, no more. ``test_mutant_reference.py`` runs the same check on
deliberately wrong references to show that it fails them.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import assert_all_agree, cases, compare, random_case, reference_verdicts

from backprop_conformance.reference.complex_step import complex_step_gradients, underflow_allowance
from backprop_conformance.reference.error_bound import FLOAT64, K, tolerance
from backprop_conformance.reference.literal import literal_gradients
from backprop_conformance.reference.model import Batch, Gradients, Network
from backprop_conformance.reference.mpmath_oracle import mpmath_backprop
from backprop_conformance.reference.sigmoid import sigmoid_scalar
from backprop_conformance.reference.vectorized import BackpropTrace, backprop


@settings(max_examples=120, deadline=None)
@given(cases())
def test_vectorized_agrees_with_literal_complex_step_and_mpmath(case: tuple[Network, Batch]) -> None:
    assert_all_agree(reference_verdicts(*case))


@pytest.mark.parametrize(
    ("widths", "batch_size"),
    [
        ((1, 1), 1),  # L = 2, one neuron, one example: C = 1/2 (y − σ(wx + b))²
        ((6, 1), 4),  # L = 2 with fan-in
        ((1, 1, 1, 1, 1), 1),  # a chain of width-1 layers
        ((1, 6, 1), 3),  # width-1 input and output around a wide layer
        ((6, 1, 6), 2),  # a width-1 bottleneck
        ((4, 8, 6, 3), 4),  # the ~100-parameter net used for timing
    ],
)
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_edge_shapes_agree(widths: tuple[int, ...], batch_size: int, scale: float) -> None:
    network, batch = random_case(len(widths) * 10 + batch_size, widths, batch_size, scale)
    verdicts = reference_verdicts(network, batch)
    assert_all_agree(verdicts)


def _assert_finite_trace(trace: BackpropTrace) -> None:
    for name in ("z", "a", "dC_da", "delta"):
        for l, values in getattr(trace, name).items():
            assert np.all(np.isfinite(values)), f"{name}^{l} has a non-finite entry: {values}"
    for kind, l, g in trace.gradients.items():
        assert np.all(np.isfinite(g)), f"∂C/∂{kind}^{l} has a non-finite entry: {g}"
    assert math.isfinite(trace.cost)


SATURATING = Network(
    {2: np.array([[200.0], [-200.0], [1.0]]), 3: np.array([[200.0, 200.0, 1.0], [-0.5, 0.25, 3.0]])},
    {2: np.array([600.0, -600.0, 0.0]), 3: np.array([-200.0, 1.0])},
)
"""z^2 = (800, −800, 1) at x = 1: one unit saturated at each end and one not; layer 3 mixes them."""


@settings(max_examples=60, deadline=None)
@given(cases(depths=(2, 4), widths=(1, 3), weight_bound=200.0, input_bound=1.0))
@example((SATURATING, Batch(np.array([[1.0], [-1.0]]), np.array([[0.25, 0.5], [1.0, 0.0]]))))
def test_saturated_networks_stay_finite_and_agree(case: tuple[Network, Batch]) -> None:
    """|z| up to 800: σ′ underflows to 0 or a subnormal, yet nothing overflows and every check still holds."""
    network, batch = case
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        trace = backprop(network, batch)
        literal_gradients(network, batch)
    _assert_finite_trace(trace)
    assert_all_agree(reference_verdicts(network, batch))


def test_the_saturating_example_really_saturates() -> None:
    """Guards the explicit example above: it must reach |z| = 800 with σ′ below the smallest subnormal."""
    trace = backprop(SATURATING, Batch(np.array([[1.0]]), np.array([[0.25, 0.5]])))
    np.testing.assert_array_equal(trace.z[2], [[800.0, -800.0, 1.0]])
    assert trace.a[2][0, 0] == 1.0 and trace.a[2][0, 1] == 0.0


def _literal_outputs(network: Network, batch: Batch) -> np.ndarray:
    """a^L as the literal transcription computes it (math.fsum and the scalar σ), so y can equal it bit for bit."""
    rows = []
    for x_row in batch.x.tolist():
        a = x_row
        for l in network.layers:
            a = [
                sigmoid_scalar(math.fsum([*(w * v for w, v in zip(w_j, a, strict=True)), b_j]))
                for w_j, b_j in zip(network.w[l].tolist(), network.b[l].tolist(), strict=True)
            ]
        rows.append(a)
    return np.array(rows)


@settings(max_examples=30, deadline=None)
@given(cases())
def test_targets_equal_to_outputs_give_exactly_zero_gradients(case: tuple[Network, Batch]) -> None:
    """y = a^L makes ∂C/∂a^L_j = a^L_j − y_j exactly 0, and every gradient is a multiple of it."""
    network, batch = case
    L = network.depth
    at_output = Batch(batch.x, backprop(network, batch).a[L])
    trace = backprop(network, at_output)
    assert trace.cost == 0.0
    for l in network.layers:
        assert not np.any(trace.dC_da[l]) and not np.any(trace.delta[l])
    for kind, l, g in [*trace.gradients.items(), *literal_gradients(network, Batch(batch.x, _literal_outputs(network, batch))).items()]:
        assert not np.any(g), f"∂C/∂{kind}^{l} should be exactly zero at y = a^L, got {g}"


@settings(max_examples=30, deadline=None)
@given(cases())
def test_targets_equal_to_outputs_still_agree_with_the_exact_gradient(case: tuple[Network, Batch]) -> None:
    """At y = fl(a^L) the true gradient is not zero (a^L − y is the rounding of a^L) but tiny: the bound must cover it."""
    network, batch = case
    at_output = Batch(batch.x, backprop(network, batch).a[network.depth])
    assert_all_agree(reference_verdicts(network, at_output, oracles=("mpmath",)))


def test_exact_gradient_at_rounded_outputs_is_not_zero() -> None:
    """Non-vacuity of the test above: there is a rounding residue for the bound to cover."""
    network, batch = random_case(5, (3, 4, 2), 3)
    at_output = Batch(batch.x, backprop(network, batch).a[network.depth])
    exact = mpmath_backprop(network, at_output).gradients()
    assert any(np.any(g != 0) for _, _, g in exact.items())


def _bias_only(g: Gradients) -> Gradients:
    return Gradients({}, dict(g.b))


@settings(max_examples=40, deadline=None)
@given(cases())
def test_bias_gradient_agrees_with_the_complex_step_and_mpmath(case: tuple[Network, Batch]) -> None:
    """∂C/∂b^l_j = ∂C/∂a^l_j σ′(z^l_j) (the page's ???) against a derivative that uses no formula at all.

    The complex step perturbs b^l_j itself, so it knows nothing of the bias formula; mpmath evaluates
    the formula exactly. Both comparisons are restricted to the biases so that a failure names them.
    """
    network, batch = case
    trace = backprop(network, batch)
    tol = tolerance(network, batch, trace, FLOAT64).gradients
    cs_tol = Gradients({}, {l: v + K * underflow_allowance(network, trace) for l, v in tol.b.items()})
    verdicts = [
        compare(_bias_only(trace.gradients), _bias_only(complex_step_gradients(network, batch)), cs_tol, "bias vs complex step"),
        compare(_bias_only(trace.gradients), _bias_only(mpmath_backprop(network, batch).gradients()), _bias_only(tol), "bias vs mpmath"),
    ]
    assert_all_agree(verdicts)


def _with_constant_neuron(network: Network, batch: Batch, l: int) -> tuple[Network, Batch]:
    """The same function with b^l moved into a weight column from an extra neuron of layer l − 1 that is exactly 1.

    w'^l = [w^l | b^l] and b'^l = 0, so z'^l = Σ_k w^l_jk a^{l−1}_k + b^l_j · 1 = z^l. For l = 2 the extra
    neuron is an input column of ones. For l ≥ 3 it is a neuron of layer l − 1 with zero incoming weights
    and bias 800: σ(800) is exactly 1 in float64 and at the oracle's 50 digits (1 − σ(800) ≈ 4e-348). It
    feeds only the new column of w'^l, and its zero incoming weights leave the layers below unchanged.
    """
    w = {k: v.copy() for k, v in network.w.items()}
    b = {k: v.copy() for k, v in network.b.items()}
    w[l] = np.hstack([w[l], b[l][:, None]])
    b[l] = np.zeros_like(b[l])
    if l == 2:
        return Network(w, b), Batch(np.hstack([batch.x, np.ones((batch.size, 1))]), batch.y)
    w[l - 1] = np.vstack([w[l - 1], np.zeros((1, w[l - 1].shape[1]))])
    b[l - 1] = np.append(b[l - 1], 800.0)
    return Network(w, b), batch


@settings(max_examples=30, deadline=None)
@given(cases(depths=(2, 4), widths=(1, 4)), st.data())
def test_bias_gradient_is_the_weight_gradient_of_an_input_fixed_at_one(case: tuple[Network, Batch], data: st.DataObject) -> None:
    """∂C/∂b^l_j equals ∂C/∂w^l_jk with a^{l−1}_k replaced by 1: checked on the function, not on a formula.

    Moving b^l into a weight from a constant-1 neuron leaves the cost function unchanged, so the complex
    step (formula-free) must give the same number for ∂C/∂b^l_j of the original and ∂C/∂w'^l_j,new of the
    rebuilt net, and so must the reference and the mpmath oracle.
    """
    network, batch = case
    l = data.draw(st.integers(2, network.depth), label="l")
    augmented, augmented_batch = _with_constant_neuron(network, batch, l)
    trace = backprop(network, batch)
    tol_b = tolerance(network, batch, trace, FLOAT64).gradients.b[l]
    slack = K * (underflow_allowance(network, trace) + underflow_allowance(augmented, backprop(augmented, augmented_batch)))

    def as_weight(g: Gradients) -> Gradients:
        return Gradients({}, {l: g.w[l][:, -1]})

    def as_bias(g: Gradients) -> Gradients:
        return Gradients({}, {l: g.b[l]})

    tol = Gradients({}, {l: tol_b})
    oracle_augmented, oracle_original = mpmath_backprop(augmented, augmented_batch), mpmath_backprop(network, batch)
    exact_weight, exact_bias = oracle_augmented.gradients(), oracle_original.gradients()
    verdicts = [
        compare(
            as_weight(complex_step_gradients(augmented, augmented_batch)),
            as_bias(complex_step_gradients(network, batch)),
            Gradients({}, {l: tol_b + slack}),
            "complex step: weight from the constant neuron vs bias",
        ),
        compare(as_weight(backprop(augmented, augmented_batch).gradients), as_bias(trace.gradients), tol, "reference: weight vs bias"),
        compare(
            as_weight(exact_weight),
            as_bias(exact_bias),
            Gradients({}, {l: np.spacing(np.maximum(np.abs(exact_weight.w[l][:, -1]), np.abs(exact_bias.b[l])))}),
            "mpmath: weight vs bias (the same exact value, rounded: at most one ulp apart)",
        ),
    ]
    assert_all_agree(verdicts)
    # The rebuilt net computes the same function: its cost matches the original's to 50 digits.
    with mpmath.workdps(50):
        assert abs(oracle_original.cost - oracle_augmented.cost) <= mpmath.mpf(10) ** -40 * (1 + abs(oracle_original.cost))
