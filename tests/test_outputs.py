"""Where the suite writes -- report, summary, case files, baseline, JUnit XML -- and how: nothing is ever lost.

Every output location is checked before the first test, so that a location that cannot be used is
found at start-up, not midway with the reproducers lost; one file given to two outputs is refused and
left byte for byte as it was, so a failing run can never replace a known-good baseline; a read-only
baseline is fine when it is only read. Files are written atomically: a write interrupted by SIGTERM
completes first, and the temporary file SIGKILL strands is removed by the next write.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import CORRECT_ADAPTER, REPO_ROOT, assert_usage_error, suite

from backprop_conformance.conformance import outputs
from backprop_conformance.conformance.runner import clean_environment

# One file given to two outputs is a usage error at start-up, and the file is left byte for byte as it was.

COLLISIONS: dict[str, tuple[list[str], list[str]]] = {
    "baseline-and-report": (
        ["--conformance-baseline", "{shared}", "--conformance-report", "{shared}"],
        ["--conformance-report", "--conformance-baseline"],
    ),
    "report-and-markdown": (
        ["--conformance-report", "{shared}", "--conformance-markdown", "{shared}"],
        ["--conformance-report", "--conformance-markdown"],
    ),
    "junitxml-and-report": (["--junitxml", "{shared}", "--conformance-report", "{shared}"], ["--conformance-report", "--junitxml"]),
    "case-dir-and-baseline": (
        ["--conformance-baseline", "{shared}", "--conformance-case-dir", "{shared}"],
        ["--conformance-baseline", "--conformance-case-dir"],
    ),
    "two-spellings": (
        ["--conformance-baseline", "{shared}", "--conformance-report", "{tmp}/out/../base.json"],
        ["--conformance-report", "--conformance-baseline"],
    ),
    "through-a-symbolic-link": (
        ["--conformance-baseline", "{shared}", "--conformance-markdown", "{tmp}/link/base.json"],
        ["--conformance-markdown", "--conformance-baseline"],
    ),
}


@pytest.mark.parametrize("collision", COLLISIONS.values(), ids=COLLISIONS.keys())
def test_one_file_for_two_outputs_is_a_usage_error(tmp_path: Path, recorded: Path, collision: tuple[list[str], list[str]]) -> None:
    """A failing run (so that a report written over the baseline would be a real loss) given one location twice."""
    args, options = collision
    shared = tmp_path / "base.json"
    shutil.copyfile(recorded, shared)
    before = shared.read_bytes()
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    formatted = [a.format(shared=shared, tmp=tmp_path) for a in args]
    run = suite(tmp_path / "run", "--conformance-backend", "tests.mutants:CrossEntropyShortcut", "--conformance-max-examples=3", *formatted)
    assert_usage_error(run, f"{options[0]} and {options[1]} name the same location")
    assert shared.read_bytes() == before, "the file given twice was changed"


# Every output location is checked at start-up.


@contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """Make ``path`` (a directory or a file) unwritable for this process for the block.

    As an ordinary user, by its mode. As root, whom modes do not stop, by the immutable attribute
    (``chattr +i``), which stops root too and which ``os.access`` reports; skipped where neither works.
    """
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode != 0:
        pytest.skip("running as root, and the immutable attribute is not available here to make a path unwritable")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def too_long_case_dir(tmp_path: Path) -> Path:
    """A directory that can be created, but where ``<dir>/<cell id>-shrunk-<hash>.json`` would exceed PATH_MAX."""
    path_max = os.pathconf(tmp_path, "PC_PATH_MAX")
    deep = tmp_path
    while len(str(deep)) < path_max - 400:
        deep = deep / ("d" * 200)
    deep.mkdir(parents=True)
    return deep / ("c" * (path_max - 30 - len(str(deep))))


LOCATIONS: dict[str, tuple[str, str, str]] = {
    # id: (option, how its path is made, the message)
    "case-dir-is-a-file": ("--conformance-case-dir", "file", "--conformance-case-dir {path}: is a file; give a directory"),
    "case-dir-unwritable": (
        "--conformance-case-dir",
        "unwritable-dir",
        "--conformance-case-dir {path}: cannot be written ({path} is not writable)",
    ),
    "case-dir-in-an-unwritable-dir": ("--conformance-case-dir", "in-unwritable-dir", "--conformance-case-dir {path}: cannot be written ("),
    "case-dir-too-long-for-its-files": (
        "--conformance-case-dir",
        "too-long",
        "would exceed this file system's limits (names ≤ 255, paths < 4096)",
    ),
    "case-dir-name-beyond-name-max": ("--conformance-case-dir", "name-too-long", "--conformance-case-dir {path}: cannot be used ("),
    "report-in-an-unwritable-dir": ("--conformance-report", "in-unwritable-dir", "--conformance-report {path}: cannot be written ("),
    "markdown-unwritable-file": (
        "--conformance-markdown",
        "unwritable-file",
        "--conformance-markdown {path}: cannot be written (the file is not writable)",
    ),
    "report-name-beyond-name-max": ("--conformance-report", "name-too-long", "--conformance-report {path}: cannot be used ("),
    "baseline-is-a-directory": ("--conformance-baseline", "dir", "--conformance-baseline {path}: is a directory; give a file name"),
    "baseline-in-an-unwritable-dir": ("--conformance-baseline", "in-unwritable-dir", "--conformance-baseline {path}: cannot be written ("),
    "report-directory": ("--conformance-report", "dir", "--conformance-report {path}: is a directory; give a file name"),
    "summary-directory": ("--conformance-markdown", "dir", "--conformance-markdown {path}: is a directory; give a file name"),
    "report-under-a-file": ("--conformance-report", "under-a-file", "--conformance-report {path}: cannot be written ("),
}


@pytest.mark.parametrize("location", LOCATIONS.values(), ids=LOCATIONS.keys())
def test_unusable_output_location_is_a_usage_error_at_start_up(tmp_path: Path, location: tuple[str, str, str]) -> None:
    """A failing adapter, so that a location that slipped through would be found only midway, with its reproducers lost."""
    option, make, message = location
    locked = tmp_path / "locked"
    locked.mkdir()
    path = {
        "file": tmp_path / "a-file",
        "unwritable-dir": locked,
        "in-unwritable-dir": locked / "out" / "f.json",
        "too-long": too_long_case_dir(tmp_path) if make == "too-long" else tmp_path,
        "name-too-long": tmp_path / ("n" * 300) / "f.json",
        "unwritable-file": locked / "summary.md",
        "dir": tmp_path / "a-dir",
        "under-a-file": tmp_path / "a-file" / "r.json",
    }[make]
    if make in ("file", "under-a-file"):
        (tmp_path / "a-file").write_text("", encoding="utf-8")
    if make == "unwritable-file":
        path.write_text("# an earlier step's summary\n", encoding="utf-8")
    elif make == "dir":
        path.mkdir()
    extra = ["--conformance-update-baseline"] if option == "--conformance-baseline" else []
    args = ["--conformance-backend", "tests.mutants:CrossEntropyShortcut", "--conformance-max-examples=3", option, str(path), *extra]
    with unwritable(path if make == "unwritable-file" else locked):
        run = suite(tmp_path / "run", *args)
    assert_usage_error(run, message.format(path=path))


def test_a_read_only_baseline_is_fine_when_it_is_only_read(tmp_path: Path, recorded: Path) -> None:
    """Without --conformance-update-baseline the baseline is only read: a read-only copy (a CI cache, a mounted artifact) must do."""
    shared = tmp_path / "baselines"
    shared.mkdir()
    shutil.copyfile(recorded, shared / "base.json")
    with unwritable(shared / "base.json"), unwritable(shared):
        run = suite(tmp_path / "run", *CORRECT_ADAPTER, "--conformance-max-examples=3", "--conformance-baseline", str(shared / "base.json"))
    assert run.returncode == 0, run.explain()
    assert "no regressions" in run.output, run.explain()


# An interrupted write leaves no temporary file behind.

SLOW_WRITER = """
import os, sys, time
from pathlib import Path
from backprop_conformance.conformance import outputs

real_fsync = os.fsync

def slow_fsync(fd):
    # The middle of write_atomically: the temporary file exists and is not yet renamed over the target.
    print("inside", flush=True)
    time.sleep(float(sys.argv[2]))
    real_fsync(fd)

os.fsync = slow_fsync
outputs.write_atomically("{" + " " * 5_000_000 + "}\\n", Path(sys.argv[1]))
print("written", flush=True)
"""


def temporaries(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.glob(f".{target.name}.*.tmp"))


def interrupted_writer(target: Path, how: signal.Signals, pause: float) -> subprocess.Popen[str]:
    """A process writing ``target`` atomically, stopped by ``how`` while its temporary file exists; returned after it ended."""
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(target), str(pause)],
        cwd=REPO_ROOT,
        env=clean_environment(target.parent / "hypothesis"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line == "inside\n", f"the writer never reached the middle of its write: {line!r} {child.stderr.read() if child.stderr else ''}"
    assert temporaries(target), "the temporary file must exist at this point for the check to mean anything"
    child.send_signal(how)
    child.wait(timeout=60)
    return child


def test_sigterm_in_the_middle_of_a_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    """SIGTERM is held back while the temporary exists: the write completes, then the process dies of the signal."""
    target = tmp_path / "report.json"
    target.write_text("{}\n", encoding="utf-8")
    child = interrupted_writer(target, signal.SIGTERM, pause=1.0)
    assert child.returncode == -signal.SIGTERM, f"exit {child.returncode}"
    assert temporaries(target) == [], "SIGTERM stranded the temporary file"
    assert target.stat().st_size == 5_000_003, "the target must hold either the old or the whole new text"


def test_a_temporary_stranded_by_sigkill_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """SIGKILL cannot be held back; the temporary it strands names a dead process, and the next write to the file removes it."""
    target = tmp_path / "report.json"
    target.write_text("{}\n", encoding="utf-8")
    child = interrupted_writer(target, signal.SIGKILL, pause=60.0)
    assert child.returncode == -signal.SIGKILL
    assert len(temporaries(target)) == 1 and target.read_text(encoding="utf-8") == "{}\n", "SIGKILL cannot be held back: the old file stays"
    outputs.write_atomically("{}\n", target)
    assert temporaries(target) == [], "the next write to the same file must remove what the killed writer stranded"
