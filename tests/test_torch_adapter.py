"""The built-in PyTorch adapter: agreement with the float64 reference within the error bound, and the contract.

Every default path × dtype is run on a fixed set of architectures chosen for what each can break
(L = 2; width-1 layers; square layers, where a transposed w^l keeps its shape; depth L = 7; B = 1 and
B = 7; a saturated net with |z| > 40, where σ′ computed as a(1 − a) is exactly 0) and must agree
with :func:`backprop_conformance.reference.vectorized.backprop` at the same rounded point within
:func:`backprop_conformance.reference.error_bound.tolerance` for the declared accumulation. The adapter's intermediates
(z^l, a^l, δ^l) and its cost are held to their own bounds too. One test shows the bound has teeth on
these very cases: a float32 computation handed in as float64 fails it.

Run ``python tests/test_torch_adapter.py`` to print the worst error/bound ratio per path × dtype.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="the torch adapter needs PyTorch (pip install torch)")

from networks import SATURATION, Architecture  # noqa: E402  (after the importorskip that guards this module)
from strategies import cases, compare  # noqa: E402

from backprop_conformance.adapters.base import AdapterOutput, RequestError  # noqa: E402
from backprop_conformance.adapters.registry import resolve  # noqa: E402
from backprop_conformance.adapters.selfcheck import check_contract  # noqa: E402
from backprop_conformance.adapters.torch_adapter import DEFAULT_PATHS, DTYPES, TorchAdapter  # noqa: E402
from backprop_conformance.adapters.torch_model import ieee_arithmetic  # noqa: E402
from backprop_conformance.conformance.problems import Problem  # noqa: E402
from backprop_conformance.conformance.verdict import worst_ratio  # noqa: E402
from backprop_conformance.reference.dtypes import FORMATS, is_representable  # noqa: E402
from backprop_conformance.reference.error_bound import FLOAT64, Precision  # noqa: E402
from backprop_conformance.reference.model import Batch, Network  # noqa: E402

ADAPTER = TorchAdapter()


ARCHITECTURES = (
    Architecture("L2", (3, 2)),
    Architecture("width1", (1, 1, 1, 1)),
    Architecture("square", (5, 5, 5)),
    Architecture("deep", (4, 6, 5, 7, 3, 4, 2)),
    Architecture("saturated", (4, 5, 3), scale=30.0),
)
"""Torch's own shapes (it compiles none eagerly, so it can afford more): a square layer and a deep one of unequal widths."""
SEED = 20181109
"""The seed of this module's fixed networks (:mod:`networks`)."""
BATCH_SIZES = (1, 7)


def make_problem(arch: Architecture, batch_size: int, dtype: str) -> Problem:
    """The fixed case for ``arch`` and B, rounded to ``dtype`` then back to float64 for both sides."""
    return arch.with_batch_size(batch_size).problem(dtype, SEED)


def precision(dtype: str) -> Precision:
    """The framework's precision as the adapter declares it (storage, accumulation)."""
    return ADAPTER.caps.precision(dtype)


def ratios(output: AdapterOutput, problem: Problem, framework: Precision) -> dict[str, float]:
    """Worst error/bound ratio of the gradients, the cost, and each intermediate the adapter returned.

    Raises with the gradient verdict (every failing element named in the page's indices) when a
    gradient is outside its bound.
    """
    layers = list(problem.network.layers)
    for what, values, keys in (("a", output.a, [1, *layers]), ("z", output.z, layers), ("δ", output.delta, layers)):
        assert values is None or sorted(values) == keys, f"{what}^l returned for layers {sorted(values)}, expected {keys}"
    tol = problem.tolerance(framework)
    verdict = compare(output.gradients, problem.trace.gradients, tol.gradients, f"torch vs reference ({problem.dtype})")
    assert verdict.ok, str(verdict)
    return {
        "gradients": verdict.worst_ratio,
        "cost": abs(output.cost - problem.trace.cost) / tol.cost,
        "z": worst_ratio(output.z, problem.trace.z, tol.z),
        "a": worst_ratio(output.a, problem.trace.a, tol.a),
        "delta": worst_ratio(output.delta, problem.trace.delta, tol.delta),
    }


def case_ids() -> Iterator[tuple[Architecture, int]]:
    for arch in ARCHITECTURES:
        for batch_size in BATCH_SIZES:
            yield arch, batch_size


CASES = list(case_ids())
CASE_IDS = [f"{arch.name}-B{batch_size}" for arch, batch_size in CASES]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", DEFAULT_PATHS)
@pytest.mark.parametrize(("arch", "batch_size"), CASES, ids=CASE_IDS)
def test_agrees_with_reference_within_bound(arch: Architecture, batch_size: int, path: str, dtype: str) -> None:
    problem = make_problem(arch, batch_size, dtype)
    output = ADAPTER.run(problem.network, problem.batch, dtype=dtype, path=path)
    worst = ratios(output, problem, precision(dtype))
    outside = {what: ratio for what, ratio in worst.items() if not ratio <= 1}
    assert not outside, f"{arch.name}, B={batch_size}, {path}, {dtype}: outside their bounds (error/bound): {outside}"
    assert output.a is not None and output.z is not None
    assert (output.delta is not None) == (path in ("eager", "mse")), "δ^l comes from the tape paths, eager and mse"


@pytest.mark.parametrize("dtype", DTYPES)
def test_saturated_case_is_saturated(dtype: str) -> None:
    """The saturated architecture must really reach |z| > 40, or its test would not test saturation."""
    arch = next(a for a in ARCHITECTURES if a.name == "saturated")
    for batch_size in BATCH_SIZES:
        trace = make_problem(arch, batch_size, dtype).trace
        assert max(float(np.max(np.abs(z))) for z in trace.z.values()) > SATURATION


@pytest.mark.parametrize("path", DEFAULT_PATHS)
def test_float32_arithmetic_fails_the_float64_bound(path: str) -> None:
    """The check has teeth on these cases: float32 gradients, claimed as float64, fall outside the float64 bound.

    The parameters are rounded to float32 so that both computations start from the same point; only
    the arithmetic differs, which is exactly the planted bug of the design note ("a float32 matmul
    hidden in a float64 run").
    """
    arch = next(a for a in ARCHITECTURES if a.name == "deep")
    problem = make_problem(arch, 7, "float32")
    output = ADAPTER.run(problem.network, problem.batch, dtype="float32", path=path)
    verdict = compare(output.gradients, problem.trace.gradients, problem.tolerance(FLOAT64).gradients, "float32 as float64")
    assert not verdict.ok
    assert verdict.worst_ratio > 100


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", DEFAULT_PATHS)
def test_outputs_have_requested_shapes_and_carrier_dtypes(path: str, dtype: str) -> None:
    arch = next(a for a in ARCHITECTURES if a.name == "deep")
    problem = make_problem(arch, 7, dtype)
    output = ADAPTER.run(problem.network, problem.batch, dtype=dtype, path=path)
    carrier = FORMATS[dtype].carrier
    assert sorted(output.gradients.w) == sorted(output.gradients.b) == list(problem.network.layers)
    for l in problem.network.layers:
        for got, param in ((output.gradients.w[l], problem.network.w[l]), (output.gradients.b[l], problem.network.b[l])):
            assert got.shape == param.shape
            assert got.dtype == carrier
            assert is_representable(dtype, got)
    assert isinstance(output.cost, float)
    B, widths = problem.batch.size, problem.network.widths
    intermediates = [("a", output.a, 1), ("z", output.z, 2)] + ([("delta", output.delta, 2)] if output.delta is not None else [])
    for what, values, first in intermediates:
        assert values is not None
        assert sorted(values) == list(range(first, problem.network.depth + 1)), what
        for l, arr in values.items():
            assert arr.shape == (B, widths[l - 1]), (what, l)
            assert arr.dtype == carrier, (what, l)
            assert is_representable(dtype, arr), (what, l)
    np.testing.assert_array_equal(output.a[1], problem.batch.x.astype(carrier))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", DEFAULT_PATHS)
def test_project_contract_checks_pass(path: str, dtype: str) -> None:
    """The suite's own contract checks (layout round trip, shapes, repeatability) on a square-layer net."""
    problem = make_problem(next(a for a in ARCHITECTURES if a.name == "square"), 7, dtype)
    check_contract(ADAPTER, path, dtype, "cpu", problem.network, problem.batch)


@pytest.mark.parametrize("path", DEFAULT_PATHS)
def test_two_calls_give_identical_gradients(path: str) -> None:
    """No state between calls: each builds a fresh model, so ``.grad`` cannot accumulate into the next call."""
    problem = make_problem(next(a for a in ARCHITECTURES if a.name == "deep"), 7, "float32")
    first = ADAPTER.run(problem.network, problem.batch, dtype="float32", path=path)
    second = ADAPTER.run(problem.network, problem.batch, dtype="float32", path=path)
    for (kind, l, g1), (_, _, g2) in zip(first.gradients.items(), second.gradients.items(), strict=True):
        np.testing.assert_array_equal(g1, g2, err_msg=f"∂C/∂{kind}^{l} changed between calls")
    assert first.cost == second.cost


@pytest.mark.parametrize("dtype", DTYPES)
def test_load_parameters_reads_back_the_page_layout(dtype: str) -> None:
    """nn.Linear.weight[j−1, k−1] is w^l_jk: the parameters come back unchanged, square layers included."""
    problem = make_problem(next(a for a in ARCHITECTURES if a.name == "deep"), 1, dtype)
    back = ADAPTER.load_parameters(problem.network, dtype=dtype)
    for l in problem.network.layers:
        assert back.w[l].dtype == FORMATS[dtype].carrier
        np.testing.assert_array_equal(back.w[l].astype(np.float64), problem.network.w[l])
        np.testing.assert_array_equal(back.b[l].astype(np.float64), problem.network.b[l])


def test_capabilities() -> None:
    caps = ADAPTER.capabilities()
    assert caps.name == "torch"
    assert caps.version == torch.__version__
    assert caps.dtypes == ("float64", "float32", "float16", "bfloat16", "mixed-bfloat16", "mixed-float16")
    assert caps.default_dtypes == ("float64", "float32", "float16", "bfloat16"), "mixed-precision cells are opt-in"
    assert set(caps.paths) == {
        *("eager", "func", "mse", "accumulate", "per-example", "checkpoint", "checkpoint-reentrant"),
        *("compile", "compile-dynamic", "compile-func", "grad-scaler", "ddp"),
    }
    assert caps.dtypes_of_path("grad-scaler") == ("float64", "float32", "mixed-bfloat16", "mixed-float16")
    assert caps.shape_compiled_paths == ("compile", "compile-dynamic", "compile-func")
    assert "compile" not in caps.default_paths and "ddp" not in caps.default_paths and set(caps.default_paths) <= set(caps.paths)
    assert caps.default_paths == ("eager", "func", "mse"), "the training-loop paths are opt-in: a default run's time is unchanged"
    assert caps.micro_batch_paths == ("accumulate",) and caps.per_example_paths == ("per-example",)
    assert caps.ranks == {"ddp": 2}, "the data-parallel path declares its ranks, so that the bound charges the all-reduce"
    assert caps.accumulation_of("float16") == caps.accumulation_of("bfloat16") == "float32"
    assert caps.accumulation_of("float32") == "float32" and caps.accumulation_of("float64") == "float64"
    assert caps.devices == (("cpu", "cuda") if torch.cuda.is_available() else ("cpu",))


def test_registry_finds_the_adapter() -> None:
    assert isinstance(resolve("torch").load(), TorchAdapter)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"dtype": "float8", "path": "eager"},
            "adapter 'torch': unsupported dtype 'float8'; valid dtypes are float64, float32, float16, bfloat16, "
            "mixed-bfloat16, mixed-float16",
        ),
        (
            {"dtype": "float32", "path": "jit"},
            "adapter 'torch': unsupported path 'jit'; valid paths are eager, func, mse, accumulate, per-example, checkpoint, "
            "checkpoint-reentrant, compile, compile-dynamic, compile-func, grad-scaler, ddp",
        ),
        ({"dtype": "float32", "path": "eager", "device": "tpu"}, "adapter 'torch': unsupported device 'tpu'; valid devices are cpu"),
    ],
)
def test_bad_request_is_a_clear_error(kwargs: dict[str, str], message: str) -> None:
    problem = make_problem(ARCHITECTURES[0], 1, "float32")
    expected = message.replace("valid devices are cpu", "valid devices are " + ", ".join(ADAPTER.caps.devices))
    with pytest.raises(RequestError) as info:
        ADAPTER.compute(problem.network, problem.batch, **kwargs)
    assert str(info.value) == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for cuda where it is not available")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    problem = make_problem(ARCHITECTURES[0], 1, "float32")
    with pytest.raises(RequestError, match="unsupported device 'cuda'; valid devices are cpu"):
        ADAPTER.compute(problem.network, problem.batch, dtype="float32", path="eager", device="cuda")


def test_unrounded_values_are_refused() -> None:
    """A float64 value torch would round to float16 is refused, naming the array and the fix."""
    problem = make_problem(ARCHITECTURES[0], 1, "float64")
    with pytest.raises(RequestError, match=r"w\^2 holds values that are not exactly representable in float16; round them first"):
        ADAPTER.compute(problem.network, problem.batch, dtype="float16", path="eager")
    with pytest.raises(RequestError, match=r"w\^2 holds values that are not exactly representable in bfloat16"):
        ADAPTER.round_trip(problem.network, dtype="bfloat16")


def _torch_state() -> dict[str, object]:
    """Every piece of torch's process-wide state a careless adapter could change."""
    backends = torch.backends
    return {
        "default dtype": torch.get_default_dtype(),
        "grad mode": torch.is_grad_enabled(),
        "inference mode": torch.is_inference_mode_enabled(),
        "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        "anomaly detection": torch.is_anomaly_enabled(),
        "float32 matmul precision": torch.get_float32_matmul_precision(),
        "mkldnn matmul fp32 precision": backends.mkldnn.matmul.fp32_precision,
        "cuda matmul fp32 precision": backends.cuda.matmul.fp32_precision,
        "cudnn conv fp32 precision": backends.cudnn.conv.fp32_precision,
        "cudnn rnn fp32 precision": backends.cudnn.rnn.fp32_precision,
        "cuBLAS fp16 reduced-precision reduction": (
            backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
            backends.cuda.matmul.allow_fp16_reduced_precision_reduction_split_k,
        ),
        "cuBLAS bf16 reduced-precision reduction": (
            backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
            backends.cuda.matmul.allow_bf16_reduced_precision_reduction_split_k,
        ),
        "cuBLAS fp16 accumulation": backends.cuda.matmul.allow_fp16_accumulation,
        "threads": torch.get_num_threads(),
        "random number generator": torch.random.get_rng_state().numpy().tobytes(),
    }


@pytest.mark.parametrize("caller", ["plain", "no_grad", "inference_mode", "matmul precision medium"])
@pytest.mark.parametrize("path", DEFAULT_PATHS)
def test_leaves_torch_global_state_as_it_found_it(path: str, caller: str) -> None:
    """Same gradients whatever the caller's context, and the context is unchanged afterwards.

    ``set_float32_matmul_precision("medium")`` lets oneDNN use bfloat16 for float32 products on CPUs
    that have it; the adapter pins IEEE float32 for the call and must restore the user's choice.
    """
    problem = make_problem(next(a for a in ARCHITECTURES if a.name == "square"), 7, "float32")
    expected = ADAPTER.run(problem.network, problem.batch, dtype="float32", path=path)
    previous_precision = torch.get_float32_matmul_precision()
    contexts = {
        "plain": torch.enable_grad,
        "no_grad": torch.no_grad,
        "inference_mode": torch.inference_mode,
        "matmul precision medium": torch.enable_grad,
    }
    try:
        if caller == "matmul precision medium":
            torch.set_float32_matmul_precision("medium")
        with contexts[caller]():
            before = _torch_state()
            output = ADAPTER.run(problem.network, problem.batch, dtype="float32", path=path)
            after = _torch_state()
    finally:
        torch.set_float32_matmul_precision(previous_precision)
    changed = {key: (before[key], after[key]) for key in before if before[key] != after[key]}
    assert not changed, f"the adapter changed torch's global state: {changed}"
    for (kind, l, g), (_, _, want) in zip(output.gradients.items(), expected.gradients.items(), strict=True):
        np.testing.assert_array_equal(g, want, err_msg=f"∂C/∂{kind}^{l} depends on the caller's context ({caller})")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_ieee_arithmetic_is_pinned_for_the_call_and_restored(device: str) -> None:
    """Inside a call the TF32/bf16/reduced-precision switches are off; after it the user's settings are back.

    The flags are process-wide settings readable on a CPU-only build, so the CUDA branch is checked
    here even without a GPU (its numerical effect needs one).
    """
    backends = torch.backends
    matmul = backends.cuda.matmul
    previous_precision = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        before = _torch_state()
        with ieee_arithmetic(device):
            if device == "cpu":
                assert backends.mkldnn.matmul.fp32_precision == "ieee"
            else:
                assert matmul.fp32_precision == backends.cudnn.conv.fp32_precision == backends.cudnn.rnn.fp32_precision == "ieee"
                assert not matmul.allow_fp16_reduced_precision_reduction
                assert not matmul.allow_bf16_reduced_precision_reduction
                assert not matmul.allow_fp16_accumulation
        after = _torch_state()
    finally:
        torch.set_float32_matmul_precision(previous_precision)
    assert before["mkldnn matmul fp32 precision"] == "bf16"
    assert before == after


@pytest.mark.parametrize(("widths", "batch_size", "inside"), [((5, 8, 3), 4, 1), ((2, 200, 200), 3, 3)], ids=["small", "200x200"])
@pytest.mark.parametrize("path", DEFAULT_PATHS)
def test_small_calls_run_on_one_intra_op_thread_and_the_users_count_is_restored(
    widths: tuple[int, ...], batch_size: int, inside: int, path: str
) -> None:
    """Under torch's grain size (32,768 elements) a call runs on one intra-op thread; a 200×200 weight (40,000
    elements) keeps the user's count (3 here); after either call the user's count is back."""
    rng = np.random.default_rng(5)
    network = Network.from_lists(
        [rng.standard_normal((widths[i + 1], widths[i])) / 8 for i in range(len(widths) - 1)],
        [rng.standard_normal(widths[i + 1]) for i in range(len(widths) - 1)],
    )
    batch = Batch(rng.standard_normal((batch_size, widths[0])), rng.uniform(size=(batch_size, widths[-1])))
    problem = Problem.rounded(network, batch, "float64")
    seen: list[int] = []
    hook = torch.nn.modules.module.register_module_forward_hook(lambda module, args, output: seen.append(torch.get_num_threads()))
    users = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        ADAPTER.run(problem.network, problem.batch, dtype="float64", path=path)
        after = torch.get_num_threads()
    finally:
        hook.remove()
        torch.set_num_threads(users)
    assert seen and set(seen) == {inside}, f"intra-op threads during the call: {sorted(set(seen))}, expected {inside}"
    assert after == 3, f"the call left torch with {after} intra-op threads instead of the user's 3"


@settings(max_examples=40, deadline=None)
@given(case=cases(depths=(2, 5), widths=(1, 6), batch_sizes=(1, 4)), dtype=st.sampled_from(DTYPES), path=st.sampled_from(DEFAULT_PATHS))
def test_random_networks_agree_within_bound(case: tuple[Network, Batch], dtype: str, path: str) -> None:
    """Hypothesis' awkward values (zeros, ±bounds, subnormals, repeats) on small random nets, every path and dtype."""
    problem = Problem.rounded(*case, dtype)
    output = ADAPTER.run(problem.network, problem.batch, dtype=dtype, path=path)
    worst = ratios(output, problem, precision(dtype))
    assert all(ratio <= 1 for ratio in worst.values()), worst


@pytest.mark.slow
def test_compile_path_agrees_and_does_not_recompile_for_new_values() -> None:
    """``torch.compile`` (opt-in path): one small float32 case; a second net of the same architecture reuses the graphs.

    The first compilation of the process takes ~20 s on 2 CPU cores, so this is the only compile test.
    """
    from torch._dynamo.utils import counters

    arch = Architecture("compile", (3, 4, 2), 3)
    first = arch.problem("float32", seed=1)
    started = time.perf_counter()
    output = ADAPTER.run(first.network, first.batch, dtype="float32", path="compile")
    compile_seconds = time.perf_counter() - started
    worst = ratios(output, first, precision("float32"))
    assert all(ratio <= 1 for ratio in worst.values()), worst
    assert output.delta is None and output.z is not None and output.a is not None

    graphs = counters["stats"]["unique_graphs"]
    second = arch.problem("float32", seed=2)
    again = ADAPTER.run(second.network, second.batch, dtype="float32", path="compile")
    assert counters["stats"]["unique_graphs"] == graphs, "a new net of the same architecture recompiled"
    ratios(again, second, precision("float32"))
    print(f"torch.compile: first call {compile_seconds:.1f} s")


def worst_ratio_table() -> str:
    """The worst error/bound ratio per path × dtype over the fixed architectures (gradients; cost, z, a, δ)."""
    lines = [f"{'path':8s} {'dtype':9s} {'gradients':>9s} {'cost':>7s} {'z':>7s} {'a':>7s} {'delta':>7s}"]
    for path in DEFAULT_PATHS:
        for dtype in DTYPES:
            worst: dict[str, float] = {}
            for arch, batch_size in CASES:
                problem = make_problem(arch, batch_size, dtype)
                output = ADAPTER.run(problem.network, problem.batch, dtype=dtype, path=path)
                for what, ratio in ratios(output, problem, precision(dtype)).items():
                    worst[what] = max(worst.get(what, 0.0), ratio)
            delta = f"{worst['delta']:7.3f}" if path in ("eager", "mse") else f"{'-':>7s}"
            lines.append(f"{path:8s} {dtype:9s} {worst['gradients']:9.3f} {worst['cost']:7.3f} {worst['z']:7.3f} {worst['a']:7.3f} {delta}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(worst_ratio_table())
