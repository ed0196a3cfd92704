"""Reproducer case files: a failing example, self-contained, replayable without hypothesis.

A case file is what a framework maintainer receives in a bug report: the exact network and batch
(as JSON numbers, which round-trip float64 exactly), the cell it failed in, the versions it failed
with and the failure message. ``python -m backprop_conformance replay CASE.json --backend NAME`` replays it
against any adapter (see :mod:`backprop_conformance.conformance.__main__`).
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backprop_conformance.conformance.cells import Cell
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.reference.model import Batch, Network, check_compatible

SCHEMA = "backprop-conformance/case/1"


class CaseError(ValueError):
    """A case file that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class Case:
    """A replayable example: the problem, the cell it was found in, and how that adapter was named.

    ``adapter`` is what ``--backend`` takes to load the same adapter again: a built-in's or plug-in's
    name, or the ``module:Attribute`` it was given as (the cell only carries the adapter's declared
    name, which a command line cannot resolve for an adapter named by module).
    """

    problem: Problem
    cell: Cell
    adapter: str
    versions: dict[str, str]
    failure: str


def suite_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("backprop-conformance")
    except PackageNotFoundError:
        return "unknown (not installed)"


def to_json(case: Case) -> dict[str, Any]:
    net, batch = case.problem.network, case.problem.batch
    return {
        "schema": SCHEMA,
        "cell": {"backend": case.cell.backend, "path": case.cell.path, "dtype": case.cell.dtype, "device": case.cell.device},
        "adapter": case.adapter,
        "versions": case.versions,
        "widths": list(net.widths),
        "parameters": {
            "w": {str(l): net.w[l].tolist() for l in net.layers},
            "b": {str(l): net.b[l].tolist() for l in net.layers},
        },
        "batch": {"x": batch.x.tolist(), "y": batch.y.tolist()},
        "failure": case.failure,
    }


def from_json(data: object, source: str) -> Case:
    """Parse a case, with errors that say which field of which file is wrong."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise CaseError(f"{source}: not a backprop-conformance case file (schema {found!r}, expected {SCHEMA!r})")
    try:
        cell = Cell(**data["cell"])
        params = data["parameters"]
        network = Network(
            {int(l): _array(v, f"parameters.w.{l}", source) for l, v in params["w"].items()},
            {int(l): _array(v, f"parameters.b.{l}", source) for l, v in params["b"].items()},
        )
        batch = Batch(_array(data["batch"]["x"], "batch.x", source), _array(data["batch"]["y"], "batch.y", source))
        check_compatible(network, batch)
        adapter = str(data.get("adapter", cell.backend))
    except (KeyError, TypeError) as exc:
        raise CaseError(f"{source}: missing or malformed field {exc}") from None
    except ValueError as exc:
        raise CaseError(f"{source}: {exc}") from None
    return Case(Problem(network, batch, cell.dtype), cell, adapter, dict(data.get("versions", {})), str(data.get("failure", "")))


def _array(value: object, field: str, source: str) -> np.ndarray:
    try:
        return np.array(value, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise CaseError(f"{source}: field {field} is not a rectangular array of numbers ({exc})") from None


def write(case: Case, directory: Path) -> Path:
    """Write ``case`` as ``<cell id>-<content hash>.json`` in ``directory`` and return the path.

    Naming by content makes a rerun that finds the same minimal example overwrite its own file
    instead of piling up copies.
    """
    text = json.dumps(to_json(case), indent=1)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{case.cell.id}-{digest}.json"
    path.write_text(text + "\n")
    return path


def read(path: Path) -> Case:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise CaseError(f"cannot read case file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CaseError(f"{path} is not valid JSON: {exc}") from None
    return from_json(data, str(path))


def environment_versions(framework: str, framework_version: str) -> dict[str, str]:
    """The versions a case records: the framework's, the suite's, numpy's and Python's."""
    return {
        framework: framework_version,
        "backprop-conformance": suite_version(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
