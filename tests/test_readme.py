"""README.md's quick start is what CI runs: the two commands there and in ``.ci/run`` are the same."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The shell commands of the quick start's code block, comments dropped."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README.md's quick start has no ```sh block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_quick_start_has_exactly_two_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2, commands
    assert "pytest conformance" in commands[0], "the first command runs the conformance suite"
    assert "pytest conformance" not in commands[1], "the second command runs the project's own tests"


def test_ci_runs_the_readme_commands_verbatim() -> None:
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for command in readme_commands():
        assert command in ci, f"{command!r} is in README.md but not in .ci/run"


def test_constraints_pin_the_frameworks() -> None:
    pins = (ROOT / "constraints" / "ci.txt").read_text()
    assert re.search(r"^torch==2\.13\.0$", pins, re.M), "torch must be pinned to the CPU build on this machine's disk"
    assert re.search(r"^jax==0\.10\.\d+$", pins, re.M)
