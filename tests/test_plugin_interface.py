"""The plug-in interface (:mod:`backprop_conformance.adapters.base`): the suite's names cannot be overridden, and the
interface version a plug-in states is checked.

An adapter written against an earlier interface, with its own helper ``compute(self, network, batch, dtype)``, would
otherwise be called by the suite in place of ``Adapter.compute`` and fail every example with an argument error that
does not say why. Checked three ways: where the class is created, through the registry's ``module:Attribute``
loading in this process, and through a suite run in a subprocess, where it must be a usage error (exit status 4).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import assert_usage_error, suite
from mutants import ManualBackprop

from backprop_conformance.adapters.base import (
    PLUGIN_INTERFACE,
    PLUGIN_METHODS,
    SUITE_METHODS,
    Adapter,
    AdapterError,
    PluginInterfaceError,
)
from backprop_conformance.adapters.registry import resolve

OLD_PLUGIN_MODULE = "old_interface_plugin"
OLD_PLUGIN_SOURCE = '''"""A third-party adapter written against an earlier interface: its own helper is called compute."""
from backprop_conformance.adapters.base import Adapter, Capabilities
from backprop_conformance.reference.vectorized import backprop


class OldAdapter(Adapter):
    def capabilities(self):
        return Capabilities(name="old", framework="numpy", version="1", dtypes=("float64",), paths=("manual",), default_paths=("manual",))

    def load_parameters(self, network, *, dtype, device="cpu"):
        return network

    def run(self, network, batch, *, dtype, path, device="cpu"):
        return self.compute(network, batch, dtype)

    def compute(self, network, batch, dtype):
        return backprop(network, batch)
'''


@pytest.fixture
def old_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The old plug-in's module in a directory on sys.path (in-process) and returned for PYTHONPATH (subprocess)."""
    (tmp_path / f"{OLD_PLUGIN_MODULE}.py").write_text(OLD_PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop(OLD_PLUGIN_MODULE, None)


@pytest.mark.parametrize("name", SUITE_METHODS)
def test_a_subclass_defining_a_suite_method_is_refused_where_it_is_created(name: str) -> None:
    with pytest.raises(PluginInterfaceError) as raised:
        type("Clashing", (ManualBackprop,), {name: lambda self, *args: None})
    message = str(raised.value)
    assert f"defines {name!r}" in message and "Clashing" in message, message
    assert f"Rename the adapter's helper (for instance to _{name})" in message, message


def test_the_error_lists_whose_methods_are_whose() -> None:
    with pytest.raises(PluginInterfaceError) as raised:

        class Old(ManualBackprop):
            def compute(self, network: object, batch: object, dtype: str) -> None:
                raise AssertionError("never called")

    message = str(raised.value)
    assert f"{__name__}." in message and "Old" in message, message
    assert ", ".join(PLUGIN_METHODS) in message and ", ".join(SUITE_METHODS) in message, message


def test_the_plugin_and_suite_names_are_disjoint_and_cover_the_base_class() -> None:
    assert not set(PLUGIN_METHODS) & set(SUITE_METHODS)
    public = {name for name in vars(Adapter) if not name.startswith("_") and callable(getattr(Adapter, name, None))}
    public |= {"caps"}  # a cached_property, not callable on the class
    assert public <= {*PLUGIN_METHODS, *SUITE_METHODS}, public - {*PLUGIN_METHODS, *SUITE_METHODS}


def test_stating_the_current_interface_is_accepted_and_another_is_refused() -> None:
    stating = type("Stating", (ManualBackprop,), {"plugin_interface": PLUGIN_INTERFACE})
    assert stating.plugin_interface == PLUGIN_INTERFACE
    assert ManualBackprop.plugin_interface == PLUGIN_INTERFACE, "a plug-in that states nothing follows the current interface"
    for stated in (PLUGIN_INTERFACE - 1, PLUGIN_INTERFACE + 1, "2", True):
        with pytest.raises(PluginInterfaceError) as raised:
            type("Stale", (ManualBackprop,), {"plugin_interface": stated})
        message = str(raised.value)
        assert f"states plugin_interface = {stated!r}" in message and f"offers plug-in interface {PLUGIN_INTERFACE}" in message, message


def test_the_registry_reports_the_overridden_method_as_an_adapter_error(old_plugin: Path) -> None:
    target = f"{OLD_PLUGIN_MODULE}:OldAdapter"
    with pytest.raises(AdapterError) as raised:
        resolve(target).load()
    assert isinstance(raised.value, PluginInterfaceError)
    message = str(raised.value)
    assert target in message and "defines 'compute'" in message and "Rename the adapter's helper" in message, message


def test_a_suite_run_with_the_old_plugin_is_a_usage_error_naming_the_method(old_plugin: Path, tmp_path: Path) -> None:
    path = os.pathsep.join(p for p in (str(old_plugin), os.environ.get("PYTHONPATH", "")) if p)
    run = suite(tmp_path / "run", "--conformance-backend", f"{OLD_PLUGIN_MODULE}:OldAdapter", marks=None, PYTHONPATH=path)
    assert_usage_error(run, "defines 'compute'", "OldAdapter")
