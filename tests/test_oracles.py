"""The oracles themselves: complex step, finite differences and mpmath, checked before they check anything.

An oracle that is wrong would either pass a wrong reference or fail a right one, so each is held to
something it does not compute itself: a closed form for the smallest network, a mathematical identity,
another precision, or (for finite differences) an error budget whose truncation part is computed
exactly in mpmath.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import cases, random_case

from backprop_conformance.reference.complex_step import (
    analytic_sigmoid,
    complex_step_gradients,
    coordinate_costs,
    gradients_from_vector,
    parameter_vector,
    underflow_allowance,
)
from backprop_conformance.reference.error_bound import FLOAT64, K, error_bounds
from backprop_conformance.reference.finite_difference import CBRT_EPS, central_points, finite_difference_gradients
from backprop_conformance.reference.model import Batch, ModelError, Network
from backprop_conformance.reference.mpmath_oracle import (
    MpmathBackprop,
    mpmath_backprop,
    mpmath_cost,
    sigmoid_prime_float64,
    sigmoid_prime_mp,
    to_float64,
)
from backprop_conformance.reference.sigmoid import sigmoid
from backprop_conformance.reference.vectorized import backprop

U = 2.0**-53


def _flat(g: object) -> np.ndarray:
    """Gradients (or an mpmath result's exact values) in parameter_vector order: w^2 row-major, b^2, w^3, …"""
    if isinstance(g, MpmathBackprop):
        return np.array([v for l in sorted(g.dC_dw) for v in [*(x for row in g.dC_dw[l] for x in row), *g.dC_db[l]]], dtype=object)
    return np.concatenate([np.concatenate([g.w[l].ravel(), g.b[l]]) for l in sorted(g.w)])  # type: ignore[attr-defined]


def _network_from_vector(network: Network, theta: np.ndarray) -> Network:
    g = gradients_from_vector(network, theta)
    return Network(dict(g.w), dict(g.b))


def _one_neuron(w: float, b: float, x: float, y: float) -> tuple[Network, Batch]:
    """L = 2, n(1) = n(2) = 1: C = 1/2 (y − σ(wx + b))², the smallest network of the page."""
    return Network({2: np.array([[w]])}, {2: np.array([b])}), Batch(np.array([[x]]), np.array([[y]]))


def _closed_form(w: float, b: float, x: float, y: float) -> tuple[mpmath.mpf, mpmath.mpf, mpmath.mpf]:
    """∂C/∂w = (σ − y)σ′x, ∂C/∂b = (σ − y)σ′ and C, at 80 digits, with σ′(z) = 1/(4 cosh²(z/2)).

    The cosh form of σ′ is a different expression from the oracle's e/(1 + e)², so a slip in either shows.
    """
    with mpmath.workdps(80):
        z = mpmath.mpf(w) * x + b
        s = 1 / (1 + mpmath.exp(-z))
        sp = 1 / (4 * mpmath.cosh(z / 2) ** 2)
        return (s - y) * sp * x, (s - y) * sp, (y - s) ** 2 / 2


moderate = st.floats(-6, 6, allow_nan=False, allow_infinity=False)
unit = st.floats(0, 1)


@settings(max_examples=60, deadline=None)
@given(moderate, moderate, moderate, unit)
def test_oracles_match_the_closed_form_of_one_neuron(w: float, b: float, x: float, y: float) -> None:
    network, batch = _one_neuron(w, b, x, y)
    g_w, g_b, cost = _closed_form(w, b, x, y)
    oracle = mpmath_backprop(network, batch)
    # Both are the exact value correctly rounded once, so they are the same float.
    assert oracle.gradients().w[2][0, 0] == to_float64(g_w)
    assert oracle.gradients().b[2][0] == to_float64(g_b)
    assert to_float64(mpmath_cost(network, batch)) == to_float64(cost)
    # The complex step is a float64 computation: within the float64 bound of the exact value.
    trace = backprop(network, batch)
    bound = error_bounds(network, batch, trace, FLOAT64).scaled(K).gradients
    slack = K * underflow_allowance(network, trace)
    cs = complex_step_gradients(network, batch)
    with mpmath.workdps(50):
        assert abs(mpmath.mpf(float(cs.w[2][0, 0])) - g_w) <= bound.w[2][0, 0] + slack
        assert abs(mpmath.mpf(float(cs.b[2][0])) - g_b) <= bound.b[2][0] + slack


def test_complex_step_loses_tiny_gradients_to_underflow_exactly_as_documented() -> None:
    """b = 300 makes ∂C/∂b ≈ σ′(300) ≈ 5e-131: its imaginary part h·5e-131 is below the smallest subnormal."""
    network, batch = _one_neuron(0.5, 300.0, 1.0, 0.25)
    _, g_b, _ = _closed_form(0.5, 300.0, 1.0, 0.25)
    trace = backprop(network, batch)
    assert complex_step_gradients(network, batch).b[2][0] == 0.0
    assert abs(g_b) <= underflow_allowance(network, trace), "the allowance must cover what underflow loses"
    assert underflow_allowance(network, trace) < 1e-120
    # A larger step keeps it representable, and the truncation h²f‴/6 is still invisible.
    with mpmath.workdps(50):
        assert abs(mpmath.mpf(float(complex_step_gradients(network, batch, h=1e-100).b[2][0])) - g_b) <= 8 * U * abs(g_b)


@settings(max_examples=200, deadline=None)
@given(st.floats(-800, 800))
def test_analytic_sigmoid_on_reals_is_the_reference_sigmoid_bit_for_bit(z: float) -> None:
    """Same branches, same operations: on real input the complex-step σ is the reference's σ exactly."""
    assert analytic_sigmoid(np.float64(z)) == sigmoid(np.float64(z))


def test_analytic_sigmoid_does_not_overflow_for_saturated_complex_input() -> None:
    z = np.array([-800.0, -300.0, -37.0, 0.0, 37.0, 300.0, 800.0]) + 1e-200j
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = analytic_sigmoid(z)
    assert np.all(np.isfinite(s.real)) and np.all(np.isfinite(s.imag))


@settings(max_examples=20, deadline=None)
@given(cases(depths=(2, 4), widths=(1, 4), batch_sizes=(1, 3)))
def test_mpmath_oracle_error_at_50_digits_is_negligible_against_the_float64_bound(case: tuple[Network, Batch]) -> None:
    """50 and 100 digits differ by less than a millionth of the float64 error bound the oracle is used with.

    Not "the float64 roundings are identical": where a gradient cancels far below its terms (a^L within
    1e-60 of y, say), 50 digits keep only an absolute ~1e-50 of it -- irrelevant next to float64's bound.
    """
    network, batch = case
    at_50 = _flat(mpmath_backprop(network, batch, dps=50))
    at_100 = _flat(mpmath_backprop(network, batch, dps=100))
    bound = _flat(error_bounds(network, batch, backprop(network, batch), FLOAT64).gradients)
    with mpmath.workdps(100):
        for p, (g50, g100) in enumerate(zip(at_50, at_100, strict=True)):
            assert abs(g50 - g100) <= mpmath.mpf(1e-6) * bound[p], f"parameter {p}: {g50} at 50 digits, {g100} at 100"


def test_mpmath_oracle_ignores_and_preserves_the_global_precision() -> None:
    network, batch = random_case(1, (3, 4, 2), 2)
    expected = _flat(mpmath_backprop(network, batch).gradients())
    with mpmath.workdps(20):
        got = _flat(mpmath_backprop(network, batch).gradients())
        assert mpmath.mp.dps == 20
    np.testing.assert_array_equal(got, expected)
    assert mpmath.mp.dps == 15


@pytest.mark.parametrize("dps", [19, 0, 50.0, True, "50"])
def test_mpmath_oracle_rejects_too_few_or_non_integer_digits(dps: object) -> None:
    network, batch = random_case(0, (2, 2), 1)
    with pytest.raises(ValueError, match=r"dps .* must be an integer >= 20"):
        mpmath_backprop(network, batch, dps=dps)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"dps .* must be an integer >= 20"):
        sigmoid_prime_mp(1.0, dps=dps)  # type: ignore[arg-type]


@pytest.mark.parametrize("z", [0.0, 1.0, -5.5, 37.0, 700.0, -700.0, 708.5, 745.0, 800.0])
def test_mpmath_sigma_prime_is_stable_where_s_times_one_minus_s_collapses(z: float) -> None:
    with mpmath.workdps(80):
        exact = 1 / (4 * mpmath.cosh(mpmath.mpf(z) / 2) ** 2)
        assert abs(sigmoid_prime_mp(z) - exact) <= mpmath.mpf(10) ** -45 * exact
        assert sigmoid_prime_float64(z) == to_float64(exact)
    if abs(z) >= 700:
        with mpmath.workdps(50):
            s = 1 / (1 + mpmath.exp(-mpmath.mpf(abs(z))))
            assert s * (1 - s) == 0, "premise: even 50 digits cannot hold 1 − σ(700)"
    assert sigmoid_prime_mp(0.0) == mpmath.mpf(1) / 4


def test_to_float64_rounds_once_on_the_subnormal_grid() -> None:
    s = 2.0**-1074
    with mpmath.workprec(200):
        ldexp = mpmath.ldexp
        # Ties go to even multiples of the smallest subnormal.
        assert to_float64(ldexp(mpmath.mpf(0.5), -1074)) == 0.0
        assert to_float64(ldexp(mpmath.mpf(1.5), -1074)) == 2 * s
        assert to_float64(ldexp(mpmath.mpf(2.5), -1074)) == 2 * s
        assert to_float64(-ldexp(mpmath.mpf(3.5), -1074)) == -4 * s
        # Just above a tie, with the deciding bit beyond 53 bits: float() rounds twice and lands on the wrong side.
        k = 2**51 + 2
        value = ldexp(mpmath.mpf(k) + mpmath.mpf(0.5) + ldexp(1, -60), -1074)
        assert to_float64(value) == math.ldexp(k + 1, -1074)
        assert float(value) == math.ldexp(k, -1074), "premise: the double rounding to_float64 exists to avoid"
        # The largest subnormal rounds up to the smallest normal.
        assert to_float64(ldexp(mpmath.mpf(2**52) - mpmath.mpf(0.25), -1074)) == 2.0**-1022
        assert to_float64(mpmath.mpf(1) / 3) == 1 / 3
    with pytest.raises(ValueError, match="non-finite"):
        to_float64(mpmath.inf)


def _finite_difference_budget(network: Network, batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(finite difference, exact gradient, allowed error), flat, for every parameter.

    allowed = |T| + K·(2E_C/|θ⁺ − θ⁻| + 3u|FD|), where T is the truncation error of the exact central
    difference at the very points the float64 one uses (computed at 50 digits), E_C the float64 cost's
    error bound (each of C(θ⁺), C(θ⁻) is off by up to E_C and the difference keeps both), and 3u the
    roundings of the final subtraction, the step and the quotient.
    """
    fd = _flat(finite_difference_gradients(network, batch))
    oracle = _flat(mpmath_backprop(network, batch))
    plus, minus = central_points(network)
    theta = parameter_vector(network)
    E_C = error_bounds(network, batch, backprop(network, batch), FLOAT64).cost
    allowed = np.empty(theta.size)
    with mpmath.workdps(50):
        for p in range(theta.size):
            up, down = theta.copy(), theta.copy()
            up[p], down[p] = plus[p], minus[p]
            step = mpmath.mpf(plus[p]) - mpmath.mpf(minus[p])
            exact_fd = (
                mpmath_cost(_network_from_vector(network, up), batch) - mpmath_cost(_network_from_vector(network, down), batch)
            ) / step
            truncation = abs(exact_fd - oracle[p])
            allowed[p] = float(truncation + K * (2 * E_C / step + 3 * U * abs(fd[p])))
    return fd, oracle, allowed


@settings(max_examples=12, deadline=None)
@given(cases(depths=(2, 3), widths=(1, 4), batch_sizes=(1, 3)))
def test_finite_difference_error_is_truncation_plus_cancellation(case: tuple[Network, Batch]) -> None:
    network, batch = case
    fd, exact, allowed = _finite_difference_budget(network, batch)
    with mpmath.workdps(50):
        errors = np.array([float(abs(mpmath.mpf(f) - e)) for f, e in zip(fd, exact, strict=True)])
    assert np.all(errors <= allowed), f"worst error/allowed {np.max(errors / allowed):.3g}"


@pytest.mark.parametrize("seed", range(3))
def test_finite_difference_budget_is_tight_on_well_conditioned_nets(seed: int) -> None:
    """The derived budget is not a loose tolerance in disguise: below 1e-6 of the largest gradient."""
    network, batch = random_case(seed, (3, 4, 2), 3)
    fd, exact, allowed = _finite_difference_budget(network, batch)
    scale = max(abs(float(e)) for e in exact)
    assert np.max(allowed) <= 1e-6 * scale
    assert np.max(np.abs(fd - exact.astype(np.float64))) <= 1e-6 * scale


def test_finite_difference_steps_bracket_each_parameter() -> None:
    network, _ = random_case(0, (2, 3, 1), 1, scale=100.0)
    theta = parameter_vector(network)
    plus, minus = central_points(network)
    assert np.all(minus < theta) and np.all(theta < plus)
    h = (plus - minus) / 2
    np.testing.assert_allclose(h, CBRT_EPS * np.maximum(1, np.abs(theta)), rtol=1e-9)


@pytest.mark.parametrize("scale", [0.0, -1e-6, 1.0, math.nan, True])
def test_finite_difference_rejects_a_bad_step_scale(scale: float) -> None:
    network, batch = random_case(0, (2, 2), 1)
    with pytest.raises(ValueError, match=r"step scale must be a float in \(0, 1\)"):
        finite_difference_gradients(network, batch, scale)


@pytest.mark.parametrize("h", [0.0, -1e-200, math.inf, math.nan, True])
def test_complex_step_rejects_a_bad_step(h: float) -> None:
    network, batch = random_case(0, (2, 2), 1)
    with pytest.raises(ValueError, match="must be a positive finite float"):
        complex_step_gradients(network, batch, h)


def test_parameter_vector_layout_round_trips() -> None:
    network, _ = random_case(3, (3, 4, 2), 1)
    theta = parameter_vector(network)
    assert theta.size == network.parameter_count
    assert theta[0] == network.w[2][0, 0] and theta[1] == network.w[2][0, 1]
    assert theta[12] == network.b[2][0] and theta[16] == network.w[3][0, 0]
    back = _network_from_vector(network, theta)
    for l in network.layers:
        np.testing.assert_array_equal(back.w[l], network.w[l])
        np.testing.assert_array_equal(back.b[l], network.b[l])
    with pytest.raises(ModelError, match="expected a vector of the network's 26 parameters"):
        gradients_from_vector(network, theta[:-1])


def test_coordinate_costs_at_the_unperturbed_point_is_the_cost() -> None:
    network, batch = random_case(4, (3, 5, 2), 4)
    trace = backprop(network, batch)
    costs = coordinate_costs(network, batch, parameter_vector(network))
    bound = K * 2 * error_bounds(network, batch, trace, FLOAT64).cost
    assert np.all(np.abs(costs - trace.cost) <= bound)
    with pytest.raises(ModelError, match=r"expected 32 real or complex values"):
        coordinate_costs(network, batch, np.zeros(31))
    with pytest.raises(ModelError, match=r"expected 32 real or complex values"):
        coordinate_costs(network, batch, np.zeros(32, dtype=np.int64))
