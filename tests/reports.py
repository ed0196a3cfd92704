"""Hand-made reports for the tests of the report format, the Markdown summary and the baseline comparison.

Every figure in them is written by the test that builds them, so every expected value is worked out
by hand, not produced by the code under test.
"""

from __future__ import annotations

from backprop_conformance.conformance.report import BackendEntry, CellResult, Report

F32 = "fake-eager-float32"
F64 = "fake-eager-float64"

COMMAND = {"executable": "python", "argv": ["pytest", "conformance"], "pytest_args": ["conformance"], "cwd": "/somewhere"}


def cell(cell_id: str, *ratios: float, depths: list[int] | None = None, zs: list[float] | None = None, **fields: object) -> CellResult:
    """A cell of backend "fake" whose examples had these worst ratios; those above 1 are its failures.

    Its status is "passed" when it ran examples and none failed, "failed" when one did, "not run" when
    it ran none, unless ``status`` is given; other fields (contract, exceptions, problems...) likewise.
    """
    backend, path, dtype = cell_id.split("-")[:3]
    result = CellResult(cell_id, backend, path, dtype, *(["cuda"] if cell_id.endswith("-cuda") else []))
    for i, ratio in enumerate(ratios):
        result.add_example(ratio, (depths or [3] * len(ratios))[i], (zs or [2.0] * len(ratios))[i], ratio > 1)
    result.contract = "passed" if ratios else "not run"
    result.status = "failed" if result.failures else "passed" if ratios else "not run"
    for name, value in fields.items():
        setattr(result, name, value)
    return result


def run(*cells: CellResult, version: str = "1.0", profile: str = "ci", derandomize: bool = False, source: str = "this run") -> Report:
    """A report of a run of backend "fake" (Fake ``version``) over ``cells``."""
    return Report(
        cells=list(cells),
        backends=[BackendEntry("fake", "pkg:Fake", "Fake", version, ("cpu",), ("eager",), ("float64", "float32"), "in storage format")],
        timestamp="2026-12-01T00:00:00+00:00",
        command=COMMAND,
        suite={"version": "0.1.0", "commit": None, "dirty": None},
        environment={"python": "3.11.7", "numpy": "2.4.6", "platform": "Linux"},
        hypothesis={
            "version": "6.170.17",
            "profile": profile,
            "max_examples": 100,
            "derandomize": derandomize,
            "seed": None,
            "database": False,
        },
        source=source,
    )
