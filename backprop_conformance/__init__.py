"""backprop-conformance: does an autodiff framework compute the exact gradients of a sigmoid network?

Installed, the project lives under this one import name: ``backprop_conformance.reference`` (the page's
equations and the error bound), ``backprop_conformance.adapters`` (the frameworks put on trial) and
``backprop_conformance.conformance`` (the pytest suite and its machinery), so that it can sit beside
any other package called ``reference``, ``adapters`` or ``conformance``.

In a source checkout those three folders sit beside this one, at the top of the repository (the
design card's layout), and setuptools maps them inside it when it builds the wheel. The lines below
let the import system find them there too, so that a checkout works the same with or without an
install; an installed copy has no such siblings and is left alone.
"""

from __future__ import annotations

from pathlib import Path as _Path

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "conformance" / "plugin.py").is_file():
    __path__.append(str(_checkout))
