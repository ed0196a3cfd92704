"""Dispatch configurations and levels (adapters/dispatch.py, adapters/at_level.py, and their use by the suite).

A verdict must hold on every CPU, and a failure must say which kernels produced it. These tests check that the
machine's configuration is read correctly from what the CPU and numpy report; that each framework's ladder of
levels offers exactly what the CPU can run; that a level's environment reaches the process that computes (and only
that one); that cells, reports, case files, baselines and replays carry the configuration; and that a known defect
limited to a configuration is expected exactly where that configuration ran, and nowhere else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import REPO_ROOT, replay_command, suite
from level_adapters import KEY, LEVELS, VARIABLE, Levelled

from backprop_conformance.adapters.at_level import AtLevel
from backprop_conformance.adapters.base import Capabilities, CapabilitiesError
from backprop_conformance.adapters.dispatch import (
    MACHINE_KEYS,
    Cpu,
    Level,
    aten_levels,
    describe,
    differences,
    machine,
    onednn_levels,
    parse_cpuinfo,
    xla_isa,
    xla_levels,
)
from backprop_conformance.conformance import cases, known_defects, report
from backprop_conformance.conformance.baseline import compare
from backprop_conformance.conformance.cells import Backend, Cell, SelectionError, select_cells
from backprop_conformance.conformance.fidelity import FIDELITY_TESTS
from backprop_conformance.conformance.problems import contract_problem

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 hypervisor

processor\t: 1
model name\t: something else entirely
flags\t\t: fpu
"""

ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp sve bf16 i8mm
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""

AVX2_ONLY = Cpu("Intel Haswell", "x86_64", frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"}))
AVX512 = Cpu("Intel Cascade Lake", "x86_64", frozenset({"sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"}))
ARM = Cpu("implementer 0x41, part 0xd40", "aarch64", frozenset({"asimd", "sve"}))


# --- the machine's configuration ------------------------------------------------------------------------------


def test_cpuinfo_gives_the_first_processors_model_and_only_the_features_that_select_kernels() -> None:
    cpu = parse_cpuinfo(X86_CPUINFO, "x86_64")
    assert cpu.model == "AMD EPYC 9R14"
    assert cpu.features == {
        "sse4_2",
        "avx",
        "f16c",
        "fma",
        "avx2",
        "avx512f",
        "avx512dq",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
        "avx512_bf16",
    }
    arm = parse_cpuinfo(ARM_CPUINFO, "aarch64")
    assert arm.model == "implementer 0x41, part 0xd40", "Arm kernels print no model name: the part number stands in"
    assert arm.features == {"asimd", "asimdhp", "sve", "bf16", "i8mm"}
    assert parse_cpuinfo("", "riscv64").model == "unknown"


def test_the_machines_record_has_every_key_as_a_string() -> None:
    record = machine()
    assert tuple(record) == MACHINE_KEYS
    assert all(isinstance(v, str) and v for v in record.values())
    assert record["cpu.architecture"] in ("x86_64", "aarch64", "arm64", os.uname().machine.lower())


def test_differences_name_each_key_whose_value_changed_and_ignore_keys_one_side_lacks() -> None:
    recorded = {"cpu.model": "A", "tensorflow.onednn": "on", "torch.cpu_capability": "avx512"}
    now = {"cpu.model": "A", "tensorflow.onednn": "off", "xla.cpu_isa": "avx2"}
    assert differences(recorded, now) == ["tensorflow.onednn: recorded on, now off"]
    assert describe({"a.b": "1", "c.d": "2"}) == "a.b 1; c.d 2"


# --- the levels of each framework ------------------------------------------------------------------------------


def test_aten_levels_are_the_capabilities_the_cpu_can_run() -> None:
    assert [lv.name for lv in aten_levels(AVX2_ONLY)] == ["aten-default", "aten-avx2"]
    assert [lv.name for lv in aten_levels(AVX512)] == ["aten-default", "aten-avx2", "aten-avx512"]
    assert aten_levels(ARM) == (), "ATen's ladder differs off x86: only the native level is offered"
    level = aten_levels(AVX512)[-1]
    assert level.environment == {"ATEN_CPU_CAPABILITY": "avx512"} and level.setting == {"torch.cpu_capability": "avx512"}


def test_onednn_levels_force_it_on_and_off() -> None:
    levels = onednn_levels(AVX2_ONLY)
    assert [(lv.name, lv.environment["TF_ENABLE_ONEDNN_OPTS"], lv.setting["tensorflow.onednn"]) for lv in levels] == [
        ("onednn-on", "1", "on"),
        ("onednn-off", "0", "off"),
    ]
    assert onednn_levels(Cpu("x", "ppc64le")) == ()


def test_xla_levels_cap_the_isa_and_keep_the_runs_own_flags() -> None:
    levels = xla_levels(AVX2_ONLY, xla_flags="--xla_force_host_platform_device_count=2 --xla_cpu_max_isa=AVX")
    assert [lv.name for lv in levels] == ["xla-sse4_2", "xla-avx", "xla-avx2"]
    assert levels[0].environment == {"XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_cpu_max_isa=SSE4_2"}
    assert all(lv.environment["XLA_FLAGS"].count("--xla_cpu_max_isa") == 1 for lv in levels), "the run's own cap is replaced"
    assert [lv.name for lv in xla_levels(AVX512, xla_flags="")][-1] == "xla-avx512"
    assert xla_levels(ARM, xla_flags="") == ()


def test_xla_isa_is_the_hosts_newest_capped_by_the_flag() -> None:
    assert xla_isa("", AVX512) == "avx512"
    assert xla_isa("--xla_cpu_max_isa=AVX2", AVX512) == "avx2"
    assert xla_isa("--xla_cpu_max_isa=AVX512_BF16", AVX2_ONLY) == "avx2", "a cap above the host changes nothing"
    assert xla_isa("--xla_cpu_max_isa=sse4_2", AVX2_ONLY) == "sse4_2", "XLA reads the flag case-insensitively"
    assert xla_isa("--xla_cpu_max_isa=BOGUS", AVX2_ONLY) == "avx2", "XLA ignores an ISA it does not know"
    assert xla_isa("", ARM) == "native"


def _caps(**changes: object) -> Capabilities:
    fields: dict[str, object] = dict(
        name="x", framework="X", version="1", dtypes=("float64",), paths=("eager", "jit"), default_paths=("eager",)
    )
    return Capabilities(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        ({"graph": LEVELS}, "not among its paths"),
        ({"eager": LEVELS[0]}, "must be a tuple"),
        ({"eager": (LEVELS[0], LEVELS[0])}, "lists a name twice"),
        ({"eager": (Level("native", {}, {"k": "v"}),)}, "is reserved"),
        ({"eager": (Level("all", {}, {"k": "v"}),)}, "is reserved"),
        ({"eager": (Level("a/b", {}, {"k": "v"}),)}, "file names"),
        ({"eager": (Level("empty", {"V": "1"}, {}),)}, "non-empty setting"),
        ("eager", "must be a mapping"),
    ],
)
def test_capabilities_refuse_levels_the_suite_could_not_run(levels: object, message: str) -> None:
    with pytest.raises(CapabilitiesError, match=message):
        _caps(levels=levels)


# --- cells ---------------------------------------------------------------------------------------------------


class _Loaded:
    def __init__(self, caps: Capabilities) -> None:
        self.caps = caps


def _backend(caps: Capabilities) -> Backend:
    return Backend(spec=None, adapter=_Loaded(caps))  # type: ignore[arg-type]


def test_a_level_ends_the_cell_id() -> None:
    assert Cell("torch", "eager", "float32").id == "torch-eager-float32"
    assert Cell("torch", "eager", "float32", level="aten-avx2").id == "torch-eager-float32-aten-avx2"
    assert Cell("torch", "eager", "float32", "cuda").id == "torch-eager-float32-cuda"


def test_levels_are_selected_per_path_native_by_default() -> None:
    backend = _backend(_caps(paths=("eager", "jit"), default_paths=("eager", "jit"), levels={"eager": LEVELS}))
    native, _ = select_cells([backend])
    assert [c.level for c in native] == [None, None]
    every, _ = select_cells([backend], levels=("all",))
    assert [(c.path, c.level) for c in every] == [("eager", "kernel-plain"), ("eager", "kernel-wide"), ("jit", None)], (
        "all: every declared level; a path that declares none runs natively"
    )
    both, _ = select_cells([backend], levels=("native", "kernel-wide"))
    assert [(c.path, c.level) for c in both] == [("eager", None), ("eager", "kernel-wide"), ("jit", None)]
    with pytest.raises(SelectionError, match=r"--conformance-dispatch 'kernel-narrow'.*native, all, kernel-plain, kernel-wide"):
        select_cells([backend], levels=("kernel-narrow",))


def test_levels_choose_cpu_kernels_so_other_devices_run_natively() -> None:
    backend = _backend(_caps(devices=("cpu", "cuda"), levels={"eager": LEVELS}))
    chosen, _ = select_cells([backend], devices=("cuda",), levels=("all",))
    assert [(c.device, c.level) for c in chosen] == [("cuda", None)]


# --- known defects limited to configurations -------------------------------------------------------------------

ENTRY = """
[[defect]]
backend = "levelled"
versions = "*"
tests = ["test_gradients"]
paths = ["*"]
dtypes = ["*"]
issue = "https://example.org/issues/1"
summary = "the wide kernel doubles the output bias gradient"
"""


def _load(tmp_path: Path, dispatch: str) -> list[known_defects.Defect]:
    path = tmp_path / "defects.toml"
    path.write_text(ENTRY + dispatch)
    return known_defects.load(path)


def test_an_entry_with_a_dispatch_table_matches_only_that_configuration(tmp_path: Path) -> None:
    (defect,) = _load(tmp_path, f'dispatch = {{ "{KEY}" = "wide", "cpu.features" = "avx2 fma" }}\n')
    args = ("test_gradients", "levelled", "1", "manual", "float64")
    wide = {KEY: "wide", "cpu.features": "avx avx2 f16c fma"}
    assert defect.matches(*args, configuration=wide)
    assert not defect.matches(*args, configuration={**wide, KEY: "plain"})
    assert not defect.matches(*args, configuration={**wide, "cpu.features": "avx avx2"}), "every listed feature must be present"
    assert not defect.matches(*args), "a configuration not known yet matches no entry limited to one"
    assert "where numpy-example.kernel is wide" in defect.reason


@pytest.mark.parametrize(
    ("dispatch", "message"),
    [
        ("dispatch = {}\n", "empty table"),
        ('dispatch = "on"\n', "must be a table"),
        (f'dispatch = {{ "{KEY}" = "" }}\n', "non-empty string"),
        (f'dispatch = {{ "{KEY}" = 1 }}\n', "non-empty string"),
    ],
)
def test_a_malformed_dispatch_table_is_an_error_naming_the_entry(tmp_path: Path, dispatch: str, message: str) -> None:
    with pytest.raises(known_defects.KnownDefectsError, match=f"defect #1.*{message}"):
        _load(tmp_path, dispatch)


@pytest.mark.parametrize(
    ("dispatch", "message"),
    [
        ('dispatch = { "tensorflow.onednn_ops" = "on" }\n', "not recorded by a run"),
        (f'dispatch = {{ "{KEY}" = "WIDE" }}\n', "not a value levelled's levels set; they set plain, wide"),
    ],
)
def test_a_dispatch_condition_that_could_never_match_is_an_error(tmp_path: Path, dispatch: str, message: str) -> None:
    defects = _load(tmp_path, dispatch)
    tests = {**dict.fromkeys(known_defects.CONFORMANCE_TESTS, ()), **FIDELITY_TESTS}
    with pytest.raises(known_defects.KnownDefectsError, match=message):
        known_defects.validate(defects, tests, {"levelled": Levelled().caps})


def test_the_suites_own_entries_limited_to_configurations_use_keys_the_built_ins_record() -> None:
    limited = [d for d in known_defects.load_all() if d.dispatch]
    assert limited, "the oneDNN and XLA entries are limited to their configurations"
    keys = {k for d in limited for k in d.dispatch}
    assert keys <= {"tensorflow.onednn", "xla.cpu_isa"}


# --- running at a level ----------------------------------------------------------------------------------------


def test_a_level_runs_the_adapter_in_a_worker_started_with_its_environment() -> None:
    native = Levelled()
    hosted = AtLevel(native, "level_adapters:Levelled", LEVELS[1])
    try:
        assert hosted.caps is native.caps, "a level changes the kernels, never the declaration"
        assert hosted.dispatch("manual") == {KEY: "wide"}
        assert native.dispatch("manual") == {KEY: os.environ.get(VARIABLE, "plain")}, "this process is untouched"
        problem = contract_problem("float64")
        output = hosted.compute(problem.network, problem.batch, dtype="float64", path="manual")
        assert output.cost == pytest.approx(float(problem.trace.cost))
    finally:
        hosted._worker.close()


def _suite(tmp_path: Path, *args: str) -> tuple[int, str, dict]:
    run = suite(tmp_path, "--conformance-max-examples", "5", *args)
    data = json.loads((tmp_path / "report.json").read_text()) if (tmp_path / "report.json").exists() else {}
    return run.returncode, run.output, data


def test_every_level_runs_as_a_cell_of_its_own_and_records_what_the_framework_reported(tmp_path: Path) -> None:
    status, output, data = _suite(tmp_path, "--conformance-backend", "tests.level_adapters:Levelled", "--conformance-dispatch", "all")
    assert status == 0, output
    cells = {c["id"]: c for c in data["cells"]}
    assert set(cells) == {"levelled-manual-float64-kernel-plain", "levelled-manual-float64-kernel-wide"}
    assert cells["levelled-manual-float64-kernel-wide"]["level"] == "kernel-wide"
    assert cells["levelled-manual-float64-kernel-wide"]["dispatch"][KEY] == "wide", "asked of the worker, which started wide"
    assert cells["levelled-manual-float64-kernel-plain"]["dispatch"][KEY] == "plain"
    assert data["dispatch"] == machine() and set(MACHINE_KEYS) <= set(cells["levelled-manual-float64-kernel-wide"]["dispatch"])
    assert "dispatch: numpy-example.kernel wide: levelled-manual-float64-kernel-wide" in output
    assert "cpu.model" in output.split("collected", 1)[0], "the header records the machine"


def test_a_defect_limited_to_a_configuration_is_expected_exactly_there(tmp_path: Path) -> None:
    """The bug exists at the wide level only: failed without an entry; with one limited to it, a strict xfail there and
    a plain pass at the plain level; with one limited to the plain level instead, a failure (and an XPASS there)."""
    backend = ["--conformance-backend", "tests.level_adapters:WideKernelBug", "--conformance-dispatch", "all"]
    status, output, data = _suite(tmp_path / "none", *backend)
    assert status == 1, output
    statuses = {c["id"]: c["status"] for c in data["cells"]}
    assert statuses == {"wide-kernel-bug-manual-float64-kernel-plain": "passed", "wide-kernel-bug-manual-float64-kernel-wide": "failed"}
    case = cases.read(Path(data["cells"][1]["case_files"][0]))
    assert case.cell.level == "kernel-wide" and case.dispatch[KEY] == "wide" and case.environment[VARIABLE] == "wide"

    for where, expected in (("wide", {"passed", "known defect"}), ("plain", {"failed"})):
        defects = tmp_path / f"{where}.toml"
        defects.write_text(ENTRY.replace('"levelled"', '"wide-kernel-bug"') + f'dispatch = {{ "{KEY}" = "{where}" }}\n')
        status, output, data = _suite(tmp_path / where, *backend, "--conformance-known-defects", str(defects))
        assert {c["status"] for c in data["cells"]} == expected, output
        assert status == (0 if where == "wide" else 1), output


def test_replay_runs_a_case_at_its_recorded_level_and_says_what_differs(tmp_path: Path) -> None:
    status, output, data = _suite(
        tmp_path, "--conformance-backend", "tests.level_adapters:WideKernelBug", "--conformance-dispatch", "kernel-wide"
    )
    assert status == 1, output
    path = Path(data["cells"][0]["case_files"][0])
    recorded = json.loads(path.read_text())
    assert recorded["schema"] == "backprop-conformance/case/4" and recorded["cell"]["level"] == "kernel-wide"
    replay = (str(path), "--backend", "tests.level_adapters:WideKernelBug")
    done = replay_command(*replay, cwd=REPO_ROOT, tmp=tmp_path)
    assert done.returncode == 1 and "FAIL wide-kernel-bug-manual-float64-kernel-wide" in done.stdout, done.stdout + done.stderr
    assert "dispatch configuration as recorded" in done.stdout
    recorded["dispatch"]["cpu.model"] = "a CPU of another kind"
    recorded["dispatch"][KEY] = "plain"
    path.write_text(json.dumps(recorded))
    done = replay_command(*replay, cwd=REPO_ROOT, tmp=tmp_path)
    assert "cpu.model: recorded a CPU of another kind, now" in done.stdout and f"{KEY}: recorded plain, now wide" in done.stdout


# --- reports and baselines -------------------------------------------------------------------------------------


def _report(dispatch: dict[str, str], cell_dispatch: dict[str, str]) -> report.Report:
    cell = report.CellResult("x-eager-float64", "x", "eager", "float64", status="passed", dispatch={**dispatch, **cell_dispatch})
    cell.add_example(0.1, 2, 0.5, False)
    return report.Report(cells=[cell], dispatch=dispatch)


def test_a_report_keeps_the_configuration_and_reads_one_written_before_it_was_recorded(tmp_path: Path) -> None:
    written = _report(machine(), {"torch.cpu_capability": "avx2"})
    written.cells[0].level = "aten-avx2"
    path = tmp_path / "r.json"
    report.write(written, path)
    back = report.read(path)
    assert back.dispatch == machine() and back.cells[0].dispatch["torch.cpu_capability"] == "avx2" and back.cells[0].level == "aten-avx2"
    data = json.loads(path.read_text())
    del data["dispatch"], data["cells"][0]["dispatch"], data["cells"][0]["level"]
    path.write_text(json.dumps(data))
    old = report.read(path)
    assert old.dispatch == {} and old.cells[0].dispatch == {} and old.cells[0].level is None
    data["cells"][0]["dispatch"] = {"torch.cpu_capability": 2}
    path.write_text(json.dumps(data))
    with pytest.raises(report.ReportError, match="object of strings"):
        report.read(path)


def test_a_baseline_comparison_says_where_the_configuration_differs() -> None:
    here = {**machine(), "cpu.model": "CPU A"}
    there = {**here, "cpu.model": "CPU B"}
    comparison = compare(_report(there, {"tensorflow.onednn": "off"}), _report(here, {"tensorflow.onednn": "on"}))
    assert (
        "dispatch configuration differs from the baseline's (other kernels ran): cpu.model: recorded CPU B, now CPU A" in comparison.notes
    )
    assert "x-eager-float64: dispatch differs from the baseline's: tensorflow.onednn: recorded off, now on" in comparison.notes
    assert not comparison.regressions, "other kernels are context for the comparison, not a regression"
    same = compare(_report(here, {"tensorflow.onednn": "on"}), _report(here, {"tensorflow.onednn": "on"}))
    assert not [n for n in same.notes if "dispatch" in n]
    unknown = compare(report.Report(cells=_report(here, {}).cells), _report(here, {}))
    assert any("records no dispatch configuration" in n for n in unknown.notes)
