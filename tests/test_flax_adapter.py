"""The built-in Flax NNX adapter (:mod:`backprop_conformance.adapters.flax_adapter`).

Skipped where Flax (``pip install backprop-conformance[flax]``) is not installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from networks import problem

from backprop_conformance.adapters.registry import resolve
from backprop_conformance.adapters.selfcheck import check_contract
from backprop_conformance.conformance.api import check_adapter
from backprop_conformance.reference.dtypes import is_representable
from backprop_conformance.reference.model import Network
from backprop_conformance.reference.vectorized import backprop

if importlib.util.find_spec("flax") is None:
    pytest.skip("the Flax adapter needs flax (pip install backprop-conformance[flax])", allow_module_level=True)

import jax

from backprop_conformance.adapters.flax_adapter import DEFAULT_PATHS, DTYPES, PATHS, FlaxAdapter
from backprop_conformance.adapters.jax_adapter import POLICIES


@pytest.fixture(scope="module")
def adapter() -> FlaxAdapter:
    return FlaxAdapter()


def test_registered_as_a_built_in_that_declares_the_jax_underneath() -> None:
    loaded = resolve("flax").load()
    caps = loaded.caps
    assert type(loaded) is FlaxAdapter
    assert (caps.name, caps.dtypes, caps.paths, caps.default_paths) == ("flax", (*DTYPES, *POLICIES), PATHS, DEFAULT_PATHS)
    assert caps.default_dtypes == DTYPES, "mixed-precision cells are opt-in"
    assert caps.policies == POLICIES, "Flax's arithmetic is XLA's: the JAX adapter's policy"
    assert caps.default_paths == ("jit",), "eager nnx.grad compiles every primitive per shape: opt-in"
    assert set(caps.shape_compiled_paths) == set(PATHS)
    assert caps.frameworks == {"jax": jax.__version__}


@pytest.mark.parametrize("dtype", DTYPES)
def test_jit_conforms_in_every_format(adapter: FlaxAdapter, dtype: str, tmp_path: Path) -> None:
    check = check_adapter(adapter, paths=["jit"], dtypes=[dtype], max_examples=8, case_dir=tmp_path)
    assert check.passed, check.message()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_eager_grad_conforms(adapter: FlaxAdapter, dtype: str, tmp_path: Path) -> None:
    check = check_adapter(adapter, paths=["grad"], dtypes=[dtype], max_examples=3, case_dir=tmp_path)
    assert check.passed, check.message()


@pytest.mark.parametrize("dtype", DTYPES)
def test_contract_and_round_trip_through_the_transposed_kernel(adapter: FlaxAdapter, dtype: str) -> None:
    """``nnx.Linear``'s kernel is (w^l)ᵀ: square layers, where a missing transpose keeps the shapes, must round-trip."""
    network, batch = problem(dtype, (4, 4, 4), 3)
    check_contract(adapter, "jit", dtype, "cpu", network, batch)


@pytest.mark.parametrize("path", PATHS)
def test_delta_comes_from_the_same_pass_and_is_the_page_s(adapter: FlaxAdapter, path: str) -> None:
    network, batch = problem("float64", (3, 5, 2), 4, seed=3)
    out = adapter.compute(network, batch, dtype="float64", path=path)
    trace = backprop(network, batch)
    for l in network.layers:
        np.testing.assert_allclose(out.delta[l], trace.delta[l], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(out.gradients.w[l], trace.gradients.w[l], rtol=1e-12, atol=1e-15)


def test_a_float64_call_leaves_x64_off(adapter: FlaxAdapter) -> None:
    network, batch = problem("float64", seed=5)
    adapter.compute(network, batch, dtype="float64", path="jit")
    assert not jax.config.jax_enable_x64


def test_models_are_filled_not_initialised(adapter: FlaxAdapter) -> None:
    """Building the model computes no random initialisation (eager JAX would compile it for every new shape): the
    parameters read back are exactly the page's, for a shape never built before."""
    network = Network.from_lists([np.arange(6.0).reshape(3, 2) / 8], [np.array([0.5, -0.25, 1.0])])
    back = adapter.round_trip(network, dtype="float32")
    assert np.array_equal(back.w[2], network.w[2]) and np.array_equal(back.b[2], network.b[2])


@pytest.mark.parametrize("dtype", list(POLICIES))
def test_mixed_cells_conform_and_compute_in_the_compute_format(adapter: FlaxAdapter, dtype: str, tmp_path: Path) -> None:
    """``param_dtype=float32, dtype=<compute>``: float32 parameters and gradients, z^l, δ^l and the gradients' values in
    the compute format (the contract refuses a z^l or a^l finer than the declared policy), and the policy's bound met."""
    check = check_adapter(adapter, paths=["jit"], dtypes=[dtype], max_examples=8, case_dir=tmp_path)
    assert check.passed, check.message()
    network, batch = problem("float32", (3, 5, 2), 4, seed=7)
    out = adapter.compute(network, batch, dtype=dtype, path="jit")
    compute = POLICIES[dtype].compute
    assert all(g.dtype == np.float32 for _, _, g in out.gradients.items())
    assert all(is_representable(compute, v) for values in (out.z, out.delta) for v in values.values())
    assert all(is_representable(compute, g) for _, _, g in out.gradients.items()), "gradients come back through the casts"


def test_the_header_names_flax_s_cache_as_jax_s_when_they_share_it(tmp_path: Path) -> None:
    """Flax compiles through jax.jit, so its cache is JAX's: alone, Flax sets it in its own directory and says so under
    its own name; after the JAX adapter set it, Flax's line says it shares JAX's directory instead of repeating JAX's
    line under JAX's name. Each in a fresh process, since the cache is a process-wide setting."""
    import subprocess
    import sys

    script = (
        "import sys; from pathlib import Path\n"
        "from backprop_conformance.adapters.flax_adapter import FlaxAdapter\n"
        "from backprop_conformance.adapters.jax_adapter import JaxAdapter\n"
        "root = Path(sys.argv[1])\n"
        "if sys.argv[2] == 'both': print(JaxAdapter().use_cache(root / 'jax'))\n"
        "print(FlaxAdapter().use_cache(root / 'flax'))\n"
    )

    def lines(mode: str) -> list[str]:
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path), mode], capture_output=True, text=True, check=True)
        return done.stdout.splitlines()

    (alone,) = lines("alone")
    assert alone.startswith(f"flax: persistent compilation cache in {tmp_path / 'flax'} "), alone
    jax_line, flax_line = lines("both")
    assert jax_line.startswith(f"jax: persistent compilation cache in {tmp_path / 'jax'} "), jax_line
    assert flax_line == f"flax: shares JAX's compilation cache ({tmp_path / 'jax'}): nnx.jit compiles through jax.jit", flax_line
