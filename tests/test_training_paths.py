"""The training-loop paths: gradient accumulation over micro-batches, per-example gradients summed, rematerialization.

What is checked here: the split a batch carries (validated, replayed from case files, drawn uneven and even by the
strategies), the capabilities that declare the paths, torch's ``accumulate`` and ``per-example`` paths against the
reference on every format, and the real suite against the planted training-loop bugs of :mod:`training_mutants`,
each of which must fail with the diagnosis that names it. The bound's own tests (an upper bound, nearly attained)
are in ``test_error_bound.py``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import training_mutants
from conftest import suite
from hypothesis import given, settings
from hypothesis import strategies as st
from networks import tiny_problem

from backprop_conformance.adapters.base import AdapterContractError, AdapterOutput, Capabilities, CapabilitiesError, check_output
from backprop_conformance.conformance import cases
from backprop_conformance.conformance.cells import Cell
from backprop_conformance.conformance.micro_batches import diagnose
from backprop_conformance.conformance.strategies import DEFAULT_LIMITS, build, covering_split, design, equal_hidden, even_split, problems
from backprop_conformance.conformance.verdict import judge
from backprop_conformance.reference.model import Batch, Gradients, ModelError

# The split a batch carries.


def test_a_split_is_validated_and_names_what_is_wrong() -> None:
    x, y = np.zeros((5, 2)), np.zeros((5, 1))
    assert Batch(x, y, [2, 3]).micro_batches == (2, 3)
    assert Batch(x, y).pieces == (slice(0, 5),)
    assert Batch(x, y, (1, 3, 1)).pieces == (slice(0, 1), slice(1, 4), slice(4, 5))
    for bad, words in (
        ((2, 2), "sum to 4, but the batch has B = 5"),
        ((5, 0), "whole sizes ≥ 1"),
        ((), "at least one"),
        ("23", "sequence"),
    ):
        with pytest.raises(ModelError, match=words):
            Batch(x, y, bad)  # type: ignore[arg-type]
    assert Batch(x, y, (2, 3)).astype(np.float32).micro_batches == (2, 3)


def test_a_case_file_records_the_split_and_a_replay_reads_it_back(tmp_path: Path) -> None:
    problem = build("float32", ((3, 4, 2), 7), 1.0, 1.0, 1.0, "uniform", 5).split((1, 4, 2))
    case = cases.Case(problem, Cell("torch", "accumulate", "float32", "cpu"), "torch", {}, "failure text")
    path = cases.write(case, tmp_path)
    assert json.loads(path.read_text())["batch"]["micro_batches"] == [1, 4, 2]
    assert cases.read(path).problem.batch.micro_batches == (1, 4, 2)
    unsplit = cases.Case(problem.split(None), case.cell, "torch", {}, "failure text")
    assert "micro_batches" not in json.loads(cases.write(unsplit, tmp_path).read_text())["batch"]
    data = json.loads(path.read_text())
    for bad, words in (([1, 4], "sum to 5, but the batch has B = 7"), ("7", "list of whole micro-batch sizes"), ([1.5, 5.5], "whole")):
        data["batch"]["micro_batches"] = bad
        with pytest.raises(cases.CaseError, match=words):
            cases.from_json(data, "case.json")


@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_the_strategies_draw_a_split_of_the_batch_only_where_asked(data: st.DataObject) -> None:
    split = data.draw(problems("float32", DEFAULT_LIMITS, pooled=False, split=True))
    sizes = split.batch.micro_batches
    assert sizes is not None and sum(sizes) == split.batch.size and 1 <= len(sizes) <= 8
    assert data.draw(problems("float32", DEFAULT_LIMITS, pooled=False)).batch.micro_batches is None


def test_the_strategies_reach_even_and_uneven_splits_and_the_design_splits_every_shape() -> None:
    seen: set[str] = set()

    @given(data=st.data())
    @settings(max_examples=150, deadline=None, database=None)
    def draw(data: st.DataObject) -> None:
        sizes = data.draw(problems("float64", DEFAULT_LIMITS, pooled=False, split=True)).batch.micro_batches
        assert sizes is not None
        if len(sizes) > 1:
            seen.add("even" if sizes == even_split(sum(sizes), len(sizes)) else "uneven")

    draw()
    assert seen == {"even", "uneven"}
    designed = covering_split("float32", DEFAULT_LIMITS.covering)
    assert all(p.batch.micro_batches is not None and sum(p.batch.micro_batches) == p.batch.size for p in designed)
    assert {len(p.batch.micro_batches or ()) for p in designed if p.batch.size >= 5} == {2, 3, 5}


# The declarations.


def test_the_paths_declared_to_accumulate_are_validated() -> None:
    base = Capabilities(name="x", framework="X", version="1", dtypes=("float32",), paths=("eager", "acc"), default_paths=("eager",))
    assert dataclasses.replace(base, micro_batch_paths=("acc",)).partial_sums("acc", Batch(np.zeros((5, 1)), np.zeros((5, 1)), (2, 3))) == 2
    assert dataclasses.replace(base, per_example_paths=("acc",)).partial_sums("acc", Batch(np.zeros((5, 1)), np.zeros((5, 1)))) == 5
    assert base.partial_sums("acc", Batch(np.zeros((5, 1)), np.zeros((5, 1)), (2, 3))) == 1
    with pytest.raises(CapabilitiesError, match="micro_batch_paths names 'jit', not among its paths"):
        dataclasses.replace(base, micro_batch_paths=("jit",))
    with pytest.raises(CapabilitiesError, match="both a micro-batch and a per-example path"):
        dataclasses.replace(base, micro_batch_paths=("acc",), per_example_paths=("acc",))


def test_per_example_gradients_of_the_wrong_shape_break_the_contract() -> None:
    problem = tiny_problem()
    g = problem.trace.gradients
    output = AdapterOutput(g, problem.trace.cost, per_example=Gradients(dict(g.w), dict(g.b)))
    with pytest.raises(AdapterContractError, match=r"per-example ∂C_x/∂w\^2 has shape \(1, 2\).*expected \(1, 1, 2\)"):
        check_output("here", problem.network, problem.batch, "float64", output)


# torch's paths.


@pytest.fixture(scope="module")
def torch_adapter() -> Any:
    pytest.importorskip("torch")
    from backprop_conformance.adapters.torch_adapter import TorchAdapter

    return TorchAdapter()


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("split", [(13,), (1, 12), (4, 4, 5), (1,) * 13, (6, 1, 1, 5)])
def test_torch_accumulates_every_split_within_the_bound(torch_adapter: Any, dtype: str, split: tuple[int, ...]) -> None:
    problem = build(dtype, ((9, 16, 16, 3), 13), 1.0, 1.0, 1.0, "uniform", 11).split(split)
    output = torch_adapter.compute(problem.network, problem.batch, dtype=dtype, path="accumulate")
    k = torch_adapter.caps.partial_sums("accumulate", problem.batch)
    assert k == len(split)
    verdict = judge("torch-accumulate", problem, output, torch_adapter.caps.precision(dtype, "accumulate"), partial_sums=k)
    assert verdict.passed, verdict.message()
    assert output.delta is not None and output.delta[2].shape == (13, 16)


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_torch_per_example_gradients_are_each_examples_own(torch_adapter: Any, dtype: str) -> None:
    problem = build(dtype, ((5, 8, 2), 6), 1.0, 1.0, 1.0, "binary", 3)
    output = torch_adapter.compute(problem.network, problem.batch, dtype=dtype, path="per-example")
    assert output.per_example is not None and output.per_example.w[2].shape == (6, 8, 5)
    verdict = judge("torch-per-example", problem, output, torch_adapter.caps.precision(dtype), partial_sums=6)
    assert verdict.passed, verdict.message()
    assert verdict.gradients.elements == (1 + 6) * problem.network.parameter_count  # the sums, and each example's own


def test_a_swapped_pair_of_per_example_gradients_fails_although_their_sum_is_right(torch_adapter: Any) -> None:
    problem = build("float64", ((3, 4, 2), 4), 1.0, 1.0, 1.0, "uniform", 8)
    output = torch_adapter.compute(problem.network, problem.batch, dtype="float64", path="per-example")
    assert output.per_example is not None
    swapped = Gradients({l: w[[1, 0, 2, 3]] for l, w in output.per_example.w.items()}, dict(output.per_example.b))
    verdict = judge("x", problem, dataclasses.replace(output, per_example=swapped), torch_adapter.caps.precision("float64"), partial_sums=4)
    assert not verdict.passed and "of example 1 alone" in verdict.message()
    assert "accumulation:" not in verdict.message()  # the sums themselves are right: no accumulation signature to name


def test_each_accumulation_signature_is_named() -> None:
    problem = build("float64", ((3, 5, 2), 9), 1.0, 1.0, 1.0, "uniform", 2).split((2, 4, 3))
    from backprop_conformance.conformance.micro_batches import partial_gradients

    G = problem.trace.gradients
    parts = partial_gradients(problem, problem.batch.pieces)
    tol = problem.tolerance(training_mutants.AveragedMicroBatches().caps.precision("float64"), 3).gradients

    def scaled(*terms: tuple[float, Gradients]) -> Gradients:
        return Gradients({l: sum(c * g.w[l] for c, g in terms) for l in G.w}, {l: sum(c * g.b[l] for c, g in terms) for l in G.b})

    for got, words in (
        (scaled((1 / 3, G)), "the micro-batch gradients were averaged"),
        (scaled((1.0, G), (-1.0, parts[1])), "micro-batch 2 (examples 3–6 of 9) dropped"),
        (parts[2], "only the last micro-batch's gradient"),
        (scaled((1.0, G), (1.0, parts[0])), "micro-batch 1 (examples 1–2 of 9) accumulated twice"),
        (scaled((2.0, G)), "no known accumulation signature"),
    ):
        assert words in diagnose(problem, got, tol, per_example=False)
    assert diagnose(problem.split(None), G, tol, per_example=False) == ""


MUTANT_RUNS = {
    "torch": (training_mutants.TorchMutant, ("accumulate", "per-example", "checkpoint"), "25"),
    "jax": (training_mutants.JaxMutant, ("accumulate", "per-example", "remat", "scan"), "12"),
    "tensorflow": (training_mutants.TensorFlowMutant, ("recompute",), "12"),
}
"""Per backend: the base of its planted bugs, the correct paths run beside them, and the examples per cell (JAX's and
TensorFlow's mutants compile or trace per shape, and each is caught within its first examples)."""


@pytest.mark.parametrize("backend", MUTANT_RUNS)
def test_the_suite_names_each_planted_training_loop_bug(tmp_path: Path, backend: str) -> None:
    """The real suite on a backend's training-loop paths: the correct backend passes, each planted bug fails, and its
    message says which."""
    pytest.importorskip(backend)
    base, paths, examples = MUTANT_RUNS[backend]
    mutants = [m for m in training_mutants.MUTANTS if issubclass(m, base)]
    args = ["--conformance-backend", backend]
    for path in paths:
        args += ["--conformance-path", path]
    for dtype in training_mutants.DTYPES:
        args += ["--conformance-dtype", dtype]
    for mutant in mutants:
        args += ["--conformance-backend", training_mutants.backend_name(mutant)]
    run = suite(tmp_path, *args, "--conformance-max-examples", examples)
    assert run.returncode == 1, run.explain()
    assert run.report is not None, run.explain()
    for dtype in training_mutants.DTYPES:
        for path in paths:
            assert run.report.cell(f"{backend}-{path}-{dtype}").status == "passed", run.explain()  # type: ignore[union-attr]
    for mutant in mutants:
        for cell in training_mutants.cells(mutant):
            assert run.report.cell(cell).status == "failed", f"{cell} passed"  # type: ignore[union-attr]
            failures = [o for o in run.items([cell]) if o.failed]
            assert failures and all(mutant.bug in o.message for o in failures), (
                f"{cell}: the message does not name the bug ({mutant.bug!r}):\n" + "\n".join(o.message[:1500] for o in failures)
            )


def test_every_planted_training_loop_bug_is_run_by_the_suite_test() -> None:
    assert all(any(issubclass(m, base) for base, _, _ in MUTANT_RUNS.values()) for m in training_mutants.MUTANTS)


# JAX's paths.


@pytest.fixture(scope="module")
def jax_adapter() -> Any:
    pytest.importorskip("jax")
    from backprop_conformance.adapters.jax_adapter import JaxAdapter

    return JaxAdapter()


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_jax_accumulates_every_split_in_one_scan_within_the_bound(jax_adapter: Any, dtype: str) -> None:
    base = build(dtype, ((9, 16, 16, 3), 13), 1.0, 1.0, 1.0, "uniform", 11)
    for split in ((13,), (1, 12), (4, 4, 5), (1, 1, 1, 1, 1, 1, 1, 6), (6, 1, 1, 5)):
        problem = base.split(split)
        output = jax_adapter.compute(problem.network, problem.batch, dtype=dtype, path="accumulate")
        k = jax_adapter.caps.partial_sums("accumulate", problem.batch)
        verdict = judge("jax-accumulate", problem, output, jax_adapter.caps.precision(dtype, "accumulate"), partial_sums=k)
        assert verdict.passed, verdict.message()


def test_jax_masks_cover_each_example_once_and_refuse_more_micro_batches_than_the_scan_has() -> None:
    pytest.importorskip("jax")
    from backprop_conformance.adapters import jax_training
    from backprop_conformance.adapters.base import RequestError

    batch = Batch(np.zeros((7, 1)), np.zeros((7, 1)), (2, 1, 4))
    rows = np.asarray(jax_training.masks(batch.pieces, batch.size, "float32", "cpu"))[..., 0]
    assert rows.shape == (jax_training.SCAN_STEPS, 7)
    assert np.array_equal(rows.sum(axis=0), np.ones(7)) and np.array_equal(rows[:3].sum(axis=1), [2, 1, 4]) and not rows[3:].any()
    with pytest.raises(RequestError, match="at most 8 micro-batches, got 9"):
        jax_training.masks(Batch(np.zeros((9, 1)), np.zeros((9, 1)), (1,) * 9).pieces, 9, "float32", "cpu")


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_jax_per_example_gradients_are_each_examples_own(jax_adapter: Any, dtype: str) -> None:
    problem = build(dtype, ((5, 8, 2), 6), 1.0, 1.0, 1.0, "binary", 3)
    output = jax_adapter.compute(problem.network, problem.batch, dtype=dtype, path="per-example")
    assert output.per_example is not None and output.per_example.b[3].shape == (6, 2)
    verdict = judge("jax-per-example", problem, output, jax_adapter.caps.precision(dtype), partial_sums=6)
    assert verdict.passed, verdict.message()


# Rematerialization.


@pytest.mark.parametrize(
    ("backend", "path"),
    [("torch", "checkpoint"), ("torch", "checkpoint-reentrant"), ("jax", "remat"), ("jax", "remat-dots"), ("tensorflow", "recompute")],
)
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_a_recomputed_forward_gives_the_gradients_of_the_stored_one(backend: str, path: str, dtype: str) -> None:
    """Every remat path within the bound; torch's and TensorFlow's also bit for bit what their eager path returns, since
    the recompute calls the very kernels of the forward (XLA may fuse a checkpointed program differently, so JAX's
    is held to the bound only)."""
    pytest.importorskip(backend)
    from backprop_conformance.adapters.registry import resolve

    adapter = resolve(backend).load()
    problem = build(dtype, ((6, 9, 9, 9, 2), 7), 1.0, 1.0, 1.0, "uniform", 4)
    output = adapter.compute(problem.network, problem.batch, dtype=dtype, path=path)
    verdict = judge(f"{backend}-{path}", problem, output, adapter.caps.precision(dtype, path))
    assert verdict.passed, verdict.message()
    if backend == "jax":
        return
    reference = adapter.compute(problem.network, problem.batch, dtype=dtype, path="eager")
    for (kind, l, got), (_, _, want) in zip(output.gradients.items(), reference.gradients.items(), strict=True):
        assert np.array_equal(got, want), f"{backend} {path} ∂C/∂{kind}^{l} differs from eager's"


# Compile variants (each compiles for tens of seconds on its first shape: one small shape, one format).


@pytest.mark.parametrize("path", ["compile-dynamic", "compile-func"])
def test_torch_compile_variants_agree_with_the_reference(torch_adapter: Any, path: str) -> None:
    """``torch.compile(dynamic=True)`` on two batch sizes of one architecture (one symbolic graph serves both), and
    ``torch.compile`` around ``torch.func.grad``: within the bound, z^l and a^l returned."""
    for batch_size in (5, 11):
        problem = build("float32", ((4, 6, 3), batch_size), 1.0, 1.0, 1.0, "uniform", batch_size)
        output = torch_adapter.compute(problem.network, problem.batch, dtype="float32", path=path)
        verdict = judge(f"torch-{path}", problem, output, torch_adapter.caps.precision("float32", path))
        assert verdict.passed, verdict.message()
        assert output.z is not None and output.a is not None and output.delta is None


# Layers as a scan (JAX's ``scan``), and donated buffers (``jit-donate``).


def test_a_scanned_path_draws_equal_hidden_widths_and_maps_the_design_to_them() -> None:
    assert equal_hidden(((3, 5, 7, 2), 4)) == ((3, 5, 5, 2), 4)
    assert equal_hidden(((3, 2), 4)) == ((3, 2, 2), 4)
    assert equal_hidden(((3, 5, 2), 4)) == ((3, 5, 2), 4)
    depths: set[int] = set()

    @given(data=st.data())
    @settings(max_examples=80, deadline=None, database=None)
    def draw(data: st.DataObject) -> None:
        for pooled in (False, True):
            widths = data.draw(problems("float32", DEFAULT_LIMITS, pooled=pooled, scanned=True)).network.widths
            assert len(widths) >= 3 and len(set(widths[1:-1])) == 1, widths
            depths.add(len(widths))

    draw()
    assert max(depths) >= 5  # two or more stacked layers, where a scan step reading the wrong slice shows
    for split in (False, True):
        designed = design("float32", DEFAULT_LIMITS.covering, split=split, scanned=True)
        assert all(len(set(p.network.widths[1:-1])) == 1 for p in designed)
        assert all((p.batch.micro_batches is not None) == split for p in designed)
    assert [p.network.widths for p in design("float32", DEFAULT_LIMITS.covering)] == [w for w, _ in DEFAULT_LIMITS.covering]


def test_the_paths_declared_to_scan_their_layers_are_validated() -> None:
    base = Capabilities(name="x", framework="X", version="1", dtypes=("float32",), paths=("eager", "scan"), default_paths=("eager",))
    assert dataclasses.replace(base, layer_scan_paths=("scan",)).layer_scan_paths == ("scan",)
    with pytest.raises(CapabilitiesError, match="layer_scan_paths names 'jit', not among its paths"):
        dataclasses.replace(base, layer_scan_paths=("jit",))


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16", "mixed-bfloat16"])
def test_jax_scans_the_hidden_layers_within_the_bound(jax_adapter: Any, dtype: str) -> None:
    """Every depth: no hidden layer (L = 2), one (L = 3, an empty scan), and scans of one and of four stacked layers."""
    for widths in ((5, 3), (5, 7, 3), (5, 7, 7, 3), (5, 7, 7, 7, 7, 7, 3)):
        problem = build(dtype, (widths, 6), 1.0, 1.0, 1.0, "uniform", len(widths))
        output = jax_adapter.compute(problem.network, problem.batch, dtype=dtype, path="scan")
        verdict = judge("jax-scan", problem, output, jax_adapter.caps.precision(dtype, "scan"))
        assert verdict.passed, verdict.message()
        assert output.z is not None and sorted(output.z) == list(problem.network.layers)


def test_jax_scan_refuses_unequal_hidden_widths_by_name(jax_adapter: Any) -> None:
    from backprop_conformance.adapters.base import RequestError

    problem = build("float32", ((3, 5, 6, 2), 4), 1.0, 1.0, 1.0, "uniform", 1)
    with pytest.raises(RequestError, match=r"every hidden layer of one width .*got widths \(3, 5, 6, 2\)"):
        jax_adapter.compute(problem.network, problem.batch, dtype="float32", path="scan")


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_jax_donated_buffers_give_the_gradients_of_jit_and_are_donated(jax_adapter: Any, dtype: str) -> None:
    """``jit-donate`` returns bit for bit what ``jit`` returns (the same program, its parameter buffers donated), and the
    compiled program does alias the parameters to its outputs: the donation is real."""
    from backprop_conformance.adapters import jax_training
    from backprop_conformance.adapters.jax_model import parameters, precision_scope, put

    problem = build(dtype, ((6, 9, 9, 2), 7), 1.0, 1.0, 1.0, "uniform", 5)
    donated = jax_adapter.compute(problem.network, problem.batch, dtype=dtype, path="jit-donate")
    plain = jax_adapter.compute(problem.network, problem.batch, dtype=dtype, path="jit")
    for (kind, l, got), (_, _, want) in zip(donated.gradients.items(), plain.gradients.items(), strict=True):
        assert np.array_equal(got, want), f"jit-donate ∂C/∂{kind}^{l} differs from jit's"
    with precision_scope(dtype):
        x, y = put(problem.batch.x, dtype, "cpu"), put(problem.batch.y, dtype, "cpu")
        compiled = jax_training._donated(None).lower(parameters(problem.network, dtype, "cpu"), x, y).compile()
    assert "input_output_alias" in compiled.as_text()


def test_a_layer_computed_with_another_layers_parameters_is_named() -> None:
    from backprop_conformance.adapters.base import AdapterOutput
    from backprop_conformance.conformance.layer_reuse import diagnose as reuse
    from backprop_conformance.reference.vectorized import activation, weighted_input

    problem = build("float64", ((3, 4, 4, 4, 4, 2), 5), 1.0, 1.0, 1.0, "uniform", 6)
    network, trace = problem.network, problem.trace
    tol = problem.tolerance(training_mutants.JaxScanFirstLayer().caps.precision("float64"))
    right = AdapterOutput(trace.gradients, trace.cost, a=dict(trace.a), z=dict(trace.z))
    assert reuse(problem, right, tol) == ""
    a, z = {1: trace.a[1]}, {}
    for l in network.layers:
        m = 3 if l in (4, 5) else l  # layers 4 and 5 run layer 3's parameters
        z[l] = weighted_input(network.w[m], a[l - 1], network.b[m])
        a[l], _ = activation(z[l])
    wrong = AdapterOutput(trace.gradients, trace.cost, a=a, z=z)
    assert "z^4, z^5 computed with layer 3's parameters (w^3, b^3)" in reuse(problem, wrong, tol)
    assert reuse(problem, AdapterOutput(trace.gradients, trace.cost), tol) == ""  # no intermediates: nothing to name
    z_off = dict(z)
    z_off[4] = z[4] + 1.0  # a z^4 that is no layer's: the first divergence unexplained, nothing named
    assert reuse(problem, AdapterOutput(trace.gradients, trace.cost, a=a, z=z_off), tol) == ""
