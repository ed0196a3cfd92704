"""The suite as two functions, for people who call it from their own tests instead of running it.

* :func:`check_adapter` puts an adapter through the same property check as ``pytest conformance`` --
  the contract, then generated and covering networks judged against the reference within the error bound
  -- outside pytest, in any test runner, and returns the same per-cell results and case files.
* :func:`check_gradients` judges one computation given as a plain function, like
  ``torch.autograd.gradcheck``, against the analytic reference instead of finite differences, and
  raises (or returns) the same verdict a suite failure prints.

Both run the suite's own code (:class:`~backprop_conformance.conformance.trial.CellTrial`,
:func:`~backprop_conformance.conformance.verdict.judge`), so a verdict here and a verdict in the suite
cannot disagree. Examples: ``docs/api.md``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from backprop_conformance.adapters import dispatch
from backprop_conformance.adapters.base import Adapter, AdapterContractError, AdapterOutput, Capabilities, RequestError
from backprop_conformance.adapters.registry import AdapterSpec, AdapterUnavailable, resolve
from backprop_conformance.adapters.selfcheck import check_contract
from backprop_conformance.conformance import cases
from backprop_conformance.conformance.cells import Backend, Cell, select_cells
from backprop_conformance.conformance.ledger import CONTRACT_TEST, PROPERTY_TEST, CellLedger
from backprop_conformance.conformance.problems import Problem, contract_problem
from backprop_conformance.conformance.ratios import format_ratio
from backprop_conformance.conformance.report import CellResult
from backprop_conformance.conformance.reproducers import replay_command
from backprop_conformance.conformance.strategies import DEFAULT_LIMITS, design, problems
from backprop_conformance.conformance.trial import AdapterRaised, CellTrial, check_cell
from backprop_conformance.conformance.verdict import Verdict, judge
from backprop_conformance.reference.dtypes import FORMATS, is_representable, round_to
from backprop_conformance.reference.model import Batch, Gradients, Network


class ConformanceFailure(AssertionError):
    """The framework failed: its gradients left the bound, its adapter broke the contract or raised. The message says where."""


@dataclass(frozen=True)
class AdapterCheck:
    """What :func:`check_adapter` found: one :class:`~backprop_conformance.conformance.report.CellResult` per cell,
    and each failing cell's failure text."""

    cells: tuple[CellResult, ...]
    failures: Mapping[str, str]

    @property
    def passed(self) -> bool:
        return all(c.status == "passed" for c in self.cells)

    def message(self) -> str:
        """A line per cell, then every failure's full text (parameter, values, bound, ratio, case files)."""
        lines = [f"{c.id}: {c.status}, {c.examples} examples, {c.failures} failed, worst ratio {format_ratio(c.worst)}" for c in self.cells]
        for text in self.failures.values():
            lines += ["", text]
        return "\n".join(lines)


def _backend(adapter: Adapter | type[Adapter] | str) -> Backend:
    if isinstance(adapter, str):
        spec = resolve(adapter)
    else:
        target = adapter if isinstance(adapter, type) else type(adapter)
        spec = AdapterSpec(target.__name__, f"{target.__module__}:{target.__qualname__}", "check_adapter")
    if isinstance(adapter, Adapter):
        adapter.caps  # noqa: B018 (checked now: bad capabilities fail here, not in the first example)
        return Backend(spec, adapter)
    try:
        return Backend(spec, spec.load() if isinstance(adapter, str) else _instantiate(adapter, spec))
    except AdapterUnavailable as exc:
        raise ConformanceFailure(f"cannot check {spec.name}: {exc}") from None


def _instantiate(cls: type[Adapter], spec: AdapterSpec) -> Adapter:
    spec._raise_if_missing(cls.requires)
    instance = cls()
    instance.caps  # noqa: B018
    return instance


def check_adapter(
    adapter: Adapter | type[Adapter] | str,
    *,
    paths: Sequence[str] | None = None,
    dtypes: Sequence[str] | None = None,
    devices: Sequence[str] = ("cpu",),
    max_examples: int = 100,
    seed: int | None = None,
    case_dir: Path | str = "conformance-cases",
    raise_on_failure: bool = False,
) -> AdapterCheck:
    """Check ``adapter`` (an instance, a class, or a name as ``--conformance-backend`` takes it) cell by cell.

    ``paths`` defaults to the adapter's default paths and ``dtypes`` to all it declares. Each cell gets
    the contract check, then ``max_examples`` networks: hypothesis-generated ones (derandomized, so a rerun
    draws the same ones, unless ``seed`` picks another sequence), then the covering design's, as in the
    suite (:func:`~backprop_conformance.conformance.trial.check_cell`). A failing cell's shrunk and worst
    examples are written as case files under ``case_dir``. With ``raise_on_failure``,
    :class:`ConformanceFailure` is raised with every failure's text, which makes this one call usable
    as a test in any runner.
    """
    if max_examples < 1:
        raise ValueError(f"max_examples must be at least 1, got {max_examples}")
    backend = _backend(adapter)
    caps = backend.capabilities
    assert caps is not None
    cells, empty = select_cells([backend], tuple(paths or ()), tuple(dtypes or ()), tuple(devices))
    if empty:
        raise ValueError(f"{caps.name}: {empty[caps.name]}")
    results, failures = [], {}
    for cell in cells:
        result, failure = _check_cell(backend, cell, max_examples, seed, Path(case_dir))
        results.append(result)
        if failure:
            failures[cell.id] = failure
    check = AdapterCheck(tuple(results), failures)
    if raise_on_failure and not check.passed:
        raise ConformanceFailure(check.message())
    return check


def _check_cell(backend: Backend, cell: Cell, max_examples: int, seed: int | None, case_dir: Path) -> tuple[CellResult, str]:
    """The contract, then the property, of one cell; the cell's result and its failure text ("" when it passed)."""
    assert backend.adapter is not None and backend.capabilities is not None
    ledger = CellLedger.for_cell(cell)
    trial = CellTrial(backend, cell, ledger.result)
    trial.result.dispatch = dispatch.configuration(backend.adapter, cell.path)
    fixed = contract_problem(cell.dtype)
    try:
        check_contract(backend.adapter, cell.path, cell.dtype, cell.device, fixed.network, fixed.batch)
        ledger.record(CONTRACT_TEST, CONTRACT_TEST, "call", "passed")
    except Exception as exc:  # the adapter is on trial: a contract violation or any exception is its result
        kind = "" if isinstance(exc, AdapterContractError) else f"{type(exc).__name__}: "
        ledger.contract_failed(f"the adapter contract failed: {kind}{exc}")
        return ledger.settle(), f"{cell.id}: the adapter contract failed: {kind}{exc}"
    if isinstance(backend.adapter, _FunctionAdapter):  # the contract's calls showed whether the function returns a cost
        trial.with_cost = backend.adapter.returned_cost
    pooled = cell.path in backend.capabilities.shape_compiled_paths

    running = settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=seed is None,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow],
    )

    def fail(message: str) -> None:
        raise ConformanceFailure(message)

    def draw(data: st.DataObject) -> Problem:
        return data.draw(problems(cell.dtype, DEFAULT_LIMITS, pooled=pooled, split=split, scanned=scanned), label="problem")

    split = cell.path in backend.capabilities.micro_batch_paths
    scanned = cell.path in backend.capabilities.layer_scan_paths
    designed = design(cell.dtype, DEFAULT_LIMITS.pool if pooled else DEFAULT_LIMITS.covering, split=split, scanned=scanned)
    failure = ""
    try:
        check_cell(cell.id, trial.run, draw, running, designed, fail, seed=seed)
    except (ConformanceFailure, AdapterRaised) as exc:
        failure = str(exc).split("\nFalsifying example", 1)[0]
    ledger.record(PROPERTY_TEST, PROPERTY_TEST, "call", "failed" if failure else "passed")
    ledger.settle()
    if trial.failed:
        written = trial.write_cases(case_dir, {}, trial.result.dispatch)
        if isinstance(backend.adapter, _FunctionAdapter):
            function = getattr(backend.adapter.grad_fn, "__name__", "grad_fn")
            trial.result.replay = f"backprop_conformance.check_gradients({function}, *backprop_conformance.load_case({str(written[0])!r}))"
        else:
            trial.result.replay = replay_command(str(written[0]), backend.spec.requested_as, backend.spec.name)
        failure += "\n" + "\n".join(f"case file: {p}" for p in written) + f"\nreplay it: {trial.result.replay}"
    return trial.result, failure


def load_case(path: Path | str) -> tuple[Network, Batch, str]:
    """The network, batch and format of a case file, as :func:`check_gradients` takes them.

    A case file written by :func:`check_function` (or by the suite) is replayed on a plain function with
    ``check_gradients(grad_fn, *load_case(path))``. The file is validated field by field
    (:class:`~backprop_conformance.conformance.cases.CaseError` names what is wrong); it never runs code.
    """
    case = cases.read(Path(path))
    return case.problem.network, case.problem.batch, case.cell.dtype


def rounded(network: Network, batch: Batch, dtype: str) -> tuple[Network, Batch]:
    """``network`` and ``batch`` rounded to ``dtype``'s values (held in float64), as the suite hands them to a framework.

    A framework computing in float32 can only be given float32 numbers; the reference is then judged at
    exactly that point, so any difference is the framework's rounding (bounded) or a bug.
    """
    problem = Problem.rounded(network, batch, dtype)
    return problem.network, problem.batch


GradFn = Callable[[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray], Any]


class _FunctionAdapter(Adapter):
    """A plain ``grad_fn(w, b, x, y) -> (dw, db[, cost[, intermediates]])`` as an adapter, so that it gets the suite's
    contract and verdict."""

    def __init__(self, grad_fn: GradFn, dtypes: Sequence[str], accumulation: str | Mapping[str, str] | None) -> None:
        self.grad_fn = grad_fn
        self.dtypes = tuple(dtypes)
        self.accumulation = accumulation
        self.returned_cost = False

    def capabilities(self) -> Capabilities:
        name = getattr(self.grad_fn, "__name__", "grad_fn").strip("<>") or "grad_fn"
        qualname = getattr(self.grad_fn, "__qualname__", name)
        accumulation = self.accumulation
        try:  # a mapping as its sorted items, tagged, so that no other declaration (a tuple) can take its key
            frozen = ("mapping", tuple(sorted(accumulation.items()))) if isinstance(accumulation, Mapping) else ("as given", accumulation)
            return _cached_capabilities(name, qualname, self.dtypes, frozen)
        except TypeError:  # a declaration that cannot be a key (not format names): built afresh, and refused by its own check
            return _function_capabilities(name, qualname, self.dtypes, accumulation)

    def load_parameters(self, network: Network, *, dtype: str, device: str = "cpu") -> Network:
        return network.astype(FORMATS[dtype].carrier)

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        carrier = FORMATS[dtype].carrier
        w = [network.w[l].astype(carrier) for l in network.layers]
        b = [network.b[l].astype(carrier) for l in network.layers]
        returned = self.grad_fn(w, b, batch.x.astype(carrier), batch.y.astype(carrier))
        if not isinstance(returned, (tuple, list)) or len(returned) not in (2, 3, 4):
            raise AdapterContractError(
                f"grad_fn returned {type(returned).__name__}; expected (dw, db), (dw, db, cost) or (dw, db, cost, intermediates)"
            )
        dw, db = (_by_layer(part, list(network.layers), dtype, f"d{kind}") for part, kind in zip(returned[:2], "wb", strict=True))
        self.returned_cost = len(returned) >= 3
        a, z, delta = _intermediates(returned[3], network, dtype) if len(returned) == 4 else (None, None, None)
        return AdapterOutput(Gradients(dw, db), float(returned[2]) if self.returned_cost else 0.0, a=a, z=z, delta=delta)


@functools.lru_cache(maxsize=64)
def _cached_capabilities(name: str, qualname: str, dtypes: tuple[str, ...], frozen: tuple[str, object]) -> Capabilities:
    """:func:`_function_capabilities`, built and checked once per declaration; ``frozen`` is ``(kind, value)``, a mapping's
    kind ``"mapping"`` and its value its sorted items, any other declaration's ``"as given"`` and itself.

    Why cached: :func:`check_gradients` makes a new adapter for every call, and checking a declaration costs about a
    twentieth of a whole check of a small network.
    """
    kind, value = frozen
    return _function_capabilities(name, qualname, dtypes, dict(value) if kind == "mapping" else value)


def _function_capabilities(name: str, qualname: str, dtypes: tuple[str, ...], accumulation: object) -> Capabilities:
    """The capabilities of a function adapter: one path, ``call``; ``accumulation`` declared for every narrower format,
    and checked by :class:`Capabilities` as any adapter's is."""
    safe = "".join(ch if ch.isalnum() or ch in "_.+-" else "_" for ch in name)[:64]
    narrower = [d for d in dtypes if d != "float64"] if accumulation else []
    return Capabilities(
        name=safe,
        framework=f"the function {qualname}",
        version="n/a",
        dtypes=dtypes,
        paths=("call",),
        default_paths=("call",),
        accumulation={d: accumulation for d in narrower},
    )


INTERMEDIATES = ("a", "z", "delta")
"""The keys of ``grad_fn``'s optional fourth result: a^l from l = 1, z^l and δ^l from l = 2, each (B, n(l))."""


def _intermediates(part: object, network: Network, dtype: str) -> tuple[dict[int, np.ndarray] | None, ...]:
    """The per-example a^l, z^l and δ^l a function returned, keyed by the page's l, for the first-divergence diagnosis."""
    if not isinstance(part, Mapping) or not set(part) <= set(INTERMEDIATES):
        keys = sorted(map(str, part)) if isinstance(part, Mapping) else type(part).__name__
        raise AdapterContractError(
            f"grad_fn's fourth result must be a mapping with some of the keys {', '.join(INTERMEDIATES)} "
            f"(a^l from l = 1, z^l and δ^l from l = 2, each of shape (B, n(l))); got {keys}"
        )
    depth = network.depth
    layers = {"a": list(range(1, depth + 1)), "z": list(network.layers), "delta": list(network.layers)}
    return tuple(_by_layer(part[key], layers[key], dtype, key) if key in part else None for key in INTERMEDIATES)


def _by_layer(part: object, layers: list[int], dtype: str, name: str) -> dict[int, np.ndarray]:
    """``dw``, ``db`` or an intermediate as returned (a list from the first of ``layers`` on, or a mapping keyed by the
    page's l), in the format's carrier.

    Arrays in a wider dtype are accepted when converting them loses nothing (a framework computing in
    float32 and handing back float64 copies); otherwise the contract check names the element.
    """
    if isinstance(part, Mapping):
        items = dict(part)
    elif isinstance(part, (list, tuple)):
        if len(part) != len(layers):
            raise AdapterContractError(
                f"grad_fn returned {len(part)} arrays for {name}, expected {len(layers)} (layers {layers[0]}..{layers[-1]})"
            )
        items = dict(zip(layers, part, strict=True))
    else:
        raise AdapterContractError(
            f"grad_fn returned {name} as {type(part).__name__}; expected a list (layer {layers[0]} first) or a mapping keyed by l"
        )
    out = {}
    carrier = FORMATS[dtype].carrier
    for l, value in items.items():
        array = np.asarray(value)
        # An array already in the carrier holding the format's values would round to itself: kept as it is.
        if array.dtype != carrier and np.issubdtype(array.dtype, np.floating) and is_representable(dtype, array):
            array = round_to(dtype, array.astype(np.float64))
        out[l] = array
    return out


def check_gradients(
    grad_fn: GradFn,
    network: Network,
    batch: Batch,
    dtype: str,
    *,
    accumulation: str | Mapping[str, str] | None = None,
    raise_on_failure: bool = True,
) -> Verdict:
    """Judge one computation of the page's gradients, given as ``grad_fn(w, b, x, y) -> (dw, db)``, ``(dw, db, cost)``
    or ``(dw, db, cost, intermediates)``.

    ``w`` and ``b`` are lists of numpy arrays in page layout, ``w[0]`` being w^2 of shape (n(2), n(1))
    (``w[i][j-1, k-1]`` is w^{i+2}_jk), ``x`` is (B, n(1)) and ``y`` is (B, n(L)), all in ``dtype``'s
    numpy carrier (float32 for bfloat16). The gradients come back the same way (lists from w^2 on, or
    mappings keyed by the page's l). ``network`` and ``batch`` must hold values of ``dtype``: round them
    first with :func:`rounded`. ``accumulation`` declares where the computation sums in a wider format
    (``"float32"`` for float16 storage with float32 accumulation), as an adapter's capabilities do.

    Returns the :class:`~backprop_conformance.conformance.verdict.Verdict`; when it fails and
    ``raise_on_failure`` is true (the default, as ``gradcheck`` does), raises :class:`ConformanceFailure`
    with the message a suite failure prints. The cost is judged only when ``grad_fn`` returns one.
    ``intermediates``, a mapping with the keys ``"a"`` (a^l from l = 1), ``"z"`` and ``"delta"`` (from l = 2),
    each per example (B, n(l)), adds the first layer where the computation left its bound to a failure's message.
    """
    if dtype not in FORMATS:
        raise ValueError(f"unknown dtype {dtype!r}; the suite knows {', '.join(FORMATS)}")
    adapter = _FunctionAdapter(grad_fn, (dtype,), accumulation)
    try:
        output = adapter.compute(network, batch, dtype=dtype, path="call")
    except RequestError as exc:
        raise ValueError(f"{exc}; backprop_conformance.rounded(network, batch, {dtype!r}) does that for both") from None
    problem = Problem(network, batch, dtype)
    verdict = judge(f"{adapter.caps.name}-{dtype}", problem, output, adapter.caps.precision(dtype), with_cost=adapter.returned_cost)
    if raise_on_failure and not verdict.passed:
        raise ConformanceFailure(verdict.message())
    return verdict


def check_function(
    grad_fn: GradFn,
    *,
    dtypes: Sequence[str] = ("float64",),
    accumulation: str | Mapping[str, str] | None = None,
    max_examples: int = 100,
    seed: int | None = None,
    case_dir: Path | str = "conformance-cases",
    raise_on_failure: bool = True,
) -> AdapterCheck:
    """Check a plain ``grad_fn`` over many generated networks, as the suite checks a framework: the property check
    of :func:`check_adapter` for a function that :func:`check_gradients` judges once.

    ``grad_fn`` is called as in :func:`check_gradients`, once per network, on networks and batches hypothesis draws
    (then the covering design's, which reach the shapes where kernels go wrong), in each of ``dtypes`` (float64 by
    default: hand-written backprop is usually checked there first). ``accumulation`` is declared for every dtype
    narrower than float64. A failure is shrunk to the smallest failing network, written as case files under
    ``case_dir`` and, with ``raise_on_failure`` (the default), raised as :class:`ConformanceFailure`. No framework
    is needed.
    """
    unknown = [d for d in dtypes if d not in FORMATS]
    if unknown or not dtypes:
        raise ValueError(f"dtypes must name some of {', '.join(FORMATS)}; got {list(dtypes)!r}")
    return check_adapter(
        _FunctionAdapter(grad_fn, dtypes, accumulation),
        max_examples=max_examples,
        seed=seed,
        case_dir=case_dir,
        raise_on_failure=raise_on_failure,
    )
