"""docs/adapters.md's skeleton adapter passes its first run as the guide gives it, and the probe measures it.

The guide promises a first run that passes in fifteen minutes from the skeleton: it must, as written, in the run
the guide tells an author to start with (conformance tier only, no accumulation declared).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from backprop_conformance.conformance.runner import run_suite

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "adapters.md"


def skeleton() -> str:
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S) if "class MyAdapter(Adapter)" in b]
    return block


def test_the_guide_gives_the_first_run_command() -> None:
    assert 'backprop-conformance --conformance-backend my_adapter:MyAdapter -m "not fidelity"' in GUIDE.read_text(encoding="utf-8")


def test_the_skeleton_passes_its_first_run(tmp_path: Path) -> None:
    home = tmp_path / "author"
    home.mkdir()
    (home / "my_adapter.py").write_text(skeleton(), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(home), os.environ.get("PYTHONPATH", "")])}
    run = run_suite(
        ["--conformance-backend", "my_adapter:MyAdapter", "-m", "not fidelity", "--conformance-max-examples", "20"],
        tmp_path / "run",
        env=env,
    )
    assert run.returncode == 0 and run.report is not None, run.explain()
    assert {c.id: c.status for c in run.report.cells} == {
        "my-framework-eager-float64": "passed",
        "my-framework-eager-float32": "passed",
    }, run.explain()
