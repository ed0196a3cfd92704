"""The built-in TensorFlow adapter (adapters/tensorflow_adapter.py): agreement with the reference, the contract, and TensorFlow's quirks.

Every path × dtype must agree with :func:`backprop_conformance.reference.vectorized.backprop`, at exactly the point
TensorFlow sees, within :func:`backprop_conformance.reference.error_bound.tolerance` for the adapter's declared
precision; so must the cost and the intermediates z^l, a^l, δ^l. The architectures are the page's corner cases:
L = 2 (no hidden layer), width-1 layers, square layers (where a transposed w^l keeps its shape), depth 7, batch
sizes 1 and 7, and a saturated net (|z| > 40). Beside the numbers: the subnormal flush the module docstring
describes, the accumulation it declares, the process-wide flags it must pin and restore, the per-shape cache of
compiled steps, and that importing the adapter does not import TensorFlow.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from networks import ARCHITECTURES, Architecture

from backprop_conformance.adapters.base import RequestError
from backprop_conformance.adapters.registry import resolve
from backprop_conformance.adapters.selfcheck import check_contract
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.conformance.verdict import assert_within_bound, judge, worst_ratio
from backprop_conformance.reference.error_bound import FLOAT64, tolerance
from backprop_conformance.reference.model import Batch, Network

tf = pytest.importorskip("tensorflow", reason="the TensorFlow adapter needs tensorflow (pip install backprop-conformance[tensorflow])")

from backprop_conformance.adapters import tensorflow_adapter  # noqa: E402  (after the importorskip that guards this module)
from backprop_conformance.adapters.tensorflow_adapter import DTYPES, PATHS, TensorFlowAdapter, pinned_numerics  # noqa: E402

ADAPTER = TensorFlowAdapter()

SEED = 20260921
"""The seed of this module's fixed networks (:mod:`networks`)."""
XLA_ARCHITECTURES = ("L2", "deep-square")
"""XLA compiles every shape anew (0.7-2 s each here), so its path is checked on two of the four."""


def cases() -> list[object]:
    return [
        pytest.param(arch, path, dtype, id=f"{arch.name}-{path}-{dtype}")
        for path in PATHS
        for arch in ARCHITECTURES
        if path != "xla" or arch.name in XLA_ARCHITECTURES
        for dtype in DTYPES
    ]


@pytest.mark.parametrize(("arch", "path", "dtype"), cases())
def test_agrees_with_reference_within_bound(arch: Architecture, path: str, dtype: str) -> None:
    """Gradients and cost within the bound (the suite's own verdict), and z^l, a^l, δ^l within theirs."""
    problem = arch.problem(dtype, SEED)
    output = ADAPTER.compute(problem.network, problem.batch, dtype=dtype, path=path)
    verdict = judge(f"{arch.name}-{path}-{dtype}", problem, output, ADAPTER.caps.precision(dtype))
    assert verdict.passed, verdict.message()
    tol = tolerance(problem.network, problem.batch, problem.trace, ADAPTER.caps.precision(dtype))
    assert output.z is not None, "every path returns z^l"
    assert (output.delta is not None) == (path != "recompute"), "every path but recompute returns δ^l from its tape"
    for symbol, got, want, bound in (
        ("z", output.z, problem.trace.z, tol.z),
        ("a", output.a, problem.trace.a, tol.a),
        *((("δ", output.delta, problem.trace.delta, tol.delta),) if output.delta is not None else ()),
    ):
        ratio = worst_ratio(got, want, bound)
        assert ratio <= 1, f"{symbol}^l outside its bound (worst error/bound {ratio:.3g})"


def test_the_saturated_case_saturates() -> None:
    """|z| > 40 somewhere, or the saturated architecture would not test σ′ = y(1 − y) at 0."""
    problem = next(a for a in ARCHITECTURES if a.name == "saturated").problem("float64", SEED)
    assert problem.max_abs_z > 40


@pytest.mark.parametrize("path", PATHS)
def test_float32_arithmetic_fails_the_float64_bound(path: str) -> None:
    """The check has teeth on these cases: float32 gradients, judged as if they were float64, are far outside."""
    problem = ARCHITECTURES[2].problem("float32", SEED)
    output = ADAPTER.compute(problem.network, problem.batch, dtype="float32", path=path)
    tol = tolerance(problem.network, problem.batch, problem.trace, FLOAT64)
    with pytest.raises(AssertionError, match="exceed"):
        assert_within_bound(output.gradients, problem.trace.gradients, tol.gradients, f"float32 {path} as float64")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_contract(path: str, dtype: str) -> None:
    """The suite's own contract checks: layout round trip (square layers), output shapes and dtypes, repeatability."""
    problem = ARCHITECTURES[2].problem(dtype, SEED)
    check_contract(ADAPTER, path, dtype, "cpu", problem.network, problem.batch)


def test_load_parameters_transposes_into_tensorflows_layout_and_back() -> None:
    """The tf.Module's w is (n(l−1), n(l)), the transpose of the page's: w^l_jk lives at w[k−1, j−1]."""
    problem = Architecture("rectangular", (3, 5, 2), 1).problem("bfloat16", SEED)
    back = ADAPTER.round_trip(problem.network, dtype="bfloat16")
    for l in problem.network.layers:
        assert back.w[l].dtype == np.float32 and back.w[l].shape == problem.network.w[l].shape
        np.testing.assert_array_equal(back.w[l], problem.network.w[l])
        np.testing.assert_array_equal(back.b[l], problem.network.b[l])
    model = tensorflow_adapter._model_class()((3, 5, 2), tf.float64)
    model.assign(problem.network, "float64")
    assert model.layers[0].w.shape == (3, 5)
    assert float(model.layers[0].w[2, 4]) == problem.network.w[2][4, 2], "w^2_53 must sit at w[2, 4]"


def test_capabilities() -> None:
    caps = ADAPTER.caps
    assert (caps.name, caps.framework, caps.version) == ("tensorflow", "TensorFlow", tf.__version__)
    assert caps.paths == ("eager", "function", "xla", "recompute") and caps.default_paths == ("eager",)
    assert caps.shape_compiled_paths == ("function", "xla")
    assert caps.accumulation_of("float16", "dot") == "float32"
    assert caps.accumulation_of("float16", "batch_sum") == caps.accumulation_of("float16", "cost_sum") == "float16"
    assert {caps.accumulation_of("bfloat16", op) for op in ("dot", "batch_sum", "cost_sum")} == {"float32"}
    assert "TF_ENABLE_ONEDNN_OPTS" in caps.environment


def test_the_registry_finds_the_adapter() -> None:
    assert isinstance(resolve("tensorflow").load(), TensorFlowAdapter)


def test_an_unknown_path_is_a_request_error_that_lists_the_paths() -> None:
    problem = ARCHITECTURES[0].problem("float32", SEED)
    with pytest.raises(RequestError, match="unsupported path 'jit'; valid paths are eager, function, xla"):
        ADAPTER.compute(problem.network, problem.batch, dtype="float32", path="jit")


# --- subnormals: TensorFlow flushes them in every path ---------------------------------------------------------


def saturated_unit(dtype: str, z: float) -> Problem:
    """One unit with z = b (x = 0), target 1: a = σ(z) and ∂C/∂b = (a − 1)σ′(z) ≈ −σ′(z), both subnormal for these z."""
    return Problem.rounded(Network({2: np.array([[1.0]])}, {2: np.array([z])}), Batch(np.zeros((1, 1)), np.ones((1, 1))), dtype)


FLUSHED = {"float64": -709.0, "float32": -88.0, "bfloat16": -88.0}
"""z whose σ(z) and σ′(z) are subnormal: σ(−709) ≈ 1.2e-308 < 2.2e-308 in float64, σ(−88) ≈ 6.1e-39 < 1.2e-38 in
float32 and bfloat16 (which shares float32's exponent range)."""


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", sorted(FLUSHED))
def test_subnormal_results_are_flushed_to_zero_and_the_bound_allows_for_it(path: str, dtype: str) -> None:
    """What docs/backends.md says: a^2 and ∂C/∂b^2 come back exactly 0 where the truth is subnormal, in every path, and
    the error bound's underflow allowance η = finfo.tiny accepts them."""
    problem = saturated_unit(dtype, FLUSHED[dtype])
    tiny = float(np.finfo(np.float64 if dtype == "float64" else np.float32).tiny)
    assert 0 < problem.trace.a[2][0, 0] < tiny and 0 < -problem.trace.gradients.b[2][0] < tiny, "the case must reach subnormals"
    output = ADAPTER.compute(problem.network, problem.batch, dtype=dtype, path=path)
    assert output.a is not None
    assert output.a[2][0, 0] == 0 and output.gradients.b[2][0] == 0, "TensorFlow no longer flushes subnormals: update docs/backends.md"
    verdict = judge(f"flush-{path}-{dtype}", problem, output, ADAPTER.caps.precision(dtype))
    assert verdict.passed, verdict.message()


def test_float16_subnormals_are_kept() -> None:
    """float16 arithmetic runs in float32, where float16's subnormals are normal numbers: nothing is flushed."""
    problem = saturated_unit("float16", -10.5)
    assert 0 < problem.trace.a[2][0, 0] < np.finfo(np.float16).tiny
    output = ADAPTER.compute(problem.network, problem.batch, dtype="float16", path="eager")
    assert output.a is not None and output.a[2][0, 0] > 0


def test_a_subnormal_input_read_as_zero_stays_within_the_z_bound() -> None:
    """x = 2^-130 (float32 subnormal), w = 2^20: z^2 is 2^-110 (normal) but TensorFlow computes 0; E_a^1 = u|x| + η covers it."""
    problem = Problem.rounded(
        Network({2: np.array([[2.0**20]])}, {2: np.array([0.0])}), Batch(np.array([[2.0**-130]]), np.array([[0.25]])), "float32"
    )
    output = ADAPTER.compute(problem.network, problem.batch, dtype="float32", path="eager")
    assert output.z is not None and output.z[2][0, 0] == 0
    verdict = judge("daz", problem, output, ADAPTER.caps.precision("float32"))
    assert verdict.passed, verdict.message()
    tol = tolerance(problem.network, problem.batch, problem.trace, ADAPTER.caps.precision("float32"))
    assert worst_ratio(output.z, problem.trace.z, tol.z) <= 1


def test_a_call_leaves_the_callers_thread_with_ieee_subnormals() -> None:
    """TensorFlow sets flush-to-zero on its own threads and restores it: numpy in this thread still makes subnormals."""
    problem = saturated_unit("float32", -88.0)
    for path in PATHS:
        ADAPTER.compute(problem.network, problem.batch, dtype="float32", path=path)
        assert np.float32(np.finfo(np.float32).tiny) * np.float32(0.5) > 0, f"the {path} path left flush-to-zero on in this thread"


# --- accumulation: the measurements behind ACCUMULATION ----------------------------------------------------------


def _tensor(values: np.ndarray, dtype: str) -> object:
    return tensorflow_adapter._constant(values, dtype)


def _back(tensor: object) -> np.ndarray:
    return tf.cast(tensor, tf.float64).numpy()


def _round(dtype: str, value: float) -> float:
    return (
        float(_back(_tensor(np.array([value], dtype=np.float32), dtype))[0])
        if dtype == "bfloat16"
        else float(np.array(value).astype(dtype))
    )


def test_float16_products_accumulate_in_float32_and_sums_in_float16() -> None:
    """Why float16 declares dot float32 but batch_sum and cost_sum float16: MatMul equals the float32-accumulated sum
    rounded once in every trial, while reduce_sum of 7 terms is the sequential float16 sum, which differs from a
    correctly rounded one in some trials."""
    rng = np.random.default_rng(7)
    sums_differ = 0
    for _ in range(50):
        x = rng.standard_normal(7).astype(np.float16).astype(np.float64)
        y = rng.standard_normal(7).astype(np.float16).astype(np.float64)
        product = _back(tf.matmul(_tensor(x[None, :], "float16"), _tensor(y[:, None], "float16")))[0, 0]
        assert product == _round("float16", float(np.float32(math.fsum(x * y)))), "float16 MatMul no longer accumulates in float32"
        total = _back(tf.reduce_sum(_tensor(x, "float16")))
        sequential = np.float16(0)
        for term in x.astype(np.float16):
            sequential = np.float16(sequential + term)
        assert total == float(sequential), "float16 reduce_sum is no longer the sequential float16 sum: revisit ACCUMULATION"
        sums_differ += total != _round("float16", math.fsum(x))
    assert sums_differ > 0


BFLOAT16_PRODUCTS = """
import math, sys
import numpy as np
import tensorflow as tf
from backprop_conformance.adapters.dispatch import tensorflow_configuration

rng = np.random.default_rng(8)
truncated = rounded = 0
trials = 60
for _ in range(trials):
    k = int(rng.choice([1, 7, 33]))
    x, y = (tf.cast(tf.constant(rng.standard_normal(k), tf.float32), tf.bfloat16) for _ in range(2))
    got = float(tf.cast(tf.matmul(x[None, :], y[:, None]), tf.float32)[0, 0])
    exact32 = np.array([math.fsum(np.asarray(tf.cast(x, tf.float64)) * np.asarray(tf.cast(y, tf.float64)))], dtype=np.float32)
    truncated += got == float((exact32.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)[0])
    rounded += got == float(tf.cast(tf.cast(tf.constant(exact32), tf.bfloat16), tf.float32)[0])
print(tensorflow_configuration()["tensorflow.onednn"], truncated, rounded, trials)
"""


@pytest.mark.parametrize("onednn", ["0", "1"])
def test_bfloat16_products_are_truncated_by_eigen_and_rounded_by_onednn(onednn: str) -> None:
    """bfloat16 MatMul (eager) accumulates in float32, then Eigen's kernel (oneDNN off) *truncates* the sum to bfloat16
    and oneDNN's (on) rounds it to nearest: both are within the 2u the bound allows a product's result (ACCUMULATION).

    Which one a user gets depends on the CPU (TensorFlow turns oneDNN on by itself on AVX-512 VNNI or BF16 CPUs), so both
    are checked, each in a process of its own (TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, at start-up).
    """
    import os
    import subprocess
    import sys

    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", BFLOAT16_PRODUCTS], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    state, truncated, rounded, trials = done.stdout.split()[-4:]
    assert state == {"0": "off", "1": "on"}[onednn]
    if state == "off":
        assert int(truncated) == int(trials) and int(rounded) < int(trials), done.stdout
    else:
        assert int(rounded) == int(trials) and int(truncated) < int(trials), done.stdout


# --- process-wide settings -------------------------------------------------------------------------------------


def _flags() -> tuple[bool, bool]:
    from tensorflow.python.framework import config as tf_config

    return tf.config.experimental.tensor_float_32_execution_enabled(), tf_config.is_op_determinism_enabled()


def _set_flags(tf32: bool, deterministic: bool) -> None:
    from tensorflow.python.framework import config as tf_config

    tf.config.experimental.enable_tensor_float_32_execution(tf32)
    (tf.config.experimental.enable_op_determinism if deterministic else tf_config.disable_op_determinism)()


@pytest.mark.parametrize(("tf32", "deterministic"), [(True, False), (False, True), (True, True)])
def test_a_call_pins_tf32_off_and_determinism_on_and_restores_both(tf32: bool, deterministic: bool) -> None:
    original = _flags()
    _set_flags(tf32, deterministic)
    try:
        with pinned_numerics():
            assert _flags() == (False, True)
        with pytest.raises(ZeroDivisionError), pinned_numerics():
            1 / 0  # noqa: B018 (an exception inside the call must restore the flags too)
        assert _flags() == (tf32, deterministic)
        problem = ARCHITECTURES[0].problem("float32", SEED)
        for path in PATHS:
            ADAPTER.compute(problem.network, problem.batch, dtype="float32", path=path)
            ADAPTER.round_trip(problem.network, dtype="float32")
            assert _flags() == (tf32, deterministic), f"the {path} path changed TF32 or determinism"
    finally:
        _set_flags(*original)


# --- compiled steps --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["function", "xla"])
def test_a_repeated_shape_is_traced_once_and_other_values_give_other_results(path: str) -> None:
    first = Architecture("cache", (2, 6, 2), 5).problem("float32", SEED)
    rng = np.random.default_rng(99)
    second = Problem.rounded(first.network.map(lambda w: w + rng.uniform(0.5, 1.0, w.shape)), first.batch, "float32")
    out1 = ADAPTER.compute(first.network, first.batch, dtype="float32", path=path)
    out2 = ADAPTER.compute(second.network, second.batch, dtype="float32", path=path)
    out1_again = ADAPTER.compute(first.network, first.batch, dtype="float32", path=path)
    _, step = tensorflow_adapter._compiled_step(path, (2, 6, 2), "float32", "cpu")
    assert step.experimental_get_tracing_count() == 1, "a new value must not retrace a shape traced before"
    assert not np.array_equal(out1.gradients.w[2], out2.gradients.w[2]), "the second call must see the new parameters"
    np.testing.assert_array_equal(out1.gradients.w[2], out1_again.gradients.w[2])


def test_the_cache_of_compiled_steps_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tensorflow_adapter, "CACHE_SIZE", 2)
    for width in (3, 4, 5):
        problem = Architecture("bounded", (width, 2), 1).problem("float64", SEED)
        ADAPTER.compute(problem.network, problem.batch, dtype="float64", path="function")
    assert len(tensorflow_adapter._STEPS) <= 2
    assert ("function", (5, 2), "float64", "cpu") in tensorflow_adapter._STEPS
