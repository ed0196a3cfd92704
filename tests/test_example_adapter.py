"""The example plug-in runs through the whole suite by the command its docstring and docs/adapters.md give."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python -m pytest conformance --backend examples.numpy_adapter:NumpyAdapter"


def test_documented_command_is_the_one_tested() -> None:
    assert COMMAND in (ROOT / "examples" / "numpy_adapter.py").read_text()
    assert COMMAND in (ROOT / "docs" / "adapters.md").read_text()


def test_example_adapter_passes_the_whole_suite(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"HYPOTHESIS_STORAGE_DIRECTORY": str(tmp_path)}
    args = COMMAND.split()[1:]
    done = subprocess.run(
        [sys.executable, *args, "-p", "no:cacheprovider", "--max-examples", "30", "--case-dir", str(tmp_path / "cases")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    for cell in ("numpy-example-manual-float64", "numpy-example-manual-float32"):
        row = re.search(rf"^{cell}\s+(\d+)\s+(\d+)\s", done.stdout, re.MULTILINE)
        assert row and int(row.group(1)) >= 30 and row.group(2) == "0", f"no passing matrix row for {cell}:\n{done.stdout[-2000:]}"
