"""The declarative table of what is tested: one cell per (backend, path, dtype, device, dispatch level).

Each adapter declares its capabilities (:class:`~backprop_conformance.adapters.base.Capabilities`); the
table is their product, filtered by the user's backend, path, dtype, device and dispatch options. Tests are
generated from it, so a new adapter, path or dtype needs no new test code, and a backend that cannot
run here still appears in the run, as a skip with its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from backprop_conformance.adapters.base import Adapter, Capabilities
from backprop_conformance.adapters.registry import BUILTIN, AdapterSpec, AdapterUnavailable, default_names, resolve
from backprop_conformance.reference.dtypes import FORMATS


class SelectionError(ValueError):
    """An option names something no selected backend offers; the message lists what is valid."""


NATIVE = "native"
"""``--conformance-dispatch native``: each framework as this process finds it (its own choice for this CPU, or what the
run's environment forces). The default."""

EVERY_LEVEL = "all"
"""``--conformance-dispatch all``: every dispatch level each selected path declares for this CPU, each forced in a worker
process; a path that declares none runs at the native level."""


@dataclass(frozen=True)
class Cell:
    """One combination the suite tests; its :attr:`id` is the pytest parameter id and the case-file prefix.

    ``level`` is None for the native level (the framework as this process runs it), else the name of a dispatch level
    the adapter declared for the path (:class:`~backprop_conformance.adapters.dispatch.Level`), which the cell runs at
    in a worker process and which ends its id: ``tensorflow-eager-float32-onednn-off``.
    """

    backend: str
    path: str
    dtype: str
    device: str = "cpu"
    level: str | None = None

    @property
    def id(self) -> str:
        parts = [self.backend, self.path, self.dtype] + ([self.device] if self.device != "cpu" else [])
        return "-".join(parts + ([self.level] if self.level else []))


@dataclass(frozen=True)
class Backend:
    """A requested adapter: loaded with its (validated) capabilities, or unavailable with the reason."""

    spec: AdapterSpec
    adapter: Adapter | None = None
    unavailable: str | None = None

    @property
    def capabilities(self) -> Capabilities | None:
        return self.adapter.caps if self.adapter is not None else None

    @property
    def name(self) -> str:
        """The declared name when loaded (it keys the cells), else the name it was requested by."""
        return self.adapter.caps.name if self.adapter is not None else self.spec.name


def load_backends(names: Sequence[str]) -> list[Backend]:
    """Resolve and load each named adapter (built-in name, plug-in name or ``module:attribute``).

    Without names, every built-in and every installed plug-in (:func:`~backprop_conformance.adapters.registry.default_names`).
    An adapter whose framework is missing comes back with ``unavailable`` set instead of raising, so
    the run can report it as skipped; an unknown name or a broken adapter raises
    :class:`~backprop_conformance.adapters.base.AdapterError`.
    """
    backends = []
    by_name: dict[str, AdapterSpec] = {}
    for name in dict.fromkeys(names or default_names()):
        spec = resolve(name)
        try:
            adapter = spec.load()
        except AdapterUnavailable as exc:
            backends.append(Backend(spec, unavailable=str(exc)))
            continue
        declared = adapter.caps.name
        # Capability names key the cells, the reproducers and the known defects: two adapters under one
        # name would silently test only the first, and a plug-in calling itself "torch" would inherit
        # torch's known-defect xfails.
        if declared in by_name:
            raise SelectionError(
                f"two adapters declare the name {declared!r} ({by_name[declared].target} and {spec.target}); names must be unique"
            )
        if declared in BUILTIN and spec.source != "built-in":
            raise SelectionError(f"{spec.target} declares the name {declared!r}, which belongs to a built-in adapter; choose another")
        by_name[declared] = spec
        backends.append(Backend(spec, adapter))
    return backends


def select_cells(
    backends: Sequence[Backend],
    paths: Sequence[str] = (),
    dtypes: Sequence[str] = (),
    devices: Sequence[str] = ("cpu",),
    all_paths: bool = False,
    levels: Sequence[str] = (NATIVE,),
) -> tuple[list[Cell], dict[str, str]]:
    """The table: every loaded backend's (path, dtype, device, level) that the filters allow, and the backends left with none.

    Without ``paths``, each backend's default paths run (opt-in ones, such as ``torch.compile``, only
    when named, or with ``all_paths``); without ``dtypes``, its default dtypes (mixed-precision policies are opt-in
    in the built-in adapters). ``levels`` holds :data:`NATIVE`, :data:`EVERY_LEVEL` and names of
    dispatch levels; a named level applies to each selected path that declares it, on the CPU (levels choose
    CPU kernels). A name that no loaded backend offers is an error listing the
    valid names, so that a typo cannot silently select nothing. A loaded backend that the filters
    leave without a cell (``--conformance-path jit`` beside torch, which has no jit) is returned with
    the reason, for the run to report: a requested backend must never vanish from a run unnoticed. A mixed-precision
    policy runs on the paths that compute in one piece only: its bound has no term for combining data-parallel ranks,
    micro-batches or per-example gradients.
    """
    loaded = [b.capabilities for b in backends if b.capabilities is not None]
    if loaded:
        _check_names("path", paths, sorted({p for c in loaded for p in c.paths}))
        _check_names("dtype", dtypes, sorted({d for c in loaded for d in c.dtypes}))
        _check_names("device", devices, sorted({d for c in loaded for d in c.devices}))
        declared = sorted({level.name for c in loaded for path_levels in c.levels.values() for level in path_levels})
        _check_names("dispatch", levels, [NATIVE, EVERY_LEVEL, *declared])
    else:
        _check_names("dtype", dtypes, list(FORMATS))
    cells = []
    empty: dict[str, str] = {}
    for caps in loaded:
        chosen = caps.paths if all_paths else [p for p in caps.paths if p in paths] if paths else caps.default_paths
        mine = [
            Cell(caps.name, path, dtype, device, level)
            for path in chosen
            for dtype in ([d for d in caps.dtypes if d in dtypes] if dtypes else caps.default_dtypes or caps.dtypes)
            if (dtype not in caps.policies or caps.in_one_piece(path)) and dtype in caps.dtypes_of_path(path)
            for device in [d for d in caps.devices if d in devices and dtype in caps.dtypes_on(d)]
            for level in _levels(caps, path, device, levels)
        ]
        if not mine:
            empty[caps.name] = (
                f"no cell selected: it offers paths {', '.join(caps.paths)} (default {', '.join(caps.default_paths) or 'none'}), "
                f"dtypes {', '.join(caps.dtypes)}, devices {', '.join(caps.devices)} and dispatch levels "
                f"{', '.join(sorted({lv.name for lvs in caps.levels.values() for lv in lvs})) or 'native only'}, "
                "and the options selected none of them"
            )
        cells += mine
    return cells, empty


def _levels(caps: Capabilities, path: str, device: str, requested: Sequence[str]) -> list[str | None]:
    """The levels of (path, device) that ``requested`` selects, in the order declared; None is the native level."""
    declared = [level.name for level in caps.levels_of(path)] if device == "cpu" else []
    chosen: list[str | None] = []
    if NATIVE in requested or (EVERY_LEVEL in requested and not declared):
        chosen.append(None)
    chosen += [name for name in declared if EVERY_LEVEL in requested or name in requested]
    return chosen


def _check_names(what: str, requested: Sequence[str], valid: list[str]) -> None:
    unknown = [name for name in requested if name not in valid]
    if unknown:
        raise SelectionError(
            f"unknown --conformance-{what} {', '.join(map(repr, unknown))}; the selected backends offer {', '.join(valid)}"
        )
