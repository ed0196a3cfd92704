"""Finding adapters (:mod:`backprop_conformance.adapters.registry`): built-ins, ``module:attribute`` names and installed plug-ins.

Plug-in discovery is tested the way a plug-in is really installed: a ``*.dist-info`` directory with an
``entry_points.txt`` on ``sys.path``, found by :mod:`importlib.metadata` itself, rather than by
replacing ``entry_points``. One test then runs the suite in a subprocess with that directory on
``PYTHONPATH``, as a user who ``pip install``-ed the plug-in would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mutants import ManualBackprop

from backprop_conformance.adapters.base import Adapter
from backprop_conformance.adapters.registry import (
    BUILTIN,
    ENTRY_POINT_GROUP,
    AdapterSpec,
    AdapterUnavailable,
    UnknownAdapter,
    entry_point_specs,
    known_specs,
    resolve,
)
from backprop_conformance.conformance.runner import clean_environment, run_suite

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGIN_MODULE = "fake_conformance_plugin"
PLUGIN_DIST = "fake-conformance-plugin"

PLUGIN_SOURCE = '''"""A third-party adapter package, as installed by pip: one correct numpy adapter."""
from mutants import ManualBackprop


class PluginAdapter(ManualBackprop):
    name = "fakeplug"
'''


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution on sys.path registering ``fakeplug`` and, trying to shadow a built-in, ``torch``."""
    (tmp_path / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE)
    dist_info = tmp_path / f"{PLUGIN_DIST.replace('-', '_')}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PLUGIN_DIST}\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nfakeplug = {PLUGIN_MODULE}:PluginAdapter\ntorch = {PLUGIN_MODULE}:PluginAdapter\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop(PLUGIN_MODULE, None)


def test_builtins_resolve_without_importing_their_framework() -> None:
    for name, target, needs in (
        ("torch", "backprop_conformance.adapters.torch_adapter:TorchAdapter", "torch"),
        ("jax", "backprop_conformance.adapters.jax_adapter:JaxAdapter", "jax"),
    ):
        spec = resolve(name)
        assert spec == BUILTIN[name]
        assert (spec.name, spec.target, spec.source, spec.requires) == (name, target, "built-in", (needs,))


def test_module_attribute_resolves_and_loads() -> None:
    spec = resolve("mutants:ManualBackprop")
    assert (spec.name, spec.target, spec.source) == ("ManualBackprop", "mutants:ManualBackprop", "command line")
    adapter = spec.load()
    assert isinstance(adapter, ManualBackprop) and adapter.capabilities().name == "ok-stable"


def test_an_instance_is_used_as_it_is() -> None:
    assert resolve("test_registry:AN_INSTANCE").load() is AN_INSTANCE


AN_INSTANCE = ManualBackprop()


@pytest.mark.parametrize(
    "name", ["pytorch", "mutants.ManualBackprop", "mutants:", ":ManualBackprop", "mutants:Manual Backprop", "3d:X", ""]
)
def test_unknown_names_list_the_known_adapters(name: str) -> None:
    with pytest.raises(UnknownAdapter) as raised:
        resolve(name)
    message = str(raised.value)
    assert f"unknown adapter {name!r}" in message
    assert "known adapters are flax, jax, keras, mlx, tensorflow, torch" in message and "package.module:Attribute" in message


def test_missing_attribute_and_non_adapter_are_unknown_adapters() -> None:
    with pytest.raises(UnknownAdapter, match="module 'mutants' has no attribute 'Nope'"):
        resolve("mutants:Nope").load()
    with pytest.raises(UnknownAdapter, match=re.escape("mutants:PATH is a str, not a backprop_conformance.adapters.base.Adapter")):
        resolve("mutants:PATH").load()


def test_missing_requirement_is_unavailable_with_the_reason() -> None:
    spec = AdapterSpec("needs-it", "mutants:ManualBackprop", "test", ("no_such_framework_for_registry_tests",))
    assert spec.missing() == ["no_such_framework_for_registry_tests"]
    with pytest.raises(AdapterUnavailable) as raised:
        spec.load()
    assert str(raised.value) == "skipped: no_such_framework_for_registry_tests not installed (needed by adapter 'needs-it')"


def test_adapter_class_requires_is_checked_after_import() -> None:
    """A module:attribute name has no requires of its own; the class's ``requires`` decides."""
    with pytest.raises(AdapterUnavailable, match="skipped: no_such_framework_for_registry_tests not installed"):
        resolve("test_registry:NeedsMissingFramework").load()


class NeedsMissingFramework(ManualBackprop):
    """Correct, but declares a framework that is not installed."""

    requires = ("no_such_framework_for_registry_tests",)


def test_entry_point_is_discovered_and_loads(installed_plugin: Path) -> None:
    specs = known_specs()
    assert "fakeplug" in specs
    spec = resolve("fakeplug")
    assert (spec.target, spec.source) == (f"{PLUGIN_MODULE}:PluginAdapter", f"entry point of {PLUGIN_DIST}")
    adapter = spec.load()
    assert isinstance(adapter, Adapter) and adapter.capabilities().name == "fakeplug"


def test_unknown_name_lists_installed_plugins(installed_plugin: Path) -> None:
    with pytest.raises(UnknownAdapter, match="known adapters are fakeplug, flax, jax, keras, mlx, tensorflow, torch"):
        resolve("fakeplugg")


def test_plugin_cannot_shadow_a_builtin(installed_plugin: Path) -> None:
    assert entry_point_specs()["torch"].target == f"{PLUGIN_MODULE}:PluginAdapter", "the shadowing entry point was not installed"
    assert known_specs()["torch"] == BUILTIN["torch"]
    assert resolve("torch") == BUILTIN["torch"]


def test_installed_plugin_runs_by_name(installed_plugin: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """``--conformance-backend fakeplug`` in a fresh interpreter: the suite finds the plug-in through its entry point and tests it."""
    tmp = tmp_path_factory.mktemp("plugin-run")
    env = clean_environment(tmp / "hypothesis", PYTHONPATH=os.pathsep.join([str(installed_plugin), str(REPO_ROOT / "tests")]))
    done = run_suite(["--conformance-backend", "fakeplug", "--conformance-max-examples=3", "-m", "not fidelity"], tmp, env=env)
    assert done.returncode == 0 and done.report is not None, done.explain()
    cells = {c.id: c for c in done.report.cells}
    assert set(cells) == {"fakeplug-manual-float64", "fakeplug-manual-float32"}
    assert all(c.examples == 3 and c.status == "passed" for c in cells.values()), cells


def test_installed_plugin_joins_a_plain_run(installed_plugin: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Installing a plug-in is how a user says "test this framework": a run that names no backend includes it, beside the built-ins."""
    tmp = tmp_path_factory.mktemp("plain-run")
    env = clean_environment(tmp / "hypothesis", PYTHONPATH=os.pathsep.join([str(installed_plugin), str(REPO_ROOT / "tests")]))
    done = run_suite(["--collect-only", "-q"], tmp, env=env)
    assert done.returncode == 0, done.explain()
    assert "test_gradients[fakeplug-manual-float64]" in done.output, done.explain()
    assert "torch" in done.output.split("collected", 1)[0] or "test_gradients[torch-" in done.output, "the built-ins still run"


@pytest.mark.parametrize(
    ("module", "frameworks"),
    [
        ("torch_adapter", ("torch",)),
        ("jax_adapter", ("jax", "jaxlib")),
        ("tensorflow_adapter", ("tensorflow",)),
        ("keras_adapter", ("keras", "tensorflow", "torch", "jax")),
    ],
)
def test_importing_a_built_in_adapter_and_listing_adapters_imports_no_framework(module: str, frameworks: tuple[str, ...]) -> None:
    """Adapter contract: importing an adapter's module, or listing every adapter, never pays for (or fails on) a framework.

    In a fresh interpreter, and whether or not the framework is installed (the data-parallel helpers the torch and
    jax adapters import must be as lazy as the adapters themselves).
    """
    code = (
        f"import sys, backprop_conformance.adapters.{module}, backprop_conformance.adapters.registry as r; r.known_specs(); "
        f"print([m for m in {frameworks!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"importing backprop_conformance.adapters.{module} imported {done.stdout.strip()}"
