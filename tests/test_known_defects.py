"""Known upstream defects (:mod:`backprop_conformance.conformance.known_defects`): parsed strictly, never stale, applied as strict xfails.

A known-defects entry hides a failure, so every way it could hide the wrong thing, or nothing while
claiming to, must be an error naming the entry: a missing field, a backend, test or case that does not
exist, a path or dtype the backend does not offer. A valid entry must turn exactly its combinations
into *strict* xfails, so that the day a framework fixes the defect the test XPASSes and the run fails.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest
from conftest import assert_usage_error, suite
from packaging.specifiers import SpecifierSet

from backprop_conformance.adapters.base import Capabilities
from backprop_conformance.conformance import known_defects
from backprop_conformance.conformance.fidelity import FIDELITY_TESTS
from backprop_conformance.conformance.known_defects import CONFORMANCE_TESTS, KnownDefectsError, find, load, validate
from backprop_conformance.conformance.runner import SuiteRun

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


def write(directory: Path, *entries: str, name: str = "known_defects.toml") -> Path:
    path = directory / name
    path.write_text("# test file\n\n" + "\n".join(entries))
    return path


def gradients_entry(backend: str, dtype: str, paths: str = '["*"]') -> str:
    """An entry for ``backend``'s test_gradients in ``dtype`` (δ^L without σ′, as the mutant it is written for)."""
    return entry(
        backend=f'"{backend}"',
        tests='["test_gradients"]',
        paths=paths,
        dtypes=f'["{dtype}"]',
        cases=None,
        issue=f'"https://example.org/{backend}/1"',
        summary='"δ^L without σ′"',
    )


TESTS = {**dict.fromkeys(CONFORMANCE_TESTS, ()), **FIDELITY_TESTS}
"""Every test an entry may name, with its cases (the conformance tests have none)."""


def test_valid_entry_loads_every_field(tmp_path: Path) -> None:
    (defect,) = load(write(tmp_path, entry()))
    assert (defect.backend, defect.versions, defect.tests, defect.paths, defect.dtypes, defect.cases, defect.issue, defect.summary) == (
        "fake",
        SpecifierSet(),
        ("test_sigmoid_prime_fidelity",),
        ("jit",),
        ("*",),
        ("saturated", "positive-tail"),
        ISSUE,
        "σ′ computed as a(1 − a)",
    )
    assert defect.source == f"known defect #1 of {tmp_path / 'known_defects.toml'} (fake, {ISSUE})"


@pytest.mark.parametrize("missing", list(FIELDS))
def test_missing_field_names_the_entry_and_the_field(tmp_path: Path, missing: str) -> None:
    path = write(tmp_path, entry(), entry(**{missing: None}))
    with pytest.raises(KnownDefectsError) as raised:
        load(path)
    assert str(raised.value).startswith(f"{path}: defect #2 lacks the field '{missing}'"), str(raised.value)


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


@pytest.mark.parametrize(
    ("changes", "wanted"),
    [
        (
            {"tests": '["test_sigmoid_fidelity"]'},
            "no test named 'test_sigmoid_fidelity'; the tests are test_contract, test_gradients, test_sigmoid_prime_fidelity, ",
        ),
        ({"cases": '["saturated", "tail"]'}, "no case tail in test_sigmoid_prime_fidelity; their cases are center, negative-tail, "),
        ({"cases": '["saturated-output"]'}, "no case saturated-output in test_sigmoid_prime_fidelity"),
        (
            {"paths": '["jit", "compile"]'},
            "known defect #2 of {path} (fake, https://example.org/fakeframework/issues/1): fake has no path compile; it offers eager, jit",
        ),
        ({"dtypes": '["bfloat16"]'}, "fake has no dtype bfloat16; it offers float64, float32"),
        ({"paths": '["*", "eager"]'}, "paths ['*', 'eager'] mixes \"*\" (every one) with names"),
        (
            {"tests": '["test_gradients", "test_network_fidelity"]', "cases": '["tail"]'},
            "no case tail in test_gradients, test_network_fidelity",
        ),
    ],
    ids=["test", "case", "case-of-another-test", "path", "dtype", "mixed-star", "case-of-mixed-tests"],
)
def test_stale_entry_names_itself(tmp_path: Path, changes: dict[str, str], wanted: str) -> None:
    path = write(tmp_path, entry(), entry(**changes))
    with pytest.raises(KnownDefectsError) as raised:
        validate(load(path), TESTS, LOADED)
    assert wanted.format(path=path) in str(raised.value), str(raised.value)


def test_entry_for_a_backend_not_loaded_is_ignored_with_a_note(tmp_path: Path) -> None:
    """One file may cover several frameworks: an entry for a backend this run did not load is ignored, and the run says so.

    Its paths cannot be checked without the backend; its test and case names still are.
    """
    path = write(tmp_path, entry(backend='"mxnet"', paths='["no-such-path"]'), entry(backend='"mxnet"'))
    notes = validate(load(path), TESTS, LOADED)
    assert notes == [f"{path}: 2 known-defect entries for backend 'mxnet', not loaded in this run, ignored"]
    stale = load(write(tmp_path, entry(backend='"torch"', cases='["nowhere"]')))
    with pytest.raises(KnownDefectsError, match="no case nowhere"):
        validate(stale, TESTS, LOADED)


def test_conformance_tests_take_no_cases(tmp_path: Path) -> None:
    """An entry for test_gradients covers the whole cell; ``cases`` is required only where a fidelity test is named."""
    path = write(tmp_path, entry(tests='["test_gradients"]', cases=None))
    (defect,) = load(path)
    assert validate([defect], TESTS, LOADED) == []
    assert find([defect], "test_gradients", "fake", "0", "jit", "float32") is defect
    assert find([defect], "test_contract", "fake", "0", "jit", "float32") is None
    with pytest.raises(KnownDefectsError, match=r"lacks the field 'cases' .*required for the fidelity tests test_network_fidelity"):
        load(write(tmp_path, entry(tests='["test_gradients", "test_network_fidelity"]', cases=None)))


def test_find_matches_exactly_the_listed_combinations(tmp_path: Path) -> None:
    first, second = load(write(tmp_path, entry(), entry(tests='["test_network_fidelity"]', paths='["*"]', cases='["saturated-output"]')))
    validate([first, second], TESTS, LOADED)
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


def test_bundled_file_is_valid() -> None:
    defects = load(known_defects.DEFAULT_FILE)
    assert defects, "the bundled file lists the known torch and jax defects"
    assert all(d.issue.startswith("https://github.com/") for d in defects)
    assert validate(defects, TESTS, {}) == [], "the suite's own file needs no note about backends a run did not load"


def test_extra_files_add_to_the_bundled_list(tmp_path: Path) -> None:
    """--conformance-known-defects adds entries; it never replaces torch's and jax's own."""
    bundled = load(known_defects.DEFAULT_FILE)
    combined = known_defects.load_all([write(tmp_path, entry())])
    assert combined[: len(bundled)] == bundled and len(combined) == len(bundled) + 1 and combined[-1].backend == "fake"


# End to end: strict xfails in real runs, through --conformance-known-defects.

OUTPUT_SIGMA_PRIME = ("--conformance-backend", "tests.mutants:OutputSigmaPrime", "--conformance-max-examples", "5")
FIDELITY_ENTRY = (
    '[[defect]]\nbackend = "ok-output-sigma-prime"\nversions = "*"\ntests = ["test_sigmoid_prime_fidelity"]\npaths = ["*"]\n'
    'dtypes = ["*"]\ncases = ["positive-tail", "saturated"]\nissue = "https://example.org/numpy/1"\nsummary = "a(1 − a) in numpy"\n'
    '\n[[defect]]\nbackend = "ok-output-sigma-prime"\nversions = "*"\ntests = ["test_network_fidelity"]\npaths = ["*"]\n'
    'dtypes = ["float64", "float32"]\ncases = ["saturated-output"]\nissue = "https://example.org/numpy/1"\nsummary = "a(1 − a) in numpy"\n'
)


def test_matching_items_become_strict_xfails_and_only_they(tmp_path: Path) -> None:
    """A third party's file (textbook σ′ = a(1 − a) in numpy): exactly its fidelity items xfail, strictly, naming the issue."""
    defects = tmp_path / "defects.toml"
    defects.write_text(FIDELITY_ENTRY, encoding="utf-8")
    done = suite(tmp_path, *OUTPUT_SIGMA_PRIME, "--conformance-known-defects", str(defects), marks="fidelity")
    assert done.returncode == pytest.ExitCode.OK, done.explain()
    xfailed = {o.test for o in done.outcomes if o.outcome == "skipped" and "known upstream defect" in o.message}
    expected = {
        f"test_sigmoid_prime_fidelity[ok-output-sigma-prime-manual-{d}-{case}]"
        for d in ("float64", "float32")
        for case in ("positive-tail", "saturated")
    } | {f"test_network_fidelity[ok-output-sigma-prime-manual-{d}-saturated-output]" for d in ("float64", "float32")}
    assert xfailed == expected, f"xfailed {sorted(xfailed)}"
    assert all("https://example.org/numpy/1" in o.message for o in done.outcomes if o.test in xfailed)
    assert {o.outcome for o in done.outcomes if o.test not in xfailed} == {"passed"}


def gradients_entry_run(tmp_path: Path, backend: str, adapter: str) -> SuiteRun:
    """A float32 run of ``adapter`` with a known-defects file whose one entry covers its test_gradients."""
    defects = write(tmp_path, gradients_entry(backend, "float32"))
    args = ["--conformance-backend", adapter, "--conformance-dtype", "float32", "--conformance-max-examples", "5"]
    return suite(tmp_path, *args, "--conformance-known-defects", str(defects))


def test_a_known_defect_on_a_conformance_cell_still_shows_its_verdict(tmp_path: Path) -> None:
    """test_gradients xfails (strictly) for the listed cell, and the matrix and report still show the verdict as a known defect."""
    done = gradients_entry_run(tmp_path, "mut-cross-entropy-delta", "tests.mutants:CrossEntropyShortcut")
    assert done.returncode == pytest.ExitCode.OK, done.explain()
    assert done.report is not None
    (c,) = done.report.cells
    assert (c.status, c.failures) == ("known defect", 1) and c.worst_element is not None and c.worst_element["ratio"] > 1
    assert "known defect" in done.output and f"worst {c.worst_element['name']}: framework" in done.output, done.explain()


def test_a_fixed_defect_fails_the_run(tmp_path: Path) -> None:
    """An entry for a cell that passes (ManualBackprop is correct) turns into a strict XPASS: the run fails, and the cell with it."""
    done = gradients_entry_run(tmp_path, "ok-stable", "tests.mutants:ManualBackprop")
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.explain()
    assert done.report is not None and done.report.cells[0].status == "failed"
    assert any("passed although a known-defect entry says it fails" in p for p in done.report.cells[0].problems)


def covered_by_bundled_torch_entries(test_id: str) -> bool:
    """known_defects.toml's torch entries, restated: σ′'s positive tail and saturation, and a saturated output layer (float64)."""
    if test_id.startswith("test_sigmoid_prime_fidelity["):
        return test_id.endswith(("-float64-positive-tail]", "-float64-saturated]"))
    return test_id.startswith("test_network_fidelity[") and test_id.endswith("-float64-saturated-output]")


@pytest.mark.skipif(find_spec("torch") is None, reason="torch not installed")
def test_bundled_torch_entries_are_strict_xfails_end_to_end(tmp_path: Path) -> None:
    """``pytest conformance --conformance-backend torch``, fidelity tier, float64: exactly the file's torch combinations xfail,
    nothing fails."""
    done = suite(tmp_path, "--conformance-backend", "torch", "--conformance-dtype", "float64", marks="fidelity")
    assert done.returncode == 0, done.explain()
    outcomes = {o.test: (o.outcome, o.message) for o in done.outcomes}
    assert outcomes and not any(kind == "skipped" and "known upstream defect" not in msg for kind, msg in outcomes.values()), outcomes
    expected = {name for name in outcomes if covered_by_bundled_torch_entries(name)}
    xfailed = {name for name, (kind, _) in outcomes.items() if kind == "skipped"}
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


NUMPY_EXAMPLE = ["--conformance-backend", "backprop_conformance.adapters.example_numpy:NumpyAdapter", "--conformance-dtype", "float64"]


def test_builtin_modes_make_a_backends_entries_non_strict_or_drop_them() -> None:
    bundled = known_defects.load_all()
    torch_entries = [d for d in bundled if d.backend == "torch"]
    assert torch_entries and all(d.strict for d in bundled)
    relaxed = known_defects.load_all((), {"torch": "non-strict"})
    assert [d.strict for d in relaxed if d.backend == "torch"] == [False] * len(torch_entries)
    assert all(d.strict for d in relaxed if d.backend != "torch")
    assert not [d for d in known_defects.load_all((), {"torch": "off"}) if d.backend == "torch"]
    assert len(known_defects.load_all((), {"torch": "off"})) == len(bundled) - len(torch_entries)
    everything = known_defects.load_all((), {"all": "non-strict", "torch": "off"})
    assert everything and not any(d.strict or d.backend == "torch" for d in everything), "a backend's own mode wins over all's"


def test_builtin_modes_leave_the_users_own_entries_strict(tmp_path: Path) -> None:
    extra = tmp_path / "mine.toml"
    extra.write_text(FIDELITY_ENTRY, encoding="utf-8")
    defects = known_defects.load_all((extra,), {"all": "off"})
    assert defects and all(d.strict and d.backend == "ok-output-sigma-prime" for d in defects)


def test_a_builtin_mode_for_a_backend_the_list_does_not_cover_is_refused() -> None:
    with pytest.raises(KnownDefectsError, match=r"names troch, which the suite's own list has no entry for; it has entries for .*torch"):
        known_defects.load_all((), {"troch": "off"})


def test_builtin_modes_are_described_only_when_something_changed() -> None:
    assert known_defects.describe_modes({}) == known_defects.describe_modes({"torch": "strict"}) == ""
    assert known_defects.describe_modes({"torch": "non-strict", "jax": "off"}) == (
        "built-in known defects: jax's switched off; torch's non-strict (--conformance-builtin-defects)"
    )


@pytest.mark.parametrize(
    ("value", "wanted"),
    [
        ("torch", "takes BACKEND=MODE with MODE one of strict, non-strict, off"),
        ("torch=loose", "got 'torch=loose'"),
        ("=off", "got '=off'"),
    ],
)
def test_a_malformed_builtin_mode_is_a_usage_error(tmp_path: Path, value: str, wanted: str) -> None:
    assert_usage_error(suite(tmp_path, *NUMPY_EXAMPLE, "--conformance-builtin-defects", value, marks=None), wanted)


def test_two_modes_for_one_backend_are_a_usage_error(tmp_path: Path) -> None:
    modes = ["--conformance-builtin-defects", "torch=off", "--conformance-builtin-defects", "torch=non-strict"]
    assert_usage_error(suite(tmp_path, *NUMPY_EXAMPLE, *modes, marks=None), "gives torch two modes, off and non-strict; give one")


def test_non_strict_entries_become_non_strict_xfails() -> None:
    """Through the marks collection puts on a test: the day the defect is fixed, pytest reports XPASS instead of failing."""
    from backprop_conformance.conformance.cells import Cell
    from backprop_conformance.conformance.collection import known_defect_marks

    cell = Cell("torch", "eager", "float64")
    test = "test_sigmoid_prime_fidelity"
    (strict,) = known_defect_marks(known_defects.load_all(), test, cell, "2.13.0", "saturated")
    (relaxed,) = known_defect_marks(known_defects.load_all((), {"torch": "non-strict"}), test, cell, "2.13.0", "saturated")
    assert strict.kwargs["strict"] is True and relaxed.kwargs["strict"] is False
    assert relaxed.kwargs["reason"] == strict.kwargs["reason"]
    assert known_defect_marks(known_defects.load_all((), {"torch": "off"}), test, cell, "2.13.0", "saturated") == []


@pytest.mark.skipif(find_spec("torch") is None, reason="torch not installed")
def test_non_strict_torch_entries_still_mark_its_defects_and_the_run_says_so(tmp_path: Path) -> None:
    torch_eager = ["--conformance-backend", "torch", "--conformance-dtype", "float64", "--conformance-path", "eager"]
    done = suite(tmp_path, *torch_eager, "--conformance-builtin-defects", "torch=non-strict", marks="fidelity")
    assert done.returncode == pytest.ExitCode.OK, done.explain()
    note = "built-in known defects: torch's non-strict (--conformance-builtin-defects)"
    assert f"note: {note}" in done.output and done.report is not None and note in done.report.notes
    xfailed = {o.test for o in done.outcomes if o.outcome == "skipped" and "known upstream defect" in o.message}
    assert "test_sigmoid_prime_fidelity[torch-eager-float64-saturated]" in xfailed, sorted(xfailed)


@pytest.mark.skipif(find_spec("torch") is None, reason="torch not installed")
def test_switching_torchs_builtin_entries_off_shows_its_defect_as_a_failure(tmp_path: Path) -> None:
    torch_eager = ["--conformance-backend", "torch", "--conformance-dtype", "float64", "--conformance-path", "eager"]
    done = suite(tmp_path, *torch_eager, "--conformance-builtin-defects", "torch=off", marks="fidelity")
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.explain()
    failed = {o.test for o in done.outcomes if o.outcome == "failed"}
    assert "test_sigmoid_prime_fidelity[torch-eager-float64-saturated]" in failed, sorted(failed)


# Files given on the command line: they add to the built-in list, can be repeated, may name backends this run did not load.


def test_known_defect_files_add_up_and_may_name_backends_not_loaded(tmp_path: Path) -> None:
    """Two files, one entry each for the two cells: both apply; a third entry, for a backend not loaded, is ignored with a note."""
    first = write(tmp_path, gradients_entry("mut-cross-entropy-delta", "float32", paths='["manual"]'), name="first.toml")
    second = write(
        tmp_path,
        gradients_entry("mut-cross-entropy-delta", "float64"),
        gradients_entry("mxnet", "float64", paths='["gluon"]'),
        name="second.toml",
    )
    run = suite(
        tmp_path / "run",
        "--conformance-backend",
        "tests.mutants:CrossEntropyShortcut",
        "--conformance-max-examples=3",
        "--conformance-known-defects",
        str(first),
        "--conformance-known-defects",
        str(second),
    )
    assert run.returncode == 0 and run.report is not None, run.explain()
    assert {c.id: c.status for c in run.report.cells} == {
        "mut-cross-entropy-delta-manual-float64": "known defect",
        "mut-cross-entropy-delta-manual-float32": "known defect",
    }
    note = f"{second}: 1 known-defect entry for backend 'mxnet', not loaded in this run, ignored"
    assert f"  note: {note}" in run.output.split("collected", 1)[0] and note in run.report.notes, run.explain()


BUILT_IN_DEFECT = next(
    (
        (framework, f"test_sigmoid_prime_fidelity[{framework}-{path}-float64-saturated]", issues)
        for framework, path, issues in (
            ("jax", "jit", "github.com/jax-ml/jax/issues"),
            ("torch", "eager", "github.com/pytorch/pytorch/issues"),
        )
        if find_spec(framework) is not None
    ),
    None,
)
"""A fidelity item the suite's own known_defects.toml makes a strict xfail, for the cheaper installed framework (jax imports faster)."""


@pytest.mark.skipif(BUILT_IN_DEFECT is None, reason="neither jax nor torch is installed: the built-in list covers only them")
def test_extra_known_defect_files_keep_the_built_in_entries(tmp_path: Path) -> None:
    """With an extra file, the built-in σ′ entry still makes the framework's saturated fidelity case a strict xfail."""
    assert BUILT_IN_DEFECT is not None
    framework, item, issues = BUILT_IN_DEFECT
    extra = write(tmp_path, gradients_entry("mut-cross-entropy-delta", "float64"), name="extra.toml")
    selected = f"test_gradients and mut-cross-entropy-delta or {item.replace('[', ' and ').rstrip(']')}"
    args = [
        "--conformance-backend",
        framework,
        "--conformance-backend",
        "tests.mutants:CrossEntropyShortcut",
        "--conformance-dtype=float64",
    ]
    run = suite(
        tmp_path,
        *args,
        "--conformance-max-examples=3",
        "--conformance-known-defects",
        str(extra),
        "-k",
        selected,
        marks=None,
        JAX_PLATFORMS="cpu",  # no probing for accelerators the suite does not use
    )
    assert run.returncode == 0 and run.report is not None, run.explain()
    outcomes = {o.test: (o.outcome, o.message) for o in run.outcomes}
    assert set(outcomes) == {"test_gradients[mut-cross-entropy-delta-manual-float64]", item}, outcomes
    assert all(kind == "skipped" and "known upstream defect" in message for kind, message in outcomes.values()), outcomes
    assert issues in outcomes[item][1], outcomes[item]


def test_known_defect_mixing_star_with_names_is_a_usage_error(tmp_path: Path) -> None:
    """``paths = ["*", "manual"]`` means nothing precise: refused at start-up, naming the file and the entry."""
    path = write(tmp_path, gradients_entry("mut-cross-entropy-delta", "float32", paths='["*", "manual"]'), name="defects.toml")
    run = suite(tmp_path / "run", "--conformance-backend", "tests.mutants:CrossEntropyShortcut", "--conformance-known-defects", str(path))
    assert_usage_error(run, f"{path}: defect #1: paths ['*', 'manual'] mixes \"*\" (every one) with names")
