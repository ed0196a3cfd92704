"""The replay command (``python -m backprop_conformance replay CASE``): which adapter it uses, and what it refuses.

A case file is untrusted data -- it arrives attached to a bug report -- so replay imports only the
built-in and installed adapters a case names; anything else must be passed with ``--backend``,
knowingly. The requested path, dtype and device must be ones the backend offers, and ``--dtype``
rounds the case's values to that format first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import GOOD_PLUGIN, REPLAY_USAGE, assert_clean_failure, replay_command
from networks import inexact_problem, tiny_problem
from reference_adapters import ReferenceAdapter

from backprop_conformance.conformance import cases
from backprop_conformance.conformance.__main__ import main as replay_main
from backprop_conformance.conformance.cells import Cell
from backprop_conformance.conformance.runner import clean_environment


def write_case(directory: Path, adapter: str, backend: str = "ok-stable", dtype: str = "float64") -> Path:
    """A valid case file (a tiny network, values exact in every format) naming ``adapter``."""
    case = cases.Case(tiny_problem(dtype), Cell(backend, "manual", dtype), adapter, {"numpy": np.__version__}, "a failure")
    return cases.write(case, directory)


EVIL_SOURCE = '''"""A module sent along with a case file: importing it is running a stranger's code."""
from pathlib import Path

Path({marker!r}).write_text("imported\\n")


class Adapter:
    pass
'''


@pytest.mark.parametrize("where", ["beside-the-case", "in-the-working-directory"])
@pytest.mark.parametrize("adapter", ["evil:Adapter", "evil"])
def test_replay_never_imports_a_module_the_case_names(tmp_path: Path, where: str, adapter: str) -> None:
    """``replay case.json`` without ``--backend``, the case naming ``evil:Adapter``: exit 2, evil.py not imported, the option printed."""
    marker = tmp_path / "evil-was-imported"
    attachment = tmp_path / "attachment"
    cwd = attachment if where == "beside-the-case" else tmp_path / "work"
    for directory in {attachment, cwd}:
        directory.mkdir(exist_ok=True)
        (directory / "evil.py").write_text(EVIL_SOURCE.format(marker=str(marker)), encoding="utf-8")
    case = write_case(attachment, adapter)
    done = replay_command(os.path.relpath(case, cwd), cwd=cwd, tmp=tmp_path)
    assert not marker.exists(), "replay imported the module the case file names"
    assert done.returncode == REPLAY_USAGE, f"exit {done.returncode}\n{done.stdout}{done.stderr}"
    assert_clean_failure(done.stderr)
    assert f"names the adapter {adapter!r}, which is neither built in nor an installed plug-in" in done.stderr, done.stderr
    assert f"--backend {adapter}" in done.stderr and "PASS" not in done.stdout and "FAIL" not in done.stdout, done.stderr


def test_replay_uses_an_installed_adapter_the_case_names(tmp_path: Path, good_plugin: Path) -> None:
    """A case naming an installed plug-in (as one naming ``torch`` or ``jax``) replays against it without ``--backend``."""
    case = write_case(tmp_path, GOOD_PLUGIN, backend=GOOD_PLUGIN)
    done = replay_command(str(case), cwd=tmp_path, tmp=tmp_path, plugins=good_plugin)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}{done.stderr}"
    assert f"PASS {GOOD_PLUGIN}-manual-float64: all 3 gradient elements and the cost within" in done.stdout, done.stdout


def reference_case(tmp_path: Path, dtype: str = "float64", adapter: str = "tests.reference_adapters:ReferenceAdapter") -> Path:
    """A case whose parameters and data (0.1, 1/3, ...) are float64 values but not float32 ones."""
    case = cases.Case(inexact_problem(dtype), Cell(ReferenceAdapter.name, "vectorized", dtype), adapter, {"numpy": np.__version__}, "")
    return cases.write(case, tmp_path)


def test_replay_rerounds_to_the_requested_dtype(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The case holds float64 values the adapter refuses in float32; --dtype float32 must round them first."""
    path = reference_case(tmp_path)
    assert replay_main(["replay", str(path), "--backend", "reference_adapters:ReferenceAdapter", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert f"PASS {ReferenceAdapter.name}-vectorized-float32:" in out, out
    assert replay_main(["replay", str(path), "--backend", "reference_adapters:ReferenceAdapter"]) == 0
    assert f"PASS {ReferenceAdapter.name}-vectorized-float64:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "wanted"),
    [
        (["--path", "jit"], "has no path jit; it offers vectorized"),
        (["--dtype", "float16"], "has no dtype float16; it offers float64, float32"),
        (["--device", "cuda"], "has no device cuda; it offers cpu"),
        (["--backend", "nonesuch"], "unknown adapter 'nonesuch'"),
    ],
    ids=["path", "dtype", "device", "backend"],
)
def test_replay_rejects_what_the_backend_does_not_offer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], wanted: str
) -> None:
    path = reference_case(tmp_path)
    backend = [] if "--backend" in args else ["--backend", "reference_adapters:ReferenceAdapter"]
    assert replay_main(["replay", str(path), *backend, *args]) == REPLAY_USAGE
    assert wanted in capsys.readouterr().err


def test_console_script_replays_without_the_working_directory_on_the_path(tmp_path: Path) -> None:
    """``backprop-conformance replay`` in a directory holding a hostile ``numpy.py``: the real numpy is used, the case is judged."""
    pytest.importorskip("torch")
    case = reference_case(tmp_path, adapter="torch")
    (tmp_path / "numpy.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').write('x')\nraise SystemExit(99)\n")
    script = Path(sys.executable).with_name("backprop-conformance")
    done = subprocess.run(
        [str(script), "replay", str(case), "--backend", "torch", "--path", "eager"],
        cwd=tmp_path,
        env=clean_environment(tmp_path / "hypothesis"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert not (tmp_path / "imported").exists(), "the console script imported numpy.py from the working directory"
    assert done.returncode == 0 and "PASS torch-eager-float64" in done.stdout, done.stdout + done.stderr
