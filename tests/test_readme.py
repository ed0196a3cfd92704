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


def test_ci_runs_the_dispatch_level_command_the_readme_shows() -> None:
    """README shows, after the quick start, the run across every dispatch level that CI adds; CI must run exactly it."""
    section = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [
        c for block in re.findall(r"```sh\n(.*?)```", section, re.S)[1:] for c in block.splitlines() if "--conformance-dispatch" in c
    ]
    assert commands == ["python -m pytest conformance --conformance-require --conformance-dispatch all"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[0] in ci


def test_constraints_pin_the_frameworks() -> None:
    pins = (ROOT / "constraints" / "ci.txt").read_text()
    assert re.search(r"^torch==2\.13\.0$", pins, re.M), "torch must be pinned to the CPU build on this machine's disk"
    assert re.search(r"^jax==0\.10\.\d+$", pins, re.M)


def _option_names_pytest_knows() -> set[str]:
    """Every long option ``pytest conformance`` accepts: pytest's, its plug-ins' and the suite's, from its own help."""
    import subprocess
    import sys

    help_text = subprocess.run(
        [sys.executable, "-m", "pytest", "conformance", "--help", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    aliases = {"--junitxml"}  # pytest's help shows only --junit-xml
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", help_text)) | aliases


def _command_lines(path: Path) -> list[str]:
    """The lines of a config file that run ``pytest conformance``, with YAML-folded and backslash continuations joined."""
    lines = path.read_text().splitlines()
    commands = []
    for index, line in enumerate(lines):
        if "pytest conformance" not in line:
            continue
        command = line
        indent = len(line) - len(line.lstrip())
        for following in lines[index + 1 :]:
            continued = command.rstrip().endswith("\\")
            folded = following.strip() and len(following) - len(following.lstrip()) >= indent and following.lstrip().startswith("--")
            if not (continued or folded):
                break
            command = command.rstrip().rstrip("\\") + " " + following.strip()
        commands.append(command)
    return commands


def test_every_documented_or_configured_suite_option_exists() -> None:
    """tox, the example workflow, .ci/run and the docs name only options pytest accepts.

    A renamed option leaves no error until someone runs the one tox env or workflow step that still
    uses the old name; pytest then stops with "unrecognized arguments" (or, worse, an abbreviation
    matches another option).
    """
    known = _option_names_pytest_knows()
    assert "--conformance-backend" in known and "--hypothesis-profile" in known, "the help text was not read"
    unknown = []
    for config in ("tox.ini", ".github/workflows/conformance.yml", ".ci/run"):
        commands = _command_lines(ROOT / config)
        assert commands or config == ".ci/run", f"{config} runs no `pytest conformance`"
        for command in commands:
            unknown += [f"{config}: {option}" for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", command) if option not in known]
    for document in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for option in sorted(set(re.findall(r"(?<![\w-])(--conformance-[a-z0-9-]+)", document.read_text()))):
            if option not in known:
                unknown.append(f"{document.relative_to(ROOT)}: {option}")
    assert not unknown, "options pytest does not accept: " + ", ".join(unknown)
