"""``backprop-conformance``: the installed suite, run from any directory, with the options of ``pytest conformance``.

From a clone, ``pytest conformance`` runs the suite: pytest finds ``conformance/conftest.py`` among its
arguments and loads the plug-in before it parses the command line. An installed suite has no such
directory under the user's feet, and ``pytest --pyargs`` loads the conftest too late for the suite's
options. This command points pytest at the installed ``conformance`` directory itself, so every option
works; and it anchors the run in the working directory (``--rootdir``), so case files, reports, the
hypothesis database and pytest's cache land where the user runs it, and a ``pytest.ini`` or
``pyproject.toml`` of a project around the installation is not read (``-c`` names an empty one).

``backprop-conformance --help`` shows the suite's own options first, then pytest's.
``backprop-conformance replay CASE.json``, ``backprop-conformance plot REPORT.json``, ``backprop-conformance
accumulation BACKEND``, ``backprop-conformance merge REPORT...``, ``backprop-conformance page REPORT...`` and
``backprop-conformance bisect CASE.json --versions ...`` run those commands.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backprop_conformance.conformance.options import add_options

SUITE = Path(__file__).resolve().parent
"""The directory holding the suite's conftest and test modules, wherever it is installed."""

COMMANDS = ("replay", "plot", "accumulation", "merge", "page", "bisect")
"""First arguments that name a command rather than the suite's pytest arguments."""

REPORT_CHARS = "-rfEsX"
"""pytest's short summary of failures, errors, skips and strict xpasses, as the repository's own configuration asks."""


class _OptionCollector:
    """Collects the suite's options, as :func:`~backprop_conformance.conformance.options.add_options` declares them,
    into argparse, to print them for ``--help``."""

    def __init__(self) -> None:
        self.parser = argparse.ArgumentParser(
            prog="backprop-conformance",
            usage="backprop-conformance [suite options] [pytest options]",
            description="The installed suite, run from any directory, with the options of `pytest conformance`.",
            add_help=False,
        )
        self.group: Any = None

    def getgroup(self, name: str, description: str = "") -> _OptionCollector:
        self.group = self.parser.add_argument_group(description or name)
        return self

    def addoption(self, *names: str, **attrs: Any) -> None:
        self.group.add_argument(*names, **attrs)


def suite_help() -> str:
    collector = _OptionCollector()
    add_options(collector)
    return collector.parser.format_help()


def pytest_arguments(argv: Sequence[str]) -> list[str]:
    """The pytest command line that runs the installed suite with ``argv`` from the working directory."""
    return [str(SUITE), "--rootdir", os.getcwd(), "-c", os.devnull, REPORT_CHARS, *argv]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; a command of :data:`COMMANDS` as first argument runs that command instead (:mod:`.__main__`).

    ``backprop-conformance replay CASE.json`` is the safe way to replay a case file a stranger sent: a
    console script does not put the working directory on the import path, so a ``torch.py`` or
    ``numpy.py`` left beside the file cannot be imported in place of the real one, as it can be under
    ``python -m``.
    """
    import pytest

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        from backprop_conformance.conformance.__main__ import main as commands

        return commands(args)
    if "-h" in args or "--help" in args:
        print(suite_help())
        print("pytest's own options follow (the suite's appear again among them).\n", flush=True)
    return int(pytest.main(pytest_arguments(args)))


if __name__ == "__main__":
    sys.exit(main())
