"""The floating-point formats the suite knows, named by string, with the constants the error bound needs.

Why strings and not numpy dtypes: bfloat16 has no numpy dtype (only the optional ``ml_dtypes``
package provides one), yet it is one of the formats frameworks are tried in. The suite therefore
names formats by string and carries bfloat16 values in float32 arrays whose every element is exactly
representable in bfloat16 (:func:`round_to` produces them, :func:`is_representable` checks them).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FloatFormat:
    """One storage format.

    Attributes:
        name: the suite's name for it ("float64", "float32", "float16", "bfloat16").
        u: unit roundoff of storage, 2^-p for a p-bit significand (round to nearest).
        tiny: smallest positive normal number; the error bound's underflow allowance eta, because
            XLA on CPU and TensorFlow (every path) flush subnormals to zero, and so may any framework.
        carrier: the numpy dtype that holds values of this format.
        largest: the largest finite value; beyond it a result overflows to infinity.
    """

    name: str
    u: float
    tiny: float
    carrier: np.dtype
    largest: float


FORMATS: dict[str, FloatFormat] = {
    "float64": FloatFormat("float64", 2.0**-53, float(np.finfo(np.float64).tiny), np.dtype(np.float64), float(np.finfo(np.float64).max)),
    "float32": FloatFormat("float32", 2.0**-24, float(np.finfo(np.float32).tiny), np.dtype(np.float32), float(np.finfo(np.float32).max)),
    "float16": FloatFormat("float16", 2.0**-11, float(np.finfo(np.float16).tiny), np.dtype(np.float16), float(np.finfo(np.float16).max)),
    # bfloat16 keeps float32's exponent range and 8 significand bits; its largest value is (2 − 2^-7)·2^127.
    "bfloat16": FloatFormat("bfloat16", 2.0**-8, float(np.finfo(np.float32).tiny), np.dtype(np.float32), (2 - 2.0**-7) * 2.0**127),
}


MIXED: dict[str, tuple[str, str]] = {"mixed-bfloat16": ("float32", "bfloat16"), "mixed-float16": ("float32", "float16")}
"""Mixed-precision policies a cell can be named by, each with its (storage, compute) formats: parameters, data and
gradients are held in storage, the arithmetic runs in compute as the adapter's declared policy says
(:mod:`backprop_conformance.reference.mixed_precision`)."""


def float_format(name: str) -> FloatFormat:
    """Look up a format by name, with an error that lists the valid names.

    A mixed-precision policy's name (:data:`MIXED`) gives the format its values are *held* in, as far as holding goes:
    its storage's unit roundoff and carrier, and its compute format's range (``tiny``, ``largest``), since a value
    that overflows the compute format overflows the computation.
    """
    if isinstance(name, str) and name in MIXED:
        storage, compute = (FORMATS[f] for f in MIXED[name])
        return FloatFormat(name, storage.u, compute.tiny, storage.carrier, compute.largest)
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown floating-point format {name!r}; the suite knows {', '.join([*FORMATS, *MIXED])}") from None


def _round_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """Round to the nearest bfloat16 (ties to even), returned in float32.

    Done on the bit pattern so that no optional package is needed: bfloat16 is the upper half of a
    float32, so rounding adds half an ulp of the lower half (plus the tie-breaking bit) and truncates.
    Overflow is carried correctly by the integer addition into the exponent (to infinity).
    """
    as32 = np.asarray(values, dtype=np.float32)
    bits = as32.view(np.uint32).astype(np.uint64)
    bias = np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))
    rounded = ((bits + bias) & np.uint64(0xFFFF0000)).astype(np.uint32).view(np.float32).reshape(as32.shape)
    # NaN payloads would otherwise round into infinities or zeros; a NaN stays a NaN.
    return np.where(np.isnan(as32), as32, rounded)


def round_to(name: str, values: np.ndarray) -> np.ndarray:
    """Round float64 values to the named format, returned in that format's carrier dtype.

    float64 -> bfloat16 goes through float32 first, as torch does (ml_dtypes 0.7 rounds directly); the double
    rounding this implies can differ from a direct rounding in the last bfloat16 bit for values within
    2^-24 relative (half a float32 ulp) of a tie. The suite only needs *some* representable value (the
    reference is then evaluated at exactly that value), so this does not affect any verdict. Values
    beyond the format's range become infinities, without numpy's overflow warning: that is the answer.
    """
    fmt = float_format(name)
    with np.errstate(over="ignore"):
        if name == "bfloat16":
            return _round_to_bfloat16(values)
        return np.asarray(values).astype(fmt.carrier)


@functools.cache
def holds_only(name: str, dtype: np.dtype) -> bool:
    """True when an array of ``dtype`` can hold nothing but values of the named format, whatever its elements.

    IEEE formats nest: a float16 or float32 array holds only values of every wider IEEE format. bfloat16 nests in
    none of numpy's dtypes. A check of a request's arrays asks this first, so that valid float64 requests cost no
    pass over their values; the answer is kept per (name, dtype), since asking numpy costs more than a small array's
    check.
    """
    if name == "bfloat16" or not np.issubdtype(dtype, np.floating):
        return False
    return np.finfo(dtype).bits <= np.finfo(float_format(name).carrier).bits


def is_representable(name: str, values: np.ndarray) -> bool:
    """True when every element of ``values`` is exactly a value of the named format.

    Non-finite elements count as representable (every format has inf and NaN); whether they are
    *correct* is the verdict's business, not the format check's.
    """
    arr = np.asarray(values)
    if holds_only(name, arr.dtype):  # asked first: kept per dtype, and False for any dtype that is not floating
        return True
    if not np.issubdtype(arr.dtype, np.floating):
        return False
    finite = np.isfinite(arr)
    as64 = arr.astype(np.float64)[finite]
    back = round_to(name, as64).astype(np.float64)
    return bool(np.array_equal(back, as64))
