"""A throwaway pytest project, for ``pytester``, whose run ends with hand-made per-cell statistics.

The report options (``--conformance-report``, ``--markdown-summary``, ``--baseline``, ...) act at the end
of a real pytest session. To test them end to end without running a framework, the project's conftest
wires conformance/report.py's hooks as conformance/plugin.py does, and hands ``report.finish`` the
statistics a test chose, for one fake backend whose cells are named by those statistics' keys
("fake-eager-<dtype>"). The real plugin, wired to real adapters, is exercised in test_plugin.py.
"""

from __future__ import annotations

import json

import pytest

from backprop_conformance.conformance.stats import CellStats

PASSING_TEST = "def test_passes():\n    pass\n"

CONFTEST = """
import json
from pathlib import Path

from backprop_conformance.adapters.base import Capabilities
from backprop_conformance.adapters.registry import AdapterSpec
from backprop_conformance.conformance import report
from backprop_conformance.conformance.cells import Backend, Cell
from backprop_conformance.conformance.stats import CellStats

RUN = json.loads(Path(__file__).with_name("run.json").read_text(encoding="utf-8"))
CAPS = Capabilities(name="fake", framework=RUN["framework"], version=RUN["version"], dtypes=("float64", "float32"),
                    paths=("eager",), default_paths=("eager",))
BACKENDS = [Backend(AdapterSpec("fake", "fakepkg.adapter:Fake", "command line"), capabilities=CAPS)]


def pytest_addoption(parser):
    report.add_options(parser.getgroup("backprop-conformance"))


def pytest_configure(config):
    report.configure(config)


def pytest_sessionfinish(session):
    cells = [Cell("fake", "eager", key.rsplit("-", 1)[1]) for key in RUN["stats"]]
    stats = {key: CellStats(**value) for key, value in RUN["stats"].items()}
    report.finish(session, stats, BACKENDS, cells, RUN["profile"])


def pytest_terminal_summary(terminalreporter, config):
    report.terminal_summary(terminalreporter, config)
"""


def make_report_project(
    pytester: pytest.Pytester,
    stats: dict[str, CellStats],
    *,
    test: str = PASSING_TEST,
    framework: str = "FakeFramework",
    version: str = "9.8.7",
    profile: str = "dev",
) -> None:
    """Set up ``pytester``'s project: its run ends with ``stats`` as the merged statistics of backend "fake"."""
    pytester.makeconftest(CONFTEST)
    run = {"stats": {key: value.to_dict() for key, value in stats.items()}, "framework": framework, "version": version, "profile": profile}
    (pytester.path / "run.json").write_text(json.dumps(run), encoding="utf-8")
    pytester.makepyfile(test_it=test)
