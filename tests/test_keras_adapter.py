"""The built-in Keras adapter (adapters/keras_adapter.py): every backend in its worker, against the reference.

Each installed Keras backend (the adapter's paths) × dtype must agree with
:func:`backprop_conformance.reference.vectorized.backprop` within the error bound for the adapter's declared
precision, gradients, cost and a^l alike -- except float64 on torch, where Keras computes in float32
(keras-team/keras#23704): that cell must *fail*, far outside the bound, first at a^2, and be covered by its strict,
versioned known-defect entry. Beside the numbers: each backend really runs in a process of its own with its
``KERAS_BACKEND``, importing the adapter or running the torch backend imports neither Keras nor TensorFlow, and a
backend that is not installed is refused with the reason.

This module never imports Keras itself: importing it would fix this process's backend for good. (TensorFlow
imports Keras when it is imported, so a session that also runs the TensorFlow adapter's tests has Keras loaded;
the adapter's own promise is checked in a fresh process.)
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from networks import ARCHITECTURES, Architecture

from backprop_conformance.adapters import worker as workers
from backprop_conformance.adapters.base import RequestError
from backprop_conformance.adapters.registry import resolve
from backprop_conformance.adapters.selfcheck import check_contract
from backprop_conformance.conformance import known_defects
from backprop_conformance.conformance.verdict import judge, worst_ratio
from backprop_conformance.reference.error_bound import tolerance

if importlib.util.find_spec("keras") is None:
    pytest.skip("the Keras adapter needs keras (pip install backprop-conformance[keras])", allow_module_level=True)

from backprop_conformance.adapters import keras_adapter
from backprop_conformance.adapters.keras_adapter import DTYPES, KerasAdapter

REPO = Path(__file__).resolve().parents[1]
ADAPTER = KerasAdapter()
INSTALLED = [path for path, module in keras_adapter.BACKENDS.items() if importlib.util.find_spec(module) is not None]
KERAS_VERSION = importlib.metadata.version("keras")

SEED = 20260922
"""The seed of this module's fixed networks (:mod:`networks`)."""
JAX_ARCHITECTURES = ("L2", "deep-square")
"""Keras' JAX step compiles per shape (about 1 s each here), so that path is checked on two of the four."""
KNOWN_DEFECT = ("torch", "float64")


def backend(path: str) -> object:
    return pytest.param(path, marks=pytest.mark.skipif(path not in INSTALLED, reason=f"{path} is not installed"))


def cases() -> list[object]:
    return [
        pytest.param(arch, path, dtype, id=f"{arch.name}-{path}-{dtype}", marks=backend(path).marks)
        for path in keras_adapter.BACKENDS
        for arch in ARCHITECTURES
        if path != "jax" or arch.name in JAX_ARCHITECTURES
        for dtype in DTYPES
        if (path, dtype) != KNOWN_DEFECT
    ]


@pytest.mark.parametrize(("arch", "path", "dtype"), cases())
def test_agrees_with_reference_within_bound(arch: Architecture, path: str, dtype: str) -> None:
    problem = arch.problem(dtype, SEED)
    output = ADAPTER.compute(problem.network, problem.batch, dtype=dtype, path=path)
    precision = ADAPTER.caps.precision(dtype)
    verdict = judge(f"{arch.name}-{path}-{dtype}", problem, output, precision)
    assert verdict.passed, verdict.message()
    tol = tolerance(problem.network, problem.batch, problem.trace, precision)
    ratio = worst_ratio(output.a, problem.trace.a, tol.a)
    assert ratio <= 1, f"a^l outside its bound (worst error/bound {ratio:.3g})"
    assert output.z is None and output.delta is None, "Dense(activation='sigmoid') hides z^l, and with it δ^l"


@pytest.mark.skipif("torch" not in INSTALLED, reason="torch is not installed")
def test_float64_on_torch_fails_and_is_the_known_defect() -> None:
    """keras-team/keras#23704: Keras' result_type makes the float64 product float32; the verdict must catch it."""
    problem = ARCHITECTURES[2].problem("float64", SEED)
    output = ADAPTER.compute(problem.network, problem.batch, dtype="float64", path="torch")
    verdict = judge("keras-torch-float64", problem, output, ADAPTER.caps.precision("float64"))
    assert not verdict.passed and verdict.worst_ratio > 1e5, verdict.message()
    assert verdict.divergence.startswith("a^2 (layer 2) left its bound first"), verdict.divergence
    defects = known_defects.load()
    entry = known_defects.find(defects, "test_gradients", "keras", KERAS_VERSION, "torch", "float64")
    assert entry is not None and entry.issue == "https://github.com/keras-team/keras/issues/23704"
    assert str(entry.versions), "the entry must name the Keras versions it was seen in"
    for path, dtype in (("torch", "float32"), ("tensorflow", "float64"), ("jax", "float64")):
        assert known_defects.find(defects, "test_gradients", "keras", KERAS_VERSION, path, dtype) is None


@pytest.mark.parametrize("path", [backend(p) for p in keras_adapter.BACKENDS])
@pytest.mark.parametrize("dtype", DTYPES)
def test_contract(path: str, dtype: str) -> None:
    """Layout round trip, output shapes and carrier dtypes, repeatability (float64 on torch too: its defect is numeric)."""
    problem = ARCHITECTURES[2].problem(dtype, SEED)
    check_contract(ADAPTER, path, dtype, "cpu", problem.network, problem.batch)


@pytest.mark.parametrize("path", [backend(p) for p in keras_adapter.BACKENDS])
def test_each_backend_runs_in_a_worker_of_its_own(path: str) -> None:
    problem = ARCHITECTURES[0].problem("float32", SEED)
    ADAPTER.compute(problem.network, problem.batch, dtype="float32", path=path)
    worker = workers.shared(keras_adapter.WORKER_TARGET, keras_adapter.WORKER_ENVIRONMENT[path])
    assert worker.pid is not None and worker.pid != os.getpid()
    hosted = worker.call("capabilities")
    assert hosted.paths == (path, f"{path}-loss-scale"), f"the {path} worker runs Keras on {hosted.paths}"
    assert "float64" in hosted.dtypes, "float64 must be available on every backend's worker (JAX needs JAX_ENABLE_X64)"


_WARM_UP_SCRIPT = """
import json, sys, time
import numpy as np
from backprop_conformance.adapters import keras_adapter
from backprop_conformance.adapters.keras_adapter import KerasAdapter
from backprop_conformance.reference.model import Batch, Network

path = sys.argv[1]
adapter = KerasAdapter()
adapter.prepare(path, "float32", "cpu", [((3, 4, 2), 5), ((2, 2), 3)])
warming = keras_adapter._warming(path)
deadline = time.monotonic() + 240
while warming._thread is not None and time.monotonic() < deadline:
    time.sleep(0.1)
warmed = keras_adapter._shared_worker(path).call("cached_models")
adapter.prepare(path, "float64", "cpu", [((5, n, 2), 4) for n in range(3, 40)])
net = Network.from_lists([np.array([[0.5, -1.0], [2.0, 0.25]])], [np.array([0.125, -0.5])])
adapter.run(net, Batch(np.array([[1.0, -2.0]]), np.array([[0.25, 0.75]])), dtype="float32", path=path)
thread = warming._thread
if thread is not None:
    thread.join(30)
after = keras_adapter._shared_worker(path).call("cached_models")
print(json.dumps({"warmed": warmed, "left": len(warming._jobs), "alive": thread is not None and thread.is_alive(),
                  "float64_warmed": sum(1 for _, dtype in after if dtype == "float64")}))
adapter.finish()
"""


@pytest.mark.parametrize("path", [backend("tensorflow")])
def test_prepare_warms_the_worker_up_until_the_first_request(path: str) -> None:
    """prepare() builds, in the worker, the model and step of each hinted shape (so the examples find them built);
    the first request stops the warm-up: the queue is dropped and the thread leaves after one step at most."""
    import json

    result = subprocess.run([sys.executable, "-c", _WARM_UP_SCRIPT, path], cwd=REPO, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    warmed = {(tuple(widths), dtype) for widths, dtype in found["warmed"]}
    assert {((3, 4, 2), "float32"), ((2, 2), "float32")} <= warmed, f"the hinted shapes were not built ahead: {found}"
    assert found["left"] == 0 and not found["alive"], f"the warm-up went on after the first request: {found}"
    assert found["float64_warmed"] <= 1, f"the warm-up built {found['float64_warmed']} models after the first request (one at most)"


def test_the_round_trip_agrees_across_every_backend_used() -> None:
    """load_parameters has no path: it goes through every backend already used, which must all read back the page's values."""
    problem = Architecture("rectangular", (3, 5, 2), 1).problem("float32", SEED)
    for path in INSTALLED:
        ADAPTER.compute(problem.network, problem.batch, dtype="float32", path=path)
    back = ADAPTER.round_trip(problem.network, dtype="float32")
    for l in problem.network.layers:
        np.testing.assert_array_equal(back.w[l], problem.network.w[l])
        np.testing.assert_array_equal(back.b[l], problem.network.b[l])


def test_capabilities() -> None:
    caps = ADAPTER.caps
    assert (caps.name, caps.version) == ("keras", KERAS_VERSION)
    assert caps.framework.startswith("Keras (")
    assert caps.paths == ("torch", "tensorflow", "jax", "torch-loss-scale", "tensorflow-loss-scale", "jax-loss-scale")
    assert caps.default_paths == tuple(p for p in ("torch", "tensorflow") if p in INSTALLED)
    assert caps.shape_compiled_paths == ("jax", "tensorflow", "jax-loss-scale", "tensorflow-loss-scale")
    assert caps.dtypes_of_path("jax-loss-scale") == ("float32", "mixed-bfloat16", "mixed-float16")
    assert caps.dtypes_of_path("jax") == caps.dtypes
    assert "KERAS_BACKEND" not in caps.environment, "each worker's KERAS_BACKEND comes from its path, not from the run"
    assert caps.accumulation_of("float16", "dot") == caps.accumulation_of("bfloat16", "dot") == "float32"
    assert caps.accumulation_of("float16", "batch_sum") == "float16"


def test_a_backend_that_is_not_installed_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keras_adapter, "_installed", lambda module: module != "jax")
    adapter = KerasAdapter()
    assert "jax" in adapter.caps.paths and "jax" not in adapter.caps.default_paths
    problem = ARCHITECTURES[0].problem("float32", SEED)
    with pytest.raises(RequestError, match="path 'jax' needs Keras' jax backend, and jax is not installed"):
        adapter.compute(problem.network, problem.batch, dtype="float32", path="jax")


def test_the_registry_finds_the_adapter() -> None:
    assert isinstance(resolve("keras").load(), KerasAdapter)


FRAMEWORKS = ("keras", "tensorflow", "torch", "jax")


@pytest.mark.skipif("torch" not in INSTALLED, reason="torch is not installed")
def test_loading_and_running_the_adapter_imports_no_framework_here() -> None:
    """Keras runs in the workers only: this process imports none of the frameworks, even after computing an example.

    (A process that imports TensorFlow gets Keras with it: TensorFlow 2.21 imports Keras itself. Hence a fresh process.)
    """
    code = (
        "import sys\n"
        "from backprop_conformance.adapters.registry import resolve\n"
        "from backprop_conformance.conformance.problems import contract_problem\n"
        "adapter = resolve('keras').load()\n"
        "problem = contract_problem('float32')\n"
        "adapter.compute(problem.network, problem.batch, dtype='float32', path='torch')\n"
        f"imported = [m for m in {FRAMEWORKS!r} if m in sys.modules]\n"
        "print(imported)\n"
        "sys.exit(1 if imported else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"the keras adapter imported {done.stdout.strip()} here {done.stderr[-2000:]}"


def test_a_torch_run_imports_neither_tensorflow_nor_keras() -> None:
    """A run of the suite against torch alone must not pay for (nor depend on) TensorFlow or Keras."""
    code = (
        "import sys, pytest\n"
        "rc = pytest.main(['conformance', '--conformance-backend', 'torch', '--conformance-path', 'eager', '--conformance-dtype', "
        "'float32', '--conformance-max-examples', '2', '-m', 'not fidelity', '-q', '-p', 'no:cacheprovider'])\n"
        "print('imported:', [m for m in ('keras', 'tensorflow') if m in sys.modules])\n"
        "sys.exit(int(rc))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "imported: []" in done.stdout, done.stdout[-500:]


@pytest.mark.skipif("jax" not in INSTALLED, reason="jax is not installed")
def test_in_process_keras_on_jax_offers_float64_only_in_64_bit_mode() -> None:
    """Without JAX_ENABLE_X64 Keras stores a float64 Dense in float32: the in-process adapter must not claim float64 then."""
    code = (
        "import jax\n"
        "from backprop_conformance.adapters.keras_in_process import KerasInProcess\n"
        "print('float64' in KerasInProcess().caps.dtypes)\n"
        "jax.config.update('jax_enable_x64', True)\n"
        "print('float64' in KerasInProcess().caps.dtypes)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "JAX_ENABLE_X64"}
    env["KERAS_BACKEND"] = "jax"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "True"]
