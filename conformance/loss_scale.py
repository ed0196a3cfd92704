"""The signature of a loss scale left in a mixed-precision gradient, named in a failing verdict.

Loss scaling (torch's ``GradScaler``, Keras' ``LossScaleOptimizer``) multiplies the cost by a power of two S before the
backward pass and divides the gradients by S after it. Two bugs leave every gradient off by the same power of two: the
scale not removed (S·G) and the scale removed twice (G/S). Each matches G times 2^k, k ≠ 0, within the verdict's own
tolerance scaled by 2^k: a multiplication by a power of two is exact, so a computation that is right but for the scale
is exactly 2^k times a computation within the bound. The verdict names it (:func:`diagnose`), so that a failing mixed
cell says which bug it is instead of only how far off it is.

A loss-scaling path (torch's ``GradScaler``, Keras' ``LossScaleOptimizer``) reports the scale it used
(:attr:`~backprop_conformance.adapters.base.AdapterOutput.loss_scale`), and a failing verdict says whether that scale
could have changed a rounding (:func:`exactness`): up to the largest exact scale
(:func:`~backprop_conformance.reference.mixed_precision.largest_exact_loss_scale`) it cannot, so the bound of the
unscaled computation holds and the scale is not the cause; above it a scaled value may have overflowed, which the
scaler must find and retry at a smaller scale.
"""

from __future__ import annotations

import math

import numpy as np

from backprop_conformance.conformance.problems import Problem
from backprop_conformance.reference.error_bound import Precision
from backprop_conformance.reference.mixed_precision import MixedPolicy, largest_exact_loss_scale
from backprop_conformance.reference.model import Gradients

LARGEST_EXPONENT = 64
"""The largest |k| looked for: loss scales in use run from 2^0 to 2^24 (GradScaler starts at 2^16)."""


def diagnose(problem: Problem, got: Gradients, bound: Gradients) -> str:
    """'' unless every returned gradient element is 2^k (k ≠ 0) times the reference's within 2^k times its tolerance."""
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for kind, l, want in problem.trace.gradients.items():
        for part, values in zip(parts, (got.w if kind == "w" else got.b, None, bound.w if kind == "w" else bound.b), strict=True):
            part.append(np.asarray(want if values is None else values[l], dtype=np.float64).ravel())
    returned, wanted, limits = (np.concatenate(part) for part in parts)
    if not np.all(np.isfinite(returned)):
        return ""

    def fits(k: int) -> bool:
        scale = math.ldexp(1.0, k)
        return bool(np.all(np.abs(returned - scale * wanted) <= scale * limits))

    clear = (np.abs(wanted) > limits) & (returned != 0)
    if not np.any(clear):
        # Every element is within its bound of 0, so only a lower bound on the scale shows: the smallest that fits.
        least = next((k for k in range(1, LARGEST_EXPONENT + 1) if fits(k)), None)
        if least is None or fits(0):
            return ""
        return (
            f"every gradient is within 2^k times its bound of 2^k times the reference for k = {least} and above (all are "
            f"within their bounds of 0): a loss scale of at least 2^{least} not removed"
        )
    k = round(float(np.median(np.log2(np.abs(returned[clear] / wanted[clear])))))
    if k == 0 or abs(k) > LARGEST_EXPONENT or not fits(k):
        return ""
    if k > 0:
        return f"every gradient is 2^{k} times the reference, within 2^{k} times its bound: a loss scale of 2^{k} not removed"
    return f"every gradient is 2^{k} times the reference, within 2^{k} times its bound: a loss scale of 2^{-k} removed twice"


def _power(scale: float) -> str:
    return f"2^{math.frexp(scale)[1] - 1}" if math.isfinite(scale) else "any power of two"


def exactness(problem: Problem, framework: Precision | MixedPolicy, used: float) -> str:
    """Whether the loss scale ``used`` changed a rounding at ``problem``: exact up to the largest exact scale, possibly
    overflowing beyond it. The bound is the verdict's own tolerance, so the largest exact scale is a lower bound."""
    fmt = framework if isinstance(framework, MixedPolicy) else problem.dtype
    largest = largest_exact_loss_scale(problem.network, problem.trace, problem.tolerance(framework), fmt)
    if used <= largest:
        return (
            f"computed with a loss scale of {_power(used)} and divided by it; scaling by up to {_power(largest)} changes no "
            "rounding here, so the bound of the unscaled computation holds and the scale is not the cause"
        )
    return (
        f"computed with a loss scale of {_power(used)}, above {_power(largest)}, the largest that keeps every scaled value "
        "finite here: a scaled value may have overflowed, which the scaler must find (a non-finite gradient) and retry at a "
        "smaller scale"
    )
