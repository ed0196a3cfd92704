"""docs/api.md's examples run as written: every ```python block, in order, in one namespace, from an empty directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_the_page_has_examples() -> None:
    assert len(blocks()) >= 4


def test_examples_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """They assert their own outcomes (a passing check, a failing one caught, an adapter that passes); any failure fails this test."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "docs_api"}
    for number, block in enumerate(blocks(), start=1):
        exec(compile(block, f"{DOC}:block {number}", "exec"), namespace)
    assert not (tmp_path / "conformance-cases").exists(), "a passing check writes no case file"
