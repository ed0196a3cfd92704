"""Known upstream defects (:mod:`backprop_conformance.conformance.known_defects`): parsed strictly, never stale, applied as strict xfails.

A known-defects entry hides a failure, so every way it could hide the wrong thing, or nothing while
claiming to, must be an error naming the entry: a missing field, a backend, test or case that does not
exist, a path or dtype the backend does not offer. A valid entry must turn exactly its combinations
into *strict* xfails, so that the day a framework fixes the defect the test XPASSes and the run fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace

import pytest
from packaging.specifiers import SpecifierSet

from backprop_conformance.adapters.base import Capabilities
from backprop_conformance.adapters.registry import AdapterSpec, known_specs
from backprop_conformance.conformance import known_defects
from backprop_conformance.conformance.cells import Backend, Cell
from backprop_conformance.conformance.fidelity import FIDELITY_TESTS
from backprop_conformance.conformance.known_defects import Defect, KnownDefectsError, find, load, validate
from backprop_conformance.conformance.plugin import BACKENDS_KEY, CELLS_KEY, DEFECTS_KEY, fidelity_params

REPO_ROOT = Path(__file__).resolve().parents[1]
ISSUE = "https://example.org/fakeframework/issues/1"
FIELDS = {
    "backend": '"fake"',
    "versions": '"*"',
    "tests": '["test_sigmoid_prime_fidelity"]',
    "paths": '["jit"]',
    "dtypes": '["*"]',
    "cases": '["saturated", "positive-tail"]',
    "issue": f'"{ISSUE}"',
    "summary": '"σ′ computed as a(1 − a)"',
}
FAKE = Capabilities(
    name="fake", framework="Fake", version="0", dtypes=("float64", "float32"), paths=("eager", "jit"), default_paths=("eager", "jit")
)


def entry(**changes: str | None) -> str:
    """One ``[[defect]]`` table: :data:`FIELDS` with ``changes`` applied (None removes a field)."""
    fields = {**FIELDS, **changes}
    return "[[defect]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items() if v is not None)


def write(tmp_path: Path, *entries: str) -> Path:
    path = tmp_path / "known_defects.toml"
    path.write_text("# test file\n\n" + "\n".join(entries))
    return path


def test_valid_entry_loads_every_field(tmp_path: Path) -> None:
    assert load(write(tmp_path, entry())) == [
        Defect(
            backend="fake",
            versions=SpecifierSet(),
            tests=("test_sigmoid_prime_fidelity",),
            paths=("jit",),
            dtypes=("*",),
            cases=("saturated", "positive-tail"),
            issue=ISSUE,
            summary="σ′ computed as a(1 − a)",
        )
    ]


@pytest.mark.parametrize("missing", list(FIELDS))
def test_missing_field_names_the_entry_and_the_field(tmp_path: Path, missing: str) -> None:
    path = write(tmp_path, entry(), entry(**{missing: None}))
    with pytest.raises(KnownDefectsError) as raised:
        load(path)
    assert str(raised.value) == f"{path}: defect #2 lacks the field '{missing}'"


def test_unreadable_or_invalid_toml_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KnownDefectsError, match=r"nope\.toml"):
        load(tmp_path / "nope.toml")
    path = write(tmp_path, "[[defect]\nbackend = ")
    with pytest.raises(KnownDefectsError, match=r"known_defects\.toml"):
        load(path)


def test_string_instead_of_a_list_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KnownDefectsError, match="dtypes"):
        load(write(tmp_path, entry(dtypes='"float32"')))


def test_misspelt_table_name_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KnownDefectsError, match="defects"):
        load(write(tmp_path, entry().replace("[[defect]]", "[[defects]]")))


LOADED = {"fake": FAKE}
KNOWN = ["torch", "jax"]


@pytest.mark.parametrize(
    ("changes", "wanted"),
    [
        (
            {"backend": '"mxnet"'},
            "known defect #2 (mxnet, https://example.org/fakeframework/issues/1): unknown backend 'mxnet'; known: fake, jax, torch",
        ),
        (
            {"tests": '["test_sigmoid_fidelity"]'},
            "no fidelity test named 'test_sigmoid_fidelity'; the tests are test_sigmoid_prime_fidelity, ",
        ),
        ({"cases": '["saturated", "tail"]'}, "no case tail in test_sigmoid_prime_fidelity; their cases are center, negative-tail, "),
        ({"cases": '["saturated-output"]'}, "no case saturated-output in test_sigmoid_prime_fidelity"),
        (
            {"paths": '["jit", "compile"]'},
            "known defect #2 (fake, https://example.org/fakeframework/issues/1): fake has no path compile; it offers eager, jit",
        ),
        ({"dtypes": '["bfloat16"]'}, "fake has no dtype bfloat16; it offers float64, float32"),
    ],
    ids=["backend", "test", "case", "case-of-another-test", "path", "dtype"],
)
def test_stale_entry_names_itself(tmp_path: Path, changes: dict[str, str], wanted: str) -> None:
    defects = load(write(tmp_path, entry(), entry(**changes)))
    with pytest.raises(KnownDefectsError) as raised:
        validate(defects, FIDELITY_TESTS, LOADED, KNOWN)
    assert wanted in str(raised.value), str(raised.value)


def test_entry_for_a_backend_not_loaded_is_checked_for_tests_and_cases_only(tmp_path: Path) -> None:
    """torch is known but not loaded here: its paths cannot be checked, its test and case names still are."""
    fine = load(write(tmp_path, entry(backend='"torch"', paths='["no-such-path"]')))
    validate(fine, FIDELITY_TESTS, LOADED, KNOWN)
    stale = load(write(tmp_path, entry(backend='"torch"', cases='["nowhere"]')))
    with pytest.raises(KnownDefectsError, match="no case nowhere"):
        validate(stale, FIDELITY_TESTS, LOADED, KNOWN)


def test_find_matches_exactly_the_listed_combinations(tmp_path: Path) -> None:
    first, second = load(write(tmp_path, entry(), entry(tests='["test_network_fidelity"]', paths='["*"]', cases='["saturated-output"]')))
    validate([first, second], FIDELITY_TESTS, LOADED, KNOWN)
    for dtype in FAKE.dtypes:
        for case in ("saturated", "positive-tail"):
            assert find([first, second], "test_sigmoid_prime_fidelity", "fake", "0", "jit", dtype, case) is first
            assert find([first, second], "test_sigmoid_prime_fidelity", "fake", "0", "eager", dtype, case) is None
        for case in ("center", "negative-tail"):
            assert find([first, second], "test_sigmoid_prime_fidelity", "fake", "0", "jit", dtype, case) is None
        for path in FAKE.paths:
            assert find([first, second], "test_network_fidelity", "fake", "0", path, dtype, "saturated-output") is second
            assert find([first, second], "test_network_fidelity", "fake", "0", path, dtype, "unsaturated") is None
    assert find([first, second], "test_sigmoid_prime_fidelity", "other", "0", "jit", "float64", "saturated") is None


def test_matching_parameters_become_strict_xfails(tmp_path: Path) -> None:
    """The plugin's parameters of a fidelity test: the entry's combinations carry xfail(strict=True) with the issue, no others do."""
    config = SimpleNamespace(stash=pytest.Stash())
    config.stash[DEFECTS_KEY] = load(write(tmp_path, entry()))
    config.stash[CELLS_KEY] = [Cell("fake", path, dtype) for path in FAKE.paths for dtype in FAKE.dtypes]
    missing = Backend(AdapterSpec("gone", "gone:Gone", "test", ("gone",)), unavailable="skipped: gone not installed")
    config.stash[BACKENDS_KEY] = [Backend(AdapterSpec("fake", "fake:Fake", "test"), capabilities=FAKE), missing]
    params = fidelity_params(config, "test_sigmoid_prime_fidelity")  # type: ignore[arg-type]
    marks = {p.id: [(m.name, m.kwargs) for m in p.marks] for p in params}
    xfailed = {pid for pid, ms in marks.items() if ms and ms[0][0] == "xfail"}
    assert xfailed == {f"fake-jit-{d}-{c}" for d in ("float64", "float32") for c in ("saturated", "positive-tail")}
    for pid in xfailed:
        (_, kwargs), *rest = marks[pid]
        assert not rest and kwargs["strict"] is True, marks[pid]
        assert ISSUE in kwargs["reason"] and "σ′ computed as a(1 − a)" in kwargs["reason"], kwargs
    unmarked = {pid for pid, ms in marks.items() if not ms}
    assert len(unmarked) == 2 * 2 * 4 - len(xfailed)
    assert marks["gone"][0][0] == "skip", "an unavailable backend stays in the run as a skip"
    assert not any(p.marks for p in fidelity_params(config, "test_network_fidelity") if p.id != "gone")  # type: ignore[arg-type]


def test_bundled_file_is_valid() -> None:
    defects = load(known_defects.DEFAULT_FILE)
    assert defects, "the bundled file lists the known torch and jax defects"
    assert all(d.backend in ("torch", "jax") and d.issue.startswith("https://github.com/") for d in defects)
    validate(defects, FIDELITY_TESTS, {}, list(known_specs()))


def covered_by_bundled_torch_entries(test_id: str) -> bool:
    """known_defects.toml's torch entries, restated: σ′'s positive tail and saturation, and a saturated output layer (float64)."""
    if test_id.startswith("test_sigmoid_prime_fidelity["):
        return test_id.endswith(("-float64-positive-tail]", "-float64-saturated]"))
    return test_id.startswith("test_network_fidelity[") and test_id.endswith("-float64-saturated-output]")


@pytest.mark.skipif(find_spec("torch") is None, reason="torch not installed")
def test_bundled_torch_entries_are_strict_xfails_end_to_end(tmp_path: Path) -> None:
    """``pytest conformance --backend torch``, fidelity tier, float64: exactly the file's torch combinations xfail, nothing fails."""
    junit = tmp_path / "junit.xml"
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "HYPOTHESIS_PROFILE")}
    env["HYPOTHESIS_STORAGE_DIRECTORY"] = str(tmp_path / "hypothesis")
    command = [sys.executable, "-m", "pytest", "conformance/test_fidelity.py", "-p", "no:cacheprovider", "--backend", "torch"]
    command += ["--dtype", "float64", f"--case-dir={tmp_path / 'cases'}", f"--junitxml={junit}"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        skipped = case.find("skipped")
        outcomes[case.get("name", "")] = (skipped.get("type"), skipped.get("message", "")) if skipped is not None else ("passed", "")
    assert outcomes and not any(kind == "pytest.skip" for kind, _ in outcomes.values()), outcomes
    expected = {name for name in outcomes if covered_by_bundled_torch_entries(name)}
    xfailed = {name for name, (kind, _) in outcomes.items() if kind == "pytest.xfail"}
    assert expected and xfailed == expected, f"xfailed {sorted(xfailed)}, expected {sorted(expected)}"
    assert all(
        "known upstream defect" in message and "github.com/pytorch/pytorch/issues" in message
        for _, message in (outcomes[n] for n in xfailed)
    )


def test_versions_restrict_an_entry_to_the_framework_versions_it_was_seen_in(tmp_path: Path) -> None:
    """A defect fixed upstream stops matching newer versions; a local version label (+cpu) does not get in the way."""
    (old,) = load(write(tmp_path, entry(versions='"<2.14"')))
    assert find([old], "test_sigmoid_prime_fidelity", "fake", "2.13.0+cpu", "jit", "float64", "saturated") is old
    assert find([old], "test_sigmoid_prime_fidelity", "fake", "2.14.0", "jit", "float64", "saturated") is None


def test_versions_must_be_a_specifier(tmp_path: Path) -> None:
    with pytest.raises(KnownDefectsError, match="not a PEP 440 specifier"):
        load(write(tmp_path, entry(versions='"newest"')))
