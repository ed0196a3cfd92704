"""The report format: what a run found, as data, readable and writable without pytest.

The end-of-run matrix is for a person at a terminal; CI needs the same figures as data: to keep as an
artifact, to compare with a stored baseline (:mod:`~backprop_conformance.conformance.baseline`), to plot
where a framework's error grows (:mod:`~backprop_conformance.conformance.plot`) and to show on the job's
summary page (:mod:`~backprop_conformance.conformance.markdown_summary`). This module is the format
alone: the typed :class:`Report` and :class:`CellResult`, the JSON encoding of non-finite numbers, and
strict reading and atomic writing. It imports neither pytest nor the frameworks, so that a report can
be read and plotted anywhere. The run builds the typed report once (:mod:`~backprop_conformance.conformance.end_of_run`),
compares it, then writes it.

The format is documented, field by field, in ``docs/report-schema.md``. JSON has no infinity, and an
infinite ratio (a non-finite gradient) is exactly the value a report must not lose, so non-finite
numbers are written as the strings ``"inf"``, ``"-inf"`` and ``"nan"`` (see :func:`encode_float`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backprop_conformance.conformance import jsonfile
from backprop_conformance.conformance.outputs import write_atomically

SCHEMA = "backprop-conformance/report/2"
"""The report format's name and version; bumped on any change a reader of the previous version would
misread. Version 2 added each cell's status, contract outcome and exception count, so that a cell whose
contract failed can no longer look like a passing one. The dispatch configuration (the report's
``dispatch`` and each cell's ``level`` and ``dispatch``) was added later without a bump: a reader that
ignores it misreads nothing, and a report written before it is read with none recorded."""

NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
"""How JSON carries the floats it has no literal for (JSON's grammar has no Infinity or NaN)."""

QUANTILES = (0.5, 0.9, 0.99)

STATUSES = ("passed", "failed", "known defect", "incomplete", "not run")
"""A cell's outcome: ``passed`` only when its property test ran examples and every test of the cell
passed; ``failed`` when a verdict, the contract, an exception or a fidelity check failed; ``known
defect`` when it failed only where a strict known-defect entry says it must; ``incomplete`` when its
property test started and never finished (a worker died, the run was interrupted); ``not run`` when it
was selected and no test of it ran (deselected with ``-k``)."""

CONTRACT = ("passed", "failed", "not run")

TIME_CATEGORIES = ("framework", "reference", "bound", "generation")
"""Where a cell's time went (see :mod:`~backprop_conformance.conformance.timing`); ``wall`` is the whole."""


class ReportError(ValueError):
    """A report file that cannot be used; the message names the file and the field."""


def encode_float(value: float) -> float | str:
    """``value`` as JSON can carry it: finite floats unchanged, ±inf and NaN as ``"inf"``, ``"-inf"``, ``"nan"``.

    Strings rather than ``null``: ``null`` already means "no value" (a cell that ran no examples has no
    worst ratio), and an infinite ratio is a value, the worst there is.
    """
    value = float(value)
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def decode_float(value: object, where: str) -> float:
    """The inverse of :func:`encode_float`; ``where`` names the field for the error message."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ReportError(f"{where}: expected a number or one of {', '.join(map(repr, NON_FINITE))}, got {value!r}")
    if isinstance(value, str):
        if value not in NON_FINITE:
            raise ReportError(f"{where}: expected a number or one of {', '.join(map(repr, NON_FINITE))}, got {value!r}")
        return NON_FINITE[value]
    try:
        return float(value)
    except OverflowError:  # a JSON integer has no size limit; a float64 has
        raise ReportError(f"{where}: the integer {str(value)[:20]}... is too large for a float64") from None


@dataclass
class CellResult:
    """Everything a run learnt about one cell: identity, outcome, per-example series, reproducers and time.

    The one record of a cell, from the first example to the file: the run adds examples to it as they
    are judged (:meth:`add_example`), merges the records of several test items or xdist workers
    (:meth:`merge`), sets the outcome at the end, and writes it; a reader gets the same type back.
    ``ratios[i]``, ``depths[i]`` and ``max_abs_z[i]`` describe the i-th example: its worst error/bound
    ratio, the network's depth L and its largest |z^l_j| over l = 2..L and the batch.
    """

    id: str
    backend: str
    path: str
    dtype: str
    device: str = "cpu"
    status: str = "not run"
    contract: str = "not run"
    examples: int = 0
    failures: int = 0
    exceptions: int = 0
    shrink_calls: int = 0
    ratios: list[float] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    max_abs_z: list[float] = field(default_factory=list)
    worst_element: dict[str, Any] | None = None
    case_files: list[str] = field(default_factory=list)
    replay: str | None = None
    problems: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    level: str | None = None
    dispatch: dict[str, str] = field(default_factory=dict)
    configuration: dict[str, str] = field(default_factory=dict)

    def add_example(self, ratio: float, depth: int, max_abs_z: float, failed: bool) -> None:
        """Count one example tried (not a shrinking replay) with its worst ratio and features."""
        self.examples += 1
        self.failures += bool(failed)
        self.ratios.append(float(ratio))
        self.depths.append(int(depth))
        self.max_abs_z.append(float(max_abs_z))

    def add_time(self, seconds: Mapping[str, float]) -> None:
        for category, value in seconds.items():
            self.timing[category] = self.timing.get(category, 0.0) + float(value)

    def merge(self, other: CellResult) -> None:
        """Add the counts, series, reproducers and time of another record of the same cell."""
        self.examples += other.examples
        self.failures += other.failures
        self.exceptions += other.exceptions
        self.shrink_calls += other.shrink_calls
        self.ratios += other.ratios
        self.depths += other.depths
        self.max_abs_z += other.max_abs_z
        if other.worst_element is not None and (
            self.worst_element is None or _element_ratio(other.worst_element) > _element_ratio(self.worst_element)
        ):
            self.worst_element = other.worst_element
        self.case_files += [f for f in other.case_files if f not in self.case_files]
        self.replay = self.replay or other.replay
        self.problems += [p for p in other.problems if p not in self.problems]
        self.add_time(other.timing)
        self.dispatch = self.dispatch or dict(other.dispatch)

    @property
    def worst(self) -> float | None:
        """The largest per-example worst ratio; None for a cell that ran no examples."""
        return max(self.ratios) if self.ratios else None

    @property
    def median(self) -> float | None:
        return self.quantile(0.5)

    def quantile(self, q: float) -> float | None:
        """The q-quantile of the per-example worst ratios (None for a cell that ran nothing).

        ``method="higher"`` picks an observed ratio instead of interpolating, so an infinite ratio (a
        NaN or inf gradient) stays infinite instead of turning the interpolation into NaN.
        """
        return float(np.quantile(self.ratios, q, method="higher")) if self.ratios else None

    def to_json(self) -> dict[str, Any]:
        def stat(value: float | None) -> float | str | None:
            return None if value is None else encode_float(value)

        return {
            "id": self.id,
            "backend": self.backend,
            "path": self.path,
            "dtype": self.dtype,
            "device": self.device,
            "level": self.level,
            "dispatch": dict(self.dispatch),
            **({"configuration": dict(self.configuration)} if self.configuration else {}),
            "status": self.status,
            "contract": self.contract,
            "examples": self.examples,
            "failures": self.failures,
            "exceptions": self.exceptions,
            "shrink_calls": self.shrink_calls,
            "worst": stat(self.worst),
            "median": stat(self.median),
            "quantiles": {f"{q:g}": stat(self.quantile(q)) for q in QUANTILES},
            "worst_element": None if self.worst_element is None else _encode_element(self.worst_element),
            "case_files": list(self.case_files),
            "replay": self.replay,
            "problems": list(self.problems),
            "timing": {k: float(v) for k, v in sorted(self.timing.items())},
            "ratios": [encode_float(r) for r in self.ratios],
            "depths": [int(d) for d in self.depths],
            "max_abs_z": [encode_float(z) for z in self.max_abs_z],
        }

    @classmethod
    def from_json(cls, entry: object, where: str) -> CellResult:
        """Validate and decode one cell; every defect is named with ``where`` and the field."""
        fields = _Fields(entry, where)
        examples = fields.integer("examples")
        ratios = [decode_float(v, f"{where}.ratios[{i}]") for i, v in enumerate(fields.get("ratios", list))]
        for i, ratio in enumerate(ratios):
            if math.isnan(ratio):  # max() over a NaN is NaN or not depending on its place, and nothing compares beyond NaN
                raise ReportError(f"{where}.ratios[{i}]: NaN; a ratio is a number or 'inf'")
        depths = fields.get("depths", list)
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in depths):
            raise ReportError(f"{where}: field 'depths' must be a list of integers")
        zs = [decode_float(v, f"{where}.max_abs_z[{i}]") for i, v in enumerate(fields.get("max_abs_z", list))]
        if not len(ratios) == len(depths) == len(zs) == examples:
            raise ReportError(
                f"{where}: 'examples' is {examples} but 'ratios', 'depths' and 'max_abs_z' have "
                f"{len(ratios)}, {len(depths)}, {len(zs)} entries"
            )
        failures = fields.integer("failures")
        if failures > examples:
            raise ReportError(f"{where}: 'failures' is {failures}, more than its {examples} examples")
        for name in ("worst", "median"):
            recorded = fields.get(name, (int, float, str, type(None)))
            if (recorded is None) != (examples == 0):
                raise ReportError(
                    f"{where}: '{name}' is {recorded!r} for a cell with {examples} examples (null exactly when there are none)"
                )
            if recorded is not None and math.isnan(decode_float(recorded, f"{where}.{name}")):
                raise ReportError(f"{where}: '{name}' is NaN; a ratio is a number or 'inf'")
        if ratios and decode_float(fields.get("worst", (int, float, str)), f"{where}.worst") != max(ratios):
            raise ReportError(
                f"{where}: 'worst' is {fields.entry['worst']!r}, but the largest of its 'ratios' is {encode_float(max(ratios))!r}; "
                "a baseline is compared by its ratios: edit both, or neither"
            )
        element = fields.get("worst_element", (dict, type(None)))
        timing = fields.get("timing", dict)
        for key, value in timing.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ReportError(f"{where}.timing.{key}: expected a number of seconds, got {value!r}")
        level = fields.optional("level", (str, type(None)), None)
        return cls(
            id=fields.text("id"),
            backend=fields.text("backend"),
            path=fields.text("path"),
            dtype=fields.text("dtype"),
            device=fields.text("device"),
            status=fields.choice("status", STATUSES),
            contract=fields.choice("contract", CONTRACT),
            examples=examples,
            failures=failures,
            exceptions=fields.integer("exceptions"),
            shrink_calls=fields.integer("shrink_calls"),
            ratios=ratios,
            depths=list(depths),
            max_abs_z=zs,
            worst_element=None if element is None else _decode_element(element, f"{where}.worst_element"),
            case_files=fields.texts("case_files"),
            replay=fields.get("replay", (str, type(None))),
            problems=fields.texts("problems"),
            timing={str(k): float(v) for k, v in timing.items()},
            level=level,
            dispatch=fields.configuration("dispatch"),
            configuration=fields.configuration("configuration"),
        )


def _element_ratio(element: Mapping[str, Any]) -> float:
    return float(element.get("ratio", 0.0))


def _encode_element(element: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (encode_float(v) if isinstance(v, float) else v) for k, v in element.items()}


def _decode_element(element: Mapping[str, Any], where: str) -> dict[str, Any]:
    fields = _Fields(element, where)
    decoded: dict[str, Any] = {"name": fields.text("name")}
    for key in ("framework", "reference", "bound", "ratio"):
        decoded[key] = decode_float(fields.get(key, (int, float, str)), f"{where}.{key}")
    return decoded


class _Fields:
    """Typed access to one JSON object's fields, with errors that name the object and the field."""

    def __init__(self, entry: object, where: str) -> None:
        if not isinstance(entry, dict):
            raise ReportError(f"{where} must be an object, got {type(entry).__name__}")
        self.entry, self.where = entry, where

    def get(self, name: str, kind: type | tuple[type, ...]) -> Any:
        if name not in self.entry:
            raise ReportError(f"{self.where}: missing field {name!r}")
        value = self.entry[name]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise ReportError(f"{self.where}: field {name!r} has the wrong type (bool: {value!r})")
        if not isinstance(value, kind):
            raise ReportError(f"{self.where}: field {name!r} has the wrong type ({type(value).__name__}: {value!r})")
        return value

    def text(self, name: str) -> str:
        return self.get(name, str)

    def integer(self, name: str) -> int:
        value = self.get(name, int)
        if value < 0:
            raise ReportError(f"{self.where}: field {name!r} is negative ({value})")
        return value

    def choice(self, name: str, valid: Sequence[str]) -> str:
        value = self.text(name)
        if value not in valid:
            raise ReportError(f"{self.where}: field {name!r} is {value!r}; expected one of {', '.join(map(repr, valid))}")
        return value

    def optional(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        """A field added after its schema version was first written: ``default`` when absent, else checked as :meth:`get`."""
        return self.get(name, kind) if name in self.entry else default

    def configuration(self, name: str) -> dict[str, str]:
        """An object of strings (a dispatch configuration, a merged cell's configuration), optional: reports written
        before it was recorded lack it."""
        value = self.optional(name, dict, {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ReportError(f"{self.where}: field {name!r} must be an object of strings (a dispatch configuration)")
        return dict(value)

    def texts(self, name: str) -> list[str]:
        values = self.get(name, list)
        if not all(isinstance(v, str) for v in values):
            raise ReportError(f"{self.where}: field {name!r} must be a list of strings")
        return list(values)


@dataclass(frozen=True)
class BackendEntry:
    """A backend as the report records it: loaded (framework, version, ...) or skipped (``reason``)."""

    name: str
    requested_as: str
    framework: str | None = None
    version: str | None = None
    devices: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    accumulation: str | None = None
    environment: Mapping[str, str | None] = field(default_factory=dict)
    reason: str | None = None
    policies: Mapping[str, str] = field(default_factory=dict)
    """Each mixed-precision policy among :attr:`dtypes` with its declared formats in words (written only when there is one)."""

    def to_json(self) -> dict[str, Any]:
        if self.reason is not None:
            return {"name": self.name, "requested_as": self.requested_as, "reason": self.reason}
        return {
            "name": self.name,
            "requested_as": self.requested_as,
            "framework": self.framework,
            "version": self.version,
            "devices": list(self.devices),
            "paths": list(self.paths),
            "dtypes": list(self.dtypes),
            "accumulation": self.accumulation,
            "environment": dict(self.environment),
            **({"policies": dict(self.policies)} if self.policies else {}),
        }

    @classmethod
    def from_json(cls, entry: object, where: str, *, skipped: bool) -> BackendEntry:
        fields = _Fields(entry, where)
        if skipped:
            return cls(fields.text("name"), fields.text("requested_as"), reason=fields.text("reason"))
        environment = fields.get("environment", dict)
        return cls(
            fields.text("name"),
            fields.text("requested_as"),
            framework=fields.text("framework"),
            version=fields.text("version"),
            devices=tuple(fields.texts("devices")),
            paths=tuple(fields.texts("paths")),
            dtypes=tuple(fields.texts("dtypes")),
            accumulation=fields.get("accumulation", (str, type(None))),
            environment={str(k): (None if v is None else str(v)) for k, v in environment.items()},
            policies={str(k): str(v) for k, v in (fields.get("policies", dict) if "policies" in fields.entry else {}).items()},
        )


@dataclass
class Report:
    """A run's report: provenance, backends, cells, and the baseline comparison when one was made.

    ``suite``, ``environment``, ``hypothesis`` and ``command`` are the provenance objects of
    :mod:`~backprop_conformance.conformance.provenance`, kept as JSON objects; ``baseline`` is the
    comparison's JSON (:meth:`~backprop_conformance.conformance.baseline.Comparison.to_json`).
    """

    cells: list[CellResult]
    backends: list[BackendEntry] = field(default_factory=list)
    skipped_backends: list[BackendEntry] = field(default_factory=list)
    exitstatus: int = 0
    timestamp: str = ""
    command: Mapping[str, Any] = field(default_factory=dict)
    suite: Mapping[str, Any] = field(default_factory=dict)
    environment: Mapping[str, Any] = field(default_factory=dict)
    hypothesis: Mapping[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timing: Mapping[str, float] = field(default_factory=dict)
    baseline: Mapping[str, Any] | None = None
    source: str = "this run"
    dispatch: Mapping[str, str] = field(default_factory=dict)
    """The machine's part of the dispatch configuration (:func:`~backprop_conformance.adapters.dispatch.machine`);
    each cell's ``dispatch`` adds its framework's."""
    shard: Mapping[str, Any] | None = None
    """The slice of the selection this run tested (:meth:`~backprop_conformance.conformance.shards.Shard.to_json`), or None."""
    merged_from: list[dict[str, Any]] = field(default_factory=list)
    """For a merged report, one object per input report: its file and provenance
    (:mod:`~backprop_conformance.conformance.merge`); empty for a run's own report."""

    def cell(self, cell_id: str) -> CellResult | None:
        return next((c for c in self.cells if c.id == cell_id), None)

    @property
    def counts(self) -> dict[str, int]:
        """How many cells have each status."""
        return {status: sum(c.status == status for c in self.cells) for status in STATUSES}

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "timestamp": self.timestamp,
            "exitstatus": int(self.exitstatus),
            "command": dict(self.command),
            "suite": dict(self.suite),
            "environment": dict(self.environment),
            "dispatch": dict(self.dispatch),
            "hypothesis": dict(self.hypothesis),
            "backends": [b.to_json() for b in self.backends],
            "skipped_backends": [b.to_json() for b in self.skipped_backends],
            "notes": list(self.notes),
            "timing": {k: float(v) for k, v in self.timing.items()},
            "cells": [c.to_json() for c in self.cells],
            "baseline": None if self.baseline is None else dict(self.baseline),
            "shard": None if self.shard is None else dict(self.shard),
            "merged_from": [dict(source) for source in self.merged_from],
        }

    @classmethod
    def from_json(cls, data: object, source: str) -> Report:
        """Validate a report's structure and decode it; :class:`ReportError` names the file and the field."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise ReportError(f"{source}: not a backprop-conformance report of this version (schema {found!r}, expected {SCHEMA!r})")
        fields = _Fields(data, source)
        cells = [CellResult.from_json(entry, f"{source}: cells[{i}]") for i, entry in enumerate(_list_field(data, "cells", source))]
        ids = [c.id for c in cells]
        if len(set(ids)) != len(ids):
            raise ReportError(f"{source}: a cell id appears twice in 'cells'")
        timing = fields.get("timing", dict)
        baseline = fields.get("baseline", (dict, type(None)))
        return cls(
            cells=cells,
            backends=[
                BackendEntry.from_json(e, f"{source}: backends[{i}]", skipped=False)
                for i, e in enumerate(_list_field(data, "backends", source))
            ],
            skipped_backends=[
                BackendEntry.from_json(e, f"{source}: skipped_backends[{i}]", skipped=True)
                for i, e in enumerate(_list_field(data, "skipped_backends", source))
            ],
            exitstatus=fields.get("exitstatus", int),
            timestamp=fields.text("timestamp"),
            command=fields.get("command", dict),
            suite=fields.get("suite", dict),
            environment=fields.get("environment", dict),
            hypothesis=fields.get("hypothesis", dict),
            notes=fields.texts("notes"),
            timing={str(k): float(v) for k, v in timing.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            baseline=baseline,
            source=source,
            dispatch=fields.configuration("dispatch"),
            shard=_shard(fields.optional("shard", (dict, type(None)), None), f"{source}: shard"),
            merged_from=[
                _Fields(entry, f"{source}: merged_from[{i}]").entry for i, entry in enumerate(fields.optional("merged_from", list, []))
            ],
        )


def _shard(entry: dict[str, Any] | None, where: str) -> dict[str, Any] | None:
    """A shard record checked: ``index`` of ``count`` (1 ≤ index ≤ count) and the whole selection's cell ids."""
    if entry is None:
        return None
    fields = _Fields(entry, where)
    index, count, selection = fields.integer("index"), fields.integer("count"), fields.texts("selection")
    if not 1 <= index <= count:
        raise ReportError(f"{where}: index {index} of count {count}; expected 1 ≤ index ≤ count")
    return {"index": index, "count": count, "selection": selection}


def _list_field(data: Mapping[str, Any], name: str, source: str) -> list[Any]:
    value = data.get(name)
    if not isinstance(value, list):
        raise ReportError(f"{source}: field {name!r} must be a list, got {type(value).__name__}")
    return value


PER_EXAMPLE = ("ratios", "depths", "max_abs_z")


def dumps(report: Report | Mapping[str, Any]) -> str:
    """The report as JSON text: indented, except that each per-example array stays on one line.

    A cell of a 2,000-example run would otherwise take 6,000 lines; one line per array keeps the file
    (often a baseline kept in version control) readable and its diffs one line per changed series.
    ``allow_nan=False`` makes a non-finite float that escaped :func:`encode_float` an error here
    instead of invalid JSON in the file.
    """
    data = report.to_json() if isinstance(report, Report) else report
    arrays: dict[str, str] = {}

    def compact(entry: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(entry)
        for name in PER_EXAMPLE:
            if name in out:
                key = f"@@{len(arrays)}@@"
                arrays[json.dumps(key)] = json.dumps(out[name], allow_nan=False)
                out[name] = key
        return out

    shallow = {**data, "cells": [compact(cell) for cell in data.get("cells", [])]}
    text = json.dumps(shallow, indent=1, allow_nan=False, ensure_ascii=False)
    for placeholder, array in arrays.items():
        text = text.replace(placeholder, array, 1)
    return text + "\n"


def write(report: Report, path: Path) -> None:
    """Write ``report`` to ``path`` atomically (see :func:`~backprop_conformance.conformance.outputs.write_atomically`)."""
    write_atomically(dumps(report), path)


def read(path: Path) -> Report:
    """Read and validate a report file; :class:`ReportError` says what is wrong with which file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"report file {path} does not exist") from None
    except IsADirectoryError:
        raise ReportError(f"{path} is a directory, not a report file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"cannot read report file {path}: {exc}") from None
    try:
        data = jsonfile.loads(text)
    except jsonfile.JSONError as exc:
        raise ReportError(f"{path} is not valid JSON ({exc})") from None
    try:
        return Report.from_json(data, str(path))
    except OverflowError:  # an integer too large for a float64 anywhere decode_float does not look (timings)
        raise ReportError(f"{path}: holds an integer too large for a float64") from None
