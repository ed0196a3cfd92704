"""Writing what a run produces -- reports, baselines, summaries, case files -- without ever losing one.

Three rules, each the answer to a way a run used to lose data or a whole CI job:

* every output location is checked before the first test (:func:`check_locations`): a case directory
  that is a file or cannot be written, a report path that is a directory, and above all *one file given
  to two outputs* (a failing run given the same path for ``--conformance-baseline`` and
  ``--conformance-report`` replaced the known-good baseline, and the next run said "no regressions");
* a file is written atomically (:func:`write_atomically`): a reader, a crash or a kill never sees half
  a file, and no temporary file is left behind (SIGINT and SIGTERM wait for the write; what SIGKILL
  strands, the next write removes);
* appending (the Markdown summary) only ever adds.
"""

from __future__ import annotations

import glob
import os
import re
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


class OutputError(ValueError):
    """An output location that cannot be used; the message names the option, the path and why."""


TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")
"""The names of this module's temporary files: ``.<target name>.<pid>.<random>.tmp``, beside the target."""


def write_atomically(text: str, path: Path) -> None:
    """Write ``text`` to ``path`` so that a reader, a crash or a kill never sees half a file or a stray temporary.

    The text goes to a temporary file beside ``path`` (same file system), then :func:`os.replace`
    renames it over ``path``, atomically. While the temporary exists, SIGINT and SIGTERM are held
    back (delivered as soon as the file is whole or gone), so Ctrl-C or a CI runner's kill cannot
    strand it. SIGKILL cannot be held back; a temporary it strands names the dead process, and the
    next write to the same file removes it. The file gets the mode an ordinary new file would have
    (0666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stranded(path)
    umask = os.umask(0)
    os.umask(umask)
    data = text.encode("utf-8")
    with _signals_held():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~umask)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            Path(tmp).unlink(missing_ok=True)
            raise


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block (main thread, POSIX); they are delivered when it ends."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _remove_stranded(path: Path) -> None:
    """Remove temporaries of ``path`` that a killed process left behind (their pid is no longer running)."""
    for sibling in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = TEMPORARY.match(sibling.name)
        if match is None or match["name"] != path.name:
            continue
        pid = int(match["pid"])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sibling.unlink(missing_ok=True)
        except PermissionError:  # the pid runs, as another user: not ours to touch
            continue


def append_text(text: str, path: Path) -> None:
    """Append ``text`` to ``path`` (created if absent), after a blank line if the file already has content.

    Appending is what GitHub's ``$GITHUB_STEP_SUMMARY`` expects: other steps write to the same file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    separator = "\n" if path.exists() and path.stat().st_size else ""
    with path.open("a", encoding="utf-8") as f:
        f.write(separator + text)


def _writable_directory(directory: Path) -> str | None:
    """Why files cannot be created in ``directory`` (created on demand), or None if they can."""
    existing = directory
    while not existing.exists():
        if existing.parent == existing:
            return "no part of it exists"
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def check_locations(
    files: Mapping[str, Path], directories: Mapping[str, Path], longest_name: int = 0, inputs: Mapping[str, Path] | None = None
) -> None:
    """Raise :class:`OutputError` unless every output can be written and no two outputs share a location.

    ``files`` maps an option (``--conformance-report``) to the file it writes, ``directories`` an
    option to a directory it fills with files of up to ``longest_name`` characters, ``inputs`` an
    option to a file it only reads (a baseline not being updated), which must not be an output but
    may be read-only. Paths are compared after resolving symbolic links, so ``out/../r.json`` and
    ``r.json`` are the same file.
    """
    seen: dict[Path, str] = {}
    for option, path in [*files.items(), *(inputs or {}).items(), *directories.items()]:
        resolved = path.resolve()
        if resolved in seen:
            raise OutputError(
                f"{seen[resolved]} and {option} name the same location, {path}; give each output its own, "
                "or one would overwrite the other (a baseline replaced by a failing run's report is lost)"
            )
        seen[resolved] = option
    where = ""
    try:
        for option, path in files.items():
            where = f"{option} {path}"
            if path.is_dir():
                raise OutputError(f"{option} {path}: is a directory; give a file name")
            problem = _writable_directory(path.parent)
            if problem is not None or (path.exists() and not os.access(path, os.W_OK)):
                raise OutputError(f"{option} {path}: cannot be written ({problem or 'the file is not writable'})")
        for option, path in directories.items():
            where = f"{option} {path}"
            if path.exists() and not path.is_dir():
                raise OutputError(f"{option} {path}: is a file; give a directory")
            problem = _writable_directory(path)
            if problem is not None:
                raise OutputError(f"{option} {path}: cannot be written ({problem})")
            if longest_name:
                existing = path
                while not existing.exists():
                    existing = existing.parent
                name_max = os.pathconf(existing, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
                path_max = os.pathconf(existing, "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096
                if longest_name > name_max or len(str(path.resolve())) + 1 + longest_name >= path_max:
                    raise OutputError(
                        f"{option} {path}: case files of {longest_name} characters would exceed this file system's limits "
                        f"(names ≤ {name_max}, paths < {path_max}); use a shorter directory or shorter adapter and path names"
                    )
    except OSError as exc:  # a name beyond NAME_MAX or a path beyond PATH_MAX: pathlib raises ENAMETOOLONG where it would answer
        raise OutputError(f"{where}: cannot be used ({exc.strerror or exc})") from None
