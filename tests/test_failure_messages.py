"""What a failing cell's message counts: "N of M gradient elements exceed" counts gradient elements, and the cost is judged beside them.

A wrong cost is named on its own, never counted among the gradient elements; with the gradients wrong
too, M is still exactly the network's number of gradient elements. Each check reads the failure text of
a real run (its JUnit XML), and counts the elements from the widths the message itself names.
"""

from __future__ import annotations

import re

import pytest
from conftest import suite
from hostile_adapters import HERE

from backprop_conformance.conformance.runner import SuiteRun

WIDTHS = re.compile(r"case: widths \((?P<widths>[\d, ]+)\)")


def parameter_count(message: str) -> int:
    """Σ_l n(l)·n(l−1) + n(l): the number of gradient elements of the network the message describes."""
    match = WIDTHS.search(message)
    assert match, message
    widths = [int(w) for w in match["widths"].split(",") if w.strip()]
    return sum(widths[i] * widths[i - 1] + widths[i] for i in range(1, len(widths)))


@pytest.fixture(scope="module")
def cost_run(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    return suite(
        tmp_path_factory.mktemp("cost"),
        "--conformance-backend",
        f"{HERE}:WrongCostOnly",
        "--conformance-backend",
        "tests.mutants:CostWithoutHalf",
        "--conformance-dtype=float64",
        "--conformance-max-examples=5",
    )


def gradient_failure(run: SuiteRun, cell_id: str) -> str:
    (outcome,) = [o for o in run.outcomes if o.test == f"test_gradients[{cell_id}]"]
    assert outcome.failed, run.explain()
    return outcome.message


def test_a_wrong_cost_alone_is_not_counted_as_a_gradient_element(cost_run: SuiteRun) -> None:
    """Only the cost is wrong: the message says so, and counts exactly the network's gradient elements."""
    message = gradient_failure(cost_run, "hostile-cost-only-manual-float64")
    found = re.search(r"the cost exceeds .*, while all (?P<m>\d+) gradient elements are within it", message)
    assert found, message
    assert int(found["m"]) == parameter_count(message), message
    assert "  cost:  C (the cost): framework " in message, message


def test_a_wrong_cost_and_gradients_count_only_the_gradients(cost_run: SuiteRun) -> None:
    """Cost and gradients doubled (no ½): N of M counts gradient elements only, and the cost is reported beside them."""
    message = gradient_failure(cost_run, "mut-no-half-manual-float64")
    found = re.search(r": (?P<n>\d+) of (?P<m>\d+) gradient elements exceed .* \(and so does the cost\)", message)
    assert found, message
    assert int(found["n"]) <= int(found["m"]) == parameter_count(message), message
