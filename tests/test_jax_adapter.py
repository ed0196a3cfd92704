"""The built-in JAX adapter (adapters/jax_adapter.py) against the float64 reference and the adapter contract.

Every path × dtype cell must agree with :func:`backprop_conformance.reference.vectorized.backprop`, evaluated at exactly the point
JAX sees (parameters and data rounded to the format, then widened back to float64), within the design note's
error bound K·(E(JAX's precision) + E(float64)). The bound is per element, so these checks fail on a transposed
w^l_jk, a lost σ′, float32 arithmetic hidden in a float64 run, or a gradient accumulated across calls, while a
correct float16 run passes. The architectures cover the page's corner cases: L = 2 (no hidden layer, so the
recursion over l never runs), width-1 layers, square layers (where a transposed w^l has a valid shape), depth 7,
batch sizes 1 and 7, and saturated units (|z^l_j| > 40: for z > 40, σ(z) rounds to 1 in float32 and in float64,
and σ′ computed as a(1 − a) is 0 while the true σ′ is about e^−40).

Beside the numbers: importing the adapter must not import JAX; a float64 call must not leave 64-bit mode on in
the caller's process; a repeated architecture must not recompile; bad requests get errors that list what is
allowed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from networks import Architecture, rounded
from strategies import cases

from backprop_conformance.adapters.base import AdapterOutput, RequestError
from backprop_conformance.adapters.registry import resolve
from backprop_conformance.adapters.selfcheck import check_contract
from backprop_conformance.conformance.verdict import worst_ratio
from backprop_conformance.reference.dtypes import float_format, is_representable
from backprop_conformance.reference.error_bound import tolerance
from backprop_conformance.reference.model import Batch, ModelError, Network
from backprop_conformance.reference.vectorized import backprop

jax = pytest.importorskip("jax", reason="the JAX adapter needs jax (pip install backprop-conformance[jax])")

from backprop_conformance.adapters.jax_adapter import DEFAULT_PATHS, DTYPES, PATHS, JaxAdapter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
"""The monitoring event JAX records once per XLA compilation (eager primitives and jitted programs alike)."""


CASES = (
    Architecture("L=2", (3, 2), 1),
    Architecture("width-1", (1, 1, 1, 1), 1),
    Architecture("deep L=7", (3, 4, 4, 4, 4, 4, 2), 7),
    Architecture("saturated", (4, 4, 4), 7, saturate_layer_2=True),
)
"""Batch sizes 1 and 7; square layers (where a transposed w^l still has a valid shape) in "deep L=7" and
"saturated". Few distinct shapes on purpose: JAX compiles each jitted program, and eagerly each primitive, once
per shape, and compilation is most of this module's run time."""
CASE = {case.name: case for case in CASES}
SEED = 20181109
"""The seed of this module's fixed networks (:mod:`networks`)."""


@pytest.fixture(scope="module")
def adapter() -> JaxAdapter:
    return JaxAdapter()


def _ratio(got: np.ndarray, expected: np.ndarray, tol: np.ndarray) -> float:
    """max |got − expected| / tol, by the suite's own rule (inf for a non-finite value; 0 where exact)."""
    return worst_ratio({0: np.atleast_1d(got)}, {0: np.atleast_1d(expected)}, {0: np.atleast_1d(tol)})


def worst_ratios(adapter: JaxAdapter, case: Architecture, dtype: str, path: str) -> dict[str, float]:
    """Worst error/bound ratio of each returned quantity for one case, after checking shapes and carrier dtypes.

    Keys: "gradients" (every ∂C/∂w^l_jk and ∂C/∂b^l_j), "cost", "a", "z", and "delta" where the path returns δ^l.
    A ratio above 1 is a failed verdict.
    """
    network, batch = rounded(dtype, *case.draw(SEED))
    trace = backprop(network, batch)
    precision = adapter.caps.precision(dtype)
    tol = tolerance(network, batch, trace, precision)
    out = adapter.run(network, batch, dtype=dtype, path=path)
    _check_layout(out, network, batch, dtype)
    ratios = {
        "gradients": max(
            max(_ratio(out.gradients.w[l], trace.gradients.w[l], tol.gradients.w[l]) for l in network.layers),
            max(_ratio(out.gradients.b[l], trace.gradients.b[l], tol.gradients.b[l]) for l in network.layers),
        ),
        "cost": _ratio(np.array(out.cost), np.array(trace.cost), np.array(tol.cost)),
        "a": max(_ratio(out.a[l], trace.a[l], tol.a[l]) for l in range(1, network.depth + 1)),
        "z": max(_ratio(out.z[l], trace.z[l], tol.z[l]) for l in network.layers),
    }
    if out.delta is not None:
        ratios["delta"] = max(_ratio(out.delta[l], trace.delta[l], tol.delta[l]) for l in network.layers)
    return ratios


def _check_layout(out: AdapterOutput, network: Network, batch: Batch, dtype: str) -> None:
    """Page layout, the format's carrier dtype and values of the format, for every returned array."""
    carrier = float_format(dtype).carrier
    assert isinstance(out.cost, float)
    for kind, l, g in out.gradients.items():
        want = (network.w if kind == "w" else network.b)[l].shape
        assert g.shape == want, f"∂C/∂{kind}^{l} has shape {g.shape}, expected {want}"
        assert g.dtype == carrier, f"∂C/∂{kind}^{l} has dtype {g.dtype}, expected {carrier} for {dtype}"
        assert is_representable(dtype, g), f"∂C/∂{kind}^{l} holds values that are not {dtype} values"
    per_example: list[tuple[str, Mapping[int, np.ndarray] | None, range]] = [
        ("a", out.a, range(1, network.depth + 1)),
        ("z", out.z, network.layers),
        ("δ", out.delta, network.layers),
    ]
    for symbol, values, layers in per_example:
        if values is None:
            continue
        assert sorted(values) == list(layers), f"{symbol}^l keyed by {sorted(values)}, expected {list(layers)}"
        for l in layers:
            assert values[l].shape == (batch.size, network.widths[l - 1]), f"{symbol}^{l} has shape {values[l].shape}"
            assert values[l].dtype == carrier, f"{symbol}^{l} has dtype {values[l].dtype}, expected {carrier}"


# --- agreement with the reference ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", [p for p in PATHS if p != "scan"])  # scan takes equal hidden widths only (test_training_paths.py)
def test_every_path_and_dtype_agrees_with_reference(adapter: JaxAdapter, path: str, dtype: str) -> None:
    failures = []
    for case in CASES:
        ratios = worst_ratios(adapter, case, dtype, path)
        failures += [f"{case.name}: worst |jax − reference|/bound of {what} = {r:.3g}" for what, r in ratios.items() if not r <= 1.0]
    assert not failures, "\n".join(failures)


def test_vjp_path_returns_delta_and_the_others_do_not(adapter: JaxAdapter) -> None:
    """δ^l comes from the vjp path's zero perturbations of z^l; grad, jit and jacfwd differentiate only the parameters."""
    network, batch = rounded("float32", *CASE["deep L=7"].draw(SEED))
    for path in PATHS:
        has_delta = adapter.run(network, batch, dtype="float32", path=path).delta is not None
        assert has_delta == (path == "vjp"), path


def test_saturated_case_saturates() -> None:
    """The saturated fixture must really reach |z| > 40 in float32 and float64, or it tests nothing."""
    case = next(c for c in CASES if c.saturate_layer_2)
    for dtype in ("float32", "float64"):
        trace = backprop(*rounded(dtype, *case.draw(SEED)))
        z2 = np.abs(trace.z[2])
        assert np.mean(z2 > 40) >= 0.5, f"{dtype}: only {np.mean(z2 > 40):.0%} of z^2 exceed 40"
        assert np.all(np.abs(trace.z[3]) < 5), "the output layer must stay unsaturated so its gradients are informative"


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(depths=(3, 3), widths=(4, 4), batch_sizes=(7, 7)))
def test_reverse_mode_paths_agree_on_drawn_values(adapter: JaxAdapter, case: tuple[Network, Batch]) -> None:
    """Hypothesis' awkward values (zeros, ±bounds, subnormals, repeats) on every reverse-mode path and dtype.

    The architecture is the saturated case's, so that no draw compiles anything new: the values vary, not the shapes.
    """
    for dtype in DTYPES:
        network, batch = rounded(dtype, *case)
        trace = backprop(network, batch)
        tol = tolerance(network, batch, trace, adapter.caps.precision(dtype))
        for path in ("grad", "jit", "vjp"):
            out = adapter.run(network, batch, dtype=dtype, path=path)
            for kind, l, g in out.gradients.items():
                expected = (trace.gradients.w if kind == "w" else trace.gradients.b)[l]
                bound = (tol.gradients.w if kind == "w" else tol.gradients.b)[l]
                assert _ratio(g, expected, bound) <= 1.0, f"{path} {dtype} ∂C/∂{kind}^{l}: got {g}, expected {expected}, bound {bound}"


# --- the adapter contract --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", PATHS)
def test_contract_checks_pass(adapter: JaxAdapter, path: str, dtype: str) -> None:
    """The suite's own contract checks: layout round trip (square layers), output shapes and dtypes, repeatability."""
    network, batch = rounded(dtype, *CASE["deep L=7"].draw(SEED))
    check_contract(adapter, path, dtype, "cpu", network, batch)


@pytest.mark.parametrize("path", PATHS)
def test_two_calls_give_identical_results(adapter: JaxAdapter, path: str) -> None:
    """No state between calls: bit-identical gradients, cost and intermediates, with another input in between."""
    network, batch = rounded("float32", *CASE["deep L=7"].draw(SEED))
    other_network, other_batch = rounded("float32", *Architecture("other", CASE["deep L=7"].widths, 7).draw(seed=99))
    first = adapter.run(network, batch, dtype="float32", path=path)
    adapter.run(other_network, other_batch, dtype="float32", path=path)
    second = adapter.run(network, batch, dtype="float32", path=path)
    assert first.cost == second.cost
    for (kind, l, g1), (_, _, g2) in zip(first.gradients.items(), second.gradients.items(), strict=True):
        np.testing.assert_array_equal(g1, g2, err_msg=f"∂C/∂{kind}^{l}")
    for l in network.layers:
        np.testing.assert_array_equal(first.z[l], second.z[l])


def test_load_parameters_round_trip_keeps_page_layout(adapter: JaxAdapter) -> None:
    """w^l read back from JAX's (W, b) list is w^l itself: W[j-1, k-1] = w^l_jk, shape (n(l), n(l−1)), not transposed."""
    network, _ = rounded("bfloat16", *CASE["deep L=7"].draw(SEED))
    back = adapter.load_parameters(network, dtype="bfloat16")
    for l in network.layers:
        assert back.w[l].dtype == np.float32
        np.testing.assert_array_equal(back.w[l], network.w[l])
        np.testing.assert_array_equal(back.b[l], network.b[l])


def test_capabilities(adapter: JaxAdapter) -> None:
    caps = adapter.capabilities()
    assert (caps.name, caps.framework, caps.version) == ("jax", "JAX", jax.__version__)
    assert caps.dtypes == ("float64", "float32", "float16", "bfloat16", "mixed-bfloat16", "mixed-float16")
    assert caps.default_dtypes == ("float64", "float32", "float16", "bfloat16"), "mixed-precision cells are opt-in"
    assert caps.paths == (
        *("grad", "jit", "jacfwd", "vjp", "sharded", "accumulate", "per-example", "remat", "remat-dots", "scan", "jit-donate"),
    )
    assert caps.layer_scan_paths == ("scan",)
    assert caps.micro_batch_paths == ("accumulate",) and caps.per_example_paths == ("per-example",)
    assert caps.ranks == {"sharded": 2}, "the data-parallel path declares its devices, so that the bound charges the all-reduce"
    assert caps.default_paths == DEFAULT_PATHS == ("jit",), "eager paths compile per primitive and shape; jacfwd grows with (parameters)²"
    assert "cpu" in caps.devices
    assert caps.accumulation_of("float16") == caps.accumulation_of("bfloat16") == "float32"
    assert caps.accumulation_of("float32") == "float32"


def test_registry_finds_the_adapter() -> None:
    assert isinstance(resolve("jax").load(), JaxAdapter)


# --- x64 scoping and compilation caching -----------------------------------------------------------------


def test_float64_call_leaves_x64_as_it_was(adapter: JaxAdapter) -> None:
    """The suite runs in the user's process: 64-bit mode (off by default) must be as it was after a float64 call."""
    network, batch = rounded("float64", *CASE["deep L=7"].draw(SEED))
    before = bool(jax.config.jax_enable_x64)
    out = adapter.run(network, batch, dtype="float64", path="jit")
    assert out.gradients.w[2].dtype == np.float64
    assert bool(jax.config.jax_enable_x64) == before
    assert jax.numpy.zeros(1).dtype == (np.float64 if before else np.float32)


_X64_SCRIPT = """
import jax, numpy as np
from backprop_conformance.adapters.jax_adapter import JaxAdapter
from backprop_conformance.reference.model import Network, Batch
net = Network.from_lists([np.array([[0.5, -1.0], [2.0, 0.25]])], [np.array([0.125, -0.5])])
batch = Batch(np.array([[1.0, -2.0]]), np.array([[0.25, 0.75]]))
before = bool(jax.config.jax_enable_x64)
g64 = JaxAdapter().run(net, batch, dtype="float64", path="jit").gradients.w[2]
g32 = JaxAdapter().run(net, batch, dtype="float32", path="grad").gradients.w[2]
print(before, bool(jax.config.jax_enable_x64), g64.dtype, g32.dtype, jax.numpy.ones(1).dtype)
"""


def test_x64_stays_on_in_a_process_that_switched_it_on() -> None:
    """The converse of the test above: a user who runs with 64-bit mode on keeps it on, and float32 stays float32."""
    env = {**os.environ, "JAX_ENABLE_X64": "1"}
    result = subprocess.run([sys.executable, "-c", _X64_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "float64", "float32", "float64"]


@pytest.fixture
def compilations() -> Iterator[list[str]]:
    """The XLA compilations JAX performs while the test runs, one entry per compilation."""
    events: list[str] = []

    def listener(event: str, duration: float, **kwargs: object) -> None:
        if event == COMPILE_EVENT:
            events.append(event)

    # The public unregister function is recent; jax 0.4.x has only the private one.
    unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
    if unregister is None:
        from jax._src import monitoring

        unregister = monitoring._unregister_event_duration_listener_by_callback
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        unregister(listener)


@pytest.mark.parametrize("path", [p for p in PATHS if p != "sharded"])  # sharded compiles in its worker (tests/test_data_parallel.py)
def test_a_repeated_architecture_does_not_recompile(adapter: JaxAdapter, path: str, compilations: list[str]) -> None:
    """A first call of a new shape compiles (so the counter works); a second one, with other values, compiles nothing."""
    index = PATHS.index(path)
    widths = (2, 3 + index, 3 + index, 2)  # shapes no other test uses, and distinct per path (eager paths share primitives)
    network, batch = rounded("float32", *Architecture("fresh", widths, 6).draw(seed=index))
    adapter.run(network, batch, dtype="float32", path=path)
    assert compilations, "the first call of a new shape should compile something; is the compile event still recorded?"
    compilations.clear()
    network, batch = rounded("float32", *Architecture("fresh", widths, 6).draw(seed=index + 10))
    adapter.run(network, batch, dtype="float32", path=path)
    assert compilations == [], f"path {path!r} recompiled a repeated architecture {len(compilations)} time(s)"


def test_jit_cache_keeps_float32_and_x64_traces_apart(adapter: JaxAdapter, compilations: list[str]) -> None:
    """The float64 program is traced inside the x64 context and the float32 one outside it; both stay cached and
    neither is used for the other: alternating dtypes compiles nothing and returns the same bits each time."""
    network64, batch64 = rounded("float64", *CASE["deep L=7"].draw(SEED))
    network32, batch32 = rounded("float32", *CASE["deep L=7"].draw(SEED))
    first64 = adapter.run(network64, batch64, dtype="float64", path="jit")
    first32 = adapter.run(network32, batch32, dtype="float32", path="jit")
    compilations.clear()
    for _ in range(2):
        again64 = adapter.run(network64, batch64, dtype="float64", path="jit")
        again32 = adapter.run(network32, batch32, dtype="float32", path="jit")
        np.testing.assert_array_equal(again64.gradients.w[2], first64.gradients.w[2])
        np.testing.assert_array_equal(again32.gradients.w[2], first32.gradients.w[2])
        assert again64.gradients.w[2].dtype == np.float64 and again32.gradients.w[2].dtype == np.float32
    assert compilations == []
    assert not np.array_equal(first64.gradients.w[2], first32.gradients.w[2].astype(np.float64)), (
        "float64 and float32 gave the same bits: one of them was not computed in its own format"
    )


# --- compiling ahead (JaxAdapter.prepare) ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_a_prepared_shape_runs_the_program_the_example_would_have_compiled(
    adapter: JaxAdapter, dtype: str, compilations: list[str]
) -> None:
    """After prepare(), the example compiles nothing, and its bits equal those of a fresh compilation (caches cleared)."""
    network, batch = rounded(dtype, *Architecture("prepared", (3, 11, 2), 9).draw(seed=41))
    adapter.prepare("jit", dtype, "cpu", [(network.widths, batch.size)])
    from backprop_conformance.adapters.jax_precompile import PRECOMPILER

    thread = PRECOMPILER._thread
    assert thread is not None
    thread.join(timeout=60)  # the background compilation done (a claim now could take the shape off the queue instead)
    compilations.clear()
    prepared = adapter.run(network, batch, dtype=dtype, path="jit")
    assert compilations == [], "the prepared program was not the one the example ran: it compiled again"
    jax.clear_caches()
    fresh = adapter.run(network, batch, dtype=dtype, path="jit")
    assert compilations, "clearing the caches should have forced a compilation"
    for l in network.layers:
        np.testing.assert_array_equal(prepared.gradients.w[l], fresh.gradients.w[l])
        np.testing.assert_array_equal(prepared.gradients.b[l], fresh.gradients.b[l])


_CACHE_FILL_SCRIPT = """
import json, sys
import jax, numpy as np
from backprop_conformance.adapters import jax_precompile
from backprop_conformance.adapters.jax_adapter import JaxAdapter
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.reference.model import Batch, Network

cache, dtype, change = sys.argv[1], sys.argv[2], sys.argv[3]
rng = np.random.default_rng(7)
widths, batch_size = (3, 11, 2), 9
net = Network.from_lists(
    [rng.standard_normal((widths[i + 1], widths[i])) for i in range(2)], [rng.standard_normal(widths[i + 1]) for i in range(2)]
)
x = rng.standard_normal((batch_size, 3))
problem = Problem.rounded(net, Batch(x, rng.uniform(size=(batch_size, 2))), dtype)
net, batch = problem.network, problem.batch
adapter = JaxAdapter()
adapter.use_cache(cache)
if change == "no-worker":  # only the store an earlier run left can serve the example
    from backprop_conformance.adapters import worker
    jax_precompile.cache_filler = lambda: worker.shared("no_such_module:Filler", name="broken")
adapter.prepare("jit", dtype, "cpu", [(widths, batch_size)])
jax_precompile.PRECOMPILER._thread.join(120)
filled = sorted(p.name for p in __import__("pathlib").Path(cache).iterdir()) if __import__("pathlib").Path(cache).exists() else []
store = __import__("pathlib").Path(cache + "-programs")
handed = sorted((p.name, p.stat().st_mtime_ns) for p in store.iterdir()) if store.exists() else []
if change == "setting":  # a global JAX setting the worker was not given
    jax.config.update("jax_numpy_rank_promotion", "warn")
elif change == "function":  # a JAX function patched in this process only: the same settings, another program
    sigmoid = jax.nn.sigmoid
    jax.nn.sigmoid = lambda z: 1 / (1 + jax.numpy.exp(-z))
events = []
jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))
jax.monitoring.register_event_duration_secs_listener(lambda event, duration, **kw: events.append(event))
prepared = adapter.run(net, batch, dtype=dtype, path="jit")
after = sorted(p.name for p in __import__("pathlib").Path(cache).iterdir()) if __import__("pathlib").Path(cache).exists() else []
seen = list(events)
loaded = len(jax_precompile.PRECOMPILER._loaded)
if change == "function":
    jax.nn.sigmoid = sigmoid
jax.clear_caches()
jax.config.update("jax_enable_compilation_cache", False)
fresh = adapter.run(net, batch, dtype=dtype, path="jit")
same = all(
    np.array_equal(prepared.gradients.w[l], fresh.gradients.w[l]) and np.array_equal(prepared.gradients.b[l], fresh.gradients.b[l])
    for l in net.layers
)
print(json.dumps({
    "worker_starts": jax_precompile.cache_filler().starts,
    "filled": filled, "after": after,
    "hits": seen.count("/jax/compilation_cache/cache_hits"),
    "requests": seen.count("/jax/compilation_cache/compile_requests_use_cache"),
    "same_bits": same,
    "loaded": loaded,
    "handed": handed,
    "worker_failed": jax_precompile.PRECOMPILER._filler_failed,
}))
adapter.finish()
"""


def _fill_and_run(tmp_path: Path, dtype: str, change: str) -> dict:
    """Run :data:`_CACHE_FILL_SCRIPT` in a subprocess: the persistent cache is a process-wide JAX setting, which the
    test process must not keep."""
    import json

    command = [sys.executable, "-c", _CACHE_FILL_SCRIPT, str(tmp_path / "cache"), dtype, change]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    if change != "no-worker":
        assert found["worker_starts"] == 1, f"no worker process compiled ahead: {found}"
    assert len(found["handed"]) == 1, f"the worker kept no program to hand over: {found}"
    return found


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_with_a_persistent_cache_a_worker_process_compiles_ahead_and_the_example_runs_its_program(tmp_path: Path, dtype: str) -> None:
    """With the suite's cache in force, prepare() compiles in a worker process, which keeps the program and hands it
    back; the example runs it as it is (no compilation request at all), its bits equal a fresh compilation's, and a
    second run gets the same program from the store without the worker compiling it again."""
    found = _fill_and_run(tmp_path, dtype, "none")
    assert found["loaded"] == 1, f"the example did not run the worker's program: {found}"
    assert found["requests"] == 0, f"the example compiled, or looked its program up, instead of running the worker's: {found}"
    assert found["same_bits"], "the program compiled ahead gave different bits from a fresh compilation"
    again = _fill_and_run(tmp_path, dtype, "none")
    assert again["handed"] == found["handed"], f"the second run's worker compiled and wrote the program again: {again}"
    assert again["loaded"] == 1 and again["requests"] == 0 and again["same_bits"], again
    alone = _fill_and_run(tmp_path, dtype, "no-worker")
    assert alone["worker_failed"] and alone["loaded"] == 1 and alone["same_bits"], f"the store did not serve the run: {alone}"


@pytest.mark.parametrize("change", ["setting", "function"])
def test_a_worker_program_this_process_would_not_have_compiled_is_not_run(tmp_path: Path, change: str) -> None:
    """A global JAX setting the worker lacks (its settings' digest differs), or a JAX function patched in this
    process only (the lowered programs differ): the example traces and compiles its program itself."""
    found = _fill_and_run(tmp_path, "float32", change)
    assert found["loaded"] == 0, f"the worker's program ran although this process would have compiled another: {found}"
    assert found["requests"] >= 1 and len(found["after"]) > len(found["filled"]), f"the example did not compile its own program: {found}"
    if change == "setting":  # rank promotion does not change this program
        assert found["same_bits"], found


_BROKEN_FILLER_SCRIPT = """
import json, sys
import numpy as np
from backprop_conformance.adapters import jax_precompile, worker
from backprop_conformance.adapters.jax_adapter import JaxAdapter

jax_precompile.cache_filler = lambda: worker.shared("no_such_module:Filler", name="broken")
adapter = JaxAdapter()
adapter.use_cache(sys.argv[1])
adapter.prepare("jit", "float32", "cpu", [((3, 4, 2), 5)])
jax_precompile.PRECOMPILER._thread.join(120)
entries = len(list(__import__("pathlib").Path(sys.argv[1]).iterdir()))
print(json.dumps({"failed": jax_precompile.PRECOMPILER._filler_failed, "entries": entries}))
"""


def test_a_compile_worker_that_cannot_start_leaves_the_compilation_to_this_process(tmp_path: Path) -> None:
    """The worker's target cannot be imported: compiling ahead falls back to the thread, which still fills the cache."""
    import json

    cache = tmp_path / "cache"
    command = [sys.executable, "-c", _BROKEN_FILLER_SCRIPT, str(cache)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == {"failed": True, "entries": 1}, found


def test_an_example_does_not_wait_behind_shapes_still_queued() -> None:
    """claim() of a shape not yet begun takes it off the queue at once; cancel() empties the queue and the thread leaves."""
    from backprop_conformance.adapters.jax_precompile import Precompiler

    precompiler = Precompiler()
    keys = [("jit", "float32", "cpu", (5, 40 + i, 40 + i, 40 + i, 3), 7) for i in range(12)]
    for key in keys:
        precompiler.submit(key)
    began = time.perf_counter()
    precompiler.claim(keys[-1])
    assert time.perf_counter() - began < 0.1, "claim() waited for the shapes queued before it"
    precompiler.cancel()
    thread = precompiler._thread
    if thread is not None:
        thread.join(timeout=30)
        assert not thread.is_alive(), "the background thread did not leave after cancel()"


def test_a_failing_background_compilation_is_left_to_the_example(adapter: JaxAdapter) -> None:
    """An error in the thread is dropped (the request that meets it raises it); claiming that shape returns."""
    from backprop_conformance.adapters.jax_precompile import Precompiler

    precompiler = Precompiler()
    key = ("no-such-path", "float32", "cpu", (2, 2), 1)
    precompiler.submit(key)
    thread = precompiler._thread
    assert thread is not None
    thread.join(timeout=30)
    precompiler.claim(key)
    assert not thread.is_alive()


def test_the_compilation_cache_and_compiling_ahead_change_no_verdict(tmp_path: Path) -> None:
    """The same examples (one ``--hypothesis-seed``) in three runs -- no cache, a cold cache, the same cache warm --
    give the same error/bound ratio for every example, bit for bit, and the cold run fills the cache."""
    from conftest import suite

    cache = tmp_path / "cache"
    args = ["--conformance-backend", "jax", "--conformance-dtype", "float32", "--conformance-dtype", "bfloat16"]
    args += ["--conformance-max-examples", "15", "--hypothesis-seed", "20261201", "-k", "test_gradients"]
    series = {}
    for name, cache_dir in (("no cache", ""), ("cold cache", str(cache)), ("warm cache", str(cache))):
        run = suite(tmp_path / name, *args, "--conformance-cache-dir", cache_dir, marks=None)
        assert run.returncode == pytest.ExitCode.OK and run.report is not None, run.explain()
        series[name] = {c.id: c.ratios for c in run.report.cells}
        assert all(len(r) == 15 for r in series[name].values()), series[name]
        if name == "cold cache":
            assert any((cache / "jax").iterdir()), "the run wrote nothing to its compilation cache"
    assert series["cold cache"] == series["no cache"], "the compilation cache changed an example's ratio"
    assert series["warm cache"] == series["no cache"], "a cached program gave a different ratio from a freshly compiled one"


# --- bad requests --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"dtype": "float8", "path": "jit"}, ["dtype 'float8'", "float64, float32, float16, bfloat16"]),
        ({"dtype": "float32", "path": "eager"}, ["path 'eager'", "grad, jit, jacfwd, vjp"]),
        ({"dtype": "float32", "path": "jit", "device": "tpu"}, ["device 'tpu'", "cpu"]),
    ],
)
def test_unsupported_requests_name_the_adapter_and_the_valid_choices(adapter: JaxAdapter, kwargs: dict, fragments: list[str]) -> None:
    network, batch = CASE["L=2"].draw(SEED)
    with pytest.raises(RequestError) as info:
        adapter.compute(network, batch, **kwargs)
    message = str(info.value)
    assert message.startswith("adapter 'jax':")
    for fragment in fragments:
        assert fragment in message


def test_values_the_format_cannot_hold_are_refused(adapter: JaxAdapter) -> None:
    """0.1 is not a float16 value: converting it silently would give JAX a different network from the reference's."""
    network = Network.from_lists([np.array([[0.1]])], [np.array([0.0])])
    batch = Batch(np.array([[1.0]]), np.array([[0.5]]))
    with pytest.raises(RequestError, match=r"w\^2 holds values that are not exactly representable in float16.*round_to"):
        adapter.compute(network, batch, dtype="float16", path="grad")
    with pytest.raises(RequestError, match=r"w\^2 .* bfloat16"):
        adapter.round_trip(network, dtype="bfloat16")


def test_a_batch_that_does_not_fit_the_network_is_refused(adapter: JaxAdapter) -> None:
    network, _ = CASE["L=2"].draw(SEED)
    with pytest.raises(ModelError, match=r"x has 2 columns but the input layer 1 has n\(1\) = 3"):
        adapter.compute(network, Batch(np.zeros((1, 2)), np.zeros((1, 2))), dtype="float64", path="grad")
