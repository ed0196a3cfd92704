"""README.md's quick start is what CI runs: the two commands there and in ``.ci/run`` are the same."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


NOT_IN_THE_TOX_MATRIX = {"all": "the workflow's conformance jobs run it, one backend and shard per job, and merge the shards"}
"""tox envs of ``env_list`` that the workflow's tox job leaves out, each with the job that runs it instead."""


def test_the_workflow_runs_every_tox_env() -> None:
    """Opt-in cells (data-parallel, mixed precision, training-loop paths, dispatch levels) run nowhere by default: the
    workflow's tox matrix is where CI runs them, so an env added to tox.ini and forgotten there would never run."""
    tox = (ROOT / "tox.ini").read_text()
    env_list = re.search(r"^env_list\s*=\s*(.+)$", tox, re.M)
    assert env_list, "tox.ini has no env_list"
    envs = {env.strip() for env in env_list.group(1).split(",")}
    matrix = re.search(r"^\s*env:\s*\[(.+)\]\s*$", (ROOT / ".github" / "workflows" / "conformance.yml").read_text(), re.M)
    assert matrix, "the workflow's tox job has no env matrix"
    missing = envs - {env.strip() for env in matrix.group(1).split(",")} - NOT_IN_THE_TOX_MATRIX.keys()
    assert not missing, f"tox envs the workflow never runs: {sorted(missing)}"
    assert {"mixed", "training", "data-parallel", "dispatch"} <= envs, "an opt-in env left tox.ini's env_list"


README_WORDS = 1500
"""README.md's length limit: what the suite is, the two commands, the three routes and the layout; reference
material lives in docs/."""


def test_readme_stays_short() -> None:
    words = len((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert words <= README_WORDS, f"README.md has {words} words, more than {README_WORDS}: move reference material to docs/"


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_in_the_docs_leads_somewhere() -> None:
    """A link into docs/ (or to a heading of a page) that leads nowhere is the first thing a newcomer clicks."""
    broken = []
    for document in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", document.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (document.parent / file).resolve() if file else document
            if not path.exists():
                broken.append(f"{document.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and path.suffix == ".md":
                headings = re.findall(r"^#+ (.*)$", path.read_text(encoding="utf-8"), re.M)
                if anchor not in {_slug(h) for h in headings}:
                    broken.append(f"{document.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links: " + "; ".join(broken)


def _route(title: str) -> str:
    """The text of one "Start here" route, up to the next heading."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Start here", 1)[1].split("\n## ", 1)[0]
    return section.split(f"### {title}", 1)[1].split("\n### ", 1)[0]


def _shell_lines(text: str) -> list[str]:
    return [line for block in re.findall(r"```sh\n(.*?)```", text, re.S) for line in block.splitlines() if line.strip()]


ROUTES = (
    "I maintain a framework and want this in its CI",
    "I wrote backprop myself and want to know if it is right",
    "I am writing a new framework",
)


def test_every_route_starts_from_a_fresh_virtual_environment() -> None:
    for title in ROUTES:
        lines = _shell_lines(_route(title))
        fresh = "python3 -m venv .venv && . .venv/bin/activate && pip install -c constraints/ci.txt -e "
        assert lines and lines[0].startswith(fresh), title


def test_the_student_route_needs_no_framework() -> None:
    """It installs the project with no extra, and its snippet runs as written on a hand-written backprop."""
    route = _route("I wrote backprop myself and want to know if it is right")
    assert _shell_lines(route)[0].endswith("pip install -c constraints/ci.txt -e ."), "no framework extra"
    (snippet,) = re.findall(r"```python\n(.*?)```", route, re.S)
    from tests.test_api import backprop as full_backprop

    def backprop(w, b, x, y):  # (dw, db), as the route says
        dw, db, _, _ = full_backprop(w, b, x, y)
        return dw, db

    namespace: dict[str, object] = {"backprop": backprop}
    exec(compile(snippet, "README.md:student route", "exec"), namespace)


def test_the_new_framework_route_runs_the_tested_example_command() -> None:
    from tests.test_example_adapter import COMMAND

    lines = _shell_lines(_route("I am writing a new framework"))
    assert lines[1] == f'{COMMAND} -m "not fidelity"'


def test_the_maintainers_route_runs_green_with_the_builtin_defects_non_strict(tmp_path: Path) -> None:
    """The CI route's command, narrowed to float64 and a few examples, exits 0 and writes its report."""
    import shlex

    from backprop_conformance.conformance.runner import run_suite

    pytest.importorskip("torch")
    lines = _shell_lines(_route("I maintain a framework and want this in its CI"))
    assert lines[0].endswith("-e '.[torch]'") and lines[1].startswith("backprop-conformance ")
    args = [a for a in shlex.split(lines[1])[1:] if not a.startswith("--conformance-report") and a != "report.json"]
    assert "--conformance-builtin-defects" in args and "torch=non-strict" in args
    done = run_suite([*args, "--conformance-dtype", "float64", "--conformance-max-examples", "4"], tmp_path, installed=True)
    assert done.returncode == 0 and done.report is not None, done.explain()
    assert {c.id.split("-")[0] for c in done.report.cells} == {"torch"}


def test_the_layout_names_every_module() -> None:
    """README's layout says each module's job; a module added without a line there is a module nobody can find."""
    layout = (ROOT / "README.md").read_text(encoding="utf-8").split("## Layout", 1)[1]
    missing = [
        f"{folder}/{module.name}"
        for folder in ("reference", "adapters", "conformance")
        for module in sorted((ROOT / folder).glob("*.py"))
        if module.name != "__init__.py" and f"`{module.name}`" not in layout
    ]
    assert not missing, "README.md's layout does not name: " + ", ".join(missing)
