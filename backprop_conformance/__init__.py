"""backprop-conformance: does an autodiff framework compute the exact gradients of a sigmoid network?

Installed, the project lives under this one import name: ``backprop_conformance.reference`` (the page's
equations and the error bound), ``backprop_conformance.adapters`` (the frameworks put on trial) and
``backprop_conformance.conformance`` (the pytest suite and its machinery), so that it can sit beside
any other package called ``reference``, ``adapters`` or ``conformance``.

The public API, for calling the suite from your own tests (``docs/api.md``): :func:`check_adapter`,
:func:`check_gradients`, :func:`check_function`, :func:`load_case`, :func:`rounded`, :class:`ConformanceFailure`,
and the types an adapter is written with: :class:`Adapter`, :class:`Capabilities`, :class:`AdapterOutput`,
:class:`Network`, :class:`Batch`, :class:`Gradients`. They are imported on first use, so that importing the package (or
``backprop_conformance.conformance.report`` to read a report) loads nothing it does not need.

In a source checkout the three folders sit beside this one, at the top of the repository (the design
card's layout), and setuptools maps them inside it when it builds the wheel. The lines below let the
import system find them there too, so that a checkout works the same with or without an install; an
installed copy has no such siblings and is left alone.
"""

from __future__ import annotations

import importlib
from pathlib import Path as _Path
from typing import Any

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "conformance" / "plugin.py").is_file():
    __path__.append(str(_checkout))

_API = {
    "check_adapter": "backprop_conformance.conformance.api",
    "check_gradients": "backprop_conformance.conformance.api",
    "check_function": "backprop_conformance.conformance.api",
    "load_case": "backprop_conformance.conformance.api",
    "rounded": "backprop_conformance.conformance.api",
    "ConformanceFailure": "backprop_conformance.conformance.api",
    "AdapterCheck": "backprop_conformance.conformance.api",
    "Adapter": "backprop_conformance.adapters.base",
    "AdapterOutput": "backprop_conformance.adapters.base",
    "Capabilities": "backprop_conformance.adapters.base",
    "Network": "backprop_conformance.reference.model",
    "Batch": "backprop_conformance.reference.model",
    "Gradients": "backprop_conformance.reference.model",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'backprop_conformance' has no attribute {name!r}")
