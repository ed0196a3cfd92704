"""False alarms kept as regression tests: a framework's recorded outputs, replayed without the framework.

A verdict must never fail a correct framework. When one did, the case file (the exact network and batch)
and the framework's own outputs for it are kept in ``tests/data/``, and :class:`RecordedAdapter` hands
those outputs back through the public adapter interface, so the suite's own verdict
(:func:`~backprop_conformance.conformance.verdict.judge`) judges them as it judged the framework -- with no
need to install the framework, and bit for bit what it computed.

Both are issue 12's false alarm, a saturated output whose target lies far closer to the true output than
the output's own error, so that (â − y)·σ′(ẑ) is a product of two errors, which the first-order bound
left out (docs/error-bound.md):

- tinygrad 0.14.0 (CPU, bfloat16, ``.backward()``): widths (4, 10, 16), batch 4, max |z| = 611, failed at
  w^3_51 by 6 %, every intermediate it exposed within its bound;
- JAX 0.10.2 (CPU, bfloat16, ``jax.jit``), found by ``benchmarks/sweep_saturation.py`` (example 6182 of
  the bfloat16 corner): widths (3, 10, 2, 8), batch 13, max |z| = 372.5, failed at w^4_32 by a factor 3.9.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from backprop_conformance.adapters.base import Adapter, AdapterOutput, Capabilities, RequestError
from backprop_conformance.conformance import cases
from backprop_conformance.conformance.verdict import Verdict, judge
from backprop_conformance.reference import error_bound
from backprop_conformance.reference.model import Batch, Gradients, Network
from backprop_conformance.reference.sigmoid import sigmoid_prime

DATA = Path(__file__).resolve().parent / "data"

RECORDED: dict[str, tuple[str, str | Mapping[str, str]]] = {
    # The bound in tinygrad's recorded failure (2.91e-26 at w^3_51) is the one of float32 accumulation in every sum.
    "tinygrad": ("tinygrad-0.14.0-backward-bfloat16-saturated.json", "float32"),
    # What adapters/jax_adapter.py declares for bfloat16.
    "jax": ("jax-0.10.2-jit-bfloat16-saturated.json", {"dot": "float32", "cost_sum": "float32"}),
}
"""Each recorded case: its file in tests/data/ and the accumulation the framework's adapter declared."""


class RecordedAdapter(Adapter):
    """A framework's recorded outputs for one case file, returned for exactly that case and refused for any other.

    The recording is the ``.npz`` of the same name beside the case: ``gw<l>``, ``gb<l>`` (∂C/∂w^l, ∂C/∂b^l in
    page layout), ``cost``, and whichever intermediates ``a<l>``, ``z<l>``, ``delta<l>`` the framework
    exposed. It is read without pickles, and what it holds goes through the adapter contract's checks like
    any framework's output. ``accumulation`` is what the framework's adapter declared for the dtype, which
    decides the bound it is judged by.
    """

    def __init__(self, case_file: Path, accumulation: str | Mapping[str, str]) -> None:
        self.case = cases.read(case_file)
        with np.load(case_file.with_name(case_file.name.removesuffix(".json") + ".npz"), allow_pickle=False) as recording:
            self.recording = {name: recording[name] for name in recording.files}
        self.accumulation = accumulation

    def capabilities(self) -> Capabilities:
        cell = self.case.cell
        versions = {name.lower(): version for name, version in self.case.versions.items()}
        return Capabilities(
            name=f"{cell.backend}-recorded",
            framework=f"{cell.backend} (recorded outputs)",
            version=versions.get(cell.backend, "unknown"),
            dtypes=(cell.dtype,),
            paths=(cell.path,),
            default_paths=(cell.path,),
            accumulation={cell.dtype: self.accumulation},
        )

    def load_parameters(self, network: Network, *, dtype: str, device: str = "cpu") -> Network:
        self._check_is_the_case(network, None)
        return network

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        self._check_is_the_case(network, batch)
        rec, L = self.recording, network.depth

        def exposed(symbol: str, layers: range) -> dict[int, np.ndarray] | None:
            return {l: rec[f"{symbol}{l}"] for l in layers} if f"{symbol}{L}" in rec else None

        return AdapterOutput(
            Gradients({l: rec[f"gw{l}"] for l in network.layers}, {l: rec[f"gb{l}"] for l in network.layers}),
            float(rec["cost"]),
            a=exposed("a", range(1, L + 1)),
            z=exposed("z", network.layers),
            delta=exposed("delta", network.layers),
        )

    def _check_is_the_case(self, network: Network, batch: Batch | None) -> None:
        recorded = self.case.problem
        same = network.widths == recorded.network.widths and all(
            np.array_equal(network.w[l], recorded.network.w[l]) and np.array_equal(network.b[l], recorded.network.b[l])
            for l in network.layers
        )
        if batch is not None:
            same = same and batch.x.shape == recorded.batch.x.shape and batch.y.shape == recorded.batch.y.shape
            same = same and np.array_equal(batch.x, recorded.batch.x) and np.array_equal(batch.y, recorded.batch.y)
        if not same:
            raise RequestError(
                f"adapter {self.caps.name!r} replays one recorded case ({recorded.describe()}) and has no outputs for another"
            )


@pytest.fixture(scope="module", params=sorted(RECORDED))
def recorded(request: pytest.FixtureRequest) -> RecordedAdapter:
    file, accumulation = RECORDED[request.param]
    return RecordedAdapter(DATA / file, accumulation)


def _verdict(adapter: RecordedAdapter) -> Verdict:
    case = adapter.case
    problem = case.problem
    output = adapter.compute(problem.network, problem.batch, dtype=case.cell.dtype, path=case.cell.path)
    return judge(case.cell.id, problem, output, adapter.caps.precision(case.cell.dtype))


def _quoted(failure: str) -> dict[str, float]:
    """The elements a failure message lists, by name: ``{"w^3_51": 3.0696155543960011e-26, ...}``."""
    return {name: float(value) for name, value in re.findall(r"([wb]\^\d_[\d{},]+): framework ([-0-9.e]+)", failure)}


def test_the_replay_holds_the_outputs_that_failed(recorded: RecordedAdapter) -> None:
    """The recording is the failing computation: every element its failure message quotes has the quoted value."""
    quoted = _quoted(recorded.case.failure)
    assert len(quoted) >= 3
    for name, value in quoted.items():
        kind, layer, index = re.fullmatch(r"([wb])\^(\d)_\{?([\d,]+?)\}?", name).groups()
        position = tuple(int(i) - 1 for i in (index.split(",") if "," in index else index))
        assert float(recorded.recording[f"g{kind}{layer}"][position]) == value, name


def test_the_recorded_false_alarm_passes(recorded: RecordedAdapter) -> None:
    verdict = _verdict(recorded)
    assert verdict.passed, verdict.message()


def test_without_the_second_order_terms_it_fails_again(recorded: RecordedAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    """The terms that closed the false alarm are what closes it: put back the first-order σ′E_z for σ's error and
    the product rule without the product of errors, and the suite fails the correct computation again, at an
    element its recorded failure named.

    Either term alone is enough for these cases; test_error_bound.py shows each is needed on its own, in
    exact arithmetic.
    """
    monkeypatch.setattr(error_bound, "sigma_deviation", lambda z, E_z: sigmoid_prime(z) * E_z)
    monkeypatch.setattr(error_bound, "product_error", lambda x, E_x, y, E_y: E_x * np.abs(y) + np.abs(x) * E_y)
    verdict = _verdict(recorded)
    assert not verdict.passed
    assert verdict.worst is not None and verdict.worst.name in _quoted(recorded.case.failure), verdict.message()


def test_a_recorded_adapter_has_outputs_for_its_case_only(recorded: RecordedAdapter) -> None:
    problem = recorded.case.problem
    dtype, path = recorded.case.cell.dtype, recorded.case.cell.path
    w = {l: problem.network.w[l].copy() for l in problem.network.layers}
    w[2][0, 0] = -w[2][0, 0]
    with pytest.raises(RequestError, match="replays one recorded case"):
        recorded.compute(Network(w, dict(problem.network.b)), problem.batch, dtype=dtype, path=path)
    y = problem.batch.y.copy()
    y[0, 0] = 0.5
    with pytest.raises(RequestError, match="replays one recorded case"):
        recorded.compute(problem.network, Batch(problem.batch.x, y), dtype=dtype, path=path)
