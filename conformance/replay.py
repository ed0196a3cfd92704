"""Replaying a case file: the exact network and batch of a failure, against any adapter, without hypothesis.

This is the command a framework maintainer runs from a bug report, on a file a stranger wrote. So the
file is data and nothing else: it is validated field by field (:mod:`~backprop_conformance.conformance.cases`),
and the adapter it names is used only when that name is a built-in adapter or an installed plug-in's.
Anything else -- a ``module:Attribute``, which importing would execute -- must be passed by the user,
knowingly, with ``--backend``. A case found at a forced dispatch level is replayed at that level when the
adapter offers it on this CPU, and every difference between the recorded dispatch configuration and the
one the replay runs with is printed: the same numbers can fail on one CPU and pass on another. Exit
status: 0 when every replay passes, 1 when one fails (the framework's verdict), 2 for anything wrong
with the request or the file.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from typing import TextIO

from backprop_conformance.adapters import dispatch
from backprop_conformance.adapters.at_level import AtLevel
from backprop_conformance.adapters.base import Adapter, AdapterError
from backprop_conformance.adapters.registry import known_specs
from backprop_conformance.conformance import cases, fidelity
from backprop_conformance.conformance.cells import Cell, SelectionError, load_backends
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.conformance.verdict import judge
from backprop_conformance.reference.dtypes import FORMATS
from backprop_conformance.reference.error_bound import VacuousBound

PASSED, FAILED, USAGE = 0, 1, 2


class ReplayError(Exception):
    """A replay that cannot be made as asked; the message says why and what to pass instead."""


def adapter_names(case: cases.Case, backends: Sequence[str], source: str) -> list[str]:
    """The adapters to replay with: those given, else the case's own if it is built in or installed.

    A case's ``adapter`` naming a module is never imported: a file attached to a bug report must not
    be able to run code by naming a module that sits beside it.
    """
    if backends:
        return list(backends)
    if case.adapter in known_specs():
        return [case.adapter]
    raise ReplayError(
        f"{source} names the adapter {case.adapter!r}, which is neither built in nor an installed plug-in; replay never imports "
        f"code a case file names. If you trust that module, name it yourself: --backend {shlex.quote(case.adapter)} "
        f"(or replay against a known adapter: --backend {' / '.join(sorted(known_specs()))})"
    )


def replay(
    case_path: str, backends: Sequence[str], paths: Sequence[str], dtype: str | None, device: str | None, out: TextIO, err: TextIO
) -> int:
    """Replay one case; print each verdict to ``out``; return the exit status."""
    try:
        case = cases.read(case_path)
        loaded = load_backends(adapter_names(case, backends, case_path))
    except (cases.CaseError, ReplayError, AdapterError, SelectionError) as exc:
        print(f"error: {exc}", file=err)
        return USAGE
    print(f"case {case_path} ({case.kind} example): {case.problem.describe()}, found in {case.cell.id}", file=out)
    if case.fidelity:
        print(f"judged by the fidelity tier's exactness bound: {case.fidelity[0]}, case {case.fidelity[1]}", file=out)
    for name, value in case.environment.items():
        now = os.environ.get(name)
        note = "" if now == value else f" (now {now!r}: set it as recorded to replay the same computation)"
        print(f"recorded environment: {name}={value!r}{note}", file=out)
    status = PASSED
    for backend in loaded:
        caps = backend.capabilities
        if caps is None or backend.adapter is None:
            print(f"error: {backend.spec.name}: {backend.unavailable}", file=err)
            status = max(status, USAGE)
            continue
        want_dtype = dtype or case.cell.dtype
        want_device = device or case.cell.device
        chosen = list(paths) or ([case.cell.path] if case.cell.path in caps.paths else list(caps.default_paths))
        for what, wanted, offered in (
            ("dtype", [want_dtype], caps.dtypes),
            ("device", [want_device], caps.devices),
            ("path", chosen, caps.paths),
        ):
            unknown = [w for w in wanted if w not in offered]
            if unknown:
                print(f"error: {caps.name} has no {what} {', '.join(unknown)}; it offers {', '.join(offered)}", file=err)
                return USAGE
        if case.fidelity and want_dtype != case.cell.dtype:
            if want_dtype not in FORMATS:
                print(f"error: a fidelity case is judged in one of the formats {', '.join(FORMATS)}, not {want_dtype}", file=err)
                return USAGE
            problem = fidelity.problem_of(*case.fidelity, want_dtype)  # its test's problem in that format: regions differ
        elif want_dtype != case.cell.dtype:
            problem = Problem.rounded(case.problem.network, case.problem.batch, want_dtype)
        else:
            problem = case.problem
        for path in chosen:
            adapter: Adapter = backend.adapter
            level = next((lv for lv in caps.levels_of(path) if lv.name == case.cell.level and want_device == "cpu"), None)
            if level is not None:
                adapter = AtLevel(backend.adapter, backend.spec.target, level)
            elif case.cell.level is not None:
                print(
                    f"note: recorded at dispatch level {case.cell.level}, which {caps.name} does not offer "
                    f"for {path} on this CPU: replayed at the native level",
                    file=out,
                )
            cell = Cell(caps.name, path, want_dtype, want_device, None if level is None else level.name)
            _compare_dispatch(case, adapter, path, out)
            try:
                output = adapter.compute(problem.network, problem.batch, dtype=want_dtype, path=path, device=want_device)
            except Exception as exc:  # the adapter is the code on trial: what it raises is its verdict
                print(f"FAIL {cell.id}: the adapter raised {type(exc).__name__}: {exc}", file=out)
                status = max(status, FAILED)
                continue
            try:
                if case.fidelity:
                    verdict = fidelity.judge(case.fidelity[0], cell.id, problem, output, caps.precision(want_dtype, path))
                else:
                    verdict = judge(
                        cell.id, problem, output, caps.precision(want_dtype, path), partial_sums=caps.partial_sums(path, problem.batch)
                    )
            except VacuousBound as exc:
                print(f"error: {cell.id}: this case cannot be judged in {want_dtype}: {exc}", file=err)
                status = max(status, USAGE)
                continue
            print(("PASS " if verdict.passed else "FAIL ") + verdict.message(), file=out)
            status = max(status, PASSED if verdict.passed else FAILED)
    return status


def _compare_dispatch(case: cases.Case, adapter: Adapter, path: str, out: TextIO) -> None:
    """Print what differs between the case's recorded dispatch configuration and the one this replay runs with."""
    if not case.dispatch:
        return
    try:
        current = {**dispatch.machine(), **adapter.dispatch(path)}
    except Exception as exc:  # the replay itself meets the same error and reports it as the verdict
        print(f"note: the current dispatch configuration is unknown ({type(exc).__name__}: {exc})", file=out)
        return
    differences = dispatch.differences(case.dispatch, current)
    if differences:
        print("note: the dispatch configuration differs from the recorded one (other kernels may run): " + "; ".join(differences), file=out)
    else:
        print(
            "dispatch configuration as recorded: " + dispatch.describe({k: v for k, v in current.items() if k in case.dispatch}), file=out
        )
