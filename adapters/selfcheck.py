"""Checks of the adapter contract itself, separate from whether the gradients are right.

A wrong gradient is the framework's fault; a gradient of the wrong shape, in the wrong dtype, in a
transposed layout, or one that changes from one call to the next is the adapter's. These checks run
before any verdict (the suite runs them once per cell; plug-in authors can call :func:`check_adapter`
directly) so that an adapter bug is reported as one, naming the adapter, the path, the parameter in
the page's indices and what was expected, instead of surfacing as a numpy broadcast error or as a
misleading gradient mismatch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from backprop_conformance.adapters.base import Adapter, AdapterOutput
from backprop_conformance.reference.dtypes import float_format, is_representable, round_to
from backprop_conformance.reference.model import Batch, Gradients, Network, parameter_name


class AdapterContractError(AssertionError):
    """An adapter broke the contract of :mod:`backprop_conformance.adapters.base`; the message says where and how."""


def _where(adapter: str, path: str, dtype: str) -> str:
    return f"adapter {adapter!r}, path {path!r}, dtype {dtype}"


def check_output(adapter: str, path: str, dtype: str, network: Network, batch: Batch, output: object) -> None:
    """Raise :class:`AdapterContractError` unless ``output`` has the contract's keys, shapes and dtypes."""
    where = _where(adapter, path, dtype)
    if not isinstance(output, AdapterOutput):
        raise AdapterContractError(
            f"{where}: run() returned a {type(output).__name__}, expected backprop_conformance.adapters.base.AdapterOutput"
        )
    if not isinstance(output.gradients, Gradients):
        raise AdapterContractError(
            f"{where}: AdapterOutput.gradients is a {type(output.gradients).__name__}, expected "
            "backprop_conformance.reference.model.Gradients"
        )
    carrier = float_format(dtype).carrier
    layers = list(network.layers)
    for kind, params, grads in (("w", network.w, output.gradients.w), ("b", network.b, output.gradients.b)):
        if sorted(grads) != layers:
            raise AdapterContractError(
                f"{where}: gradients of {kind}^l are keyed by {sorted(grads)}, expected the page's layers {layers} "
                f"(l = 2..L; a missing layer means a dropped gradient)"
            )
        for l in layers:
            name = f"∂C/∂{kind}^{l}"
            got = np.asarray(grads[l])
            want_shape = params[l].shape
            if got.shape != want_shape:
                layout = "(n(l), n(l−1)), row j = neuron j of layer l" if kind == "w" else "(n(l),)"
                transposed = " (transposed?)" if kind == "w" and got.shape == want_shape[::-1] else ""
                raise AdapterContractError(f"{where}: {name} has shape {got.shape}, expected {want_shape} = {layout}{transposed}")
            if got.dtype != carrier:
                raise AdapterContractError(
                    f"{where}: {name} has dtype {got.dtype}, expected {carrier} "
                    f"(the carrier of {dtype}, see backprop_conformance.reference.dtypes)"
                )
            if not is_representable(dtype, got):
                idx = _first_unrepresentable(dtype, got)
                raise AdapterContractError(
                    f"{where}: {name} holds {parameter_name(kind, l, idx)} = {got[idx]!r}, which is not a {dtype} value: "
                    f"the adapter returned higher-precision results than the format it was asked for"
                )
    if not isinstance(output.cost, (float, int, np.floating)) or isinstance(output.cost, bool):
        raise AdapterContractError(f"{where}: cost is a {type(output.cost).__name__}, expected a Python float")
    B = batch.size
    widths = network.widths
    for symbol, values, first in (("a", output.a, 1), ("z", output.z, 2), ("δ", output.delta, 2)):
        if values is None:
            continue
        _check_intermediates(where, symbol, values, range(first, network.depth + 1), B, widths)


def _first_unrepresentable(dtype: str, values: np.ndarray) -> tuple[int, ...]:
    """Index of the first finite element that rounding to ``dtype`` would change."""
    as64 = values.astype(np.float64)
    changed = np.isfinite(as64) & (round_to(dtype, as64).astype(np.float64) != as64)
    return tuple(int(i) for i in np.argwhere(changed)[0])


def _check_intermediates(where: str, symbol: str, values: Mapping[int, np.ndarray], layers: range, B: int, widths: tuple[int, ...]) -> None:
    if not isinstance(values, Mapping):
        raise AdapterContractError(f"{where}: {symbol}^l must be a mapping keyed by the page's layer l, got {type(values).__name__}")
    unknown = sorted(set(values) - set(layers))
    if unknown:
        raise AdapterContractError(f"{where}: {symbol}^l has keys {unknown} outside the page's layers {list(layers)}")
    for l, arr in values.items():
        shape = np.shape(arr)
        if shape != (B, widths[l - 1]):
            raise AdapterContractError(f"{where}: {symbol}^{l} has shape {shape}, expected (B, n({l})) = ({B}, {widths[l - 1]})")


def check_roundtrip(adapter: Adapter, path: str, dtype: str, device: str, network: Network) -> None:
    """Parameters in → framework → parameters out must be identical (catches a transposed layout).

    A transposed w^l in a square layer has the right shape everywhere, so only the values tell.
    """
    name = adapter.capabilities().name
    where = _where(name, path, dtype)
    back = adapter.load_parameters(network, dtype=dtype, device=device)
    if not isinstance(back, Network):
        raise AdapterContractError(
            f"{where}: load_parameters() returned a {type(back).__name__}, expected backprop_conformance.reference.model.Network"
        )
    for kind, want_all, got_all in (("w", network.w, back.w), ("b", network.b, back.b)):
        if sorted(got_all) != sorted(want_all):
            raise AdapterContractError(f"{where}: parameters read back have layers {sorted(got_all)}, expected {sorted(want_all)}")
        for l in want_all:
            want, got = want_all[l], np.asarray(got_all[l], dtype=np.float64)
            if got.shape != want.shape:
                raise AdapterContractError(f"{where}: {kind}^{l} read back with shape {got.shape}, expected {want.shape}")
            differ = np.argwhere(got != want)
            if differ.size:
                idx = tuple(int(i) for i in differ[0])
                raise AdapterContractError(
                    f"{where}: layout round trip changed {parameter_name(kind, l, idx)}: put in {want[idx]!r}, read back {got[idx]!r}"
                    + (" (the framework's layout is transposed?)" if kind == "w" else "")
                )


def check_repeatable(adapter: Adapter, path: str, dtype: str, device: str, network: Network, batch: Batch) -> None:
    """Two calls with the same input must return bit-identical gradients (no state carried between calls)."""
    name = adapter.capabilities().name
    where = _where(name, path, dtype)
    first = adapter.run(network, batch, dtype=dtype, path=path, device=device)
    check_output(name, path, dtype, network, batch, first)
    second = adapter.run(network, batch, dtype=dtype, path=path, device=device)
    check_output(name, path, dtype, network, batch, second)
    for kind, l, g1 in first.gradients.items():
        g2 = (second.gradients.w if kind == "w" else second.gradients.b)[l]
        differ = np.argwhere(~((g1 == g2) | (np.isnan(g1) & np.isnan(g2))))
        if differ.size:
            idx = tuple(int(i) for i in differ[0])
            raise AdapterContractError(
                f"{where}: a second call with the same input changed {parameter_name(kind, l, idx)} from {g1[idx]!r} to {g2[idx]!r}; "
                "gradients must not accumulate or otherwise carry state between calls"
            )


def check_adapter(adapter: Adapter, path: str, dtype: str, device: str, network: Network, batch: Batch) -> None:
    """Every contract check on one input: layout round trip, output shapes and dtypes, repeatability."""
    check_roundtrip(adapter, path, dtype, device, network)
    check_repeatable(adapter, path, dtype, device, network, batch)
