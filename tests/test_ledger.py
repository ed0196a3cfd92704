"""The status policy (conformance/ledger.py), in-process: every rule of a cell's status, and the merge of partial results.

Each expected status is the one the policy documented in :mod:`backprop_conformance.conformance.ledger` and
:data:`~backprop_conformance.conformance.report.STATUSES` gives for the outcomes fed in, written out by hand; the
suite's own runs (test_plugin.py, test_known_defects.py) check that pytest's reports reach the ledger as these
outcomes.
"""

from __future__ import annotations

import pytest

from backprop_conformance.conformance.cells import Cell
from backprop_conformance.conformance.ledger import CONTRACT_TEST, PROPERTY_TEST, CellLedger, classify
from backprop_conformance.conformance.report import CellResult

CELL = Cell("fake", "eager", "float32")
CONTRACT = f"{CONTRACT_TEST}[{CELL.id}]"
PROPERTY = f"{PROPERTY_TEST}[{CELL.id}]"
FIDELITY_TEST = "test_network_fidelity"
FIDELITY = f"{FIDELITY_TEST}[{CELL.id}-tiny]"


def ledger(examples: int = 0, failures: int = 0, exceptions: int = 0) -> CellLedger:
    """A ledger whose result holds ``examples`` judged examples, the first ``failures`` of them failing."""
    book = CellLedger.for_cell(CELL)
    for i in range(examples):
        book.result.add_example(2.0 if i < failures else 0.5, 3, 1.0, failed=i < failures)
    book.result.exceptions = exceptions
    return book


def contract(book: CellLedger, outcome: str, **kwargs: str) -> None:
    book.record(CONTRACT_TEST, CONTRACT, "call", outcome, **kwargs)


def prop(book: CellLedger, outcome: str, when: str = "call", **kwargs: str) -> None:
    book.record(PROPERTY_TEST, PROPERTY, when, outcome, **kwargs)


def fidelity(book: CellLedger, outcome: str, when: str = "call", **kwargs: str) -> None:
    book.record(FIDELITY_TEST, FIDELITY, when, outcome, **kwargs)


# classify: a test report's phase and flags -> one outcome


@pytest.mark.parametrize(
    ("when", "flags", "longrepr", "carried", "expected"),
    [
        ("call", {}, "None", True, "passed"),
        ("call", {"failed": True}, "AssertionError: 3 of 40 gradient elements exceed", True, "failed"),
        ("call", {"failed": True}, "[XPASS(strict)] known defect", True, "xpassed"),
        ("call", {"skipped": True, "xfail": True}, "", True, "xfailed"),
        ("setup", {"skipped": True}, "", True, "skipped"),
        ("setup", {"failed": True}, "fixture 'x' not found", False, "error"),
        ("teardown", {"failed": True}, "RuntimeError: clean-up", True, "error"),
        ("???", {"failed": True}, "worker 'gw0' crashed while running", False, "crashed"),
        ("???", {}, "", False, "crashed"),
        ("call", {"failed": True}, "worker 'gw1' crashed while running", False, "crashed"),
        # the suite's data on the report means the test ran to its end in a live worker: "crashed" is then only text
        ("call", {"failed": True}, "the adapter raised: subprocess crashed", True, "failed"),
    ],
)
def test_classify(when: str, flags: dict[str, bool], longrepr: str, carried: bool, expected: str) -> None:
    full = {"failed": False, "skipped": False, "xfail": False, **flags}
    assert classify(when, longrepr=longrepr, carried=carried, **full) == expected


# settle: the tests' outcomes (and the examples' counts) -> the cell's status

STATUS_RULES = [
    # (why, examples, failures, exceptions, contract, property, fidelity, interrupted, status)
    ("every test passed on examples", 5, 0, 0, "passed", "passed", "passed", False, "passed"),
    ("the property judged no example", 0, 0, 0, "passed", "passed", None, False, "not run"),
    ("no test reported", 0, 0, 0, None, None, None, False, "not run"),
    ("the contract alone reported", 0, 0, 0, "passed", None, None, False, "not run"),
    ("the property test was skipped", 0, 0, 0, None, "skipped", None, False, "not run"),
    ("the property test failed", 5, 1, 0, "passed", "failed", None, False, "failed"),
    ("an example failed, whatever the property reported", 5, 1, 0, "passed", "passed", None, False, "failed"),
    ("the adapter raised on an example", 5, 0, 1, "passed", "passed", None, False, "failed"),
    ("the property test errored", 0, 0, 0, None, "error", None, False, "failed"),
    ("the property XPASSed a strict entry", 5, 0, 0, "passed", "xpassed", None, False, "failed"),
    ("the contract failed, the property passed", 5, 0, 0, "failed", "passed", None, False, "failed"),
    ("a fidelity test failed", 5, 0, 0, "passed", "passed", "failed", False, "failed"),
    ("a fidelity test XPASSed a strict entry", 5, 0, 0, "passed", "passed", "xpassed", False, "failed"),
    ("a fidelity test's worker crashed", 5, 0, 0, "passed", "passed", "crashed", False, "failed"),
    ("skipped fidelity tests", 5, 0, 0, "passed", "passed", "skipped", False, "passed"),
    ("an expected fidelity failure", 5, 0, 0, "passed", "passed", "xfailed", False, "passed"),
    ("an expected contract failure", 5, 0, 0, "xfailed", "passed", None, False, "passed"),
    ("the property failed as a known defect says", 5, 1, 0, "passed", "xfailed", None, False, "known defect"),
    ("a known defect, whatever else failed", 5, 1, 1, "failed", "xfailed", "failed", False, "known defect"),
    ("the property's worker crashed", 3, 1, 0, "passed", "crashed", None, False, "incomplete"),
    ("interrupted before the property reported", 0, 0, 0, "passed", None, None, True, "incomplete"),
    ("interrupted, after the contract failed", 0, 0, 0, "failed", None, None, True, "failed"),
    ("interrupted, after the property passed", 5, 0, 0, "passed", "passed", None, True, "passed"),
]


@pytest.mark.parametrize(
    ("examples", "failures", "exceptions", "contract_", "property_", "fidelity_", "interrupted", "status"),
    [pytest.param(*rule[1:], id=rule[0]) for rule in STATUS_RULES],
)
def test_status(
    examples: int,
    failures: int,
    exceptions: int,
    contract_: str | None,
    property_: str | None,
    fidelity_: str | None,
    interrupted: bool,
    status: str,
) -> None:
    book = ledger(examples, failures, exceptions)
    if contract_ is not None:
        contract(book, contract_)
    if fidelity_ is not None:
        fidelity(book, fidelity_, when="???" if fidelity_ == "crashed" else "call", longrepr="worker 'gw0' crashed")
    if property_ is not None:
        prop(book, property_, when="???" if property_ == "crashed" else "call")
    assert book.settle(interrupted).status == status


def test_the_contract_follows_its_test() -> None:
    book = ledger()
    assert book.settle().contract == "not run"
    for outcome, expected in [("passed", "passed"), ("xfailed", "passed"), ("failed", "failed"), ("xpassed", "failed")]:
        book = ledger()
        contract(book, outcome)
        assert book.settle().contract == expected, outcome


def test_a_passing_setup_or_teardown_says_nothing() -> None:
    book = ledger(examples=5)
    prop(book, "passed", when="setup")
    assert book.settle().status == "not run"  # the call never reported
    book = ledger(examples=5)
    for when in ("setup", "call", "teardown"):
        book.record(CONTRACT_TEST, CONTRACT, when, "passed")
        prop(book, "passed", when=when)
    assert book.settle().status == "passed"


# the problems a settled cell names


def test_an_error_names_its_phase_and_the_last_line_cut_to_300_characters() -> None:
    book = ledger()
    prop(book, "error", when="setup", longrepr="Traceback ...\nE   RuntimeError: no device")
    assert book.settle().problems == [f"{PROPERTY}: error in setup: E   RuntimeError: no device"]
    book = ledger()
    prop(book, "error", when="teardown", longrepr="x" * 400)
    assert book.settle().problems == [f"{PROPERTY}: error in teardown: {'x' * 300}"]


def test_a_strict_xpass_asks_for_the_entry_to_go() -> None:
    book = ledger(examples=5)
    prop(book, "xpassed")
    assert book.settle().problems == [f"{PROPERTY} passed although a known-defect entry says it fails: remove or narrow the entry"]


def test_a_failed_or_errored_contract_is_named_first() -> None:
    book = ledger(examples=5)
    book.record(CONTRACT_TEST, CONTRACT, "setup", "error", longrepr="E   boom")
    prop(book, "passed")
    result = book.settle()
    assert (result.status, result.contract) == ("failed", "failed")
    assert result.problems == ["the adapter contract failed (test_contract)", f"{CONTRACT}: error in setup: E   boom"]


def test_the_contract_problem_of_the_api_is_its_own() -> None:
    book = ledger()
    book.contract_failed("the adapter contract failed: ValueError: layout")
    result = book.settle()
    assert (result.status, result.contract, result.problems) == ("failed", "failed", ["the adapter contract failed: ValueError: layout"])


def test_a_failing_fidelity_test_is_named() -> None:
    book = ledger(examples=5)
    fidelity(book, "failed")
    prop(book, "passed")
    assert book.settle().problems == [f"fidelity: {FIDELITY} failed"]


def test_an_error_of_a_fidelity_test_is_a_problem_not_a_failure() -> None:
    book = ledger(examples=5)
    fidelity(book, "error", when="setup", longrepr="E   mpmath missing")
    prop(book, "passed")
    result = book.settle()
    assert result.status == "passed"
    assert result.problems == [f"{FIDELITY}: error in setup: E   mpmath missing"]


def test_an_expected_contract_failure_names_the_defect() -> None:
    book = ledger(examples=5)
    contract(book, "xfailed", xfail_reason="torch#1: wrong dtype")
    prop(book, "passed")
    assert book.settle().problems == ["contract: known upstream defect (torch#1: wrong dtype)"]


def test_a_known_defect_of_the_property_names_the_entry_and_its_issue() -> None:
    book = ledger(examples=5, failures=1)
    contract(book, "passed")
    prop(book, "xfailed", xfail_reason="known upstream defect: zero bias gradient (https://example.org/issues/1)")
    result = book.settle()
    assert result.status == "known defect"
    assert result.problems == [f"{PROPERTY}: known upstream defect: zero bias gradient (https://example.org/issues/1)"]


def test_a_crash_names_the_crash() -> None:
    book = ledger(examples=3, failures=1)
    prop(book, "crashed", when="???", longrepr="worker 'gw0' crashed while running")
    assert book.settle().problems == [f"{PROPERTY}: worker 'gw0' crashed while running"]


# merging partial results (xdist workers) and the order of problems


def partial(examples: int, ratio: float, problems: list[str]) -> CellResult:
    result = CellResult(CELL.id, CELL.backend, CELL.path, CELL.dtype)
    for _ in range(examples):
        result.add_example(ratio, 2, 1.0, failed=ratio > 1)
    result.problems += problems
    result.timing = {"framework": 1.0}
    return result


def test_merged_partial_results_add_up_and_settle_once() -> None:
    book = ledger()
    book.merge(partial(3, 0.25, ["examples beyond what the declared accumulation can bound were skipped"]))
    book.merge(partial(2, 0.5, ["examples beyond what the declared accumulation can bound were skipped"]))
    prop(book, "passed")
    result = book.settle()
    assert (result.status, result.examples, result.failures, result.worst) == ("passed", 5, 0, 0.5)
    assert result.problems == ["examples beyond what the declared accumulation can bound were skipped"]
    assert result.timing == {"framework": 2.0}


def test_a_failing_partial_result_fails_the_merged_cell() -> None:
    book = ledger()
    book.merge(partial(3, 0.25, []))
    book.merge(partial(1, 4.0, []))
    prop(book, "failed")
    result = book.settle()
    assert (result.status, result.examples, result.failures, result.worst) == ("failed", 4, 1, 4.0)


def test_the_trials_problems_come_first_then_the_contract_then_the_tests_then_fidelity() -> None:
    book = ledger()
    book.merge(partial(1, 0.5, ["adapter raised ValueError: x"]))
    fidelity(book, "failed")
    contract(book, "failed")
    prop(book, "error", when="teardown", longrepr="E   leak")
    assert book.settle().problems == [
        "adapter raised ValueError: x",
        "the adapter contract failed (test_contract)",
        f"{PROPERTY}: error in teardown: E   leak",
        f"fidelity: {FIDELITY} failed",
    ]


def test_a_problem_already_on_the_result_is_not_repeated() -> None:
    book = ledger()
    book.result.problems.append("the adapter contract failed (test_contract)")
    contract(book, "failed")
    assert book.settle().problems == ["the adapter contract failed (test_contract)"]
