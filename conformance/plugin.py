"""The pytest plug-in of the suite: its options, its hypothesis profiles, its session object and its fixture.

Activated by ``conformance/conftest.py`` (``pytest_plugins``), so it is active exactly when the user runs
``pytest conformance`` (or the installed ``backprop-conformance``), never in other test runs. Everything
a run holds lives in one :class:`~backprop_conformance.conformance.session.ConformanceSession`, created
here at configure time and registered as a plug-in of its own; the tests reach its test-facing side
(:class:`~backprop_conformance.conformance.checks.Checks`) through the ``conformance`` fixture.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from backprop_conformance.conformance import options
from backprop_conformance.conformance.checks import Checks
from backprop_conformance.conformance.session import ConformanceSession

SESSION_PLUGIN = "backprop-conformance-session"

PROFILES = {
    "thorough": {"max_examples": 2000},
    "large": {"max_examples": 10, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]},
}
"""The profiles the suite adds to Hypothesis' own ``default`` and ``ci`` (Hypothesis detects CI itself):
``thorough``, 2,000 examples per cell; ``large``, 10 examples per cell on networks up to width 1024,
depth 16 and batch 512 (:data:`~backprop_conformance.conformance.strategies.LARGE_LIMITS`)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    """The suite's options and its hypothesis profiles.

    The profiles are registered here, the first hook the plug-in gets, because Hypothesis loads
    ``--hypothesis-profile thorough`` in its own ``pytest_configure``, which may run before this
    plug-in's; registering them when this module is merely imported would be a side effect on every
    process that imports it.
    """
    options.add_options(parser)
    for name, values in PROFILES.items():
        settings.register_profile(name, deadline=None, **values)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Create the run's session and register it, after Hypothesis has loaded the profile it is to extend."""
    config.addinivalue_line("markers", "fidelity: exactness checks against the high-precision oracle, beyond conformance")
    session = ConformanceSession(config)
    session.configure()
    config.pluginmanager.register(session, SESSION_PLUGIN)


@pytest.fixture(scope="session")
def conformance(pytestconfig: pytest.Config) -> Checks:
    """What the suite's test functions call (:class:`~backprop_conformance.conformance.checks.Checks`), on the run's backends and limits."""
    session = pytestconfig.pluginmanager.get_plugin(SESSION_PLUGIN)
    assert isinstance(session, ConformanceSession)
    return session.checks
