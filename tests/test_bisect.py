"""``backprop-conformance bisect`` (conformance/version_bisect.py) with real pip, real virtual environments and a real index.

Real framework releases are large downloads, so the test builds its own framework and index: ``tinyfw``, a package
whose bias gradient is exact in 0.9.0 and 1.0.0 and scaled by 1 + 2⁻²⁰ from 2.0.0 on (the bug a release brought),
built as wheels into a PEP 503 index in a temporary directory, and a plug-in adapter that computes its gradients
through whichever ``tinyfw`` the environment imports. The case file is the failure of that adapter on a fixed
network. The bisect must install each version from the index into its own environment, replay the case there, and
name 2.0.0 as the first version that fails.

Its σ′ is the fidelity tier's subject: exact (σ(z)σ(−z)) in 0.9.0 and a(1 − a) from 1.0.0 on, which the conformance
bound allows and the fidelity tier's exactness bound does not. ``bisect --fidelity`` of the saturated σ′ cell must
name 1.0.0.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import zipfile
from pathlib import Path

import pytest
from networks import problem

from backprop_conformance.conformance import cases
from backprop_conformance.conformance.__main__ import main as commands
from backprop_conformance.conformance.cells import Cell
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.conformance.version_bisect import Outcome, changes

CORRECT, BUGGY = ("0.9.0", "1.0.0"), ("2.0.0", "2.1.0")
EXACT_SIGMA_PRIME = ("0.9.0",)
ADAPTER = '''"""A plug-in adapter for tinyfw: the example's numpy backprop, with tinyfw's bias gradient."""
import dataclasses

import tinyfw

from backprop_conformance.adapters.example_numpy import NumpyAdapter
from backprop_conformance.reference.model import Gradients


class TinyAdapter(NumpyAdapter):
    requires = ("numpy", "tinyfw")

    def capabilities(self):
        return dataclasses.replace(super().capabilities(), name="tiny", framework="tinyfw", version=tinyfw.__version__)

    def run(self, network, batch, *, dtype, path, device="cpu"):
        out = super().run(network, batch, dtype=dtype, path=path, device=device)
        grads = Gradients(out.gradients.w, {l: tinyfw.bias_gradient(g) for l, g in out.gradients.b.items()})
        return dataclasses.replace(out, gradients=grads)


class TinySigmoidAdapter(TinyAdapter):
    """tinyfw's σ′ at the output layer (the example's exact one elsewhere): a one-layer network's bias gradient."""

    def run(self, network, batch, *, dtype, path, device="cpu"):
        out = NumpyAdapter.run(self, network, batch, dtype=dtype, path=path, device=device)
        L = network.depth
        delta = (out.a[L] - batch.y.astype(dtype)) * tinyfw.sigmoid_prime(out.z[L], out.a[L])
        return dataclasses.replace(out, gradients=Gradients(out.gradients.w, {**out.gradients.b, L: delta.sum(axis=0)}))
'''


def wheel(directory: Path, version: str) -> Path:
    """A pure-Python wheel of tinyfw ``version``, written by hand (a zip with its dist-info and RECORD)."""
    scale = "1.0" if version in CORRECT else "1.0 + 2.0**-20"
    sigma_prime = (
        "e = numpy.exp(-numpy.abs(z))\n    return (1 / (1 + e)) * (e / (1 + e))" if version in EXACT_SIGMA_PRIME else "return a * (1 - a)"
    )
    source = (
        f'import numpy\n\n__version__ = "{version}"\n\n\ndef bias_gradient(g):\n    return g * ({scale})\n\n\n'
        f"def sigmoid_prime(z, a):\n    {sigma_prime}\n"
    )
    files = {
        "tinyfw/__init__.py": source,
        f"tinyfw-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: tinyfw\nVersion: {version}\n",
        f"tinyfw-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test_bisect\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def digest(text: str) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()

    record = "".join(f"{name},sha256={digest(text)},{len(text.encode())}\n" for name, text in files.items())
    files[f"tinyfw-{version}.dist-info/RECORD"] = record + f"tinyfw-{version}.dist-info/RECORD,,\n"
    path = directory / f"tinyfw-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PEP 503 simple index serving tinyfw 0.9.0, 1.0.0, 2.0.0 and 2.1.0 from the file system."""
    root = tmp_path_factory.mktemp("index")
    project = root / "simple" / "tinyfw"
    project.mkdir(parents=True)
    links = "".join(f'<a href="{wheel(project, v).name}">{wheel(project, v).name}</a>\n' for v in (*CORRECT, *BUGGY))
    (project / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n", encoding="utf-8")
    (root / "simple" / "index.html").write_text('<!DOCTYPE html><html><body><a href="tinyfw/">tinyfw</a></body></html>\n')
    return (root / "simple").as_uri()


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The failing example: a fixed float64 network, as a case file of the tiny adapter (found with tinyfw 2.0.0)."""
    directory = tmp_path_factory.mktemp("case")
    network, batch = problem("float64")
    found = cases.Case(
        Problem(network, batch, "float64"), Cell("tiny", "manual", "float64"), "tinyadapter:TinyAdapter", {"tinyfw": "2.0.0"}, ""
    )
    return cases.write(found, directory)


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The adapter's module on PYTHONPATH, which the replay in each environment inherits."""
    directory = tmp_path / "plugin"
    directory.mkdir()
    (directory / "tinyadapter.py").write_text(ADAPTER, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(directory))
    return directory


def bisect(case: Path, index: str, cache: Path, *versions: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        "bisect",
        str(case),
        "--versions",
        *versions,
        "--package",
        "tinyfw",
        "--backend",
        "tinyadapter:TinyAdapter",
        "--index-url",
        index,
        "--cache-dir",
        str(cache),
        *extra,
    ]


def verdicts(output: str) -> dict[str, str]:
    return {line.split()[1]: line.split()[2] for line in output.splitlines() if line.startswith("tinyfw ")}


def test_bisect_finds_the_release_that_brought_the_bug(
    case: Path, index: str, plugin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "environments"
    assert commands(bisect(case, index, cache, "2.1.0", "1.0.0", "2.0.0", "0.9.0", "5.0.0")) == 0
    out = capsys.readouterr().out
    assert verdicts(out) == {"0.9.0": "pass", "1.0.0": "pass", "2.0.0": "fail", "2.1.0": "fail", "5.0.0": "not"}, out
    assert "first change: pass in 1.0.0, fail from 2.0.0" in out
    assert "gradient elements exceed the error bound" in next(line for line in out.splitlines() if line.startswith("tinyfw 2.0.0"))
    assert "pip install tinyfw==5.0.0 failed" in out
    environments = sorted(p.name for p in cache.iterdir())
    assert [name.split("-")[1] for name in environments] == ["0.9.0", "1.0.0", "2.0.0", "2.1.0"]
    # A second bisect reuses the environments: nothing is made or installed again.
    ready = {p: p.joinpath("bisect-ready.json").stat().st_mtime_ns for p in cache.iterdir()}
    assert commands(bisect(case, index, cache, "1.0.0", "2.0.0")) == 0
    again = capsys.readouterr().out
    assert verdicts(again) == {"1.0.0": "pass", "2.0.0": "fail"} and "first change: pass in 1.0.0, fail from 2.0.0" in again
    assert {p: p.joinpath("bisect-ready.json").stat().st_mtime_ns for p in cache.iterdir()} == ready


def test_no_change_is_said_plainly(case: Path, index: str, plugin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert commands(bisect(case, index, tmp_path / "environments", *BUGGY)) == 0
    assert "no change: every judged version gives fail" in capsys.readouterr().out


def test_a_download_over_the_limit_is_refused_not_installed(
    case: Path, index: str, plugin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "environments"
    assert commands(bisect(case, index, cache, "1.0.0", extra=("--max-download-mb", "0.0001"))) == 0
    out = capsys.readouterr().out
    assert (
        "tinyfw 1.0.0" in out
        and "refused" in out
        and "tinyfw-1.0.0-py3-none-any.whl" in out
        and "over --max-download-mb 0.0001" in out
        and "raise --max-download-mb, or name an index" in out
    )
    assert not any(cache.iterdir())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--versions", "not-a-version"), "--versions: Invalid version: 'not-a-version'"),
        (("--versions", "1.0.0", "--max-download-mb", "0"), "--max-download-mb must be a positive number of megabytes, got 0"),
    ],
)
def test_bad_requests_are_usage_errors(
    case: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], message: str
) -> None:
    assert commands(["bisect", str(case), "--cache-dir", str(tmp_path), "--package", "tinyfw", *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_plug_in_s_case_needs_its_package_named(case: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert commands(["bisect", str(case), "--versions", "1.0.0", "--cache-dir", str(tmp_path)]) == 2
    assert (
        "the case's backend 'tiny' is not built in; name the distribution that provides its framework with --package"
        in capsys.readouterr().err
    )


def test_changes_skip_versions_that_could_not_be_judged() -> None:
    outcomes = [
        Outcome("1", "pass", ""),
        Outcome("2", "refused", ""),
        Outcome("3", "fail", ""),
        Outcome("4", "fail", ""),
        Outcome("5", "pass", ""),
    ]
    assert [(a.version, b.version) for a, b in changes(outcomes)] == [("1", "3"), ("4", "5")]


def test_bisect_of_a_fidelity_cell_finds_the_release_that_lost_exactness(
    index: str, plugin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No case file: the fidelity test id is enough; the bisect writes the case and judges it with the exactness bound."""
    cache = tmp_path / "environments"
    test_id = "test_sigmoid_prime_fidelity[tiny-manual-float64-saturated]"
    command = ["bisect", "--fidelity", test_id, "--versions", "2.0.0", "0.9.0", "1.0.0", "--package", "tinyfw"]
    assert commands([*command, "--backend", "tinyadapter:TinySigmoidAdapter", "--index-url", index, "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert verdicts(out) == {"0.9.0": "pass", "1.0.0": "fail", "2.0.0": "fail"}, out
    assert "first change: pass in 0.9.0, fail from 1.0.0" in out
    assert "exceed the exactness bound" in next(line for line in out.splitlines() if line.startswith("tinyfw 1.0.0"))
    written = next(line for line in out.splitlines() if line.startswith(f"fidelity case {test_id}: ")).rsplit(": ", 1)[1]
    case = cases.read(Path(written))
    assert Path(written).parent == cache / "fidelity-cases"
    assert case.fidelity == ("test_sigmoid_prime_fidelity", "saturated") and case.cell == Cell("tiny", "manual", "float64")
    # The same versions, conformance-judged: a(1 − a) is within the conformance bound, so 1.0.0 passes there.
    conformance = cases.write(dataclasses.replace(case, fidelity=None, kind="worst"), tmp_path)
    command = ["bisect", str(conformance), "--versions", "0.9.0", "1.0.0", "--package", "tinyfw"]
    assert commands([*command, "--backend", "tinyadapter:TinySigmoidAdapter", "--index-url", index, "--cache-dir", str(cache)]) == 0
    assert verdicts(capsys.readouterr().out) == {"0.9.0": "pass", "1.0.0": "pass"}


def test_a_case_file_and_a_fidelity_id_together_are_a_usage_error(case: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    command = ["bisect", str(case), "--fidelity", "test_sigmoid_prime_fidelity[jax-jit-float64-saturated]", "--versions", "1.0.0"]
    assert commands([*command, "--cache-dir", str(tmp_path)]) == 2
    assert "give either a case file or --fidelity TEST_ID (a fidelity test's id), not both or neither" in capsys.readouterr().err
