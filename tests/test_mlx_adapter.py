"""The built-in MLX adapter (:mod:`backprop_conformance.adapters.mlx_adapter`), on MLX's CPU backend.

Skipped where MLX (``pip install backprop-conformance[mlx]``, which installs ``mlx[cpu]``) is not installed.
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
from backprop_conformance.reference.model import Batch, Network
from backprop_conformance.reference.vectorized import backprop

if importlib.util.find_spec("mlx") is None or importlib.util.find_spec("mlx.core") is None:
    pytest.skip("the MLX adapter needs mlx (pip install backprop-conformance[mlx])", allow_module_level=True)

import mlx.core as mx

from backprop_conformance.adapters.mlx_adapter import DTYPES, PATHS, MlxAdapter

PINNED = mx.__version__.startswith("0.32.")


@pytest.fixture(scope="module")
def adapter() -> MlxAdapter:
    return MlxAdapter()


def test_registered_as_a_built_in() -> None:
    adapter = resolve("mlx").load()
    assert isinstance(adapter, MlxAdapter)
    caps = adapter.caps
    assert (caps.name, caps.dtypes, caps.paths, caps.default_paths, caps.shape_compiled_paths) == ("mlx", DTYPES, PATHS, PATHS, ())
    assert caps.version == mx.__version__


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("path", PATHS)
def test_conforms_in_every_format_but_float64(adapter: MlxAdapter, path: str, dtype: str, tmp_path: Path) -> None:
    check = check_adapter(adapter, paths=[path], dtypes=[dtype], max_examples=15, case_dir=tmp_path)
    assert check.passed, check.message()


@pytest.mark.skipif(not PINNED, reason="the float64 defect was seen with mlx 0.32; other versions were not checked")
@pytest.mark.parametrize("path", PATHS)
def test_float64_fails_as_the_known_defect_says(adapter: MlxAdapter, path: str) -> None:
    """ml-explore/mlx#3047: float64 σ computed with float32's exp is exactly 0 below z ≈ −88, where float64's is not."""
    network = Network.from_lists([np.array([[1.0]])], [np.array([-100.0])])
    out = adapter.compute(network, Batch(np.array([[0.0]]), np.array([[0.0]])), dtype="float64", path=path)
    assert out.a[2][0, 0] == 0.0 and np.exp(-100.0) > 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", PATHS)
def test_contract_and_round_trip(adapter: MlxAdapter, path: str, dtype: str) -> None:
    network, batch = problem(dtype, (4, 4, 4), 3)
    check_contract(adapter, path, dtype, "cpu", network, batch)


@pytest.mark.parametrize("path", PATHS)
def test_delta_comes_from_the_same_pass_and_is_the_page_s(adapter: MlxAdapter, path: str) -> None:
    """δ^l = ∂C/∂z^l from the zero perturbations: the reference's δ in float32, and ∂C/∂b^l is its sum over the batch."""
    network, batch = problem("float32", (3, 5, 4, 2), 6, seed=3)
    out = adapter.compute(network, batch, dtype="float32", path=path)
    trace = backprop(network, batch)
    for l in network.layers:
        np.testing.assert_allclose(out.delta[l], trace.delta[l], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(out.gradients.b[l], out.delta[l].astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("path", PATHS)
def test_two_calls_give_identical_results_and_leave_the_default_device(adapter: MlxAdapter, path: str) -> None:
    before = mx.default_device()
    network, batch = problem("float32", seed=4)
    first, second = (adapter.compute(network, batch, dtype="float32", path=path) for _ in range(2))
    for (_, _, g1), (_, _, g2) in zip(first.gradients.items(), second.gradients.items(), strict=True):
        assert np.array_equal(g1, g2)
    assert mx.default_device() == before


def test_compile_path_reuses_its_traces_across_depths(adapter: MlxAdapter) -> None:
    """One ``mx.compile`` function serves every depth and shape: the paths agree bit for bit on networks of several depths."""
    for widths in ((2, 3), (3, 4, 2), (2, 3, 3, 3, 1)):
        network, batch = problem("float32", widths, 4, seed=len(widths))
        eager = adapter.compute(network, batch, dtype="float32", path="value_and_grad")
        compiled = adapter.compute(network, batch, dtype="float32", path="compile")
        for l in network.layers:
            np.testing.assert_allclose(compiled.gradients.w[l], eager.gradients.w[l], rtol=1e-6, atol=1e-9)
