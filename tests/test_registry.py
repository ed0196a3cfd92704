"""Finding adapters (:mod:`backprop_conformance.adapters.registry`): built-ins, ``module:attribute`` names and installed plug-ins.

Plug-in discovery is tested the way a plug-in is really installed: a ``*.dist-info`` directory with an
``entry_points.txt`` on ``sys.path``, found by :mod:`importlib.metadata` itself, rather than by
replacing ``entry_points``; runs of the suite put that directory on ``PYTHONPATH``, as a user who
``pip install``-ed the plug-in would. Installed plug-ins join a plain run, even where no built-in
framework is installed. Only a framework listed in ``requires`` being absent is a skip: a plug-in that
fails to import, raises in its constructor or its ``capabilities()``, or returns the wrong type from
it is a usage error naming it and the cause, never a skip that lets a run pass having tested nothing.
The broken adapters are those of :mod:`tests.hostile_adapters`, or modules written for the test.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import GOOD_PLUGIN, REPO_ROOT, assert_usage_error, install_distribution, run_python, suite
from hostile_adapters import HERE
from mutants import ManualBackprop

from backprop_conformance.adapters.base import Adapter
from backprop_conformance.adapters.registry import (
    BUILTIN,
    AdapterSpec,
    AdapterUnavailable,
    UnknownAdapter,
    entry_point_specs,
    known_specs,
    resolve,
)

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
    target = f"{PLUGIN_MODULE}:PluginAdapter"
    install_distribution(tmp_path, PLUGIN_DIST, {"fakeplug": target, "torch": target}, {PLUGIN_MODULE: PLUGIN_SOURCE})
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


def plugin_path(installed_plugin: Path) -> str:
    """``PYTHONPATH`` for the suite's subprocess: the plug-in, and this directory, whose :mod:`mutants` it imports."""
    return os.pathsep.join([str(installed_plugin), str(REPO_ROOT / "tests")])


def test_installed_plugin_runs_by_name(installed_plugin: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """``--conformance-backend fakeplug`` in a fresh interpreter: the suite finds the plug-in through its entry point and tests it."""
    tmp = tmp_path_factory.mktemp("plugin-run")
    done = suite(tmp, "--conformance-backend", "fakeplug", "--conformance-max-examples=3", PYTHONPATH=plugin_path(installed_plugin))
    assert done.returncode == 0 and done.report is not None, done.explain()
    cells = {c.id: c for c in done.report.cells}
    assert set(cells) == {"fakeplug-manual-float64", "fakeplug-manual-float32"}
    assert all(c.examples == 3 and c.status == "passed" for c in cells.values()), cells


def test_installed_plugin_joins_a_plain_run(installed_plugin: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Installing a plug-in is how a user says "test this framework": a run that names no backend includes it, beside the built-ins."""
    tmp = tmp_path_factory.mktemp("plain-run")
    done = suite(tmp, "--collect-only", "-q", marks=None, PYTHONPATH=plugin_path(installed_plugin))
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
    done = run_python("-c", code, cwd=REPO_ROOT, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"importing backprop_conformance.adapters.{module} imported {done.stdout.strip()}"


# An installed plug-in joins a plain run, and is tested even where no built-in framework is installed.


HIDE_FRAMEWORKS = '''"""sitecustomize for the test: this interpreter behaves as one where no built-in framework was ever installed.

Every finder on sys.meta_path is wrapped so that it finds nothing named torch, jax, jaxlib, tensorflow, keras, mlx or flax: then
``importlib.util.find_spec("torch")`` returns None and ``import torch`` raises ModuleNotFoundError,
exactly as without the packages, while everything else installed beside them still imports.
"""
import sys

HIDDEN = ("torch", "jax", "jaxlib", "tensorflow", "keras", "mlx", "flax")


class Hiding:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        find = getattr(self.finder, "find_spec", None)
        return None if find is None else find(name, path, target)

    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)


sys.meta_path[:] = [Hiding(finder) for finder in sys.meta_path]
'''


@pytest.fixture(scope="module")
def without_frameworks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose ``sitecustomize.py`` hides the built-in frameworks from an interpreter that has it on ``PYTHONPATH``.

    Why this way: the frameworks sit in the same site-packages as numpy and pytest, so they cannot be
    removed from the path, and a stub ``torch.py`` would make them *present*. A finder that finds
    nothing under their names is what a machine without them looks like to the registry, which asks
    :func:`importlib.util.find_spec`, and to any import.
    """
    directory = tmp_path_factory.mktemp("without-frameworks")
    (directory / "sitecustomize.py").write_text(HIDE_FRAMEWORKS, encoding="utf-8")
    probe = "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('jax'), u.find_spec('numpy') is not None)"
    done = run_python("-c", probe, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(directory)})
    assert done.stdout.split() == ["None", "None", "True"], f"the frameworks are not hidden: {done.stdout}{done.stderr}"
    return directory


def test_installed_plugin_is_tested_by_a_plain_run_without_the_built_in_frameworks(
    tmp_path: Path, good_plugin: Path, without_frameworks: Path
) -> None:
    """No ``--conformance-backend``: the built-ins skip with their reason, the plug-in's cells run and pass (not "all skipped, exit 0")."""
    run = suite(tmp_path, "--conformance-max-examples=3", PYTHONPATH=os.pathsep.join([str(without_frameworks), str(good_plugin)]))
    assert run.returncode == 0 and run.report is not None, run.explain()
    skipped = {b.name: b.reason for b in run.report.skipped_backends}
    assert skipped == {
        "torch": "skipped: torch not installed (needed by adapter 'torch')",
        "jax": "skipped: jax not installed (needed by adapter 'jax')",
        "tensorflow": "skipped: tensorflow not installed (needed by adapter 'tensorflow')",
        "keras": "skipped: keras not installed (needed by adapter 'keras')",
        "mlx": "skipped: mlx.core not installed (needed by adapter 'mlx')",
        "flax": "skipped: flax.nnx, jax not installed (needed by adapter 'flax')",
    }
    cells = {c.id: (c.status, c.examples) for c in run.report.cells}
    assert cells == {f"{GOOD_PLUGIN}-manual-float64": ("passed", 3), f"{GOOD_PLUGIN}-manual-float32": ("passed", 3)}, run.explain()


# Only a framework listed in ``requires`` being absent is a skip; anything else wrong with a plug-in is a usage error.

BROKEN_MODULES = {
    "hostile_import_error": "import no_such_framework_for_hostile_tests\n\n\nclass Adapter:\n    pass\n",
    "hostile_syntax_error": "def capabilities(:\n    pass\n",
    "hostile_raises_at_import": 'raise RuntimeError("the plug-in failed while importing itself")\n',
}
BROKEN_PLUGINS: dict[str, tuple[str, list[str]]] = {
    "broken-import": (
        "hostile_import_error:Adapter",
        [
            "adapter 'broken-import': importing 'hostile_import_error' failed: No module named 'no_such_framework_for_hostile_tests'",
            "list it in `requires`",
        ],
    ),
    "broken-syntax": ("hostile_syntax_error:Adapter", ["adapter 'broken-syntax': importing 'hostile_syntax_error' raised SyntaxError"]),
    "broken-at-import": (
        "hostile_raises_at_import:Adapter",
        ["adapter 'broken-at-import': importing 'hostile_raises_at_import' raised RuntimeError: the plug-in failed while importing itself"],
    ),
    "broken-constructor": (
        f"{HERE}:ConstructorRaises",
        [f"adapter 'broken-constructor': {HERE}:ConstructorRaises() raised RuntimeError: no accelerator found"],
    ),
    "broken-capabilities": (
        f"{HERE}:CapabilitiesRaise",
        [f"adapter 'broken-capabilities': {HERE}:CapabilitiesRaise.capabilities() raised KeyError"],
    ),
    "broken-capabilities-type": (
        f"{HERE}:CapabilitiesOfTheWrongType",
        [
            "CapabilitiesOfTheWrongType.capabilities() returned a dict, expected backprop_conformance.adapters.base.Capabilities",
            f"(adapter loaded from {HERE}:CapabilitiesOfTheWrongType)",
        ],
    ),
}


@pytest.fixture(scope="module")
def broken_plugins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One installed distribution with an entry point for each way a plug-in can be broken."""
    directory = tmp_path_factory.mktemp("broken-plugins")
    return install_distribution(directory, "hostile-broken-plugins", {n: t for n, (t, _) in BROKEN_PLUGINS.items()}, BROKEN_MODULES)


@pytest.mark.parametrize("plugin", BROKEN_PLUGINS, ids=BROKEN_PLUGINS.keys())
def test_broken_plugin_is_a_usage_error_naming_it_and_the_cause(tmp_path: Path, broken_plugins: Path, plugin: str) -> None:
    """A broken plug-in reported as skipped would turn a run green having tested nothing; the user must see which and why."""
    run = suite(tmp_path, "--conformance-backend", plugin, PYTHONPATH=str(broken_plugins))
    assert_usage_error(run, *BROKEN_PLUGINS[plugin][1])
    assert "skipped" not in run.output, run.explain()


def test_broken_plugin_fails_a_plain_run(tmp_path: Path, broken_plugins: Path, without_frameworks: Path) -> None:
    """Installed and broken, it fails the plain run too (torch and jax hidden, so that they cannot mask it)."""
    run = suite(tmp_path, PYTHONPATH=os.pathsep.join([str(without_frameworks), str(broken_plugins)]))
    assert_usage_error(run, "adapter 'broken-at-import': importing 'hostile_raises_at_import' raised RuntimeError")
