"""The public accumulation probe (:mod:`backprop_conformance.conformance.accumulation_probe`).

It must tell in-format accumulation from wider accumulation through an adapter's own outputs, agree with what the
example plug-in and the built-ins declare, and run as ``backprop-conformance accumulation BACKEND``.
"""

from __future__ import annotations

import importlib.util
import io
from fractions import Fraction
from typing import ClassVar

import numpy as np
import pytest
from mutants import AccumulationInComputeFormat, ManualMixed

from backprop_conformance.adapters.base import OPERATIONS, Adapter, AdapterOutput, Capabilities
from backprop_conformance.adapters.example_numpy import NumpyAdapter
from backprop_conformance.conformance.__main__ import main as commands
from backprop_conformance.conformance.accumulation_probe import (
    Measurement,
    correctly_rounded,
    exact_dot,
    exact_sum,
    measure,
    measured_sums,
    policy_disagreements,
)
from backprop_conformance.reference.mixed_precision import MixedPolicy
from backprop_conformance.reference.model import Batch, Gradients, Network

EXAMPLE = "backprop_conformance.adapters.example_numpy:NumpyAdapter"


def test_exact_sums_are_exact_where_float64_products_are_not() -> None:
    p = np.array([[1.0 + 2.0**-52], [1.0]])
    q = np.array([[1.0 + 2.0**-52], [-1.0]])
    assert exact_dot(p, q) == [Fraction(2, 2**52) + Fraction(1, 2**104)]
    assert exact_sum(np.array([[2.0**60], [1.0], [-(2.0**60)]])) == [Fraction(1)]


def test_correctly_rounded_counts_a_match_with_any_candidate() -> None:
    exact = [Fraction(1) + Fraction(1, 2**12)]  # halfway between two float16 neighbours of 1: rounds to even, 1
    assert correctly_rounded("float16", [1.0], exact) == 1
    assert correctly_rounded("float16", [1.0 + 2.0**-10], exact) == 0
    assert correctly_rounded("float16", [1.0 + 2.0**-10], exact, [Fraction(1) + Fraction(1, 2**10)]) == 1


def test_the_numpy_example_measures_what_it_declares() -> None:
    """float16: numpy's matmul and whole-array sum accumulate in float32, its sum(axis=0) in float16 -- as declared."""
    adapter = NumpyAdapter()
    measured = {dtype: measure(adapter, "manual", dtype, trials=6).declaration() for dtype in adapter.caps.dtypes}
    assert measured == {"float64": {}, "float32": {}, "float16": {"dot": "float32", "cost_sum": "float32"}}
    assert measured["float16"] == adapter.caps.accumulation["float16"]


class SumsInFloat32(NumpyAdapter):
    """The example with every sum of float16 values done in float32 and rounded once: batch_sum too."""

    def capabilities(self) -> Capabilities:
        return Capabilities(
            name="f32-sums", framework="numpy", version="0", dtypes=("float16",), paths=("manual",), default_paths=("manual",)
        )

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        out = super().run(network, batch, dtype=dtype, path=path)
        bias = {l: d.astype(np.float32).sum(axis=0).astype(np.float16) for l, d in out.delta.items()}
        return AdapterOutput(Gradients(out.gradients.w, bias), out.cost, out.a, out.z, out.delta)


def test_a_wider_bias_sum_is_told_apart() -> None:
    assert measure(SumsInFloat32(), "manual", "float16", trials=6).declaration() == {
        "dot": "float32",
        "batch_sum": "float32",
        "cost_sum": "float32",
    }


class NoIntermediates(NumpyAdapter):
    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        out = super().run(network, batch, dtype=dtype, path=path)
        return AdapterOutput(out.gradients, out.cost)


def test_sums_an_adapter_gives_no_terms_for_are_not_measured_and_not_declared() -> None:
    m = measure(NoIntermediates(), "manual", "float16", trials=2)
    assert {name: t.missing for name, t in m.tallies.items()} == {
        "forward": "path 'manual' returns no z",
        "weight": "path 'manual' returns no δ",
        "bias": "path 'manual' returns no δ",
        "cost": "path 'manual' returns no a",
    }
    assert m.declaration() == {}


def test_the_command_prints_the_evidence_for_a_plug_in(capsys: pytest.CaptureFixture[str]) -> None:
    assert commands(["accumulation", EXAMPLE, "--dtype", "float16", "--trials", "3"]) == 0
    out = capsys.readouterr().out
    assert "accumulation of numpy-example" in out and "path manual" in out
    assert "float16   measured {'dot': 'float32', 'cost_sum': 'float32'}; declared {'dot': 'float32', 'cost_sum': 'float32'}" in out


def test_the_command_refuses_an_unknown_dtype_or_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert commands(["accumulation", EXAMPLE, "--dtype", "bfloat16"]) == 2
    assert "numpy-example has no dtype bfloat16; it offers float64, float32, float16" in capsys.readouterr().err
    assert commands(["accumulation", "no_such_module:Adapter"]) == 2


@pytest.mark.parametrize(("backend", "path"), [("jax", "vjp"), ("mlx", "value_and_grad"), ("flax", "jit"), ("torch", "eager")])
def test_built_ins_measure_what_they_declare(backend: str, path: str) -> None:
    """Each built-in's declaration for its half formats is what the probe measures through a path that returns every term."""
    from backprop_conformance.adapters.registry import BUILTIN

    if any(importlib.util.find_spec(name.partition(".")[0]) is None for name in BUILTIN[backend].requires):
        pytest.skip(f"{backend} not installed")
    adapter: Adapter = BUILTIN[backend].load()
    for dtype in ("float16", "bfloat16"):
        if dtype not in adapter.caps.dtypes:
            continue
        m = measure(adapter, path, dtype, trials=4)
        assert not m.error and not any(t.missing for t in m.tallies.values()), (m.error, m.tallies)
        declared = {op: fmt for op in OPERATIONS if (fmt := adapter.caps.accumulation_of(dtype, op)) != dtype}
        assert m.declaration() == declared, f"{backend} {dtype}: measured {m.declaration()}, declared {declared}"


def test_output_names_every_sum(capsys: pytest.CaptureFixture[str]) -> None:
    commands(["accumulation", EXAMPLE, "--dtype", "float16", "--trials", "1"])
    out = io.StringIO(capsys.readouterr().out).read()
    for heading in ("dot (z = w·a)", "dot (∂C/∂w = Σ δ·a)", "batch_sum (∂C/∂b = Σ δ)", "cost_sum (C = Σ ½a²)"):
        assert heading in out


class DeclaresBiasSumInBfloat16(ManualMixed):
    """Computes every sum in float32, as :class:`~mutants.ManualMixed` does, but declares the bias gradient's batch sum
    in bfloat16: a looser bound than its arithmetic earns."""

    name = "declares-bf16-batch-sum"
    declared: ClassVar[dict[str, str]] = {**ManualMixed.declared, "batch_sum": "bfloat16"}

    def computed(self, dtype: str) -> MixedPolicy:
        return MixedPolicy.of(dtype, **ManualMixed.declared)


def _policy_measurement(adapter: Adapter) -> list[Measurement]:
    return [measure(adapter, "manual", "mixed-bfloat16", trials=3)]


def test_a_mixed_policy_is_measured_as_it_computes_and_agrees_with_an_honest_declaration() -> None:
    adapter = ManualMixed()
    measurements = _policy_measurement(adapter)
    assert measured_sums(measurements, "mixed-bfloat16") == {"dot": "float32", "batch_sum": "float32", "cost_sum": "float32"}
    assert policy_disagreements(adapter.caps, measurements) == []


def test_a_policy_declaring_float32_sums_it_computes_in_bfloat16_is_flagged() -> None:
    adapter = AccumulationInComputeFormat()
    measurements = _policy_measurement(adapter)
    assert measured_sums(measurements, "mixed-bfloat16") == {"dot": "bfloat16", "batch_sum": "bfloat16", "cost_sum": "bfloat16"}
    lines = policy_disagreements(adapter.caps, measurements)
    assert len(lines) == 3 and all("declared float32, measured bfloat16" in line and "false alarms" in line for line in lines)


def test_a_policy_declaring_a_coarser_sum_than_it_computes_is_refused() -> None:
    adapter = DeclaresBiasSumInBfloat16()
    lines = policy_disagreements(adapter.caps, _policy_measurement(adapter))
    assert lines == [
        "declares-bf16-batch-sum mixed-bfloat16: batch_sum declared bfloat16, measured float32; the declaration gives a "
        "looser bound than its arithmetic earns: declare it as measured"
    ]


def test_the_command_fails_on_a_policy_the_measurement_contradicts(capsys: pytest.CaptureFixture[str]) -> None:
    assert commands(["accumulation", "mutants:ManualMixed", "--dtype", "mixed-bfloat16", "--trials", "2"]) == 0
    assert "mixed-bfloat16 measured dot float32, batch_sum float32, cost_sum float32; declared dot float32" in capsys.readouterr().out
    assert commands(["accumulation", "mutants:AccumulationInComputeFormat", "--dtype", "mixed-bfloat16", "--trials", "2"]) == 1
    assert "DISAGREES: mut-mixed-bf16-accumulation mixed-bfloat16: dot declared float32, measured bfloat16" in capsys.readouterr().out
