"""A failing cell's reproducers: its case files, the command that replays one, and the text a failure shows of them.

A failure is only as useful as the way to see it again: the shrunk and the worst failing example are written as case
files (:meth:`~backprop_conformance.conformance.trial.CellTrial.write_cases`) with the environment and dispatch
configuration they failed in, and the failure's own text names them with the replay command, so that JUnit XML,
which carries only that text, shows them too.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

from backprop_conformance.adapters.at_level import AtLevel
from backprop_conformance.conformance.trial import CellTrial

REPLAY = "backprop-conformance replay"
"""How a failure tells the user to replay its case: the console script, which (unlike ``python -m``) does not put
the working directory on the import path, so a module left beside a case file cannot be imported in its place.
An adapter named as ``module:Attribute`` may need the working directory on the path, so its case is replayed
with :data:`REPLAY_FROM_HERE`."""
REPLAY_FROM_HERE = "python -m backprop_conformance replay"


def relative(path: Path, start: Path) -> str:
    """``path`` as the user can type it from ``start``: relative when it lies below, else as given."""
    try:
        return str(Path(path).resolve().relative_to(start.resolve()))
    except ValueError:
        return str(path)


def replay_command(case: str, requested: str, name: str) -> str:
    """The command that replays ``case`` on the adapter requested as ``requested`` (whose own name is ``name``)."""
    replay = REPLAY if requested == name else REPLAY_FROM_HERE
    return f"{replay} {shlex.quote(case)} --backend {shlex.quote(requested)}"


def write_reproducers(trial: CellTrial, case_dir: Path, here: Path, configuration: Mapping[str, str]) -> str | None:
    """Write ``trial``'s failing examples under ``case_dir`` and set the cell's replay command; the text to show.

    ``here`` is the directory the run was started in (paths are shown relative to it); ``configuration`` the
    dispatch configuration the cell ran with. None when the case files could not be written: that is then one
    of the cell's problems, and the failure stands without them.
    """
    caps = trial.backend.capabilities
    assert caps is not None
    forced = trial.backend.adapter.level.environment if isinstance(trial.backend.adapter, AtLevel) else {}
    environment = {name: forced.get(name, os.environ.get(name)) for name in [*caps.environment, *forced]}
    try:
        written = trial.write_cases(case_dir, environment, configuration)
    except OSError as exc:
        trial.result.problems.append(f"could not write the case files to {case_dir}: {exc}")
        return None
    shown = [relative(p, here) for p in written]
    command = replay_command(shown[0], trial.backend.spec.requested_as, trial.backend.spec.name)
    trial.result.replay = command
    labels = ["shrunk (smallest failing)", "worst (largest error/bound ratio)"] if len(shown) == 2 else ["shrunk and worst"]
    text = "".join(f"case file, {label}: {path}\n" for label, path in zip(labels, shown, strict=True))
    text += f"replay it (any adapter, no hypothesis): {command}\n"
    if environment:
        text += "recorded environment: " + ", ".join(f"{k}={v}" for k, v in environment.items()) + "\n"
    return text
