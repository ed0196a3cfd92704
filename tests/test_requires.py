"""``requires``: which adapters count as installed, checked without importing anything.

"Installed" means importable as a module: a dotted name (``mlx.core``) is looked up in its parents' folders, and a
folder with no ``__init__.py`` and no module in it -- what ``pip install mlx-cpu`` leaves, libraries and headers
under ``mlx/`` -- counts as missing, so that the adapter is skipped with a reason instead of failing the run with
a usage error when its import fails.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backprop_conformance.adapters.base import AdapterError
from backprop_conformance.adapters.registry import AdapterSpec, AdapterUnavailable, _installed


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path holding a bare namespace folder ``bare_ns`` (a shared library and headers only), a
    namespace package ``real_ns`` with an extension-style module ``core`` and a module ``extra.py``, and a regular
    package ``regular`` with a subpackage ``sub``."""
    (tmp_path / "bare_ns" / "lib").mkdir(parents=True)
    (tmp_path / "bare_ns" / "lib" / "libbare.so").write_bytes(b"")
    (tmp_path / "bare_ns" / "include").mkdir()
    (tmp_path / "real_ns").mkdir()
    (tmp_path / "real_ns" / "extra.py").write_text("", encoding="utf-8")
    (tmp_path / "regular" / "sub").mkdir(parents=True)
    (tmp_path / "regular" / "__init__.py").write_text("raise RuntimeError('must not be imported')\n", encoding="utf-8")
    (tmp_path / "regular" / "sub" / "__init__.py").write_text("", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("bare_ns", "real_ns", "regular", "regular.sub"):
        sys.modules.pop(name, None)


def test_a_bare_namespace_folder_is_not_installed(site: Path) -> None:
    assert not _installed("bare_ns")
    assert not _installed("bare_ns.core")


def test_a_namespace_package_with_a_module_is_installed(site: Path) -> None:
    assert _installed("real_ns") and _installed("real_ns.extra")
    assert not _installed("real_ns.core")


def test_dotted_names_are_found_without_importing_their_parents(site: Path) -> None:
    """``regular/__init__.py`` raises if imported: finding ``regular.sub`` must not import it."""
    assert _installed("regular.sub")
    assert not _installed("regular.nothing")
    assert "regular" not in sys.modules


def test_an_adapter_needing_a_bare_folder_is_skipped_not_a_usage_error(site: Path) -> None:
    spec = AdapterSpec("needs-bare", "bare_ns.core:Adapter", "command line", ("bare_ns",))
    with pytest.raises(AdapterUnavailable, match=r"skipped: bare_ns not installed \(needed by adapter 'needs-bare'\)"):
        spec.load()


def test_a_distribution_name_in_requires_is_a_usage_error() -> None:
    """``mlx-cpu`` is what pip installs, not what Python imports: the adapter's author must hear which to write."""
    spec = AdapterSpec("dashed", "backprop_conformance.adapters.example_numpy:NumpyAdapter", "command line", ("mlx-cpu",))
    with pytest.raises(AdapterError, match=r"requires holds 'mlx-cpu', which is not an import name.*\(mlx.core\)"):
        spec.load()


def test_the_mlx_built_in_requires_its_python_package() -> None:
    """The mlx adapter names ``mlx.core``: a bare ``mlx`` folder (pip install mlx-cpu) is a skip."""
    from backprop_conformance.adapters.registry import BUILTIN

    assert BUILTIN["mlx"].requires == ("mlx.core",)
    assert BUILTIN["flax"].requires == ("flax.nnx", "jax")
