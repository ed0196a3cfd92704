"""The installed tool, as a new user meets it: a wheel in a fresh virtual environment, run from an empty directory.

One module-scoped fixture builds the wheel from this checkout (``python -m build --wheel``), makes a
fresh virtual environment, and installs into it the wheel, a stand-in for AdapterHub's ``adapters``
(another distribution with a top-level ``adapters`` package), and a stand-in pytest plug-in that owns
``--device``, ``--backend`` and ``--path`` as pytest-playwright and others do. The frameworks are not
downloaded again: the development environment's site-packages is put on the new environment's path
(as a plain directory, so that its editable install of this project is not), which gives it torch and
jax. Then, from an empty directory:

* ``backprop-conformance --conformance-backend torch`` runs and passes, writing its outputs there;
* a plain script calls ``check_adapter`` and ``check_gradients``;
* both ``adapters`` packages import, each its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from backprop_conformance.adapters.base import PLUGIN_INTERFACE

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

COPY_IGNORES = (".git", ".venv*", ".tox", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache", "conformance-*")

STUB_PLUGIN = '''"""A pytest plug-in that takes the generic option names, as pytest-playwright takes --device."""


def pytest_addoption(parser):
    parser.addoption("--device", default="chromium")
    parser.addoption("--backend", default="x")
    parser.addoption("--path", default="y")
'''

SCRIPT = """
import numpy as np
import backprop_conformance as bc
from backprop_conformance.adapters.torch_adapter import TorchAdapter

check = bc.check_adapter(TorchAdapter(), paths=["eager"], dtypes=["float32"], max_examples=5, case_dir="cases", raise_on_failure=True)
print("check_adapter", check.passed, [(c.id, c.status, c.examples) for c in check.cells])

rng = np.random.default_rng(3)
network = bc.Network.from_lists([rng.standard_normal((3, 2))], [rng.standard_normal(3)])
batch = bc.Batch(rng.standard_normal((4, 2)), rng.uniform(size=(4, 3)))
network, batch = bc.rounded(network, batch, "float32")

def grad_fn(w, b, x, y):
    import torch
    W, B = torch.tensor(w[0], requires_grad=True), torch.tensor(b[0], requires_grad=True)
    cost = 0.5 * ((torch.tensor(y) - torch.sigmoid(torch.tensor(x) @ W.T + B)) ** 2).sum()
    cost.backward()
    return [W.grad.numpy()], [B.grad.numpy()], float(cost)

verdict = bc.check_gradients(grad_fn, network, batch, "float32")
print("check_gradients", verdict.passed)

import adapters
print("adapters", adapters.__file__, getattr(adapters, "OWNER", None))
"""


@dataclass(frozen=True)
class Installed:
    python: Path
    bin: Path
    workdir: Path
    env: dict[str, str]


def _run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _distribution(root: Path, name: str, package: str, init: str, entry_points: str = "") -> Path:
    """A minimal installable project: one package, an optional entry-point table."""
    root.mkdir(parents=True)
    (root / package).mkdir()
    (root / package / "__init__.py").write_text(init, encoding="utf-8")
    (root / "pyproject.toml").write_text(
        textwrap.dedent(f"""
            [build-system]
            requires = ["setuptools>=69"]
            build-backend = "setuptools.build_meta"
            [project]
            name = "{name}"
            version = "1.3.0"
            [tool.setuptools]
            packages = ["{package}"]
        """)
        + entry_points,
        encoding="utf-8",
    )
    return root


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("install")
    dist, source = tmp / "dist", tmp / "source"
    # Built from a copy, so that setuptools' build/ and egg-info never land in the checkout.
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(*COPY_IGNORES))
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(source)])
    (wheel,) = dist.glob("backprop_conformance-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # The frameworks (torch, jax) and the dependencies from this environment, as a plain path entry: its .pth
    # files, among them this checkout's editable install, are not processed from there.
    (purelib / "development-frameworks.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    hub = _distribution(tmp / "adapterhub", "adapters", "adapters", 'OWNER = "AdapterHub stand-in"\n')
    stub = _distribution(
        tmp / "stubplugin",
        "stub-generic-options",
        "stub_generic_options",
        STUB_PLUGIN,
        '\n[project.entry-points.pytest11]\nstub_generic_options = "stub_generic_options"\n',
    )
    pip = [str(python), "-m", "pip", "install", "--no-index", "--no-build-isolation", "--no-deps", "-q"]
    _run([*pip, str(hub), str(stub)])
    _run([str(python), "-m", "pip", "install", "--no-build-isolation", "-q", str(wheel)])
    workdir = tmp / "empty"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CI", "GITHUB_ACTIONS", "PYTEST_ADDOPTS", "VIRTUAL_ENV")}
    env["HYPOTHESIS_STORAGE_DIRECTORY"] = str(tmp / "hypothesis")
    return Installed(python, venv / "bin", workdir, env)


def test_the_wheel_installs_one_top_level_package(installed: Installed) -> None:
    """backprop_conformance alone: the three folders are its subpackages, so AdapterHub's adapters keeps its own name."""
    code = "import backprop_conformance, adapters; print(backprop_conformance.__file__); print(adapters.__file__, adapters.OWNER)"
    done = _run([str(installed.python), "-c", code], cwd=installed.workdir, env=installed.env)
    ours, theirs = done.stdout.strip().splitlines()
    assert "site-packages" in ours and str(REPO_ROOT) not in ours, ours
    assert theirs.endswith("AdapterHub stand-in") and "site-packages/adapters/__init__.py" in theirs, theirs


def test_console_script_runs_the_suite_from_an_empty_directory(installed: Installed) -> None:
    """``backprop-conformance`` with the suite's options, beside a plug-in that owns --device, --backend and --path."""
    command = [
        str(installed.bin / "backprop-conformance"),
        "--conformance-backend", "torch", "--conformance-path", "eager", "--conformance-dtype", "float32",
        "--conformance-max-examples", "3", "-m", "not fidelity", "--conformance-report", "report.json", "-p", "no:cacheprovider",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=installed.workdir, env=installed.env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    data = json.loads((installed.workdir / "report.json").read_text(encoding="utf-8"))
    assert [(c["id"], c["status"], c["examples"]) for c in data["cells"]] == [("torch-eager-float32", "passed", 3)]
    assert data["suite"]["commit"] is None, "an installed copy reports no checkout"
    assert data["suite"]["plugin_interface"] == PLUGIN_INTERFACE, data["suite"]


def test_help_shows_the_suites_options_first(installed: Installed) -> None:
    done = _run([str(installed.bin / "backprop-conformance"), "--help"], cwd=installed.workdir, env=installed.env)
    first = done.stdout.index("--conformance-backend")
    assert first < done.stdout.index("--junit-xml"), "the suite's options come before pytest's"
    assert "--device" in done.stdout, "the other plug-in's option is still there"


def test_python_api_from_a_plain_script(installed: Installed) -> None:
    done = _run([str(installed.python), "-c", SCRIPT], cwd=installed.workdir, env=installed.env)
    assert "check_adapter True [('torch-eager-float32', 'passed', 5)]" in done.stdout, done.stdout
    assert "check_gradients True" in done.stdout, done.stdout
    assert "AdapterHub stand-in" in done.stdout, done.stdout
