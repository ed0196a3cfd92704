"""Reproducer case files (:mod:`backprop_conformance.conformance.cases`): exact round trips, and clear errors for what is not a case.

A malformed file is refused naming the field, whether read directly or by the replay command (exit status 2, one line).

A case file is only a reproducer if the network and batch read back are bit for bit the ones that
failed: w^l_jk one ulp off can turn a failure into a pass. The round trip is therefore checked on
arbitrary float64 values (subnormals, −0.0, the extremes of the range), not only on ones that print
nicely, and by comparing bit patterns rather than values (−0.0 == 0.0 would hide a lost sign).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import REPLAY_USAGE, REPO_ROOT, assert_clean_failure, replay_command
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from networks import tiny_problem

from backprop_conformance.conformance import cases, provenance
from backprop_conformance.conformance.__main__ import main as replay_main
from backprop_conformance.conformance.cells import Cell
from backprop_conformance.conformance.fidelity import FIDELITY_TESTS
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.reference.dtypes import FORMATS
from backprop_conformance.reference.model import Batch, Network

FLOATS = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True)
"""Every finite float64, hypothesis favouring the awkward ones: ±0.0, subnormals, ±max, values with 17 significant digits."""


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    """A network of L = 2..4 layers of width 1..4 and a batch of B = 1..3, with arbitrary finite values of the drawn format.

    Arbitrary float64 values for a float64 case; for a narrower format, arbitrary float64 values rounded to
    it (a case holds the point a framework computed at, so its values are values of its format), those
    that overflow the format replaced by its largest value.
    """
    widths = draw(st.lists(st.integers(1, 4), min_size=2, max_size=4))
    B = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(list(FORMATS)))

    def values(shape: tuple[int, ...]) -> np.ndarray:
        drawn = draw(hnp.arrays(np.float64, shape, elements=FLOATS))
        largest = FORMATS[dtype].largest
        return np.clip(drawn, -largest, largest)

    w = {l: values((widths[l - 1], widths[l - 2])) for l in range(2, len(widths) + 1)}
    b = {l: values((widths[l - 1],)) for l in range(2, len(widths) + 1)}
    return Problem.rounded(Network(w, b), Batch(values((B, widths[0])), values((B, widths[-1]))), dtype)


@st.composite
def case_objects(draw: st.DrawFn) -> cases.Case:
    problem = draw(problems())
    cell = Cell(
        draw(st.sampled_from(["torch", "jax", "ok-stable"])),
        draw(st.sampled_from(["eager", "jit"])),
        problem.dtype,
        draw(st.sampled_from(["cpu", "cuda"])),
    )
    versions = draw(st.dictionaries(st.sampled_from(["torch", "numpy", "python"]), st.text(max_size=8), max_size=3))
    adapter = draw(st.sampled_from([cell.backend, "tests.mutants:ManualBackprop"]))
    environment = draw(st.dictionaries(st.sampled_from(["KERAS_BACKEND", "XLA_FLAGS"]), st.none() | st.text(max_size=8), max_size=2))
    kind = draw(st.sampled_from(cases.KINDS))
    judged_by = draw(st.none() | st.sampled_from([(test, case) for test, names in FIDELITY_TESTS.items() for case in names]))
    return cases.Case(problem, cell, adapter, versions, draw(st.text(max_size=40)), environment, kind, fidelity=judged_by)


def bits(array: np.ndarray) -> np.ndarray:
    """The float64 bit patterns, so that −0.0 and 0.0 (equal as values) compare as different."""
    return np.ascontiguousarray(array, dtype=np.float64).view(np.uint64)


def assert_identical(got: cases.Case, want: cases.Case) -> None:
    assert got.cell == want.cell
    assert got.adapter == want.adapter
    assert got.versions == want.versions
    assert got.failure == want.failure
    assert got.environment == want.environment and got.kind == want.kind and got.fidelity == want.fidelity
    assert got.problem.dtype == want.problem.dtype
    g, w = got.problem, want.problem
    assert list(g.network.layers) == list(w.network.layers)
    for l in w.network.layers:
        for name, a, b in (("w", g.network.w[l], w.network.w[l]), ("b", g.network.b[l], w.network.b[l])):
            assert a.dtype == np.float64 and a.shape == b.shape, f"{name}^{l}: {a.dtype} {a.shape}, expected float64 {b.shape}"
            assert np.array_equal(bits(a), bits(b)), f"{name}^{l} changed: {a!r} != {b!r}"
    for name, a, b in (("x", g.batch.x, w.batch.x), ("y", g.batch.y, w.batch.y)):
        assert a.shape == b.shape and np.array_equal(bits(a), bits(b)), f"{name} changed: {a!r} != {b!r}"


@settings(max_examples=60, deadline=None)
@given(case=case_objects())
def test_json_round_trip_is_bit_exact(case: cases.Case) -> None:
    text = json.dumps(cases.to_json(case))
    assert_identical(cases.from_json(json.loads(text), "<memory>"), case)


@settings(max_examples=25, deadline=None)
@given(case=case_objects())
def test_file_round_trip_is_bit_exact(case: cases.Case, tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("cases")
    path = cases.write(case, directory)
    assert path.parent == directory and path.name.startswith(f"{case.cell.id}-") and path.suffix == ".json"
    assert_identical(cases.read(path), case)
    assert cases.write(case, directory) == path, "the same case must overwrite its own file, not pile up copies"
    assert [p.name for p in directory.iterdir()] == [path.name]


def test_different_cases_get_different_files(tmp_path: Path) -> None:
    network = Network({2: np.array([[0.5]])}, {2: np.array([0.0])})
    cell = Cell("ok-stable", "manual", "float64")
    paths = {
        cases.write(
            cases.Case(Problem(network, Batch(np.array([[x]]), np.array([[0.0]])), "float64"), cell, cell.backend, {}, ""), tmp_path
        )
        for x in (1.0, np.nextafter(1.0, 2.0))
    }
    assert len(paths) == 2, "two inputs one ulp apart must not share a case file"


def test_file_records_the_page_layout_and_the_environment(tmp_path: Path) -> None:
    w2 = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    network = Network({2: w2, 3: np.array([[0.5, -0.5]])}, {2: np.array([0.1, 0.2]), 3: np.array([0.3])})
    batch = Batch(np.zeros((1, 3)), np.zeros((1, 1)))
    versions = provenance.versions("PyTorch", "9.9.9")
    path = cases.write(
        cases.Case(Problem(network, batch, "float64"), Cell("torch", "eager", "float64"), "torch", versions, "why"), tmp_path
    )
    data = json.loads(path.read_text())
    assert data["schema"] == cases.SCHEMA
    assert data["widths"] == [3, 2, 1]
    assert data["parameters"]["w"]["2"] == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "w^2 must be stored as (n(2), n(1)), row j = neuron j"
    assert data["versions"]["PyTorch"] == "9.9.9" and data["versions"]["numpy"] == np.__version__
    assert {"backprop-conformance", "python", "platform"} <= set(data["versions"])


def valid_json() -> dict:
    """A valid case file's JSON (float64, widths (2, 1), one example), to be broken one field at a time."""
    return cases.to_json(cases.Case(tiny_problem(), Cell("ok-stable", "manual", "float64"), "ok-stable", {"numpy": "2"}, ""))


def without(data: dict, *keys: str) -> dict:
    """A copy of ``data`` with the nested key ``keys`` removed."""
    data = json.loads(json.dumps(data))
    inner = data
    for key in keys[:-1]:
        inner = inner[key]
    del inner[keys[-1]]
    return data


def replaced(data: dict, value: object, *keys: str) -> dict:
    data = json.loads(json.dumps(data))
    inner = data
    for key in keys[:-1]:
        inner = inner[key]
    inner[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    ("data", "wanted"),
    [
        ([1, 2], "not a backprop-conformance case file"),
        (replaced(valid_json(), "backprop-conformance/case/0", "schema"), "schema 'backprop-conformance/case/0'"),
        (without(valid_json(), "schema"), "schema None"),
        (without(valid_json(), "cell"), "missing or malformed field 'cell'"),
        (without(valid_json(), "parameters", "b"), "missing or malformed field 'parameters.b'"),
        (without(valid_json(), "batch", "y"), "missing or malformed field 'batch.y'"),
        (replaced(valid_json(), {"backend": "torch", "colour": "red"}, "cell"), "colour"),
        (replaced(valid_json(), {"two": [[0.5, 0.25]]}, "parameters", "w"), "two"),
        (replaced(valid_json(), [[1.0, 2.0], [3.0]], "batch", "x"), "bad.json: "),
        (replaced(valid_json(), [[1.0, "zwei"]], "batch", "x"), "zwei"),
        (replaced(valid_json(), [[None, 2.0]], "batch", "x"), "batch.x[0][0]: expected a number, got null"),
        (replaced(valid_json(), [[0.5, 0.25], [1.0, 1.0]], "parameters", "w", "2"), "b^2 has shape (1,); expected (2,)"),
    ],
    ids=[
        "not-an-object",
        "other-schema",
        "no-schema",
        "no-cell",
        "no-biases",
        "no-targets",
        "unknown-cell-field",
        "non-integer-layer",
        "ragged",
        "not-a-number",
        "null",
        "weights-do-not-fit-biases",
    ],
)
def test_malformed_case_is_a_case_error(data: object, wanted: str) -> None:
    with pytest.raises(cases.CaseError) as raised:
        cases.from_json(data, "bad.json")
    message = str(raised.value)
    assert message.startswith("bad.json"), message
    assert wanted in message, message


def test_batch_that_does_not_fit_the_network_is_a_case_error() -> None:
    with pytest.raises(cases.CaseError, match="3 columns"):
        cases.from_json(replaced(valid_json(), [[1.0, 2.0, 3.0]], "batch", "x"), "bad.json")


def test_unreadable_and_non_json_files_are_case_errors(tmp_path: Path) -> None:
    with pytest.raises(cases.CaseError, match=r"cannot read case file .*missing\.json"):
        cases.read(tmp_path / "missing.json")
    with pytest.raises(cases.CaseError, match="cannot read case file"):
        cases.read(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": ')
    with pytest.raises(cases.CaseError, match=r"bad\.json is not valid JSON"):
        cases.read(bad)


def test_a_repeated_key_is_refused_as_ambiguous(tmp_path: Path) -> None:
    """A file could show a reader one value and the suite another: the second "x" would silently win."""
    text = json.dumps(valid_json())
    path = tmp_path / "twice.json"
    path.write_text(text.replace('"batch": {"x": ', '"batch": {"x": [[9.0, 9.0]], "x": ', 1), encoding="utf-8")
    with pytest.raises(cases.CaseError, match="key 'x' appears twice in one object"):
        cases.read(path)


# Replaying a malformed case file: exit status 2 naming the field, never a traceback, never the framework's failure status 1.


def edit(*keys: str, value: object) -> Callable[[dict], str]:
    """A breakage: the nested field ``keys`` set to ``value``."""
    return lambda data: json.dumps(replaced(data, value, *keys))


def raw(transform: Callable[[str], str]) -> Callable[[dict], str]:
    """A breakage made on the JSON text itself (for what ``json.dumps`` cannot produce)."""
    return lambda data: transform(json.dumps(data))


def nested(depth: int, leaf: object = 1.0) -> object:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


MALFORMED_CASES: dict[str, tuple[Callable[[dict], str], str]] = {
    "dtype-a-number": (edit("cell", "dtype", value=64), "field cell.dtype: expected a string, got int 64"),
    "path-null": (edit("cell", "path", value=None), "field cell.path: expected a string, got null"),
    "versions-a-string": (edit("versions", value="2.13.0"), "field versions: expected an object of strings, got str '2.13.0'"),
    "number-a-string": (edit("batch", "x", value=[["1.0", 2.0]]), "field batch.x[0][0]: expected a number, got str '1.0'"),
    "number-a-boolean": (
        edit("parameters", "w", "2", value=[[True, 0.25]]),
        "field parameters.w.2[0][0]: expected a number, got bool True",
    ),
    "widths-strings": (edit("widths", value=["2", "1"]), "field widths: ['2', '1'] does not match the parameters' widths [2, 1]"),
    "widths-a-boolean": (edit("widths", value=[2, True]), "field widths: [2, True] does not match"),
    "not-a-float32-value": (
        lambda d: edit("batch", "x", value=[[0.1, 2.0]])(json.loads(edit("cell", "dtype", value="float32")(d))),
        "field batch.x: holds values that are not float32 values",
    ),
    "deeply-nested-list": (edit("batch", "x", value=nested(60)), "field batch.x[0][0]: expected a number, got list"),
    "nesting-bomb": (lambda d: "[" * 100_000 + "]" * 100_000, "is not valid JSON: nested too deeply"),
    "nesting-bomb-in-a-field": (
        raw(lambda t: t.replace('"failure": ""', '"failure": ' + "[" * 100_000 + "]" * 100_000)),
        "nested too deeply",
    ),
    "integer-beyond-float64": (raw(lambda t: t.replace("[[1.0, 2.0]]", "[[1" + "0" * 400 + ", 2.0]]")), "field batch.x[0][0]: "),
    "integer-of-5000-digits": (raw(lambda t: t.replace("[[1.0, 2.0]]", "[[1" + "0" * 5000 + ", 2.0]]")), "is not valid JSON"),
    "nan-token": (raw(lambda t: t.replace("[[1.0, 2.0]]", "[[NaN, 2.0]]")), "NaN is not a JSON number"),
    "unknown-key": (edit("colour", value="red"), "field (top level): unknown key(s) 'colour'"),
    "unknown-nested-key": (edit("batch", "z", value=[[1.0]]), "field batch: unknown key(s) 'z'"),
    "backend-climbs-out": (edit("cell", "backend", value="../x"), "field cell.backend: '../x' is not a valid name"),
    "path-with-a-separator": (edit("cell", "path", value="a/b"), "field cell.path: 'a/b' is not a valid name"),
    "device-not-declared": (edit("cell", "device", value="tpu"), "ok-stable has no device tpu; it offers cpu"),
    "failure-a-list": (edit("failure", value=["x"]), "field failure: expected a string, got list"),
    "fidelity-unknown-test": (
        edit("fidelity", value={"test": "test_gradients", "case": "saturated"}),
        "field fidelity.test: 'test_gradients' is not a fidelity test; the suite has test_sigmoid_prime_fidelity, test_network_fidelity",
    ),
    "fidelity-unknown-case": (
        edit("fidelity", value={"test": "test_network_fidelity", "case": "saturated"}),
        "field fidelity.case: 'saturated' is not a case of test_network_fidelity; it has unsaturated, saturated-output",
    ),
    "fidelity-a-string": (edit("fidelity", value="saturated"), "field fidelity: expected an object, got str 'saturated'"),
    "fidelity-in-a-version-3-file": (
        lambda d: edit("fidelity", value={"test": "test_network_fidelity", "case": "unsaturated"})(
            replaced(d, "backprop-conformance/case/3", "schema")
        ),
        "field (top level): unknown key(s) 'fidelity'",
    ),
}


@pytest.mark.parametrize("breakage", MALFORMED_CASES.values(), ids=MALFORMED_CASES.keys())
def test_malformed_case_is_a_usage_error_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], breakage: tuple[Callable[[dict], str], str]
) -> None:
    """Replayed in-process: any exception escaping the command would fail this test, as a traceback would confront the user."""
    make, wanted = breakage
    path = tmp_path / "case.json"
    path.write_text(make(valid_json()), encoding="utf-8")
    status = replay_main(["replay", str(path), "--backend", "mutants:ManualBackprop"])
    err = capsys.readouterr().err
    assert status == REPLAY_USAGE, f"exit {status}: {err}"
    assert wanted in err and err.startswith("error: "), err
    assert str(path) in err or "device" in err, err


def test_malformed_case_on_the_command_line_prints_one_line(tmp_path: Path) -> None:
    """The same through the real command: a number too large for a float is one error line, not a traceback."""
    path = tmp_path / "case.json"
    path.write_text(MALFORMED_CASES["integer-beyond-float64"][0](valid_json()), encoding="utf-8")
    done = replay_command(str(path), "--backend", "tests.mutants:ManualBackprop", cwd=REPO_ROOT, tmp=tmp_path)
    assert done.returncode == REPLAY_USAGE, f"exit {done.returncode}\n{done.stderr}"
    assert_clean_failure(done.stderr)
    assert done.stderr.startswith(f"error: {path}: field batch.x[0][0]: ") and len(done.stderr.splitlines()) == 1, done.stderr


@pytest.mark.parametrize(
    ("content", "wanted"),
    [
        (None, "cannot read case file"),
        ("{not json", "is not valid JSON"),
        ('{"schema": "something/else"}', "not a backprop-conformance case file (schema 'something/else'"),
        ('{"schema": "backprop-conformance/case/2", "parameters": {}}', "missing or malformed field 'cell'"),
    ],
    ids=["unreadable", "not-json", "wrong-schema", "missing-field"],
)
def test_replay_of_a_bad_case_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, wanted: str
) -> None:
    path = tmp_path / "case.json"
    if content is not None:
        path.write_text(content)
    assert replay_main(["replay", str(path), "--backend", "mutants:ManualBackprop"]) == REPLAY_USAGE
    err = capsys.readouterr().err
    assert wanted in err and str(path) in err, err
