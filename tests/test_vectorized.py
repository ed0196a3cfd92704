"""``backprop`` writes every result into views of one block; this must change no bit and alias nothing.

:func:`backprop_conformance.reference.vectorized.backprop` passes an ``out`` buffer to each equation for speed (see
``_layer_buffers``). The agreement tests would notice gross corruption, but not every aliasing bug is
gross, so here the trace is compared bit for bit with the same equations composed the plain way, each
returning a new array, and every pair of returned arrays is checked not to share memory.
"""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import cases

from backprop_conformance.reference import vectorized as V
from backprop_conformance.reference.model import Batch, Gradients, Network

DTYPES = [np.float16, np.float32, np.float64, np.longdouble]


def _plain_backprop(network: Network, batch: Batch, dtype: type) -> V.BackpropTrace:
    """The page's recursion with no ``out`` anywhere: what backprop computed before it had a workspace."""
    L = network.depth
    w = {l: network.w[l].astype(dtype) for l in network.layers}
    b = {l: network.b[l].astype(dtype) for l in network.layers}
    a, z, sigma_prime = {1: batch.x.astype(dtype)}, {}, {}
    for l in range(2, L + 1):
        z[l] = V.weighted_input(w[l], a[l - 1], b[l])
        a[l], sigma_prime[l] = V.activation(z[l])
    y = batch.y.astype(dtype)
    dC_da = {L: V.output_activation_gradient(a[L], y)}
    delta = {L: V.error(dC_da[L], sigma_prime[L])}
    for l in range(L - 1, 1, -1):
        dC_da[l] = V.hidden_activation_gradient(w[l + 1], delta[l + 1])
        delta[l] = V.error(dC_da[l], sigma_prime[l])
    gradients = Gradients(
        {l: V.weight_gradient(delta[l], a[l - 1]) for l in range(2, L + 1)},
        {l: V.bias_gradient(delta[l]) for l in range(2, L + 1)},
    )
    return V.BackpropTrace(z=z, a=a, dC_da=dC_da, delta=delta, gradients=gradients, cost=float(V.quadratic_cost(a[L], y)))


def _returned_arrays(trace: V.BackpropTrace) -> dict[str, np.ndarray]:
    arrays = {f"{name}[{l}]": array for name in ("z", "a", "dC_da", "delta") for l, array in getattr(trace, name).items() if l > 1}
    arrays.update({f"∂C/∂{kind}^{l}": array for kind, l, array in trace.gradients.items()})
    return arrays


@settings(max_examples=60, deadline=None)
@given(cases(depths=(2, 6), widths=(1, 9), batch_sizes=(1, 7)), st.sampled_from(DTYPES))
def test_backprop_equals_the_plain_composition_bit_for_bit(case: tuple[Network, Batch], dtype: type) -> None:
    network, batch = case
    with np.errstate(all="ignore"):  # float16 overflows on some drawn nets, identically in both
        got, expected = V.backprop(network, batch, dtype), _plain_backprop(network, batch, dtype)
    got_arrays, expected_arrays = _returned_arrays(got), _returned_arrays(expected)
    assert got_arrays.keys() == expected_arrays.keys()
    for name, array in got_arrays.items():
        assert array.dtype == np.dtype(dtype), name
        np.testing.assert_array_equal(array, expected_arrays[name], err_msg=name, strict=True)
    assert got.cost == expected.cost or (np.isnan(got.cost) and np.isnan(expected.cost))


@settings(max_examples=30, deadline=None)
@given(cases(depths=(2, 6), widths=(1, 9), batch_sizes=(1, 7)), st.sampled_from(DTYPES))
def test_no_two_returned_arrays_overlap_and_gradients_are_read_only(case: tuple[Network, Batch], dtype: type) -> None:
    network, batch = case
    with np.errstate(all="ignore"):
        trace = V.backprop(network, batch, dtype)
    arrays = _returned_arrays(trace)
    for (name_1, one), (name_2, other) in itertools.combinations(arrays.items(), 2):
        assert not np.may_share_memory(one, other), f"{name_1} and {name_2} share memory"
    for kind, l, array in trace.gradients.items():
        assert not array.flags.writeable, f"∂C/∂{kind}^{l} is writable"
