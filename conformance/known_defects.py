"""Known upstream defects, kept as data (``known_defects.toml``) and applied as strict xfails.

Why strict xfails rather than skips: a skipped test says nothing when the framework is fixed; a
strict xfail turns into XPASS, which fails the run and tells the user the entry can go. Why data:
the list changes with framework releases, not with the suite's code, and each entry carries the
upstream issue a user should read.

An entry that names a test, case, path or dtype that does not exist for its backend is an error
(reported as a usage error at start-up), never a silent no-op: a renamed test would otherwise leave a
stale entry that matches nothing, and the known defect would quietly turn into a hard failure or,
worse, the entry would hide nothing while the file claims it does.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from backprop_conformance.adapters.base import Capabilities

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_FILE = Path(__file__).with_name("known_defects.toml")


class KnownDefectsError(ValueError):
    """The known-defects file is malformed or has an entry that matches nothing; the message says which."""


@dataclass(frozen=True)
class Defect:
    """One entry: which (test, backend, path, dtype, case) combinations fail, with which framework versions
    (a PEP 440 specifier: defects come and go with releases), and where upstream tracks it."""

    backend: str
    versions: SpecifierSet
    tests: tuple[str, ...]
    paths: tuple[str, ...]
    dtypes: tuple[str, ...]
    cases: tuple[str, ...]
    issue: str
    summary: str

    def matches(self, test: str, backend: str, version: str, path: str, dtype: str, case: str) -> bool:
        return (
            backend == self.backend
            and self.versions.contains(version, prereleases=True)
            and test in self.tests
            and (self.paths == ("*",) or path in self.paths)
            and (self.dtypes == ("*",) or dtype in self.dtypes)
            and case in self.cases
        )

    @property
    def reason(self) -> str:
        return f"known upstream defect: {self.summary} ({self.issue})"


def load(path: Path = DEFAULT_FILE) -> list[Defect]:
    """Parse the file; every field is required, so that no entry is vague about what it covers."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise KnownDefectsError(f"{path}: {exc}") from None
    unknown = sorted(set(data) - {"defect"})
    if unknown:
        raise KnownDefectsError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; entries are [[defect]] tables")
    defects = []
    for number, entry in enumerate(data.get("defect", []), start=1):
        try:
            lists = {key: entry[key] for key in ("tests", "paths", "dtypes", "cases")}
            texts = {key: entry[key] for key in ("backend", "versions", "issue", "summary")}
        except KeyError as exc:
            raise KnownDefectsError(f"{path}: defect #{number} lacks the field {exc}") from None
        extra = sorted(set(entry) - set(lists) - set(texts))
        if extra:
            raise KnownDefectsError(f"{path}: defect #{number} has unknown field(s) {', '.join(extra)}")
        for key, value in lists.items():
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise KnownDefectsError(f"{path}: defect #{number}: {key} must be a non-empty list of strings, got {value!r}")
        for key, value in texts.items():
            if not isinstance(value, str) or not value:
                raise KnownDefectsError(f"{path}: defect #{number}: {key} must be a non-empty string, got {value!r}")
        try:
            versions = SpecifierSet("" if texts["versions"] == "*" else texts["versions"])
        except InvalidSpecifier:
            raise KnownDefectsError(
                f'{path}: defect #{number}: versions {texts["versions"]!r} is not a PEP 440 specifier (or "*")'
            ) from None
        lists_in_order = (tuple(lists[k]) for k in ("tests", "paths", "dtypes", "cases"))
        defects.append(Defect(texts["backend"], versions, *lists_in_order, texts["issue"], texts["summary"]))
    return defects


def validate(
    defects: Sequence[Defect], tests: Mapping[str, Sequence[str]], loaded: Mapping[str, Capabilities], known_backends: Sequence[str]
) -> None:
    """Raise :class:`KnownDefectsError` for any entry that cannot match a test of the full table.

    ``tests`` maps each fidelity test name to its case names. Entries are checked against each
    backend's declared capabilities, not against the user's ``--path``/``--dtype`` filters: filtering a
    matching test out of a run is the user's choice, a stale entry is a bug. Entries for a backend that
    is known but not loaded in this run (not installed, not selected) cannot be checked against its
    capabilities; their test and case names still are.
    """
    for number, d in enumerate(defects, start=1):
        where = f"known defect #{number} ({d.backend}, {d.issue})"
        if d.backend not in known_backends and d.backend not in loaded:
            raise KnownDefectsError(
                f"{where}: unknown backend {d.backend!r}; known: {', '.join(sorted(set(known_backends) | set(loaded)))}"
            )
        for test in d.tests:
            if test not in tests:
                raise KnownDefectsError(f"{where}: no fidelity test named {test!r}; the tests are {', '.join(tests)}")
        cases = [c for test in d.tests for c in tests[test]]
        unknown = [c for c in d.cases if c not in cases]
        if unknown:
            raise KnownDefectsError(f"{where}: no case {', '.join(unknown)} in {', '.join(d.tests)}; their cases are {', '.join(cases)}")
        caps = loaded.get(d.backend)
        if caps is None:
            continue
        for kind, named, valid in (("path", d.paths, caps.paths), ("dtype", d.dtypes, caps.dtypes)):
            unknown = [n for n in named if n != "*" and n not in valid]
            if unknown:
                raise KnownDefectsError(f"{where}: {d.backend} has no {kind} {', '.join(unknown)}; it offers {', '.join(valid)}")


def find(defects: Sequence[Defect], test: str, backend: str, version: str, path: str, dtype: str, case: str) -> Defect | None:
    """The first entry covering this combination at this framework version, if any."""
    return next((d for d in defects if d.matches(test, backend, version, path, dtype, case)), None)
