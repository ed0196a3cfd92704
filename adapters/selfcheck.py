"""Checks of the adapter contract itself, separate from whether the gradients are right.

A wrong gradient is the framework's fault; a gradient of the wrong shape, in the wrong dtype, in a
transposed layout, or one that changes from one call to the next is the adapter's. These checks run
before any verdict (the suite runs them once per cell; plug-in authors can call :func:`check_contract`
directly) so that an adapter bug is reported as one, naming the adapter, the path, the parameter in
the page's indices and what was expected, instead of surfacing as a numpy broadcast error or as a
misleading gradient mismatch. One more is about what the gradient refers to: a call with other parameters must give
other gradients (:func:`check_reads_parameters`). The shapes and dtypes of every output are checked by
:meth:`~backprop_conformance.adapters.base.Adapter.compute` on every call; what is here needs more
than one call.
"""

from __future__ import annotations

import numpy as np

from backprop_conformance.adapters.base import Adapter, AdapterContractError
from backprop_conformance.reference.model import Batch, Network, parameter_name
from backprop_conformance.reference.vectorized import backprop


def check_roundtrip(adapter: Adapter, path: str, dtype: str, device: str, network: Network) -> None:
    """Parameters in → framework → parameters out must be identical (catches a transposed layout).

    A transposed w^l in a square layer has the right shape everywhere, so only the values tell.
    """
    where = adapter.where(path, dtype)
    back = adapter.round_trip(network, dtype=dtype, device=device)
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
    where = adapter.where(path, dtype)
    first = adapter.compute(network, batch, dtype=dtype, path=path, device=device)
    second = adapter.compute(network, batch, dtype=dtype, path=path, device=device)
    for kind, l, g1 in first.gradients.items():
        g2 = (second.gradients.w if kind == "w" else second.gradients.b)[l]
        differ = np.argwhere(~((g1 == g2) | (np.isnan(g1) & np.isnan(g2))))
        if differ.size:
            idx = tuple(int(i) for i in differ[0])
            raise AdapterContractError(
                f"{where}: a second call with the same input changed {parameter_name(kind, l, idx)} from {g1[idx]!r} to {g2[idx]!r}; "
                "gradients must not accumulate or otherwise carry state between calls"
            )


def check_reads_parameters(adapter: Adapter, path: str, dtype: str, device: str, network: Network, batch: Batch) -> None:
    """A call with every parameter negated must return other gradients: the gradient refers to the parameters given.

    A framework that computes with a copy of its parameters (mixed precision's compute copy, cast from the float32
    master copy) can compute with a copy that is not the parameter: cast when the model was built, before the
    parameters were assigned, or cached from an earlier call of the same shape. Its gradients are self-consistent and
    repeatable, and the round trip reads the master copy back unchanged, so only a call with other parameters shows
    it. Negation is exact in every format and changes every z^l, hence the reference's gradients, which are compared
    first (a network of zeros is its own negation).
    """
    negated = Network({l: -w for l, w in network.w.items()}, {l: -b for l, b in network.b.items()})
    want, want_negated = (backprop(n, batch).gradients for n in (network, negated))
    if all(np.array_equal(g, (want_negated.w if kind == "w" else want_negated.b)[l]) for kind, l, g in want.items()):
        return
    first = adapter.compute(network, batch, dtype=dtype, path=path, device=device)
    second = adapter.compute(negated, batch, dtype=dtype, path=path, device=device)
    if all(np.array_equal(g, (second.gradients.w if kind == "w" else second.gradients.b)[l]) for kind, l, g in first.gradients.items()):
        raise AdapterContractError(
            f"{adapter.where(path, dtype)}: negating every parameter left every gradient unchanged: the gradients refer to a "
            "copy of the parameters other than those given (a compute copy cast before the parameters were assigned to "
            "the master copy, or kept from an earlier call); the gradient must be taken at the parameters the suite passes"
        )


def check_contract(adapter: Adapter, path: str, dtype: str, device: str, network: Network, batch: Batch) -> None:
    """Every contract check on one input: layout round trip, output shapes and dtypes, repeatability, and that the
    gradients refer to the parameters given."""
    check_roundtrip(adapter, path, dtype, device, network)
    check_repeatable(adapter, path, dtype, device, network, batch)
    check_reads_parameters(adapter, path, dtype, device, network, batch)
