"""Data-parallel paths: torch's ``ddp`` and JAX's ``sharded``, their bound, their diagnosis, and their processes.

The planted bugs of :mod:`ddp_mutants` run through the real suite and must each fail with the diagnosis that names
them; the correct paths must pass on batches that do not divide (B = 1 on 2 ranks, B odd) and on 3 ranks, where
the mean is not exact; and the rank processes must never outlive a run, a failure or a Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ddp_mutants
import numpy as np
import pytest
from conftest import DEFAULT_SIGINT, suite
from networks import Architecture

from backprop_conformance.adapters.base import AdapterError, Capabilities, CapabilitiesError
from backprop_conformance.adapters.ranks import shards
from backprop_conformance.conformance.data_parallel import diagnose, rank_gradients
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.conformance.verdict import judge
from backprop_conformance.reference.dtypes import round_to
from backprop_conformance.reference.error_bound import (
    EVALUATION_MARGIN,
    FLOAT64,
    Precision,
    cross_rank_reduction_bound,
    error_bounds,
    tolerance,
)
from backprop_conformance.reference.model import Gradients

ROOT = Path(__file__).resolve().parents[1]


def _problem(batch_size: int, dtype: str = "float32", seed: int = 0, widths: tuple[int, ...] = (3, 5, 4, 2)) -> Problem:
    """A fixed network of :mod:`networks` (three layers of unequal widths by default), B examples, rounded to ``dtype``."""
    return Architecture("data-parallel", widths, batch_size).problem(dtype, seed)


# The split and the bound.


@pytest.mark.parametrize(("batch_size", "ranks"), [(1, 2), (2, 2), (3, 2), (5, 4), (7, 3), (0, 3), (9, 1)])
def test_shards_partition_the_batch_in_order(batch_size: int, ranks: int) -> None:
    pieces = shards(batch_size, ranks)
    assert len(pieces) == ranks
    assert [i for piece in pieces for i in range(batch_size)[piece]] == list(range(batch_size)), "contiguous, in order, each once"
    size = -(-batch_size // ranks)
    assert all(piece.stop - piece.start <= size for piece in pieces), "no slice above ⌈B/R⌉ (what JAX's padding gives)"


def test_one_rank_charges_nothing_and_more_ranks_only_add() -> None:
    problem = _problem(5)
    single = error_bounds(problem.network, problem.batch, problem.trace, Precision.of("float32"))
    for ranks in (2, 3, 8):
        several = error_bounds(problem.network, problem.batch, problem.trace, Precision.of("float32", ranks=ranks))
        for l in problem.network.layers:
            assert np.all(several.gradients.w[l] > single.gradients.w[l]) and np.all(several.gradients.b[l] > single.gradients.b[l])
            assert np.array_equal(several.delta[l], single.delta[l]), "only the sums over the batch are combined across ranks"
        assert several.cost > single.cost
    assert cross_rank_reduction_bound(np.ones(3), np.ones(3), Precision.of("float32")).tolist() == [0.0, 0.0, 0.0]


def test_the_cross_rank_term_is_gamma_r_minus_1_at_storage_plus_the_mean_when_r_is_not_a_power_of_2() -> None:
    u = Precision.of("bfloat16", "float32").u
    assert u == 2.0**-8, "charged at storage, not at the float32 accumulation: DDP reduces bfloat16 buckets in bfloat16"
    for ranks, rho in ((2, 0.0), (4, 0.0), (3, 2 * u)):
        precision = Precision.of("bfloat16", "float32", ranks=ranks)
        gamma = (ranks - 1) * u / (1 - (ranks - 1) * u)
        got = cross_rank_reduction_bound(np.array([2.0]), np.array([0.5]), precision)
        assert got[0] == pytest.approx((gamma + rho) * 2.5 + ranks * precision.eta, rel=1e-12 + EVALUATION_MARGIN)


def test_any_order_of_combining_the_partial_sums_stays_within_the_bound() -> None:
    """Summation trees over R float32 partial sums: left to right in rank order, reversed and in a random order, and pairwise."""
    rng = np.random.default_rng(7)
    for ranks in (2, 3, 5, 8):
        precision = Precision.of("float32", ranks=ranks)
        partials = (rng.normal(size=(ranks, 200)) * 10.0 ** rng.integers(-3, 3, size=(ranks, 1))).astype(np.float32)
        exact = partials.astype(np.float64).sum(axis=0)
        allowed = cross_rank_reduction_bound(np.abs(partials.astype(np.float64)).sum(axis=0), 0.0, precision)
        for order in (range(ranks), reversed(range(ranks)), rng.permutation(ranks)):
            total = np.zeros(200, dtype=np.float32)
            for r in order:
                total = total + partials[r]
            assert np.all(np.abs(total - exact) <= allowed)
        pairwise = list(partials)
        while len(pairwise) > 1:
            pairwise = [pairwise[i] + pairwise[i + 1] if i + 1 < len(pairwise) else pairwise[i] for i in range(0, len(pairwise), 2)]
        assert np.all(np.abs(pairwise[0] - exact) <= allowed)


# What the capabilities may declare.


def _caps(**changes: object) -> Capabilities:
    base = {"name": "x", "framework": "X", "version": "1", "dtypes": ("float32",), "paths": ("one", "ddp"), "default_paths": ("one",)}
    return Capabilities(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ranks", "words"),
    [
        ({"nope": 2}, "ranks names path 'nope'"),
        ({"ddp": 0}, "give a whole number from 1"),
        ({"ddp": True}, "give a whole number from 1"),
        ({"ddp": "2"}, "give a whole number from 1"),
        ({"ddp": 10**6}, "give a whole number from 1"),
        ((("ddp", 2),), "ranks must be a mapping"),
    ],
)
def test_declared_ranks_are_validated(ranks: object, words: str) -> None:
    with pytest.raises(CapabilitiesError, match=words):
        _caps(ranks=ranks)


def test_the_precision_of_a_data_parallel_path_carries_its_ranks() -> None:
    caps = _caps(ranks={"ddp": 4})
    assert caps.precision("float32", "ddp").ranks == 4
    assert caps.precision("float32", "one").ranks == 1
    assert caps.precision("float32").ranks == 1


@pytest.mark.parametrize(
    ("variable", "module"), [("BACKPROP_CONFORMANCE_DDP_RANKS", "torch_ddp"), ("BACKPROP_CONFORMANCE_SHARDED_DEVICES", "jax_sharded")]
)
@pytest.mark.parametrize("value", ["0", "two", "-1", "65", "2.5"])
def test_a_bad_rank_count_is_an_adapter_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, module: str, value: str
) -> None:
    import importlib

    counter = importlib.import_module(f"backprop_conformance.adapters.{module}")
    monkeypatch.setenv(variable, value)
    with pytest.raises(AdapterError, match=variable):
        counter.world_size() if module == "torch_ddp" else counter.device_count()


# The diagnosis, on gradients built to carry each signature.


def _judge(problem: Problem, got: Gradients, ranks: int = 2) -> str:
    precision = Precision.of(problem.dtype, ranks=ranks)
    tol = tolerance(problem.network, problem.batch, problem.trace, precision)
    return diagnose(problem, got, tol.gradients, precision, problem.dtype)


def _scaled(*terms: tuple[float, Gradients]) -> Gradients:
    layers = terms[0][1].w.keys()
    return Gradients({l: sum(c * g.w[l] for c, g in terms) for l in layers}, {l: sum(c * g.b[l] for c, g in terms) for l in layers})


@pytest.mark.parametrize("ranks", [2, 3])
def test_each_signature_is_named(ranks: int) -> None:
    problem = _problem(7)
    G = problem.trace.gradients
    parts = rank_gradients(problem, ranks)
    assert "the mean over the" in _judge(problem, _scaled((1 / ranks, G)), ranks)
    assert "rank 0's own gradient times" in _judge(problem, _scaled((float(ranks), parts[0])), ranks)
    last = ranks - 1
    assert f"rank {last}'s share" in _judge(problem, _scaled((1.0, G), (-1.0, parts[last])), ranks)
    assert f"rank {last}'s share" in _judge(problem, _scaled((1.0, G), (1.0, parts[last])), ranks)
    assert "counted twice" in _judge(problem, _scaled((1.0, G), (1.0, parts[last])), ranks)
    unknown = _scaled((1.1, G))
    assert _judge(problem, unknown, ranks).startswith("no known data-parallel signature")


def test_a_float16_reduction_of_float32_gradients_is_named() -> None:
    problem = _problem(8, "float32")
    parts = rank_gradients(problem, 2)

    def in_float16(values: list[np.ndarray]) -> np.ndarray:
        total = round_to("float16", values[0])
        for value in values[1:]:
            total = round_to("float16", total.astype(np.float64) + round_to("float16", value))
        return total.astype(np.float64)

    got = Gradients(
        {l: in_float16([p.w[l] for p in parts]) for l in problem.network.layers},
        {l: in_float16([p.b[l] for p in parts]) for l in problem.network.layers},
    )
    verdict_words = _judge(problem, got)
    assert "the cross-rank reduction was done in float16" in verdict_words, verdict_words


def test_single_process_verdicts_have_no_diagnosis_and_a_correct_gradient_needs_none() -> None:
    problem = _problem(4)
    assert diagnose(problem, problem.trace.gradients, problem.trace.gradients, FLOAT64, "float64") == ""


# The real paths.

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def torch_adapter() -> Iterator[Any]:
    from backprop_conformance.adapters.torch_adapter import TorchAdapter

    adapter = TorchAdapter()
    yield adapter
    adapter.finish()


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7])
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_ddp_is_right_on_batches_that_do_not_divide(torch_adapter: Any, batch_size: int, dtype: str) -> None:
    """B = 1 leaves rank 1 an empty slice: it still joins every all-reduce, with zero gradients, and the verdict holds."""
    problem = _problem(batch_size, dtype, seed=batch_size)
    output = torch_adapter.compute(problem.network, problem.batch, dtype=dtype, path="ddp")
    verdict = judge("torch-ddp", problem, output, torch_adapter.caps.precision(dtype, "ddp"))
    assert verdict.passed, verdict.message()
    assert output.delta is not None and output.delta[2].shape == (batch_size, 5), "each rank's δ, gathered in batch order"


def test_ddp_rank_failure_kills_every_rank_and_the_next_call_starts_afresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from backprop_conformance.adapters import torch_ddp
    from backprop_conformance.adapters.torch_adapter import TorchAdapter

    class Failing(TorchAdapter):
        ddp_comm_hook = "worker_targets:failing_ddp_hook"

    flag = tmp_path / "fail"
    monkeypatch.setenv("DDP_HOOK_FAILS", str(flag))
    adapter = Failing()
    problem = _problem(4)
    adapter.compute(problem.network, problem.batch, dtype="float32", path="ddp")  # the group is up and joined
    group = torch_ddp.group(2, Failing.ddp_comm_hook, "cpu")
    first = [w.pid for w in group.workers]
    flag.touch()
    with pytest.raises(RuntimeError, match="planted hook failure"):
        adapter.compute(problem.network, problem.batch, dtype="float32", path="ddp")
    assert _gone([pid for pid in first if pid is not None]), "a failed rank leaves no rank waiting in a collective"
    flag.unlink()
    output = adapter.compute(problem.network, problem.batch, dtype="float32", path="ddp")
    assert judge("torch-ddp", problem, output, adapter.caps.precision("float32", "ddp")).passed
    assert all(w.pid not in first for w in group.workers), "the next call ran on a fresh group"
    adapter.finish()
    assert not any(w.alive for w in group.workers), "finish() closes the ranks"


CHILD = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from backprop_conformance.adapters import torch_ddp
    from backprop_conformance.adapters.torch_adapter import TorchAdapter
    from backprop_conformance.reference.model import Batch, Network
    adapter = TorchAdapter()
    network = Network.from_lists([np.ones((2, 3)) / 4], [np.zeros(2)])
    adapter.compute(network, Batch(np.ones((2, 3)) / 2, np.zeros((2, 2))), dtype="float32", path="ddp")
    group = torch_ddp.group(2, None, "cpu")
    print(" ".join(str(w.pid) for w in group.workers), flush=True)
    if sys.argv[1] == "hang":
        time.sleep(600)
    """
)


def _gone(pids: list[int], seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                with open(f"/proc/{pid}/stat") as stat:  # a zombie (reaped later by init) is gone for our purpose
                    if stat.read().split(")")[-1].split()[0] != "Z":
                        alive.append(pid)
            except (ProcessLookupError, FileNotFoundError):
                pass
        if not alive:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("how", ["exit", "sigint", "sigkill"])
def test_no_rank_outlives_its_parent(how: str) -> None:
    """A normal exit, Ctrl-C and SIGKILL of the process that ran the ddp path all leave no rank process behind."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), *sys.path])}
    command = [sys.executable, "-c", DEFAULT_SIGINT, "-c", CHILD, "exit" if how == "exit" else "hang"]  # Ctrl-C reaches it
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    line = child.stdout.readline()
    pids = [int(p) for p in line.split()]
    assert len(pids) == 2, line
    if how == "sigint":
        child.send_signal(signal.SIGINT)
    elif how == "sigkill":
        child.kill()
    child.wait(timeout=60)
    assert _gone(pids), f"rank processes {pids} outlived their parent ({how})"


def test_the_suite_names_each_planted_ddp_bug(tmp_path: Path) -> None:
    """The real suite, on the ddp path: the correct torch passes, each planted bug fails, and its message says which."""
    args = [
        "--conformance-backend",
        "torch",
        "--conformance-path",
        "ddp",
        "--conformance-dtype",
        "float64",
        "--conformance-dtype",
        "float32",
    ]
    for mutant in ddp_mutants.MUTANTS:
        args += ["--conformance-backend", f"{ddp_mutants.MODULE}:{mutant.__name__}"]
    run = suite(tmp_path, *args, "--conformance-max-examples", "25")
    assert run.returncode == 1, run.explain()
    assert run.report is not None, run.explain()
    for dtype in ("float64", "float32"):
        assert run.report.cell(f"torch-ddp-{dtype}").status == "passed", run.explain()  # type: ignore[union-attr]
        for mutant in ddp_mutants.MUTANTS:
            cell = f"{mutant.name}-ddp-{dtype}"
            assert run.report.cell(cell).status == "failed", f"{cell} passed"  # type: ignore[union-attr]
            failures = [o for o in run.items([cell]) if o.test.startswith("test_gradients[") and o.failed]
            assert failures and all(
                f"data-parallel: consistent with {mutant.bug}" in o.message or mutant.bug in o.message for o in failures
            ), f"{cell}: the message does not name the bug ({mutant.bug!r}):\n" + "\n".join(o.message[:1500] for o in failures)


# JAX.


def test_sharded_jax_really_shards_and_inserts_an_all_reduce() -> None:
    pytest.importorskip("jax")
    from backprop_conformance.adapters import jax_sharded

    described = jax_sharded.shared_worker(2).call("collectives", (3, 5, 2), 3, "float32")
    assert described["devices"] == 2
    assert described["collectives"]["all-reduce"] >= 1, described


@pytest.mark.parametrize("batch_size", [1, 3, 4])
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_sharded_jax_is_right_on_batches_that_do_not_divide(batch_size: int, dtype: str) -> None:
    """JAX cannot shard 3 examples over 2 devices; the path pads with masked zero rows, which change no gradient."""
    pytest.importorskip("jax")
    from backprop_conformance.adapters.jax_adapter import JaxAdapter

    adapter = JaxAdapter()
    problem = _problem(batch_size, dtype, seed=10 + batch_size)
    output = adapter.compute(problem.network, problem.batch, dtype=dtype, path="sharded")
    verdict = judge("jax-sharded", problem, output, adapter.caps.precision(dtype, "sharded"))
    assert verdict.passed, verdict.message()
    assert output.a is not None and output.a[4].shape == (batch_size, 2), "padding rows are dropped from what is returned"


def test_the_user_process_keeps_one_jax_device() -> None:
    """The sharded path's N devices live in its worker; this process's JAX is not reconfigured."""
    pytest.importorskip("jax")
    import jax

    from backprop_conformance.adapters.jax_adapter import JaxAdapter

    problem = _problem(2)
    JaxAdapter().compute(problem.network, problem.batch, dtype="float32", path="sharded")
    assert len(jax.devices("cpu")) == 1
    assert "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", "")


def test_three_ranks_and_three_devices(tmp_path: Path) -> None:
    """R = 3: the mean is not exact (ρ = 2u), slices are uneven; a short suite run on both paths passes."""
    env = {"BACKPROP_CONFORMANCE_DDP_RANKS": "3", "BACKPROP_CONFORMANCE_SHARDED_DEVICES": "3"}
    args = ["--conformance-backend", "torch", "--conformance-backend", "jax", "--conformance-path", "ddp", "--conformance-path", "sharded"]
    run = suite(tmp_path, *args, "--conformance-max-examples", "15", "--conformance-dtype", "float32", **env)
    assert run.returncode == 0, run.explain()
    assert run.report is not None
    assert {cell.id for cell in run.report.cells} >= {"torch-ddp-float32", "jax-sharded-float32"}
    assert "ddp 3 ranks" in run.output and "sharded 3 ranks" in run.output, "the header states the ranks"


def test_mutant_capabilities_replace_keeps_the_ranks() -> None:
    caps = ddp_mutants.MeanAsSum().caps
    assert caps.paths == ("ddp",) and caps.ranks_of("ddp") == 2
    assert dataclasses.replace(caps, name="y").ranks == caps.ranks


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BACKPROP_CONFORMANCE_DDP_RANKS", "two"),
        ("BACKPROP_CONFORMANCE_DDP_COMM_HOOK", "no_colon_here"),
        ("BACKPROP_CONFORMANCE_SHARDED_DEVICES", "0"),
    ],
)
def test_a_malformed_data_parallel_variable_stops_the_run_at_start_up(tmp_path: Path, variable: str, value: str) -> None:
    """A usage error (exit 4) naming the variable, before any test: never a run that tests another configuration, or fails every example."""
    backends = ("--conformance-backend", "torch", "--conformance-backend", "jax")
    run = suite(tmp_path, *backends, "--conformance-max-examples", "2", marks=None, **{variable: value})
    assert run.returncode == 4, run.explain()
    assert variable in run.output, run.output[-2000:]
