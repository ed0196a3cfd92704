"""Reproducer case files: a failing example, self-contained, replayable without hypothesis.

A case file is what a framework maintainer receives in a bug report: the exact network and batch
(as JSON numbers, which round-trip float64 exactly), the cell it failed in, the versions and the
environment it failed with, and the failure message. ``backprop-conformance replay CASE.json``
replays it against any adapter (see :mod:`~backprop_conformance.conformance.replay`).

A case file is **untrusted data**: it arrives attached to a bug report written by a stranger. Reading
one therefore validates every field's type and every value strictly (a dtype given as a number, a
path given as null, versions given as a string, numbers given as strings or booleans, values that are
not values of the case's format, absurd nesting), and raises :class:`CaseError` naming the field.
Nothing in a case file is ever executed or imported: its ``adapter`` field is a name to look up among
the built-in and installed adapters, never a module to import.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backprop_conformance.adapters.base import SAFE_NAME
from backprop_conformance.conformance import jsonfile
from backprop_conformance.conformance.cells import Cell
from backprop_conformance.conformance.fidelity import FIDELITY_TESTS
from backprop_conformance.conformance.outputs import write_atomically
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.reference.dtypes import FORMATS, MIXED, is_representable
from backprop_conformance.reference.model import Batch, ModelError, Network, check_compatible

SCHEMA = "backprop-conformance/case/4"
"""Version 4 may hold ``fidelity`` (the fidelity test and case whose exactness bound judges the case; optional, so a
case without it is a conformance case as before); version 3 added ``dispatch`` (the configuration that picked the
kernels) and the cell's ``level``, and may hold ``batch.micro_batches`` (the split of a path that accumulates
gradients; optional, so a case without it reads as before); version 2 added ``environment`` and ``kind``. Files of
versions 1 to 3 (which lack them) are still read."""

READABLE = (SCHEMA, "backprop-conformance/case/3", "backprop-conformance/case/2", "backprop-conformance/case/1")

KINDS = ("shrunk", "worst", "fixed")
"""A failing cell writes the example hypothesis shrank to (the smallest that fails) and the one that
failed worst (the largest error/bound ratio): a shrunk example can sit just over the bound while the
run saw one far beyond it. A fidelity case is ``fixed``: its test's one problem, drawn by no one."""

MAX_LAYERS = 256
"""More layers than any profile generates (16 at most); a file claiming more is refused, not processed."""


class CaseError(ValueError):
    """A case file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Case:
    """A replayable example: the problem, the cell it was found in, and how that adapter was named.

    ``adapter`` is what ``--conformance-backend`` takes to load the same adapter again: a built-in's or
    plug-in's name, or the ``module:Attribute`` it was given as. ``environment`` holds the variables
    the adapter declared as deciding what its framework computes (``KERAS_BACKEND``), as they were, and those its
    dispatch level forced. ``dispatch`` is the configuration that picked the kernels
    (:mod:`~backprop_conformance.adapters.dispatch`): the same input can fail on one CPU and pass on another.
    ``fidelity`` is None for a conformance case (judged with the error bound), else the fidelity test and its case
    (``("test_sigmoid_prime_fidelity", "saturated")``), whose exactness bound judges it
    (:mod:`~backprop_conformance.conformance.fidelity`).
    """

    problem: Problem
    cell: Cell
    adapter: str
    versions: Mapping[str, str]
    failure: str
    environment: Mapping[str, str | None] = field(default_factory=dict)
    kind: str = "shrunk"
    dispatch: Mapping[str, str] = field(default_factory=dict)
    fidelity: tuple[str, str] | None = None


def to_json(case: Case) -> dict[str, Any]:
    net, batch = case.problem.network, case.problem.batch
    return {
        "schema": SCHEMA,
        "kind": case.kind,
        "cell": {
            "backend": case.cell.backend,
            "path": case.cell.path,
            "dtype": case.cell.dtype,
            "device": case.cell.device,
            "level": case.cell.level,
        },
        "adapter": case.adapter,
        "versions": dict(case.versions),
        "environment": dict(case.environment),
        "dispatch": dict(case.dispatch),
        "widths": list(net.widths),
        "parameters": {
            "w": {str(l): net.w[l].tolist() for l in net.layers},
            "b": {str(l): net.b[l].tolist() for l in net.layers},
        },
        "batch": {
            "x": batch.x.tolist(),
            "y": batch.y.tolist(),
            **({"micro_batches": list(batch.micro_batches)} if batch.micro_batches else {}),
        },
        "failure": case.failure,
        **({"fidelity": {"test": case.fidelity[0], "case": case.fidelity[1]}} if case.fidelity else {}),
    }


class _Reader:
    """Strict access to the fields of one case file, every error naming the file and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> CaseError:
        return CaseError(f"{self.source}: field {where}: {message}")

    def object(self, value: object, where: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected an object, got {_kind(value)}")
        unknown = sorted(set(value) - set(keys) - set(optional))
        if unknown:
            raise self.fail(where or "(top level)", f"unknown key(s) {', '.join(map(repr, unknown))}")
        missing = [k for k in keys if k not in value]
        if missing:
            raise CaseError(f"{self.source}: missing or malformed field {'.'.join([where, missing[0]]).lstrip('.')!r}")
        return value

    def text(self, value: object, where: str) -> str:
        if not isinstance(value, str):
            raise self.fail(where, f"expected a string, got {_kind(value)}")
        return value

    def name(self, value: object, where: str) -> str:
        text = self.text(value, where)
        if not SAFE_NAME.fullmatch(text) or ".." in text:
            raise self.fail(where, f"{text!r} is not a valid name (letters, digits and _ . + -, at most 64)")
        return text

    def strings(self, value: object, where: str, *, nullable: bool = False) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected an object of strings, got {_kind(value)}")
        for key, item in value.items():
            if not (isinstance(item, str) or (nullable and item is None)):
                raise self.fail(f"{where}.{key}", f"expected a string{' or null' if nullable else ''}, got {_kind(item)}")
        return dict(value)

    def matrix(self, value: object, where: str, ndim: int) -> np.ndarray:
        """A rectangular ``ndim``-dimensional array of JSON numbers (never booleans, strings or nulls), as float64."""
        shape: list[int] = []
        flat: list[float] = []

        def walk(item: object, depth: int, path: str) -> None:
            if depth == ndim:
                if isinstance(item, bool) or not isinstance(item, (int, float)):
                    raise self.fail(path, f"expected a number, got {_kind(item)}")
                try:
                    number = float(item)
                except OverflowError:  # a JSON integer has no size limit; a float64 has
                    raise self.fail(path, "is an integer too large for a float64") from None
                if not math.isfinite(number):
                    raise self.fail(path, f"{item!r} is non-finite; parameters and data are finite")
                flat.append(number)
                return
            if not isinstance(item, list):
                raise self.fail(path, f"expected a list ({ndim}-dimensional array), got {_kind(item)}")
            if len(shape) == depth:
                shape.append(len(item))
            elif shape[depth] != len(item):
                raise self.fail(path, f"is ragged: {len(item)} entries where its siblings have {shape[depth]}")
            if not item:
                raise self.fail(path, "is empty; every layer and the batch have at least one entry")
            for i, inner in enumerate(item):
                walk(inner, depth + 1, f"{path}[{i}]")

        walk(value, 0, where)
        return np.array(flat, dtype=np.float64).reshape(shape)


def _kind(value: object) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]


def from_json(data: object, source: str) -> Case:
    """Parse and validate a case, with errors that say which field of which file is wrong."""
    if not isinstance(data, dict) or data.get("schema") not in READABLE:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise CaseError(f"{source}: not a backprop-conformance case file (schema {found!r}, expected {SCHEMA!r})")
    r = _Reader(source)
    version = int(str(data["schema"]).rsplit("/", 1)[1])
    top = r.object(
        data,
        "",
        (
            "schema",
            "cell",
            "adapter",
            "versions",
            "widths",
            "parameters",
            "batch",
            "failure",
            *(("kind", "environment") if version >= 2 else ()),
            *(("dispatch",) if version >= 3 else ()),
        ),
        optional=("fidelity",) if version >= 4 else (),
    )
    cell_data = r.object(top["cell"], "cell", ("backend", "path", "dtype", "device", *(("level",) if version >= 3 else ())))
    dtype = r.text(cell_data["dtype"], "cell.dtype")
    if dtype not in FORMATS and dtype not in MIXED:
        raise r.fail("cell.dtype", f"unknown format {dtype!r}; the suite knows {', '.join([*FORMATS, *MIXED])}")
    cell = Cell(
        r.name(cell_data["backend"], "cell.backend"),
        r.name(cell_data["path"], "cell.path"),
        dtype,
        r.name(cell_data["device"], "cell.device"),
        None if cell_data.get("level") is None else r.name(cell_data["level"], "cell.level"),
    )
    adapter = r.text(top["adapter"], "adapter")
    versions = r.strings(top["versions"], "versions")
    environment = r.strings(top.get("environment", {}), "environment", nullable=True)
    configuration = r.strings(top.get("dispatch", {}), "dispatch")
    for name in environment:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise r.fail("environment", f"{name!r} is not an environment variable name")
    kind = r.text(top.get("kind", "shrunk"), "kind")
    if kind not in KINDS:
        raise r.fail("kind", f"{kind!r}; expected one of {', '.join(KINDS)}")
    failure = r.text(top["failure"], "failure")
    judged_by = None if top.get("fidelity") is None else _fidelity(r, top["fidelity"], dtype)
    params = r.object(top["parameters"], "parameters", ("w", "b"))
    layers: dict[str, dict[int, np.ndarray]] = {}
    for kind_name, ndim in (("w", 2), ("b", 1)):
        entries = params[kind_name]
        if not isinstance(entries, dict):
            raise r.fail(f"parameters.{kind_name}", f"expected an object keyed by layer, got {_kind(entries)}")
        if len(entries) > MAX_LAYERS:
            raise r.fail(f"parameters.{kind_name}", f"has {len(entries)} layers, more than the {MAX_LAYERS} a case may have")
        layers[kind_name] = {}
        for key, value in entries.items():
            if not re.fullmatch(r"[1-9][0-9]{0,3}", key):
                raise r.fail(f"parameters.{kind_name}", f"key {key!r} is not a layer number l = 2..L")
            layers[kind_name][int(key)] = r.matrix(value, f"parameters.{kind_name}.{key}", ndim)
    batch_data = r.object(top["batch"], "batch", ("x", "y"), optional=("micro_batches",))
    x, y = r.matrix(batch_data["x"], "batch.x", 2), r.matrix(batch_data["y"], "batch.y", 2)
    split = batch_data.get("micro_batches")
    if split is not None and (not isinstance(split, list) or any(isinstance(n, bool) or not isinstance(n, int) for n in split)):
        raise r.fail("batch.micro_batches", f"expected a list of whole micro-batch sizes, got {_kind(split)}")
    try:
        network = Network(layers["w"], layers["b"])
        batch = Batch(x, y, split)
        check_compatible(network, batch)
    except ModelError as exc:
        raise CaseError(f"{source}: {exc}") from None
    widths = top["widths"]
    if widths != list(network.widths) or any(isinstance(w, bool) for w in widths):
        raise r.fail("widths", f"{widths!r} does not match the parameters' widths {list(network.widths)}")
    arrays = [(f"parameters.w.{l}", network.w[l]) for l in network.layers] + [(f"parameters.b.{l}", network.b[l]) for l in network.layers]
    for where, values in [*arrays, ("batch.x", batch.x), ("batch.y", batch.y)]:
        if not is_representable(dtype, values):
            raise r.fail(
                where, f"holds values that are not {dtype} values; a case holds the exact point the framework was given, in its format"
            )
    return Case(Problem(network, batch, dtype), cell, adapter, versions, failure, environment, kind, configuration, judged_by)


def _fidelity(r: _Reader, value: object, dtype: str) -> tuple[str, str]:
    """The ``fidelity`` field: a fidelity test the suite has and one of its cases, in one of the four formats."""
    data = r.object(value, "fidelity", ("test", "case"))
    test, case = r.text(data["test"], "fidelity.test"), r.text(data["case"], "fidelity.case")
    if test not in FIDELITY_TESTS:
        raise r.fail("fidelity.test", f"{test!r} is not a fidelity test; the suite has {', '.join(FIDELITY_TESTS)}")
    if case not in FIDELITY_TESTS[test]:
        raise r.fail("fidelity.case", f"{case!r} is not a case of {test}; it has {', '.join(FIDELITY_TESTS[test])}")
    if dtype not in FORMATS:
        raise r.fail("cell.dtype", f"a fidelity case is judged in one of the formats {', '.join(FORMATS)}, not {dtype!r}")
    return test, case


def write(case: Case, directory: Path) -> Path:
    """Write ``case`` as ``<cell id>-<kind>-<content hash>.json`` in ``directory`` and return the path.

    Naming by content makes a rerun that finds the same example overwrite its own file instead of
    piling up copies. The cell id is made of validated names (letters, digits, ``_ . + -``), so the
    file cannot land outside ``directory``.
    """
    text = json.dumps(to_json(case), indent=1)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    path = Path(directory) / f"{case.cell.id}-{case.kind}-{digest}.json"
    write_atomically(text + "\n", path)
    return path


def file_name_length(cell_id: str) -> int:
    """The length of the longest case-file name for ``cell_id`` (checked against the file system at start-up)."""
    return len(f"{cell_id}-{max(KINDS, key=len)}-{'0' * 10}.json")


def read(path: Path) -> Case:
    """Read and validate a case file; :class:`CaseError` says what is wrong with which file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CaseError(f"cannot read case file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = jsonfile.loads(text)
    except jsonfile.JSONError as exc:
        raise CaseError(f"{path} is not valid JSON: {exc}") from None
    return from_json(data, str(path))
