"""The reference's σ and σ′ (reference/sigmoid.py) against the mpmath oracle, to full float64 precision.

Every σ′ of the page's formulas (δ^l_j = ∂C/∂a^l_j σ′(z^l_j), and the lost primes of the theorem) goes
through :func:`backprop_conformance.reference.sigmoid.sigmoid_prime`, so its accuracy bounds the reference's. The claim is
a relative error of a few ulps for every z where σ′(z) is a normal float64, and an absolute error of a
couple of subnormal steps below that -- including z ≈ 37..708, where the textbook a(1 − a) is 0.

Tolerances, derived (u = 2^-53, s = 2^-1074 the smallest subnormal; exp within 1 ulp = 2u, as glibc and
numpy's own exp are):

* σ(z) = 1/(1 + e) or e/(1 + e), e = e^(−|z|): 2u from exp (sensitivity ≤ 1), u for 1 + e, u for the
  division: ≤ 4u relative.
* σ′(z) = (1/d)(e/d), d = 1 + e: 2u from exp (sensitivity (1 − e)/(1 + e) ≤ 1), 2u from d (squared),
  u for each of the two divisions and the product: ≤ 7u relative.
* where the value is subnormal each rounding is off by up to s/2 absolutely instead; there are at most
  two such roundings (in e and in the final product; with d = 1 the divisions are exact), plus exp's
  own last-place error: ≤ 2s absolute.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from backprop_conformance.reference.mpmath_oracle import sigmoid_mp, sigmoid_prime_mp
from backprop_conformance.reference.sigmoid import sigmoid, sigmoid_and_prime, sigmoid_prime, sigmoid_prime_scalar, sigmoid_scalar

U = 2.0**-53
S = 2.0**-1074
SIGMOID_REL = 4 * U
SIGMOID_PRIME_REL = 7 * U
SUBNORMAL_ABS = 2 * S

NORMAL_SIGMA_PRIME = 708.0
"""σ′(z) ≈ e^(−|z|) is a normal float64 (≥ 2^-1022 ≈ 2.2e-308) for |z| ≤ 708.39."""

SATURATED = 800.0
"""The largest |z| the suite's saturated networks reach; σ′ is below the smallest subnormal from 745.2."""


def _assert_close(got: float, exact: mpmath.mpf, rel: float, what: str) -> None:
    """|got − exact| ≤ rel·|exact| + 2s, evaluated in mpmath so the check itself does not round."""
    with mpmath.workdps(50):
        error = abs(mpmath.mpf(got) - exact)
        allowed = rel * abs(exact) + SUBNORMAL_ABS
        assert error <= allowed, (
            f"{what}: got {got!r}, exact {mpmath.nstr(exact, 20)}, error {mpmath.nstr(error, 3)} > {mpmath.nstr(allowed, 3)}"
        )


@settings(max_examples=300, deadline=None)
@given(st.floats(-NORMAL_SIGMA_PRIME, NORMAL_SIGMA_PRIME))
@example(0.0)
@example(1e-300)
@example(36.7)
@example(37.0)
@example(-37.0)
@example(700.0)
@example(-708.0)
def test_sigmoid_prime_relative_error_is_a_few_ulps_where_normal(z: float) -> None:
    exact = sigmoid_prime_mp(z)
    got = float(sigmoid_prime(np.float64(z)))
    # Where σ′ is normal the 2s absolute term is < 1e-15 of it, so this is a relative bound of 7u.
    _assert_close(got, exact, SIGMOID_PRIME_REL, f"σ′({z!r})")
    _assert_close(sigmoid_prime_scalar(z), exact, SIGMOID_PRIME_REL, f"scalar σ′({z!r})")


@settings(max_examples=200, deadline=None)
@given(st.floats(NORMAL_SIGMA_PRIME, SATURATED), st.booleans())
@example(708.4, False)
@example(745.0, True)
@example(745.2, False)
@example(800.0, True)
def test_sigmoid_prime_in_the_subnormal_range_is_within_two_subnormal_steps(magnitude: float, negative: bool) -> None:
    z = -magnitude if negative else magnitude
    exact = sigmoid_prime_mp(z)
    got = float(sigmoid_prime(np.float64(z)))
    _assert_close(got, exact, SIGMOID_PRIME_REL, f"σ′({z!r})")
    _assert_close(sigmoid_prime_scalar(z), exact, SIGMOID_PRIME_REL, f"scalar σ′({z!r})")
    assert got >= 0.0


@settings(max_examples=300, deadline=None)
@given(st.floats(-SATURATED, SATURATED))
@example(0.0)
@example(-745.0)
@example(-800.0)
@example(800.0)
def test_sigmoid_is_accurate_to_a_few_ulps(z: float) -> None:
    exact = sigmoid_mp(z)
    _assert_close(float(sigmoid(np.float64(z))), exact, SIGMOID_REL, f"σ({z!r})")
    _assert_close(sigmoid_scalar(z), exact, SIGMOID_REL, f"scalar σ({z!r})")


@pytest.mark.parametrize("z", [36.8, 37.0, 100.0, 700.0])
def test_sigmoid_prime_stays_exact_where_a_times_one_minus_a_is_zero(z: float) -> None:
    """The reason for σ(z)σ(−z): once σ(z) rounds to 1, a(1 − a) is 0 but σ′ is a representable positive number."""
    a = float(sigmoid(np.float64(z)))
    assert a * (1 - a) == 0.0, "premise: the textbook formula has collapsed at this z"
    exact = sigmoid_prime_mp(z)
    assert exact > mpmath.mpf(2.0**-1022)
    _assert_close(float(sigmoid_prime(np.float64(z))), exact, SIGMOID_PRIME_REL, f"σ′({z!r})")


def test_no_overflow_nan_or_inf_over_the_whole_saturated_range() -> None:
    z = np.concatenate([np.linspace(-SATURATED, SATURATED, 40001), [-1e308, 1e308, -0.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = sigmoid(z)
        sp = sigmoid_prime(z)
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(sp))
    assert np.all((s >= 0) & (s <= 1)) and np.all((sp >= 0) & (sp <= 0.25))
    assert sigmoid(np.float64(1e308)) == 1.0 and sigmoid(np.float64(-1e308)) == 0.0
    assert sigmoid_prime(np.float64(0.0)) == 0.25


@settings(max_examples=200, deadline=None)
@given(st.floats(-SATURATED, SATURATED))
def test_sigmoid_prime_is_exactly_even_and_sigma_is_odd_about_one_half(z: float) -> None:
    """σ′(−z) = σ′(z) bit for bit (the implementation uses |z|); σ(z) + σ(−z) = 1 to rounding."""
    assert sigmoid_prime(np.float64(z)) == sigmoid_prime(np.float64(-z))
    assert sigmoid_prime_scalar(z) == sigmoid_prime_scalar(-z)
    total = float(sigmoid(np.float64(z))) + float(sigmoid(np.float64(-z)))
    assert math.isclose(total, 1.0, rel_tol=2 * SIGMOID_REL + 2 * U)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.longdouble])
@pytest.mark.parametrize("into_buffers", [False, True], ids=["new arrays", "into out"])
def test_sigmoid_and_prime_is_bitwise_sigmoid_and_sigmoid_prime(dtype: type, into_buffers: bool) -> None:
    """The backward pass's one-exponential (σ, σ′) must be exactly the two functions the tests above validate.

    Over the whole range, both signs and the saturated tails, in every float dtype the reference computes in,
    and whether or not the caller supplies the output buffers (as :func:`backprop_conformance.reference.vectorized.backprop` does).
    """
    z = np.concatenate([np.linspace(-SATURATED, SATURATED, 4001), [-0.0, 0.0, 1e-300, -1e-300, 36.8, -36.8, 1.0]]).astype(dtype)
    z = z.reshape(2, -1)  # a batch-shaped array, as backprop passes
    out = (np.full_like(z, np.nan), np.full_like(z, np.nan)) if into_buffers else None
    with np.errstate(over="ignore", under="ignore"):
        s, sp = sigmoid_and_prime(z, out=out)
        expected_s, expected_sp = sigmoid(z), sigmoid_prime(z)
    if out is not None:
        assert s is out[0] and sp is out[1]
    assert s.dtype == sp.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(s, expected_s)
    np.testing.assert_array_equal(sp, expected_sp)
