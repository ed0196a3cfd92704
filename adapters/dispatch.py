"""What picks the kernels a computation runs on this CPU: the dispatch configuration, and the levels a run can force.

Every framework the suite tests chooses its CPU kernels at run time, from the CPU it finds: torch through ATen's CPU
capability (``ATEN_CPU_CAPABILITY``: default, avx2, avx512), TensorFlow by turning its oneDNN operations on or off
(``TF_ENABLE_ONEDNN_OPTS``; on by default on x86 CPUs with AVX-512 VNNI or BF16), JAX through the ISA XLA compiles
for (``--xla_cpu_max_isa``), and numpy, which computes the reference, through OpenBLAS' core type and its own SIMD
dispatch. Two machines running the same versions therefore run different code, and a verdict checked on one kind of
CPU says little about another. This module is how the suite knows, and chooses, which code ran:

* :func:`machine` records the CPU (model and the features that select kernels) and numpy's BLAS, core type and SIMD
  targets, once per process, without importing any framework;
* a :class:`Level` is one configuration a framework can be forced into by its environment, set before the framework
  is imported; each built-in adapter declares the levels of each path this CPU can run
  (:attr:`~backprop_conformance.adapters.base.Capabilities.levels`, built from :func:`aten_levels`,
  :func:`onednn_levels` and :func:`xla_levels`), and reports the configuration its framework actually runs with
  (:meth:`~backprop_conformance.adapters.base.Adapter.dispatch`, in the keys of :data:`FRAMEWORK_KEYS`);
* :mod:`~backprop_conformance.adapters.at_level` runs an adapter at a level: in a worker process of its own whose
  environment forces it, since each of these settings is read once, when the framework starts.

A configuration is a flat mapping of dotted keys to strings (``{"tensorflow.onednn": "on"}``), so that reports,
case files and known-defect conditions share one vocabulary (``docs/backends.md``, "Dispatch levels").
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

KERNEL_FEATURES: tuple[str, ...] = (
    # x86: the vector extensions and the matrix/low-precision instructions that frameworks dispatch on
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512cd",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    # Arm
    "asimd",
    "asimdhp",
    "sve",
    "sve2",
    "bf16",
    "i8mm",
    "sme",
)
"""The CPU features that decide which kernels the frameworks and numpy pick, as ``/proc/cpuinfo`` spells them. The
rest of the flags (virtualisation, security mitigations, ...) change nothing a verdict depends on, and recording them
would make two identical configurations look different."""

MACHINE_KEYS: tuple[str, ...] = ("cpu.model", "cpu.architecture", "cpu.features", "numpy.blas", "numpy.blas_core", "numpy.simd")
"""The keys of :func:`machine`: the same for every cell of a run."""

FRAMEWORK_KEYS: dict[str, str] = {
    "torch.cpu_capability": "ATen's CPU capability, torch.backends.cpu.get_cpu_capability() in lower case",
    "tensorflow.onednn": "whether TensorFlow's oneDNN operations are on (on, off)",
    "xla.cpu_isa": "the newest ISA XLA:CPU compiles for: the host's, capped by --xla_cpu_max_isa (lower case)",
}
"""The configuration keys the built-in adapters report (:meth:`~backprop_conformance.adapters.base.Adapter.dispatch`)
and their levels set; a plug-in may report keys of its own."""

UNKNOWN = "unknown"


@dataclass(frozen=True)
class Level:
    """One dispatch configuration a framework can be forced into, before it is imported.

    ``name`` becomes part of cell ids and case-file names (``torch-eager-float32-aten-avx2``); ``environment`` is
    what a worker process is started with to force it (on top of the run's own environment); ``setting`` is the
    configuration it forces, in the keys of :data:`FRAMEWORK_KEYS`, which is what the adapter's
    :meth:`~backprop_conformance.adapters.base.Adapter.dispatch` reports once it runs there.
    """

    name: str
    environment: Mapping[str, str]
    setting: Mapping[str, str]
    summary: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "environment", dict(self.environment))
        object.__setattr__(self, "setting", dict(self.setting))


@dataclass(frozen=True)
class Cpu:
    """The CPU as the frameworks see it: model, architecture, and the features among :data:`KERNEL_FEATURES` it has."""

    model: str
    architecture: str
    features: frozenset[str] = field(default_factory=frozenset)

    def has(self, *features: str) -> bool:
        return all(f in self.features for f in features)


def parse_cpuinfo(text: str, architecture: str) -> Cpu:
    """A :class:`Cpu` from the text of ``/proc/cpuinfo`` (its first processor): x86's ``model name`` and ``flags``,
    Arm's ``Features`` (Arm kernels print no model name: the implementer and part numbers stand in for it)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu model") or ""
    if not model and "cpu implementer" in fields:
        model = f"implementer {fields['cpu implementer']}, part {fields.get('cpu part', '?')}"
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    return Cpu(model or UNKNOWN, architecture, frozenset(flags & set(KERNEL_FEATURES)))


@functools.cache
def cpu() -> Cpu:
    """This machine's CPU: ``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS, the platform module elsewhere."""
    architecture = platform.machine().lower() or UNKNOWN
    if architecture == "amd64":
        architecture = "x86_64"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        with contextlib.suppress(OSError, UnicodeDecodeError):
            return parse_cpuinfo(cpuinfo.read_text(encoding="utf-8", errors="replace"), architecture)
    if platform.system() == "Darwin":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            brand = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5, check=False)
            return Cpu(brand.stdout.strip() or UNKNOWN, architecture)
    return Cpu(platform.processor() or UNKNOWN, architecture)


def _openblas_core(library_name: str) -> str:
    """The core type OpenBLAS picked at load (``SkylakeX``, ``Haswell``, ...), asked of the loaded library itself.

    numpy's wheels carry OpenBLAS with a symbol prefix and suffix (``scipy_openblas_get_corename64_``); both
    spellings are tried. Unknown where the library cannot be found in this process's maps (not Linux, not OpenBLAS).
    """
    maps = Path("/proc/self/maps")
    if "openblas" not in library_name.lower() or not maps.is_file():
        return UNKNOWN
    try:
        loaded = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", maps.read_text())))
    except OSError:
        return UNKNOWN
    for path in loaded:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_", ""):
            for suffix in ("64_", ""):
                function = getattr(library, f"{prefix}openblas_get_corename{suffix}", None)
                if function is not None:
                    function.restype = ctypes.c_char_p
                    name = function()
                    return name.decode(errors="replace") if name else UNKNOWN
    return UNKNOWN


@functools.cache
def machine() -> dict[str, str]:
    """The part of the dispatch configuration every cell shares: the CPU, and what numpy (the reference) runs on it.

    numpy's BLAS is the library it was built against (name and version); its core type is the kernel set OpenBLAS
    chose for this CPU at load (``OPENBLAS_CORETYPE`` overrides it); its SIMD targets are the dispatch targets of
    numpy's own loops this CPU supports (``NPY_DISABLE_CPU_FEATURES`` removes some).
    """
    host = cpu()
    blas, simd = UNKNOWN, UNKNOWN
    with contextlib.suppress(Exception):  # show_config's layout is numpy's to change; a record is never worth a crash
        config: dict[str, Any] = np.show_config(mode="dicts")  # type: ignore[func-returns-value]
        info = config.get("Build Dependencies", {}).get("blas", {})
        blas = " ".join(str(info[k]) for k in ("name", "version") if info.get(k)) or UNKNOWN
        found = config.get("SIMD Extensions", {}).get("found", [])
        simd = " ".join(found) if found else "baseline only"
    return {
        "cpu.model": host.model,
        "cpu.architecture": host.architecture,
        "cpu.features": " ".join(sorted(host.features)) or "none recognised",
        "numpy.blas": blas,
        "numpy.blas_core": _openblas_core(blas),
        "numpy.simd": simd,
    }


def configuration(adapter: Any, path: str) -> dict[str, str]:
    """The whole configuration a cell of ``adapter``'s ``path`` runs with: the machine's, and what the adapter's
    framework reports (``adapter.dispatch(path)``), asked in the process that computes.

    An adapter that cannot answer (its framework fails to start) gets the machine's part and, under
    ``dispatch.error``, why the rest is missing: the cell's own requests meet the same error, where it belongs.
    """
    try:
        reported = {str(k): str(v) for k, v in dict(adapter.dispatch(path)).items()}
    except Exception as exc:  # the adapter is on trial: what it raises is recorded, never a crash of the run
        reported = {"dispatch.error": f"the adapter's dispatch() raised {type(exc).__name__}: {str(exc)[:300]}"}
    return {**machine(), **reported}


def describe(configuration: Mapping[str, str]) -> str:
    """A configuration on one line, ``key value; key value``, in the order given."""
    return "; ".join(f"{key} {value}" for key, value in configuration.items())


def differences(recorded: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """One phrase per key whose value differs between two configurations (a key missing from one counts as differing
    only when the other has it), e.g. ``tensorflow.onednn: recorded on, now off``."""
    return [
        f"{key}: recorded {recorded.get(key, 'nothing')}, now {current.get(key, 'nothing')}"
        for key in dict.fromkeys([*recorded, *current])
        if key in recorded and key in current and recorded[key] != current[key]
    ]


# The levels of each framework, for this CPU.


def aten_levels(host: Cpu | None = None) -> tuple[Level, ...]:
    """torch's CPU capabilities this CPU can run, oldest first: ATen's ``default`` (no vector extension), ``avx2``
    (AVX2 and FMA) and ``avx512`` (AVX-512 F, BW, DQ and VL), as ATen checks them before honouring
    ``ATEN_CPU_CAPABILITY``. x86 only: elsewhere ATen's ladder is another one, and only the native level is offered."""
    host = host or cpu()
    if host.architecture != "x86_64":
        return ()
    ladder = (("default", ()), ("avx2", ("avx2", "fma")), ("avx512", ("avx512f", "avx512bw", "avx512dq", "avx512vl", "fma")))
    return tuple(
        Level(
            f"aten-{capability}",
            {"ATEN_CPU_CAPABILITY": capability},
            {"torch.cpu_capability": capability},
            f"torch with ATen's {capability} kernels",
        )
        for capability, needs in ladder
        if host.has(*needs)
    )


def onednn_levels(host: Cpu | None = None) -> tuple[Level, ...]:
    """TensorFlow with its oneDNN operations forced on and forced off (``TF_ENABLE_ONEDNN_OPTS``), on the platforms
    TensorFlow's wheels build oneDNN for (x86-64 and AArch64)."""
    host = host or cpu()
    if host.architecture not in ("x86_64", "aarch64", "arm64"):
        return ()
    return tuple(
        Level(f"onednn-{state}", {"TF_ENABLE_ONEDNN_OPTS": flag}, {"tensorflow.onednn": state}, f"TensorFlow with oneDNN {state}")
        for state, flag in (("on", "1"), ("off", "0"))
    )


XLA_ISAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SSE4_2", ("sse4_2",)),
    ("AVX", ("avx",)),
    ("AVX2", ("avx2", "fma")),
    ("AVX512", ("avx512f", "avx512bw", "avx512dq", "avx512vl")),
    ("AVX512_VNNI", ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni")),
    ("AVX512_BF16", ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16")),
    ("AMX", ("amx_tile", "amx_bf16", "amx_int8")),
    ("AMX_FP16", ("amx_tile", "amx_bf16", "amx_int8", "amx_fp16")),
)
"""The values ``--xla_cpu_max_isa`` takes (XLA's own list, oldest first) and the CPU features each needs."""

MAX_ISA_FLAG = re.compile(r"--xla_cpu_max_isa=(\S*)")


def xla_host_isa(host: Cpu | None = None) -> str | None:
    """The newest of :data:`XLA_ISAS` this CPU supports (None off x86)."""
    host = host or cpu()
    if host.architecture != "x86_64":
        return None
    supported = [isa for isa, needs in XLA_ISAS if host.has(*needs)]
    return supported[-1] if supported else None


def xla_isa(xla_flags: str, host: Cpu | None = None) -> str:
    """The ISA XLA:CPU compiles for under ``xla_flags``: the host's newest, capped by ``--xla_cpu_max_isa`` if given."""
    newest = xla_host_isa(host)
    if newest is None:
        return "native"
    cap = MAX_ISA_FLAG.findall(xla_flags)
    names = [isa for isa, _ in XLA_ISAS]
    if cap and cap[-1].upper() in names:
        newest = names[min(names.index(cap[-1].upper()), names.index(newest))]
    return newest.lower()


def xla_levels(host: Cpu | None = None, xla_flags: str | None = None) -> tuple[Level, ...]:
    """XLA:CPU capped at each ISA this CPU supports (``--xla_cpu_max_isa``, added to the run's own ``XLA_FLAGS``).

    XLA offers the cap on x86 only; elsewhere only the native level is offered.
    """
    host = host or cpu()
    if host.architecture != "x86_64":
        return ()
    base = MAX_ISA_FLAG.sub("", os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags).strip()
    return tuple(
        Level(
            f"xla-{isa.lower()}",
            {"XLA_FLAGS": f"{base} --xla_cpu_max_isa={isa}".strip()},
            {"xla.cpu_isa": isa.lower()},
            f"XLA:CPU compiling for {isa} at most",
        )
        for isa, needs in XLA_ISAS
        if host.has(*needs)
    )


# What each framework reports, asked in the process that runs it (the framework is imported there already).


def torch_configuration() -> dict[str, str]:
    """ATen's CPU capability as torch reports it (``torch.backends.cpu.get_cpu_capability()``)."""
    import torch

    return {"torch.cpu_capability": str(torch.backends.cpu.get_cpu_capability()).lower()}


def tensorflow_configuration() -> dict[str, str]:
    """Whether TensorFlow turned its oneDNN operations on, as TensorFlow itself decided it (``IsMklEnabled``).

    TensorFlow decides once, at start-up, from ``TF_ENABLE_ONEDNN_OPTS`` or, unset, from the CPU (on by default on x86
    CPUs with AVX-512 VNNI or BF16 or AMX); its start-up log line "oneDNN custom operations are on" says the same.
    """
    from tensorflow.python.util import _pywrap_util_port

    return {"tensorflow.onednn": "on" if _pywrap_util_port.IsMklEnabled() else "off"}


def xla_configuration() -> dict[str, str]:
    """The ISA XLA:CPU compiles for in this process: the host's newest, capped by ``XLA_FLAGS``' ``--xla_cpu_max_isa``.

    XLA reads ``XLA_FLAGS`` once, when its first backend starts, and reports no target of its own; the flags this
    process started with are the ones it read.
    """
    return {"xla.cpu_isa": xla_isa(os.environ.get("XLA_FLAGS", ""))}
