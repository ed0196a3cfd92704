"""Known upstream defects, kept as data (``known_defects.toml``) and applied as strict xfails.

Why strict xfails rather than skips: a skipped test says nothing when the framework is fixed; a
strict xfail turns into XPASS, which fails the run and tells the user the entry can go. Why data:
the list changes with framework releases, not with the suite's code, and each entry carries the
upstream issue a user should read.

An entry may cover fidelity tests (which have named cases, e.g. σ′ in its ``saturated`` region) and,
for a defect that breaks conformance itself, the property test ``test_gradients`` or the contract test
``test_contract`` of a cell. A known defect on a conformance cell still runs the test and still shows
its verdict -- in the failure text of the xfail, in the matrix (status ``known defect``) and in the
report -- so that nobody mistakes it for a pass.

An entry may be limited to dispatch configurations (``dispatch = { "tensorflow.onednn" = "on" }``): a defect that
exists only where a framework picks certain kernels -- oneDNN's, or AVX-512 ones -- is then expected, strictly,
exactly where the cell's recorded configuration (:mod:`~backprop_conformance.adapters.dispatch`) says those kernels
ran, and nowhere else. Such an entry is applied when the cell's configuration is known, as its test starts.

An entry may be keyed by the version of a framework underneath its backend (``framework = "jax"``): a wrapper's
defect usually lives in what it wraps (Flax's σ′ is JAX's), and is fixed by the underlying framework's releases,
not the wrapper's. Its ``versions`` are then matched against the version the backend declares for that framework
(:attr:`~backprop_conformance.adapters.base.Capabilities.frameworks`), which :func:`validate` looks up once the
backends are loaded; an entry naming a framework its backend does not declare is an error.

The suite's own file is loaded unless ``--conformance-builtin-defects BACKEND=off`` drops a backend's entries; every
``--conformance-known-defects FILE`` adds to it, so that a third party can list its framework's defects without
losing the built-in ones. A framework's own CI needs the other way round too: there the fix for a listed defect lands
first, and a strict entry would fail that CI the day it is merged, so ``BACKEND=non-strict`` keeps a backend's
built-in entries as expected failures whose unexpected pass is reported, not failed (:data:`BUILTIN_MODES`). An entry for a
backend that this run has not loaded is ignored with a note, so that one file can cover several
frameworks. Anything else that would make an entry hide the wrong thing, or nothing while claiming
to, is an error naming the entry: a missing or unknown field, a test or case that does not exist, a
path or dtype its backend does not offer, or a list mixing ``"*"`` with names.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, MutableSequence, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from backprop_conformance.adapters.base import Capabilities
from backprop_conformance.adapters.dispatch import FRAMEWORK_KEYS, MACHINE_KEYS, Level

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_FILE = Path(__file__).with_name("known_defects.toml")

CONFORMANCE_TESTS = ("test_contract", "test_gradients")
"""The tests of a cell that have no cases: an entry naming them covers the whole cell's test."""


class KnownDefectsError(ValueError):
    """A known-defects file is malformed or has an entry that matches nothing; the message says which."""


@dataclass(frozen=True)
class Defect:
    """One entry: which (test, backend, path, dtype, case) combinations fail, with which framework versions
    (a PEP 440 specifier: defects come and go with releases), and where upstream tracks it.

    ``cases`` applies to the fidelity tests only; it is empty for an entry that names only
    conformance tests. ``dispatch`` limits the entry to configurations (:func:`configuration_matches`); empty, it
    holds on every CPU. ``source`` names the file and entry number in messages. ``framework``, when not empty,
    names the framework underneath the backend whose version ``versions`` is matched against; its version,
    ``framework_version``, is filled in by :func:`validate` from the loaded backend's declaration, and until
    then the entry matches nothing.
    """

    backend: str
    versions: SpecifierSet
    tests: tuple[str, ...]
    paths: tuple[str, ...]
    dtypes: tuple[str, ...]
    cases: tuple[str, ...]
    issue: str
    summary: str
    source: str = ""
    file: str = ""
    dispatch: Mapping[str, str] = field(default_factory=dict)
    strict: bool = True
    framework: str = ""
    framework_version: str | None = None

    def matches(
        self,
        test: str,
        backend: str,
        version: str,
        path: str,
        dtype: str,
        case: str | None = None,
        configuration: Mapping[str, str] | None = None,
    ) -> bool:
        """Whether the entry covers this test; an entry limited to configurations never covers one whose
        ``configuration`` is not known yet (None)."""
        matched_version = self.framework_version if self.framework else version
        return (
            backend == self.backend
            and matched_version is not None
            and self.versions.contains(matched_version, prereleases=True)
            and test in self.tests
            and (self.paths == ("*",) or path in self.paths)
            and (self.dtypes == ("*",) or dtype in self.dtypes)
            and (case is None or self.cases == ("*",) or case in self.cases)
            and (not self.dispatch or (configuration is not None and configuration_matches(self.dispatch, configuration)))
        )

    @property
    def reason(self) -> str:
        where = f" (where {', '.join(f'{k} is {v}' for k, v in self.dispatch.items())})" if self.dispatch else ""
        underneath = f" of {self.framework} {self.framework_version}" if self.framework else ""
        return f"known upstream defect{underneath}{where}: {self.summary} ({self.issue})"


FEATURES_KEY = "cpu.features"


def configuration_matches(conditions: Mapping[str, str], configuration: Mapping[str, str]) -> bool:
    """Every condition holds in ``configuration``: ``cpu.features`` lists features that must all be present, any
    other key must have exactly the value given."""
    for key, wanted in conditions.items():
        if key == FEATURES_KEY:
            if not set(wanted.split()) <= set(configuration.get(key, "").split()):
                return False
        elif configuration.get(key) != wanted:
            return False
    return True


REQUIRED_LISTS = ("tests", "paths", "dtypes")
TEXTS = ("backend", "versions", "issue", "summary")


def load(path: Path = DEFAULT_FILE) -> list[Defect]:
    """Parse one file; every field is required (``cases`` when a fidelity test is named), so no entry is vague."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KnownDefectsError(f"{path}: {exc}") from None
    unknown = sorted(set(data) - {"defect"})
    if unknown:
        raise KnownDefectsError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; entries are [[defect]] tables")
    entries = data.get("defect", [])
    if not isinstance(entries, list):
        raise KnownDefectsError(f"{path}: 'defect' must be an array of tables ([[defect]])")
    defects = []
    for number, entry in enumerate(entries, start=1):
        where = f"{path}: defect #{number}"
        try:
            lists = {key: entry[key] for key in REQUIRED_LISTS}
            texts = {key: entry[key] for key in TEXTS}
        except KeyError as exc:
            raise KnownDefectsError(f"{where} lacks the field {exc}") from None
        fidelity = [t for t in lists["tests"] if t not in CONFORMANCE_TESTS] if isinstance(lists["tests"], list) else []
        if "cases" in entry or fidelity:
            if "cases" not in entry:
                raise KnownDefectsError(
                    f"{where} lacks the field 'cases' (required for the fidelity tests {', '.join(map(str, fidelity))})"
                )
            lists["cases"] = entry["cases"]
        extra = sorted(set(entry) - set(lists) - set(texts) - {"dispatch", "framework"})
        if extra:
            raise KnownDefectsError(f"{where} has unknown field(s) {', '.join(extra)}")
        framework = entry.get("framework", "")
        if "framework" in entry and (not isinstance(framework, str) or not framework):
            raise KnownDefectsError(
                f'{where}: framework must be the non-empty name of a framework the backend runs on (framework = "jax"), got {framework!r}'
            )
        conditions = _conditions(entry["dispatch"], where) if "dispatch" in entry else {}
        for key, value in lists.items():
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise KnownDefectsError(f"{where}: {key} must be a non-empty list of strings, got {value!r}")
            if "*" in value and len(value) > 1:
                raise KnownDefectsError(f'{where}: {key} {value!r} mixes "*" (every one) with names; give "*" alone or names alone')
        for key, value in texts.items():
            if not isinstance(value, str) or not value:
                raise KnownDefectsError(f"{where}: {key} must be a non-empty string, got {value!r}")
        try:
            versions = SpecifierSet("" if texts["versions"] == "*" else texts["versions"])
        except InvalidSpecifier:
            raise KnownDefectsError(f'{where}: versions {texts["versions"]!r} is not a PEP 440 specifier (or "*")') from None
        defects.append(
            Defect(
                texts["backend"],
                versions,
                tuple(lists["tests"]),
                tuple(lists["paths"]),
                tuple(lists["dtypes"]),
                tuple(lists.get("cases", ())),
                texts["issue"],
                texts["summary"],
                f"known defect #{number} of {path} ({texts['backend']}, {texts['issue']})",
                str(path),
                conditions,
                framework=framework,
            )
        )
    return defects


def _conditions(value: object, where: str) -> dict[str, str]:
    """An entry's ``dispatch`` table: non-empty, string keys and non-empty string values (checked against the loaded
    backends' vocabulary by :func:`validate`)."""
    if not isinstance(value, dict):
        raise KnownDefectsError(
            f'{where}: dispatch must be a table of configuration keys, e.g. dispatch = {{ "tensorflow.onednn" = "on" }}'
        )
    if not value:
        raise KnownDefectsError(f"{where}: dispatch is an empty table; leave it out for an entry that holds on every configuration")
    for key, wanted in value.items():
        if not isinstance(wanted, str) or not wanted.strip():
            raise KnownDefectsError(f"{where}: dispatch {key!r} must be a non-empty string, got {wanted!r}")
    return {str(k): str(v) for k, v in value.items()}


BUILTIN_MODES = ("strict", "non-strict", "off")
"""What ``--conformance-builtin-defects BACKEND=MODE`` does with a backend's entries in the suite's own list."""

ALL_BACKENDS = "all"
"""The ``BACKEND`` of ``--conformance-builtin-defects`` that stands for every backend."""


def builtin_mode(modes: Mapping[str, str], backend: str) -> str:
    """The mode for ``backend``'s built-in entries: its own, else ``all``'s, else strict."""
    return modes.get(backend, modes.get(ALL_BACKENDS, "strict"))


def load_all(extra: Sequence[Path] = (), builtin: Mapping[str, str] | None = None) -> list[Defect]:
    """The suite's own entries, as ``builtin`` (backend → mode) leaves them, followed by those of every extra file."""
    modes = dict(builtin or {})
    own = load(DEFAULT_FILE)
    listed = sorted({d.backend for d in own})
    unknown = sorted(set(modes) - {*listed, ALL_BACKENDS})
    if unknown:
        raise KnownDefectsError(
            f"--conformance-builtin-defects names {', '.join(unknown)}, which the suite's own list has no entry for; "
            f"it has entries for {', '.join(listed)} (or give {ALL_BACKENDS})"
        )
    defects = []
    for defect in own:
        mode = builtin_mode(modes, defect.backend)
        if mode != "off":
            defects.append(replace(defect, strict=mode == "strict"))
    for path in extra:
        defects += load(path)
    return defects


def describe_modes(modes: Mapping[str, str]) -> str:
    """The header's line for ``--conformance-builtin-defects``, empty when every built-in entry stays strict."""
    changed = {backend: mode for backend, mode in sorted(modes.items()) if mode != "strict"}
    if not changed:
        return ""
    parts = [
        f"{'every backend' if backend == ALL_BACKENDS else backend}'s {'switched off' if mode == 'off' else 'non-strict'}"
        for backend, mode in changed.items()
    ]
    return "built-in known defects: " + "; ".join(parts) + " (--conformance-builtin-defects)"


def validate(defects: MutableSequence[Defect], tests: Mapping[str, Sequence[str]], loaded: Mapping[str, Capabilities]) -> list[str]:
    """Raise :class:`KnownDefectsError` for any entry that cannot match a test of the full table; return notes.

    An entry keyed by an underlying framework (``framework``) is replaced, in place, by one that holds the version
    its loaded backend declares for that framework, which is what it is matched against from then on.

    ``tests`` maps every test that entries may name to its case names (empty for the conformance
    tests). Entries are checked against each backend's declared capabilities, not against the user's
    path and dtype filters: filtering a matching test out of a run is the user's choice, a stale entry
    is a bug. An entry whose backend is not loaded in this run is ignored; the notes returned say so,
    per file and backend, for the files a user added (the suite's own file covers every built-in
    backend, and a run of one of them needs no note about the others).
    """
    ignored: dict[tuple[str, str], int] = {}
    levels = {name: caps.levels for name, caps in loaded.items()}
    for index, d in enumerate(defects):
        for test in d.tests:
            if test not in tests:
                raise KnownDefectsError(f"{d.source}: no test named {test!r}; the tests are {', '.join(tests)}")
        valid_cases = [c for test in d.tests for c in tests[test]]
        unknown = [c for c in d.cases if c != "*" and c not in valid_cases]
        if unknown:
            raise KnownDefectsError(
                f"{d.source}: no case {', '.join(unknown)} in {', '.join(d.tests)}; their cases are {', '.join(valid_cases) or 'none'}"
            )
        caps = loaded.get(d.backend)
        if caps is None:
            key = (d.file, d.backend)
            ignored[key] = ignored.get(key, 0) + 1
            continue
        for kind, named, valid in (("path", d.paths, caps.paths), ("dtype", d.dtypes, caps.dtypes)):
            stray = [n for n in named if n != "*" and n not in valid]
            if stray:
                raise KnownDefectsError(f"{d.source}: {d.backend} has no {kind} {', '.join(stray)}; it offers {', '.join(valid)}")
        _check_conditions(d, levels[d.backend])
        if d.framework:
            if d.framework not in caps.frameworks:
                declared = ", ".join(caps.frameworks) or "none"
                raise KnownDefectsError(
                    f"{d.source}: framework {d.framework!r} is not one {d.backend} declares it runs on "
                    f"(Capabilities.frameworks: {declared})"
                )
            defects[index] = replace(d, framework_version=caps.frameworks[d.framework])
    return [
        f"{file}: {count} known-defect entr{'y' if count == 1 else 'ies'} for backend {backend!r}, not loaded in this run, ignored"
        for (file, backend), count in ignored.items()
        if file != str(DEFAULT_FILE)
    ]


def _check_conditions(defect: Defect, levels: Mapping[str, tuple[Level, ...]]) -> None:
    """An entry's ``dispatch`` keys must be ones a run records, and a value its backend's levels can set must be one of them.

    The keys are the machine's (:data:`~backprop_conformance.adapters.dispatch.MACHINE_KEYS`), the built-in
    frameworks' (:data:`~backprop_conformance.adapters.dispatch.FRAMEWORK_KEYS`) and those the backend's declared
    levels set. A misspelt key or value would make the entry match nothing while claiming a defect, so it is an error.
    """
    settable: dict[str, set[str]] = {}
    for path_levels in levels.values():
        for level in path_levels:
            for key, value in level.setting.items():
                settable.setdefault(key, set()).add(value)
    known = [*MACHINE_KEYS, *FRAMEWORK_KEYS, *settable]
    for key, wanted in defect.dispatch.items():
        if key not in known:
            raise KnownDefectsError(
                f"{defect.source}: dispatch key {key!r} is not recorded by a run; the keys are {', '.join(dict.fromkeys(known))}"
            )
        if key in settable and wanted not in settable[key]:
            raise KnownDefectsError(
                f"{defect.source}: dispatch {key} = {wanted!r} is not a value {defect.backend}'s levels set; "
                f"they set {', '.join(sorted(settable[key]))}"
            )


def find(
    defects: Sequence[Defect],
    test: str,
    backend: str,
    version: str,
    path: str,
    dtype: str,
    case: str | None = None,
    configuration: Mapping[str, str] | None = None,
) -> Defect | None:
    """The first entry covering this combination at this framework version (and ``configuration``, once known), if any."""
    return next((d for d in defects if d.matches(test, backend, version, path, dtype, case, configuration)), None)
