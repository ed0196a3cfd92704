"""The formats module (reference/dtypes.py): rounding to each format and checking representability.

The suite evaluates the float64 reference at *exactly* the point a lower-precision framework sees, so
``round_to`` must produce the value a framework's own cast produces. For float16/32/64 that is numpy's
cast; bfloat16 is done on the bit pattern (numpy has no bfloat16), so it is checked three ways: against
the definition (nearest representable value, ties to the even significand), against ``ml_dtypes.bfloat16``
and against ``torch.bfloat16`` -- the casts the frameworks under test actually use.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backprop_conformance.reference.dtypes import FORMATS, float_format, is_representable, round_to

HAS_ML_DTYPES = importlib.util.find_spec("ml_dtypes") is not None
HAS_TORCH = importlib.util.find_spec("torch") is not None

SIGNIFICAND_BITS = {"float64": 53, "float32": 24, "float16": 11, "bfloat16": 8}


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    """The 32-bit pattern of each float32 carrier value (bfloat16 is its upper 16 bits)."""
    return np.asarray(values, dtype=np.float32).view(np.uint32)


def _edge_float32() -> np.ndarray:
    """Float32 values where bfloat16 rounding is delicate: ties (even and odd), carries, subnormals, overflow."""
    patterns = []
    for upper in (0x3F80, 0x3F81, 0x3FFF, 0x407F, 0x0000, 0x0001, 0x007F, 0x0080, 0x7F7E, 0x7F7F, 0xBF80, 0xBF81, 0x8000, 0xFF7F):
        for lower in (0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF):
            patterns.append((upper << 16) | lower)
    values = np.array(patterns, dtype=np.uint32).view(np.float32)
    return values[np.isfinite(values)]


def _random_float32(rng: np.random.Generator, n: int) -> np.ndarray:
    """Finite float32 values with uniformly random bit patterns: every exponent and every tie pattern occurs."""
    values = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return values[np.isfinite(values)]


# --- float16, float32, float64 ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["float64", "float32", "float16"])
def test_ieee_formats_round_like_numpy_casts(name: str) -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=1000) * 10.0 ** rng.integers(-8, 4, size=1000), [0.0, -0.0, 1.0, 65504.0, 6e-8]])
    got = round_to(name, x)
    assert got.dtype == FORMATS[name].carrier
    np.testing.assert_array_equal(got, x.astype(FORMATS[name].carrier))


def _neighbours(name: str, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The next value of the format below and above each ``r`` (in float64), computed independently of ``round_to``."""
    if name == "bfloat16":
        magnitude = _bf16_bits(np.abs(r)).astype(np.int64)
        sign = np.where(np.signbit(r), -1.0, 1.0)
        larger = sign * (magnitude + 0x10000).astype(np.uint32).view(np.float32).astype(np.float64)
        smaller = sign * np.maximum(magnitude - 0x10000, 0).astype(np.uint32).view(np.float32).astype(np.float64)
        smallest = 2.0**-133
        up = np.where(r == 0, smallest, np.where(r > 0, larger, smaller))
        down = np.where(r == 0, -smallest, np.where(r > 0, smaller, larger))
        return down, up
    carrier = FORMATS[name].carrier
    rc = r.astype(carrier)
    return np.nextafter(rc, carrier.type(-np.inf)).astype(np.float64), np.nextafter(rc, carrier.type(np.inf)).astype(np.float64)


def _last_significand_bit(name: str, r: np.ndarray) -> np.ndarray:
    if name == "bfloat16":
        return (_bf16_bits(r) >> 16) & 1
    if name == "float16":
        return r.astype(np.float16).view(np.uint16) & 1
    return r.astype(np.float32).view(np.uint32) & 1


@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16"])
@given(seed=st.integers(0, 2**32 - 1), scale=st.integers(-20, 10))
@settings(max_examples=25, deadline=None)
def test_round_to_is_nearest_with_ties_to_even(name: str, seed: int, scale: int) -> None:
    """The definition: no value of the format is closer, and a tie goes to the even significand.

    For bfloat16 the input is a float32 (the carrier), where single rounding is exact; float64 inputs
    go through float32 first (see test_bfloat16_from_float64_rounds_through_float32).
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=500) * 2.0**scale
    if name == "bfloat16":
        x = x.astype(np.float32).astype(np.float64)
    if name == "float16":
        x = x[np.abs(x) < 65504.0]
    r = round_to(name, x).astype(np.float64)
    down, up = _neighbours(name, r)
    err = np.abs(x - r)
    assert np.all(err <= np.abs(x - down))
    assert np.all(err <= np.abs(x - up))
    # Exact ties: the midpoint between two neighbouring values of the format (exact in float64, and in
    # float32 for bfloat16) must round to whichever of the two has an even last significand bit.
    finite = np.isfinite(up)
    low, high = r[finite], up[finite]
    mid = (low + high) / 2
    rounded_mid = round_to(name, mid).astype(np.float64)
    assert np.all((rounded_mid == low) | (rounded_mid == high))
    assert np.all(_last_significand_bit(name, rounded_mid) == 0)


@pytest.mark.parametrize(
    ("name", "x", "expected"),
    [
        ("float16", 1.0 + 2.0**-11, 1.0),
        ("float16", 1.0 + 3 * 2.0**-11, 1.0 + 2.0**-9),
        ("float16", 2049.0, 2048.0),
        ("float16", 2051.0, 2052.0),
        ("float16", 65520.0, np.inf),
        ("float32", 1.0 + 2.0**-24, 1.0),
        ("float32", 1.0 + 3 * 2.0**-24, 1.0 + 2.0**-22),
        ("bfloat16", 1.0 + 2.0**-8, 1.0),
        ("bfloat16", 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-6),
        ("bfloat16", 1.0 + 2.0**-8 + 2.0**-20, 1.0 + 2.0**-7),
        ("bfloat16", -(1.0 + 3 * 2.0**-8), -(1.0 + 2.0**-6)),
        ("bfloat16", 257.0, 256.0),
        ("bfloat16", 259.0, 260.0),
        ("bfloat16", (2.0 - 2.0**-8 - 2.0**-16) * 2.0**127, (2.0 - 2.0**-7) * 2.0**127),
        ("bfloat16", (2.0 - 2.0**-8) * 2.0**127, np.inf),
        ("bfloat16", 2.0**-133, 2.0**-133),
        ("bfloat16", 2.0**-134, 0.0),
        ("bfloat16", 3 * 2.0**-134, 2.0**-132),
    ],
)
def test_round_to_known_values(name: str, x: float, expected: float) -> None:
    """Hand-derived roundings: ties to even (2049 -> 2048 but 2051 -> 2052), carries, subnormals, overflow to inf."""
    with np.errstate(over="ignore"):
        got = round_to(name, np.array([x]))
    assert got.astype(np.float64)[0] == expected


def test_bfloat16_is_carried_in_float32_upper_half() -> None:
    x = np.random.default_rng(2).normal(size=(4, 5))
    r = round_to("bfloat16", x)
    assert r.dtype == np.float32
    assert r.shape == (4, 5)
    assert np.all(_bf16_bits(r) & 0xFFFF == 0)


def test_bfloat16_keeps_the_sign_of_zero() -> None:
    r = round_to("bfloat16", np.array([0.0, -0.0, -(2.0**-140)]))
    assert list(np.signbit(r)) == [False, True, True]
    assert np.all(r == 0)


# --- bfloat16 against the frameworks' own casts ------------------------------------------------------


@pytest.mark.skipif(not HAS_ML_DTYPES, reason="ml_dtypes (installed with jax) is not importable")
def test_bfloat16_matches_ml_dtypes_bit_for_bit() -> None:
    import ml_dtypes

    rng = np.random.default_rng(3)
    x = np.concatenate([_edge_float32(), _random_float32(rng, 200_000), rng.normal(size=50_000).astype(np.float32)])
    expected = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(_bf16_bits(round_to("bfloat16", x)), _bf16_bits(expected))


@pytest.mark.skipif(not HAS_ML_DTYPES, reason="ml_dtypes (installed with jax) is not importable")
def test_bfloat16_from_float64_rounds_through_float32() -> None:
    """float64 -> bfloat16 rounds to float32 first, then to bfloat16 (each to nearest, ties to even), as torch does:
    1 + 2^-8 + 2^-30 is just above a bfloat16 tie, but its float32 rounding is exactly the tie, which goes to the even
    value 1. Checked against ml_dtypes' float32 -> bfloat16 cast, which every ml_dtypes version rounds to nearest even;
    its float64 -> bfloat16 cast is not the reference here, since versions differ (0.7 rounds float64 directly, and
    gives 1 + 2^-7 for that value)."""
    import ml_dtypes

    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(size=50_000) * 10.0 ** rng.integers(-30, 30, size=50_000), [1.0 + 2.0**-8 + 2.0**-30]])
    got = round_to("bfloat16", x)
    np.testing.assert_array_equal(_bf16_bits(got), _bf16_bits(x.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)))
    assert got[-1] == 1.0


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not importable")
def test_bfloat16_matches_torch_cast() -> None:
    import torch

    rng = np.random.default_rng(5)
    x = np.concatenate([_edge_float32(), _random_float32(rng, 100_000)])
    expected = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(_bf16_bits(round_to("bfloat16", x)), _bf16_bits(expected))
    x64 = rng.normal(size=20_000) * 10.0 ** rng.integers(-20, 20, size=20_000)
    expected64 = torch.from_numpy(x64).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(_bf16_bits(round_to("bfloat16", x64)), _bf16_bits(expected64))


# --- is_representable -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FORMATS))
@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=10, deadline=None)
def test_rounded_values_are_representable(name: str, seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=200)
    assert is_representable(name, round_to(name, x))
    assert is_representable(name, round_to(name, x).astype(np.float64))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("float32", 1.0 + 2.0**-30),
        ("float32", 0.1),
        ("float16", 1.0 + 2.0**-12),
        ("float16", 2049.0),
        ("bfloat16", 1.0 + 2.0**-9),
        ("bfloat16", 257.0),
        ("bfloat16", 1.0 + 2.0**-20),
    ],
)
def test_values_between_grid_points_are_not_representable(name: str, value: float) -> None:
    assert not is_representable(name, np.array([1.0, value]))
    assert is_representable("float64", np.array([value]))


@pytest.mark.parametrize("name", list(FORMATS))
def test_exact_small_integers_and_powers_of_two_are_representable(name: str) -> None:
    values = np.array([0.0, -0.0, 1.0, -2.0, 0.5, 2.0**-10, 255.0, 256.0])
    assert is_representable(name, values)


def test_bfloat16_values_must_fit_eight_bits_even_in_a_float32_carrier() -> None:
    assert is_representable("float32", np.array([1.0 + 2.0**-20], dtype=np.float32))
    assert not is_representable("bfloat16", np.array([1.0 + 2.0**-20], dtype=np.float32))


def test_non_finite_values_count_as_representable() -> None:
    assert is_representable("float16", np.array([np.nan, np.inf, -np.inf, 1.0]))
    assert is_representable("bfloat16", np.array([np.nan, -np.inf], dtype=np.float32))


def test_out_of_range_values_are_not_representable() -> None:
    with np.errstate(over="ignore"):
        assert not is_representable("float16", np.array([70000.0]))
        assert not is_representable("bfloat16", np.array([3.4e38]))


def test_non_floating_arrays_are_not_representable() -> None:
    assert not is_representable("float32", np.array([1, 2, 3]))
    assert not is_representable("float64", np.array([True]))


# --- names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["float8", "half", "Float32", "", None, np.float32])
def test_unknown_format_lists_the_valid_names(bad: object) -> None:
    pattern = r"unknown floating-point format .*; the suite knows float64, float32, float16, bfloat16"
    with pytest.raises(ValueError, match=pattern):
        float_format(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=pattern):
        round_to(bad, np.ones(2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=pattern):
        is_representable(bad, np.ones(2))  # type: ignore[arg-type]


def test_unhashable_format_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown floating-point format \['float32'\]"):
        float_format(["float32"])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(FORMATS))
def test_format_constants(name: str) -> None:
    """u = 2^-p for p significand bits; tiny is the smallest normal (bfloat16 shares float32's exponent range)."""
    fmt = float_format(name)
    assert fmt.name == name
    assert fmt.u == 2.0 ** -SIGNIFICAND_BITS[name]
    finfo_dtype = np.float32 if name == "bfloat16" else fmt.carrier
    assert fmt.tiny == float(np.finfo(finfo_dtype).tiny)
    assert round_to(name, np.array([1.0 + fmt.u])).astype(np.float64)[0] == 1.0
    assert round_to(name, np.array([1.0 + 2 * fmt.u])).astype(np.float64)[0] == 1.0 + 2 * fmt.u


@pytest.mark.parametrize(
    ("name", "largest"),
    [("float32", (2 - 2.0**-23) * 2.0**127), ("float16", 65504.0), ("bfloat16", (2 - 2.0**-7) * 2.0**127)],
)
def test_largest_finite_value(name: str, largest: float) -> None:
    """The largest value is representable, and the tie just above it (its significand is all ones, odd) overflows."""
    assert float_format(name).largest == largest
    assert is_representable(name, np.array([largest]))
    with np.errstate(over="ignore"):
        assert np.isinf(round_to(name, np.array([largest * (1 + float_format(name).u)])))
        assert round_to(name, np.array([largest * (1 + float_format(name).u / 2)])).astype(np.float64)[0] == largest


def test_float64_largest_is_finfo_max() -> None:
    assert float_format("float64").largest == float(np.finfo(np.float64).max)


def test_a_narrower_array_is_judged_by_value_for_bfloat16() -> None:
    """IEEE formats nest, bfloat16 does not nest with float16: 1 + 2^-10 is a float16 value and not a bfloat16 one."""
    assert is_representable("float32", np.array([1 + 2.0**-10], dtype=np.float16))
    assert not is_representable("bfloat16", np.array([1 + 2.0**-10], dtype=np.float16))
    assert is_representable("bfloat16", np.array([1.5], dtype=np.float16))
