"""The suite's command-line options: their names, their help, and their values checked once.

Every option carries the ``--conformance-`` prefix, as Hypothesis' and pytest-benchmark's carry
theirs: a run shares its command line with every other installed pytest plug-in, and generic names
(``--backend``, ``--device``, ``--path``) are taken by some of them (pytest-playwright owns
``--device``), which made the suite die at start-up.

:class:`RunOptions` is the parsed, validated form the rest of the suite reads; pytest fills it from the
command line (:func:`from_config`), the Python API builds it directly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backprop_conformance.conformance.known_defects import ALL_BACKENDS, BUILTIN_MODES

PREFIX = "--conformance-"

BACKENDS_VARIABLE = "BACKPROP_CONFORMANCE_BACKENDS"
"""Names the backends when ``--conformance-backend`` is not given (comma- or space-separated), for tox
and CI matrices: the convention array-api-tests' users know from ``ARRAY_API_TESTS_MODULE``."""

CACHE_VARIABLE = "BACKPROP_CONFORMANCE_CACHE_DIR"
"""Where adapters keep caches between runs when ``--conformance-cache-dir`` is not given."""


def default_cache_dir() -> str:
    """``$BACKPROP_CONFORMANCE_CACHE_DIR``, else ``$XDG_CACHE_HOME/backprop-conformance``, else ``~/.cache/backprop-conformance``."""
    if CACHE_VARIABLE in os.environ:
        return os.environ[CACHE_VARIABLE]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "backprop-conformance")


DEFAULT_TIMEOUT = 900.0
"""Seconds one test of the suite may run before pytest-timeout ends it, naming the cell (unless the user
set pytest-timeout's own ``--timeout``). Generous: the slowest default test, a thorough-profile cell on a
compiling path, takes a few minutes; a hung framework call must end the job long before CI's own limit."""


class OptionError(ValueError):
    """An option value the suite cannot use; the message names the option and what is allowed."""


@dataclass(frozen=True)
class RunOptions:
    """What the user asked a run to do, validated (see :func:`add_options` for each option's meaning)."""

    backends: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("cpu",)
    all_paths: bool = False
    dispatch: tuple[str, ...] = ("native",)
    require: bool = False
    max_examples: int | None = None
    case_dir: Path = Path("conformance-cases")
    known_defects: tuple[Path, ...] = ()
    builtin_defects: Mapping[str, str] = field(default_factory=dict)
    report: Path | None = None
    baseline: Path | None = None
    update_baseline: bool = False
    markdown: Path | None = None
    timeout: float = DEFAULT_TIMEOUT
    cache_dir: Path | None = None
    shard: str | None = None
    backends_from: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.max_examples is not None and self.max_examples < 1:
            raise OptionError(f"{PREFIX}max-examples must be at least 1, got {self.max_examples}")
        if self.all_paths and self.paths:
            raise OptionError(f"{PREFIX}all-paths and {PREFIX}path select paths in two ways; give one of them")
        if self.update_baseline and self.baseline is None:
            raise OptionError(f"{PREFIX}update-baseline writes the file named by {PREFIX}baseline PATH; give {PREFIX}baseline too")
        if not self.timeout >= 0:
            raise OptionError(f"{PREFIX}timeout must be a number of seconds ≥ 0 (0: no limit), got {self.timeout}")


def add_options(parser: Any) -> None:
    """Register the options in pytest's parser, in one group shown first by ``backprop-conformance --help``."""
    group = parser.getgroup("backprop-conformance", "backprop-conformance: which frameworks to put on trial, and what to write")
    add = group.addoption
    add(
        f"{PREFIX}backend",
        action="append",
        default=[],
        metavar="NAME",
        help="adapter to test: a built-in name (torch, jax, tensorflow, keras, mlx, flax), an installed plug-in's name, "
        "or package.module:Attribute; repeatable; "
        f"default: ${BACKENDS_VARIABLE} if set, else every built-in and installed plug-in",
    )
    add(
        f"{PREFIX}path",
        action="append",
        default=[],
        metavar="PATH",
        help="execution path (eager, jit, ...); repeatable; default: each backend's default paths",
    )
    add(
        f"{PREFIX}all-paths",
        action="store_true",
        help="every path of every backend, opt-in ones (torch compile, jax grad/vjp/jacfwd) included",
    )
    add(
        f"{PREFIX}dtype",
        action="append",
        default=[],
        metavar="DTYPE",
        help="float64, float32, float16 or bfloat16; repeatable; default: all a backend supports",
    )
    add(
        f"{PREFIX}device",
        action="append",
        default=[],
        metavar="DEVICE",
        help="device to test on (cpu, cuda, gpu); repeatable; default: cpu",
    )
    add(
        f"{PREFIX}dispatch",
        action="append",
        default=[],
        metavar="LEVEL",
        help="CPU dispatch level to test each framework at: native (as this process runs it; the default), all (every level "
        "this CPU supports: torch's ATen capabilities aten-*, TensorFlow's onednn-on/onednn-off, XLA's ISA caps xla-*), "
        "or a level's name; repeatable; each forced level runs in a worker process (docs/backends.md)",
    )
    add(
        f"{PREFIX}require",
        action="store_true",
        help="fail the run, instead of skipping, when a requested backend is not installed or is left with no cell",
    )
    add(f"{PREFIX}max-examples", type=int, default=None, metavar="N", help="hypothesis examples per cell, overriding the profile")
    add(
        f"{PREFIX}case-dir",
        default="conformance-cases",
        metavar="DIR",
        help="where each failure's reproducer case files go (default: ./conformance-cases)",
    )
    add(
        f"{PREFIX}known-defects",
        action="append",
        default=[],
        metavar="FILE",
        help="TOML file of known upstream defects, added to the suite's own list (docs/adapters.md); repeatable",
    )
    add(
        f"{PREFIX}builtin-defects",
        action="append",
        default=[],
        metavar="BACKEND=MODE",
        help="what to do with a backend's entries in the suite's own known-defects list: strict (the default: a fixed defect "
        "fails the run), non-strict (an unexpected pass is reported, not failed) or off (not applied); BACKEND may be all; "
        "repeatable (docs/ci.md)",
    )
    add(f"{PREFIX}report", metavar="PATH", default=None, help="write the run's results as JSON (docs/report-schema.md)")
    add(
        f"{PREFIX}baseline",
        metavar="PATH",
        default=None,
        help="compare with a stored report: fail when a cell's worst ratio grows beyond 2 × max(baseline, floor) (floor 0.02 when both "
        "runs drew the same examples, else 0.25), or a passing cell no longer passes",
    )
    add(
        f"{PREFIX}update-baseline",
        action="store_true",
        help=f"write this run's report to the {PREFIX}baseline PATH (only after a passing run; never over a file that is not a report)",
    )
    add(f"{PREFIX}markdown", metavar="PATH", default=None, help="append a Markdown summary of the run to PATH (e.g. $GITHUB_STEP_SUMMARY)")
    add(
        f"{PREFIX}cache-dir",
        metavar="DIR",
        default=None,
        help=f"where adapters keep caches between runs (JAX's compilation cache, in DIR/jax); an empty string turns them off; "
        f"default: ${CACHE_VARIABLE}, else $XDG_CACHE_HOME/backprop-conformance or ~/.cache/backprop-conformance",
    )
    add(
        f"{PREFIX}shard",
        metavar="INDEX/COUNT",
        default=None,
        help="run only the INDEX-th of COUNT deterministic slices of the selected cells (a CI matrix job each; "
        "backprop-conformance merge joins their reports; docs/ci.md)",
    )
    add(
        f"{PREFIX}timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"per-test time limit through pytest-timeout, unless its own --timeout is given (default {DEFAULT_TIMEOUT:g}; 0: none)",
    )


def _names(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _cache_dir(value: str | None, start: Path) -> Path | None:
    chosen = default_cache_dir() if value is None else value
    return start / chosen if chosen else None


def _builtin_defects(values: Sequence[str]) -> dict[str, str]:
    """``BACKEND=MODE`` pairs as a mapping; a malformed pair, an unknown mode or a backend given twice is refused."""
    modes: dict[str, str] = {}
    for value in values:
        backend, sign, mode = value.partition("=")
        backend, mode = backend.strip(), mode.strip()
        if not sign or not backend or mode not in BUILTIN_MODES:
            raise OptionError(
                f"{PREFIX}builtin-defects takes BACKEND=MODE with MODE one of {', '.join(BUILTIN_MODES)} "
                f"and BACKEND a backend's name or {ALL_BACKENDS}; got {value!r}"
            )
        if modes.get(backend, mode) != mode:
            raise OptionError(f"{PREFIX}builtin-defects gives {backend} two modes, {modes[backend]} and {mode}; give one")
        modes[backend] = mode
    return modes


def from_config(config: Any) -> RunOptions:
    """The options of a pytest run, validated; relative paths are taken from where pytest was started."""

    def get(name: str) -> Any:
        return config.getoption(f"conformance_{name}")

    start = Path(config.invocation_params.dir)

    def path(value: str | None) -> Path | None:
        return None if value is None else start / value

    backends = _names(get("backend"))
    source = f"{PREFIX}backend"
    if not backends and os.environ.get(BACKENDS_VARIABLE, "").strip():
        backends = _names(re.split(r"[\s,]+", os.environ[BACKENDS_VARIABLE].strip()))
        source = f"${BACKENDS_VARIABLE}"
    return RunOptions(
        backends=backends,
        paths=_names(get("path")),
        dtypes=_names(get("dtype")),
        devices=_names(get("device")) or ("cpu",),
        all_paths=bool(get("all_paths")),
        dispatch=_names(get("dispatch")) or ("native",),
        require=bool(get("require")),
        max_examples=get("max_examples"),
        case_dir=start / get("case_dir"),
        known_defects=tuple(start / p for p in get("known_defects")),
        builtin_defects=_builtin_defects(get("builtin_defects")),
        report=path(get("report")),
        baseline=path(get("baseline")),
        update_baseline=bool(get("update_baseline")),
        markdown=path(get("markdown")),
        timeout=get("timeout"),
        cache_dir=_cache_dir(get("cache_dir"), start),
        shard=get("shard"),
        backends_from=source,
    )
