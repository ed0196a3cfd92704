"""What an adapter declares -- its capabilities and how it accumulates sums -- checked once, at load, shown, and deciding its bound.

Declarations decide which cells run and how wide each cell's error bound is, so a declaration that
makes no sense, that would lead a file out of the case directory, or that would loosen the bound (sums
accumulated coarser than the storage format) is a usage error naming the adapter. An honest declaration
of finer accumulation is printed in the header and recorded in the report, and its bound stays tight
enough to catch a relative error of 1e-9 in float64.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import TESTS_FAILED, assert_usage_error, suite
from hostile_adapters import CAPABILITIES_VARIABLE, HERE

from backprop_conformance.conformance.runner import SuiteRun

BAD_DECLARATIONS: dict[str, tuple[dict[str, object], str]] = {
    "no-paths": ({"paths": [], "default_paths": []}, "adapter 'hostile-declares': paths is empty; declare at least one"),
    "no-dtypes": ({"dtypes": []}, "adapter 'hostile-declares': dtypes is empty; declare at least one"),
    "default-not-a-path": (
        {"default_paths": ["eager"]},
        "adapter 'hostile-declares': default path 'eager' is not among its paths ['manual']",
    ),
    "unknown-dtype": ({"dtypes": ["float64", "float8"]}, "adapter 'hostile-declares': unknown dtype 'float8'; the suite knows float64"),
    "unknown-accumulation-format": (
        {"accumulation": {"float32": "float128"}},
        "adapter 'hostile-declares': accumulation of float32 (dot) is 'float128'; the formats are",
    ),
    "unknown-accumulation-operation": (
        {"accumulation": {"float32": {"matmul": "float64"}}},
        "adapter 'hostile-declares': accumulation of float32 names operation 'matmul'; the operations are dot, batch_sum, cost_sum",
    ),
    "string-for-a-tuple": (
        {"paths": "manual"},
        "adapter 'hostile-declares': paths must be a tuple of strings, got str 'manual' (write ('manual',) for one)",
    ),
    "empty-name": ({"name": ""}, "adapter name '' is not usable"),
    "name-with-a-separator": ({"name": "sub/escaped"}, "adapter name 'sub/escaped' is not usable"),
    "name-climbing-out": ({"name": "../escaped"}, "adapter name '../escaped' is not usable"),
    "path-climbing-out": ({"paths": ["../escaped"], "default_paths": ["../escaped"]}, "paths holds '../escaped'"),
    "absolute-name": ({"name": "{tmp}/escaped"}, "adapter name '{tmp}/escaped' is not usable"),
}


@pytest.mark.parametrize("declaration", BAD_DECLARATIONS.values(), ids=BAD_DECLARATIONS.keys())
def test_bad_capabilities_are_a_usage_error_naming_the_adapter(tmp_path: Path, declaration: tuple[dict[str, object], str]) -> None:
    """Exit 4 at start-up, naming the adapter (declared name and where it was loaded from) and what is wrong; no file written anywhere."""
    overrides, wanted = declaration
    overrides = {k: (v.format(tmp=tmp_path) if isinstance(v, str) else v) for k, v in overrides.items()}
    run = suite(
        tmp_path / "run",
        "--conformance-backend",
        f"{HERE}:DeclaresFromEnvironment",
        "--conformance-max-examples=3",
        **{CAPABILITIES_VARIABLE: json.dumps(overrides)},
    )
    assert_usage_error(run, wanted.format(tmp=tmp_path), f"(adapter loaded from {HERE}:DeclaresFromEnvironment)")
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [], f"files written by a run that must not have started: {written}"


# An adapter may not loosen its own bound; what it declares is shown; a 1e-9 relative bug is caught in float64.


@pytest.mark.parametrize(
    "accumulation",
    [{"float64": "float32"}, {"float64": {"batch_sum": "float32"}}],
    ids=["float64-in-float32", "one-operation"],
)
def test_coarser_accumulation_is_a_usage_error(tmp_path: Path, accumulation: dict[str, object]) -> None:
    """float32 sums declared for float64 storage would widen the float64 bound by 2^29 and let a 1e-9 relative bug pass."""
    (dtype, declared), *_ = accumulation.items()
    fmt = declared if isinstance(declared, str) else next(iter(declared.values()))  # type: ignore[union-attr]
    run = suite(
        tmp_path,
        "--conformance-backend",
        f"{HERE}:DeclaresFromEnvironment",
        **{CAPABILITIES_VARIABLE: json.dumps({"accumulation": accumulation})},
    )
    assert_usage_error(
        run,
        "adapter 'hostile-declares': declares ",
        f"sums of {dtype} accumulated in {fmt}, coarser than {dtype} itself",
        "may not loosen the bound",
    )


@pytest.fixture(scope="module")
def tiny_bug_run(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    """The planted (1 + 1e-9) factor on ∂C/∂w^2, beside an adapter that declares float64 accumulation of float32 sums."""
    return suite(
        tmp_path_factory.mktemp("tiny-bug"),
        "--conformance-backend",
        "tests.mutants:TinyScaleOnWeightGradient",
        "--conformance-backend",
        f"{HERE}:Float64Accumulation",
        "--conformance-max-examples=10",
    )


def test_a_relative_error_of_1e_9_is_caught_in_float64(tiny_bug_run: SuiteRun) -> None:
    """The bound an honest float64 declaration gets is tight enough for a relative error far below any fixed tolerance."""
    assert tiny_bug_run.returncode == TESTS_FAILED, tiny_bug_run.explain()
    assert tiny_bug_run.report is not None
    statuses = {c.id: (c.status, c.failures > 0) for c in tiny_bug_run.report.cells}
    assert statuses["mut-scale-1e-9-manual-float64"] == ("failed", True), statuses
    assert statuses["mut-scale-1e-9-manual-float32"] == ("passed", False), "in float32, 1 + 1e-9 rounds to 1: the adapter is correct there"
    assert statuses["hostile-acc64-manual-float32"] == ("passed", False), statuses


def test_declared_accumulation_is_shown_in_the_header_and_the_report(tiny_bug_run: SuiteRun) -> None:
    """What an adapter declared about its sums decides its bound, so a reader of the run must see it."""
    header = tiny_bug_run.output.split("collected", 1)[0]
    assert re.search(r"^  hostile-acc64: .*; dtypes float32; accumulation float32→float64$", header, re.MULTILINE), header
    assert re.search(r"^  mut-scale-1e-9: .*; accumulation in storage format$", header, re.MULTILINE), header
    assert tiny_bug_run.report is not None
    declared = {b.name: b.accumulation for b in tiny_bug_run.report.backends}
    assert declared == {"mut-scale-1e-9": "in storage format", "hostile-acc64": "float32→float64"}, declared
