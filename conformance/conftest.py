"""Activates the suite's pytest plugin for ``pytest conformance`` (hooks live in :mod:`backprop_conformance.conformance.plugin`)."""

from backprop_conformance.conformance.plugin import (  # noqa: F401
    pytest_addoption,
    pytest_configure,
    pytest_generate_tests,
    pytest_report_header,
    pytest_runtest_call,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
    pytest_testnodedown,
)
