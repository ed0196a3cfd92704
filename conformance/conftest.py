"""Activates the suite's pytest plug-in for ``pytest conformance`` (everything lives in :mod:`backprop_conformance.conformance.plugin`)."""

pytest_plugins = ["backprop_conformance.conformance.plugin"]
