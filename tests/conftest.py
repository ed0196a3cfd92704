"""Test-wide guard: no test may leave mpmath's global precision changed.

mpmath keeps its working precision in one global context (``mpmath.mp``). The oracle in
:mod:`backprop_conformance.reference.mpmath_oracle` promises to set precision only inside ``workdps`` blocks; a leak would
silently change the precision of every later mpmath computation in the session, including the
expected values of other tests. This hook checks the promise around every test, whichever code path
the test takes, and restores the precision so one leak cannot cascade into unrelated failures.

The shared hypothesis strategies and the agreement check are in ``tests/strategies.py`` (importable,
unlike a conftest).
"""

from __future__ import annotations

from collections.abc import Generator

import mpmath
import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    before = mpmath.mp.prec
    try:
        result = yield
    finally:
        after = mpmath.mp.prec
        mpmath.mp.prec = before
    if after != before:
        raise AssertionError(f"{item.nodeid} changed mpmath's global precision from {before} to {after} bits and did not restore it")
    return result
