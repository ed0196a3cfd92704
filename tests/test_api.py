"""The Python API's property check of a plain function: ``check_function`` and the case files it replays with.

A hand-written backprop (written here independently of the reference, as a student would) must pass in every format
it is run in; a planted bug must be found, shrunk, written as a case file that ``check_gradients(fn, *load_case(path))``
replays to the same failure, and diagnosed at its first divergence when the function exposes its intermediates.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import backprop_conformance as bc
from backprop_conformance.adapters.base import CapabilitiesError
from backprop_conformance.conformance.cases import CaseError


def sigma(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def backprop(w, b, x, y):
    """The page's backprop for a batch (rows are examples), with the intermediates the diagnosis reads."""
    a, z = [x], []
    for W, c in zip(w, b, strict=True):
        z.append(a[-1] @ W.T + c)
        a.append(sigma(z[-1]).astype(x.dtype))
    delta = [(a[-1] - y) * a[-1] * (1 - a[-1])]
    for l in range(len(w) - 1, 0, -1):
        delta.insert(0, (delta[0] @ w[l]) * a[l] * (1 - a[l]))
    dw = [d.T @ a_prev for d, a_prev in zip(delta, a, strict=False)]
    db = [d.sum(axis=0) for d in delta]
    return dw, db, 0.5 * float(np.sum((y - a[-1]) ** 2)), {"a": a, "z": z, "delta": delta}


def first_layer_slightly_off(w, b, x, y):
    """∂C/∂w^2 one part in 10^9 too large when the network has a hidden layer: far below any fixed tolerance."""
    dw, db, cost, seen = backprop(w, b, x, y)
    if len(w) >= 2:
        dw[0] = dw[0] * (1 + 1e-9)
    return dw, db, cost, seen


def hidden_sigma_prime_forgotten(w, b, x, y):
    _, _, cost, seen = backprop(w, b, x, y)
    a, delta = seen["a"], [seen["delta"][-1]]
    for l in range(len(w) - 1, 0, -1):
        delta.insert(0, delta[0] @ w[l])
    dw = [d.T @ a_prev for d, a_prev in zip(delta, a, strict=False)]
    return dw, [d.sum(axis=0) for d in delta], cost, {"a": a, "z": seen["z"], "delta": delta}


def test_a_correct_backprop_passes_in_every_format(tmp_path: Path) -> None:
    result = bc.check_function(backprop, dtypes=("float64", "float32", "float16"), max_examples=40, case_dir=tmp_path)
    assert [c.status for c in result.cells] == ["passed"] * 3, result.message()
    assert [c.id for c in result.cells] == ["backprop-call-float64", "backprop-call-float32", "backprop-call-float16"]
    assert all(c.examples == 40 for c in result.cells)
    assert not list(tmp_path.iterdir()), "a passing check writes no case file"


def test_a_function_that_returns_no_cost_is_judged_on_its_gradients(tmp_path: Path) -> None:
    """(dw, db) alone, as the README's student route writes it: the gradients are judged, the cost is not asked for."""

    def gradients_only(w, b, x, y):
        dw, db, _, _ = backprop(w, b, x, y)
        return dw, db

    def wrong_gradients_only(w, b, x, y):
        dw, db = gradients_only(w, b, x, y)
        return dw, [g * 1.001 for g in db]

    assert bc.check_function(gradients_only, max_examples=30, case_dir=tmp_path).passed
    with pytest.raises(bc.ConformanceFailure, match=r"worst: b\^"):
        bc.check_function(wrong_gradients_only, max_examples=30, case_dir=tmp_path)


def test_a_planted_bug_is_found_shrunk_and_replayable(tmp_path: Path) -> None:
    with pytest.raises(bc.ConformanceFailure) as caught:
        bc.check_function(first_layer_slightly_off, case_dir=tmp_path)
    message = str(caught.value)
    assert "first_layer_slightly_off-call-float64: failed" in message
    assert "worst: w^2_" in message and "exceed the error bound" in message
    shrunk = sorted(tmp_path.glob("*-shrunk-*.json"))
    assert len(shrunk) == 1 and str(shrunk[0]) in message
    assert f"check_gradients(first_layer_slightly_off, *backprop_conformance.load_case({str(shrunk[0])!r}))" in message
    network, batch, dtype = bc.load_case(shrunk[0])
    assert dtype == "float64" and network.depth == 3, "shrunk to the smallest network with a hidden layer"
    verdict = bc.check_gradients(first_layer_slightly_off, network, batch, dtype, raise_on_failure=False)
    assert not verdict.passed and verdict.worst is not None and verdict.worst.name.startswith("w^2_")
    assert bc.check_gradients(backprop, network, batch, dtype).passed, "the same case passes without the bug"


def test_the_first_divergence_names_the_intermediate_the_bug_corrupts(tmp_path: Path) -> None:
    result = bc.check_function(hidden_sigma_prime_forgotten, case_dir=tmp_path, raise_on_failure=False)
    assert not result.passed
    (text,) = result.failures.values()
    assert "first divergence: δ^" in text, text
    assert "a^" not in text.split("first divergence: ", 1)[1].split(" left", 1)[0], "the forward pass is right"


def test_a_malformed_fourth_result_is_named(tmp_path: Path) -> None:
    def returns_a_list(w, b, x, y):
        dw, db, cost, seen = backprop(w, b, x, y)
        return dw, db, cost, [seen["a"]]

    result = bc.check_function(returns_a_list, max_examples=5, case_dir=tmp_path, raise_on_failure=False)
    (text,) = result.failures.values()
    assert "fourth result must be a mapping with some of the keys a, z, delta" in text and "got list" in text


def test_unknown_formats_are_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"dtypes must name some of float64, float32, float16, bfloat16; got \['float8'\]"):
        bc.check_function(backprop, dtypes=("float8",))
    with pytest.raises(ValueError, match="got \\[\\]"):
        bc.check_function(backprop, dtypes=())


@pytest.mark.parametrize("accumulation", [("float32",), (("dot", "float32"),), ["float32"]], ids=["tuple", "pairs", "list"])
def test_an_accumulation_neither_a_format_nor_a_mapping_is_refused_with_the_rule(accumulation: object) -> None:
    """Whatever its type, and a second time too: the capabilities are cached per declaration, and a tuple of pairs
    must not be taken for a mapping's key."""
    for _ in range(2):
        with pytest.raises(CapabilitiesError, match="must be a format name or a mapping operation -> format"):
            bc.check_function(backprop, dtypes=("float32",), accumulation=accumulation, max_examples=2)


def test_load_case_refuses_a_malformed_file_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "case.json"
    path.write_text(json.dumps({"schema": 3, "cell": {}}))
    with pytest.raises(CaseError, match=r"case\.json"):
        bc.load_case(path)
