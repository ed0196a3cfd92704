"""Where a result came from: the suite's version and commit, the machine, and the hypothesis settings.

Two runs can only be compared, and a failure only reproduced, when what produced them is known. A
report and a case file record it from here: the suite's installed version and, when it runs from its
own git checkout, the commit; Python, numpy and the platform; and what decided which examples ran.
"""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from backprop_conformance.adapters.base import PLUGIN_INTERFACE

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
"""The checkout's top level (where ``conformance/`` sits) when the suite runs from a clone."""


def suite_version() -> str:
    """backprop-conformance's installed version, or a note that it is not installed."""
    try:
        return version("backprop-conformance")
    except PackageNotFoundError:
        return "unknown (not installed)"


def suite_checkout() -> dict[str, Any]:
    """The git commit of the suite's own checkout and whether tracked files differ from it; nulls when not a checkout.

    Asked in the package's directory, and only believed when the checkout's top level is the directory
    that holds the package: an installed copy inside some other repository (a virtual environment in a
    user's project) would otherwise report that project's commit. ``--no-optional-locks`` keeps
    ``git status`` from rewriting the index of a checkout it only reads.
    """
    root = PACKAGE_ROOT

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "--no-optional-locks", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def suite() -> dict[str, Any]:
    """The suite's version, its checkout, and the plug-in interface it offers adapters.

    The interface version is recorded because a report judges third-party adapters too: one written for another
    interface is refused at load, so a report's cells were all run through this one (docs/adapters.md).
    """
    return {"version": suite_version(), "plugin_interface": PLUGIN_INTERFACE, **suite_checkout()}


def environment() -> dict[str, Any]:
    """Python, numpy and the platform."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "numpy": np.__version__,
    }


def hypothesis_settings(profile: str, seed: object) -> dict[str, Any]:
    """What decides which examples ran: the profile, the example budget, derandomization, the seed, the database.

    ``seed`` is the value of ``--hypothesis-seed`` (None when not given). With ``derandomize`` true
    (the ``ci`` profile) the examples are a function of the test and the code alone, so a rerun of the
    same code draws the same networks; with it false and no seed they come from fresh randomness and
    cannot be drawn again. ``database`` says whether examples saved by earlier runs (failures first)
    were replayed.
    """
    import hypothesis
    from hypothesis import settings

    current = settings.default
    return {
        "version": hypothesis.__version__,
        "profile": profile,
        "max_examples": current.max_examples,
        "derandomize": current.derandomize,
        "seed": None if seed is None else str(seed),
        "database": current.database is not None,
    }


def versions(framework: str, framework_version: str) -> dict[str, str]:
    """The versions a case file records: the framework's, the suite's, numpy's, Python's and the platform."""
    return {
        framework: framework_version,
        "backprop-conformance": suite_version(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
