"""The cell table (:mod:`backprop_conformance.conformance.cells`): which (backend, path, dtype, device) combinations a run tests.

Built from fake :class:`backprop_conformance.adapters.base.Capabilities`, so that the table's rules are checked apart from
any framework: default paths run unless paths are named (opt-in ones only when named), filters keep
only what a backend offers, a name nobody offers is an error listing the valid ones, and a backend
that cannot load stays in the run as a skip instead of vanishing. A requested backend the options
leave without a cell is reported by a real run too (header, matrix, report), and fails it under
``--conformance-require``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_usage_error, suite
from hypothesis import given, settings
from hypothesis import strategies as st
from mutants import ManualBackprop

from backprop_conformance.adapters.base import Adapter, AdapterOutput, Capabilities, CapabilitiesError
from backprop_conformance.adapters.registry import AdapterSpec, UnknownAdapter
from backprop_conformance.conformance.cells import Backend, Cell, SelectionError, load_backends, select_cells
from backprop_conformance.reference.dtypes import FORMATS
from backprop_conformance.reference.model import Batch, Network

TORCHLIKE = Capabilities(
    name="torch",
    framework="PyTorch",
    version="0",
    dtypes=("float64", "float32", "float16", "bfloat16"),
    paths=("eager", "func", "compile"),
    default_paths=("eager", "func"),
    devices=("cpu", "cuda"),
)
JAXLIKE = Capabilities(
    name="jax", framework="JAX", version="0", dtypes=("float64", "float32"), paths=("eager", "jit"), default_paths=("eager", "jit")
)


class NeedsMissingFramework(ManualBackprop):
    """A correct adapter whose framework is missing: loading it must report the skip, not import or run it."""

    requires = ("no_such_framework_for_cells_tests",)


class Declares(Adapter):
    """An adapter that only declares capabilities: the table needs nothing else."""

    def __init__(self, caps: Capabilities) -> None:
        self.declared = caps

    def capabilities(self) -> Capabilities:
        return self.declared

    def load_parameters(self, network: Network, *, dtype: str, device: str = "cpu") -> Network:
        raise AssertionError("the table never runs an adapter")

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        raise AssertionError("the table never runs an adapter")


def backend(caps: Capabilities) -> Backend:
    return Backend(AdapterSpec(caps.name, f"fake:{caps.name}", "test"), Declares(caps))


def unavailable(name: str) -> Backend:
    return Backend(AdapterSpec(name, f"fake:{name}", "test", ("missing",)), unavailable=f"skipped: missing not installed ({name})")


def select(*args: object, **kwargs: object) -> list[Cell]:
    """The cells alone (the backends left without one are tested apart)."""
    cells, _ = select_cells(*args, **kwargs)  # type: ignore[arg-type]
    return cells


def ids(cells: Sequence[Cell]) -> list[str]:
    return [c.id for c in cells]


def test_cell_ids() -> None:
    assert Cell("torch", "eager", "float32").id == "torch-eager-float32"
    assert Cell("torch", "eager", "float32", "cpu").id == "torch-eager-float32", "cpu is the default and is left out of the id"
    assert Cell("jax", "jit", "bfloat16", "gpu").id == "jax-jit-bfloat16-gpu"


def test_default_paths_every_dtype_on_cpu() -> None:
    assert ids(select([backend(TORCHLIKE)])) == [
        "torch-eager-float64",
        "torch-eager-float32",
        "torch-eager-float16",
        "torch-eager-bfloat16",
        "torch-func-float64",
        "torch-func-float32",
        "torch-func-float16",
        "torch-func-bfloat16",
    ]


def test_mixed_precision_policies_opt_in_and_only_on_paths_in_one_piece() -> None:
    mixed = dataclasses.replace(
        TORCHLIKE,
        dtypes=("float32", "mixed-bfloat16"),
        paths=("eager", "ddp"),
        default_paths=("eager",),
        devices=("cpu",),
        policies={"mixed-bfloat16": {"dot": "float32"}},
        default_dtypes=("float32",),
        ranks={"ddp": 2},
    )
    assert ids(select([backend(mixed)])) == ["torch-eager-float32"]
    assert ids(select([backend(mixed)], dtypes=["mixed-bfloat16"], all_paths=True)) == ["torch-eager-mixed-bfloat16"]
    with pytest.raises(CapabilitiesError, match=r"default dtype 'float16' is not among its dtypes"):
        dataclasses.replace(mixed, default_dtypes=("float16",))


def test_opt_in_path_only_when_named() -> None:
    assert ids(select([backend(TORCHLIKE)], paths=["compile"], dtypes=["float32"])) == ["torch-compile-float32"]


def test_filters_apply_to_each_backend_that_offers_the_name() -> None:
    """--conformance-path jit selects jax's jit cells and no torch cells (torch has no jit): the union of offers, not an error."""
    cells = select([backend(TORCHLIKE), backend(JAXLIKE)], paths=["jit", "eager"], dtypes=["float16", "float64"])
    assert ids(cells) == ["torch-eager-float64", "torch-eager-float16", "jax-eager-float64", "jax-jit-float64"]


def test_device_filter_and_suffix() -> None:
    cells = select([backend(TORCHLIKE), backend(JAXLIKE)], paths=["eager"], dtypes=["float32"], devices=["cpu", "cuda"])
    assert ids(cells) == ["torch-eager-float32", "torch-eager-float32-cuda", "jax-eager-float32"]


def test_dtypes_declared_per_device_select_only_those_cells() -> None:
    """float64 on the CPU only: the cuda cells of float64 are not in the table, every other combination is."""
    caps = Capabilities(
        name="torch",
        framework="PyTorch",
        version="0",
        dtypes=("float64", "float32"),
        paths=("eager",),
        default_paths=("eager",),
        devices=("cpu", "cuda"),
        device_dtypes={"cuda": ("float32",)},
    )
    cells = select([backend(caps)], devices=["cpu", "cuda"])
    assert ids(cells) == ["torch-eager-float64", "torch-eager-float32", "torch-eager-float32-cuda"]
    assert caps.dtypes_on("cuda") == ("float32",) and caps.dtypes_on("cpu") == ("float64", "float32")


@pytest.mark.parametrize(
    ("attribute", "declared", "wanted"),
    [
        ("device_dtypes", {"tpu": ("float32",)}, "device_dtypes names device 'tpu', which is not among its devices ['cpu', 'cuda']"),
        ("device_dtypes", {"cuda": ("float16",)}, "device_dtypes['cuda'] names 'float16', not among its dtypes ['float64', 'float32']"),
        ("device_dtypes", {"cuda": ()}, "device_dtypes['cuda']"),
        ("device_dtypes", ["cuda"], "device_dtypes must be a mapping from device to dtypes, got list"),
        ("path_dtypes", {"jit": ("float32",)}, "path_dtypes names path 'jit', which is not among its paths ['p']"),
        ("path_dtypes", {"p": ("float16",)}, "path_dtypes['p'] names 'float16', not among its dtypes ['float64', 'float32']"),
        ("path_dtypes", "p", "path_dtypes must be a mapping from path to dtypes, got str"),
    ],
)
def test_dtypes_per_device_and_per_path_are_checked_at_load(attribute: str, declared: object, wanted: str) -> None:
    from backprop_conformance.adapters.base import CapabilitiesError

    with pytest.raises(CapabilitiesError, match=re.escape(wanted)):
        Capabilities(
            name="x",
            framework="X",
            version="0",
            dtypes=("float64", "float32"),
            paths=("p",),
            default_paths=("p",),
            devices=("cpu", "cuda"),
            **{attribute: declared},  # type: ignore[arg-type]
        )


@pytest.mark.parametrize(
    ("changes", "device", "wanted"),
    [
        ({"devices": ("cpu", "cuda"), "device_dtypes": {"cuda": ("float32",)}}, "cuda", "is not supported on 'cuda'; there: float32"),
        ({"path_dtypes": {"manual": ("float32",)}}, "cpu", "is not supported on path 'manual'; there: float32"),
    ],
    ids=["device", "path"],
)
def test_a_request_for_a_dtype_its_device_or_path_lacks_is_refused(changes: dict[str, object], device: str, wanted: str) -> None:
    from backprop_conformance.adapters.base import RequestError

    class Float32There(ManualBackprop):
        def capabilities(self) -> Capabilities:
            return dataclasses.replace(super().capabilities(), **changes)  # type: ignore[arg-type]

    network = Network.from_lists([np.ones((1, 1))], [np.zeros(1)])
    with pytest.raises(RequestError, match=re.escape(f"dtype 'float64' {wanted}")):
        Float32There().check_request(network, None, dtype="float64", path=caps_path(), device=device)


def caps_path() -> str:
    return ManualBackprop().caps.default_paths[0]


@pytest.mark.parametrize(
    ("kwargs", "wanted"),
    [
        ({"paths": ["jitt"]}, "unknown --conformance-path 'jitt'; the selected backends offer compile, eager, func, jit"),
        (
            {"dtypes": ["float8", "float32"]},
            "unknown --conformance-dtype 'float8'; the selected backends offer bfloat16, float16, float32, float64",
        ),
        ({"devices": ["tpu"]}, "unknown --conformance-device 'tpu'; the selected backends offer cpu, cuda"),
    ],
    ids=["path", "dtype", "device"],
)
def test_unknown_name_lists_the_valid_ones(kwargs: dict[str, list[str]], wanted: str) -> None:
    with pytest.raises(SelectionError) as raised:
        select([backend(TORCHLIKE), backend(JAXLIKE)], **kwargs)
    assert str(raised.value) == wanted


def test_unavailable_backends_give_no_cells_but_dtypes_are_still_checked() -> None:
    assert select([unavailable("torch"), backend(JAXLIKE)]) == select([backend(JAXLIKE)])
    assert select([unavailable("torch")], dtypes=["float16"]) == []
    with pytest.raises(
        SelectionError, match="unknown --conformance-dtype 'half'; the selected backends offer float64, float32, float16, bfloat16"
    ):
        select([unavailable("torch")], dtypes=["half"])


NAMES = st.sampled_from(["eager", "jit", "func", "compile", "graph"])


@st.composite
def capabilities(draw: st.DrawFn, name: str) -> Capabilities:
    paths = tuple(draw(st.lists(NAMES, min_size=1, max_size=4, unique=True)))
    return Capabilities(
        name=name,
        framework=name,
        version="0",
        dtypes=tuple(draw(st.lists(st.sampled_from(list(FORMATS)), min_size=1, max_size=4, unique=True))),
        paths=paths,
        default_paths=tuple(draw(st.lists(st.sampled_from(paths), max_size=len(paths), unique=True))),
        devices=tuple(draw(st.lists(st.sampled_from(["cpu", "cuda", "gpu"]), min_size=1, max_size=3, unique=True))),
    )


@settings(max_examples=200, deadline=None)
@given(
    caps=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True).flatmap(
        lambda names: st.tuples(*(capabilities(n) for n in names))
    ),
    paths=st.lists(NAMES, max_size=3, unique=True),
    dtypes=st.lists(st.sampled_from(list(FORMATS)), max_size=3, unique=True),
    devices=st.lists(st.sampled_from(["cpu", "cuda", "gpu"]), min_size=1, max_size=3, unique=True),
)
def test_table_is_exactly_what_is_offered_and_asked_for(
    caps: tuple[Capabilities, ...], paths: list[str], dtypes: list[str], devices: list[str]
) -> None:
    """Membership, stated apart from the implementation: a combination is a cell iff its backend offers it and the filters allow it."""
    backends = [backend(c) for c in caps]
    offered = {
        "path": {p for c in caps for p in c.paths},
        "dtype": {d for c in caps for d in c.dtypes},
        "device": {d for c in caps for d in c.devices},
    }
    asked = {"path": paths, "dtype": dtypes, "device": devices}
    unknown = {kind: [n for n in names if n not in offered[kind]] for kind, names in asked.items()}
    if any(unknown.values()):
        with pytest.raises(SelectionError) as raised:
            select(backends, paths, dtypes, devices)
        kind = next(k for k in ("path", "dtype", "device") if unknown[k])
        assert f"unknown --conformance-{kind} " in str(raised.value) and repr(unknown[kind][0]) in str(raised.value)
        return
    cells = select(backends, paths, dtypes, devices)
    assert len(set(cells)) == len(cells), "a cell appears twice"
    expected = {
        Cell(c.name, p, d, dev)
        for c in caps
        for p in (c.paths if paths else c.default_paths)
        for d in c.dtypes
        for dev in c.devices
        if (not paths or p in paths) and (not dtypes or d in dtypes) and dev in devices
    }
    assert set(cells) == expected


def test_load_backends_resolves_deduplicates_and_keeps_the_unavailable() -> None:
    loaded = load_backends(["mutants:ManualBackprop", "mutants:ManualBackprop", "test_cells:NeedsMissingFramework"])
    assert [b.spec.name for b in loaded] == ["ManualBackprop", "NeedsMissingFramework"]
    ok, missing = loaded
    assert ok.capabilities is not None and ok.capabilities.name == "ok-stable" and ok.unavailable is None
    assert missing.capabilities is None and missing.adapter is None
    assert missing.unavailable == "skipped: no_such_framework_for_cells_tests not installed (needed by adapter 'NeedsMissingFramework')"
    assert ids(select(loaded)) == ["ok-stable-manual-float64", "ok-stable-manual-float32"]


def test_load_backends_rejects_an_unknown_name() -> None:
    with pytest.raises(UnknownAdapter, match=r"unknown adapter 'pytorch'; known adapters are .*flax, jax, keras, mlx, tensorflow, torch"):
        load_backends(["pytorch"])


def test_a_backend_left_without_a_cell_is_named_with_the_reason() -> None:
    """--conformance-path jit beside a torch-like backend: torch gets no cell, and the run must be told so, not lose it silently."""
    cells, empty = select_cells([backend(TORCHLIKE), backend(JAXLIKE)], paths=["jit"])
    assert ids(cells) == ["jax-jit-float64", "jax-jit-float32"]
    assert list(empty) == ["torch"] and "offers paths eager, func, compile" in empty["torch"]
    assert select_cells([backend(JAXLIKE)], paths=["jit"])[1] == {}


# In a real run.

NO_CELL_ARGS = (
    "--conformance-backend",
    "tests.mutants:ManualBackprop",
    "--conformance-backend",
    "tests.reference_adapters:ReferenceAdapter",
    "--conformance-path",
    "manual",
    "--conformance-max-examples=3",
)
NO_CELL_NOTE = "reference-as-adapter: no cell selected: it offers paths vectorized (default vectorized)"


def test_a_backend_left_without_cells_is_reported(tmp_path: Path) -> None:
    """A requested backend must never vanish from a run unnoticed: the header, the matrix and the report say why it has no cell."""
    run = suite(tmp_path, *NO_CELL_ARGS)
    assert run.returncode == 0 and run.report is not None, run.explain()
    header, matrix = run.output.split("collected", 1)
    assert f"  note: {NO_CELL_NOTE}" in header, header
    assert f"note: {NO_CELL_NOTE}" in matrix.split("conformance matrix", 1)[1], run.explain()
    assert any(note.startswith(NO_CELL_NOTE) for note in run.report.notes), run.report.notes
    assert {b.name for b in run.report.backends} == {"ok-stable", "reference-as-adapter"}


def test_a_backend_left_without_cells_fails_a_required_run(tmp_path: Path) -> None:
    """Under --conformance-require, a backend that tests nothing is as much a failure as one that is not installed."""
    run = suite(tmp_path, *NO_CELL_ARGS, "--conformance-require")
    assert_usage_error(run, f"--conformance-require: {NO_CELL_NOTE}")


def test_a_path_that_runs_some_dtypes_gets_cells_for_those_only() -> None:
    caps = Capabilities(
        name="torch",
        framework="PyTorch",
        version="0",
        dtypes=("float32", "float16"),
        paths=("eager", "grad-scaler"),
        default_paths=("eager", "grad-scaler"),
        path_dtypes={"grad-scaler": ("float32",)},
    )
    cells = select([backend(caps)])
    assert ids(cells) == ["torch-eager-float32", "torch-eager-float16", "torch-grad-scaler-float32"]
    assert caps.dtypes_of_path("grad-scaler") == ("float32",) and caps.dtypes_of_path("eager") == ("float32", "float16")
