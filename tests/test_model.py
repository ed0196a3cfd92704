"""The page's model (reference/model.py): what a Network and a Batch accept, and what they refuse.

The network is the ground truth every framework is judged against, so a malformed one must be refused
at construction with a message that names the layer (the page's l, layer 1 the input) and the shape or
value that was wrong -- never a numpy traceback from deep inside the backward pass. The messages are
asserted on, not just the exception type: a vague message is a failure of this module too.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backprop_conformance.reference.model import Batch, Gradients, ModelError, Network, check_compatible, parameter_name


def _net(widths: tuple[int, ...], dtype: type = np.float64, seed: int = 0) -> Network:
    """A network with layer widths (n(1), ..., n(L)) and random parameters."""
    rng = np.random.default_rng(seed)
    return Network(
        {l: rng.normal(size=(widths[l - 1], widths[l - 2])).astype(dtype) for l in range(2, len(widths) + 1)},
        {l: rng.normal(size=widths[l - 1]).astype(dtype) for l in range(2, len(widths) + 1)},
    )


def _params(widths: tuple[int, ...]) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Raw weight and bias mappings (not yet a Network) for widths (n(1), ..., n(L)), to be spoiled by a test."""
    w = {l: np.full((widths[l - 1], widths[l - 2]), 0.5) for l in range(2, len(widths) + 1)}
    b = {l: np.full(widths[l - 1], 0.25) for l in range(2, len(widths) + 1)}
    return w, b


# --- depth and layer keys ---------------------------------------------------------------------------


def test_no_weights_means_fewer_than_two_layers() -> None:
    with pytest.raises(ModelError, match=r"L >= 2 layers .*got no weights"):
        Network({}, {})
    with pytest.raises(ModelError, match=r"L >= 2 layers .*got no weights"):
        Network.from_lists([], [])


@pytest.mark.parametrize(
    ("keys", "shown"),
    [((2, 4), r"\[2, 4\]"), ((3,), r"\[3\]"), ((3, 4), r"\[3, 4\]"), ((1, 2), r"\[1, 2\]"), ((0, 1), r"\[0, 1\]")],
)
def test_weight_keys_must_be_layers_2_to_L_without_gaps(keys: tuple[int, ...], shown: str) -> None:
    w = {l: np.ones((1, 1)) for l in keys}
    b = {l: np.ones(1) for l in keys}
    with pytest.raises(ModelError, match=r"weights must be keyed by layers 2\.\.L without gaps; got keys " + shown):
        Network(w, b)


def test_bias_keys_must_match_weight_keys() -> None:
    w, b = _params((2, 3, 1))
    del b[3]
    with pytest.raises(ModelError, match=r"biases must be keyed by the same layers as the weights, \[2, 3\]; got keys \[2\]"):
        Network(w, b)
    w, b = _params((2, 3, 1))
    b[4] = np.ones(1)
    with pytest.raises(ModelError, match=r"biases .* \[2, 3\]; got keys \[2, 3, 4\]"):
        Network(w, b)


def test_non_integer_layer_keys_are_a_model_error() -> None:
    w = {2: np.ones((1, 1)), "3": np.ones((1, 1))}
    b = {2: np.ones(1), "3": np.ones(1)}
    with pytest.raises(ModelError, match=r"keys"):
        Network(w, b)


@pytest.mark.parametrize("container", [list, tuple])
def test_non_mapping_parameters_point_to_from_lists(container: type) -> None:
    w, b = _params((2, 1))
    with pytest.raises(ModelError, match=r"must be mappings keyed by the page's layer number l = 2\.\.L .*Network\.from_lists"):
        Network(container(w.values()), container(b.values()))
    with pytest.raises(ModelError, match=r"must be mappings"):
        Network(w, container(b.values()))


# --- shapes -----------------------------------------------------------------------------------------


def test_zero_width_output_side_names_the_layer() -> None:
    """w^l with zero rows: layer l itself has no neurons."""
    with pytest.raises(ModelError, match=r"layer 2 has zero width \(w\^2 has shape \(0, 3\)\); every layer needs at least one neuron"):
        Network({2: np.ones((0, 3))}, {2: np.ones(0)})
    w, b = _params((2, 3, 1))
    w[3], b[3] = np.ones((0, 3)), np.ones(0)
    with pytest.raises(ModelError, match=r"layer 3 has zero width \(w\^3 has shape \(0, 3\)\)"):
        Network(w, b)


def test_zero_width_input_side_names_the_previous_layer() -> None:
    """w^2 with zero columns: the input layer 1 has no neurons."""
    with pytest.raises(ModelError, match=r"layer 1 has zero width \(w\^2 has shape \(3, 0\)\)"):
        Network({2: np.ones((3, 0))}, {2: np.ones(3)})


def test_columns_of_w_must_match_the_previous_width() -> None:
    w, b = _params((2, 3, 1))
    w[3] = np.ones((1, 4))
    with pytest.raises(ModelError, match=r"w\^3 has shape \(1, 4\) but layer 2 has n\(2\) = 3 neurons; expected shape \(1, 3\)"):
        Network(w, b)


def test_mismatch_deep_in_the_network_names_that_layer() -> None:
    w, b = _params((4, 5, 6, 7, 2))
    w[5] = np.ones((2, 6))
    with pytest.raises(ModelError, match=r"w\^5 has shape \(2, 6\) but layer 4 has n\(4\) = 7 neurons; expected shape \(2, 7\)"):
        Network(w, b)


@pytest.mark.parametrize("bad_b", [np.ones(2), np.ones(4), np.ones((3, 1)), np.ones((1, 3)), np.float64(1.0)])
def test_bias_length_must_match_the_layer_width(bad_b: np.ndarray) -> None:
    w, b = _params((2, 3))
    b[2] = bad_b
    shape = re.escape(str(np.shape(bad_b)))
    with pytest.raises(ModelError, match=rf"b\^2 has shape {shape}; expected \(3,\) to match n\(2\) = 3 from w\^2"):
        Network(w, b)


@pytest.mark.parametrize("bad_w", [np.ones(3), np.ones((3, 2, 1)), np.float64(2.0)])
def test_weights_must_be_matrices(bad_w: np.ndarray) -> None:
    w, b = _params((2, 3))
    w[2] = bad_w
    shape = re.escape(str(np.shape(bad_w)))
    with pytest.raises(ModelError, match=rf"w\^2 must be a matrix of shape \(n\(2\), n\(1\)\); got an array of shape {shape}"):
        Network(w, b)


def test_ragged_nested_lists_are_named() -> None:
    w, b = _params((2, 2))
    w[2] = [[1.0, 2.0], [3.0]]
    with pytest.raises(ModelError, match=r"w\^2 is ragged"):
        Network(w, b)
    w, b = _params((2, 2))
    b[2] = [1.0, [2.0]]
    with pytest.raises(ModelError, match=r"b\^2 is ragged"):
        Network(w, b)
    with pytest.raises(ModelError, match=r"x \(the inputs\) is ragged"):
        Batch([[1.0, 2.0], [3.0]], np.ones((2, 1)))
    with pytest.raises(ModelError, match=r"y \(the targets\) is ragged"):
        Batch(np.ones((2, 1)), [[1.0], [2.0, 3.0]])


def test_nested_lists_of_floats_are_accepted() -> None:
    net = Network({2: [[1.0, 2.0], [3.0, 4.0]], 3: [[0.5, -0.5]]}, {2: [0.0, 1.0], 3: [2.0]})
    assert net.widths == (2, 2, 1)
    np.testing.assert_array_equal(net.w[2], [[1.0, 2.0], [3.0, 4.0]])


# --- dtypes and values ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int64, np.int8, np.uint16, np.bool_])
def test_non_floating_parameters_are_refused(dtype: type) -> None:
    w, b = _params((2, 3))
    w[2] = w[2].astype(dtype)
    name = np.dtype(dtype).name
    expected = rf"w\^2 has dtype {name}; a real floating dtype \(float16, float32, float64 or longdouble\) is required"
    with pytest.raises(ModelError, match=expected):
        Network(w, b)
    w, b = _params((2, 3))
    b[2] = b[2].astype(dtype)
    with pytest.raises(ModelError, match=rf"b\^2 has dtype {name}"):
        Network(w, b)


def test_integer_nested_lists_are_refused() -> None:
    with pytest.raises(ModelError, match=r"w\^2 has dtype int64; a real floating dtype"):
        Network({2: [[1, 2]]}, {2: [0.0]})


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_parameters_and_data_are_refused(dtype: type) -> None:
    w, b = _params((2, 3))
    w[2] = w[2].astype(dtype)
    name = np.dtype(dtype).name
    with pytest.raises(ModelError, match=rf"w\^2 has complex dtype {name}; the page's model is real"):
        Network(w, b)
    with pytest.raises(ModelError, match=rf"x \(the inputs\) has complex dtype {name}"):
        Batch(np.ones((1, 2), dtype=dtype), np.ones((1, 3)))


def test_strings_and_objects_are_refused() -> None:
    with pytest.raises(ModelError, match=r"w\^2 has dtype <U3; a real floating dtype"):
        Network({2: [["1.0"]]}, {2: [0.0]})
    with pytest.raises(ModelError, match=r"w\^2 is ragged or holds non-numbers"):
        Network({2: [[None]]}, {2: [0.0]})
    with pytest.raises(ModelError, match=r"x \(the inputs\) is ragged or holds non-numbers"):
        Batch({"a": 1.0}, np.ones((1, 1)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_parameter_names_the_parameter_and_index(bad: float) -> None:
    w, b = _params((3, 4, 2))
    w[3][1, 2] = bad
    with pytest.raises(ModelError, match=rf"w\^3 holds a non-finite value {bad} at index \(1, 2\); parameters and data must be finite"):
        Network(w, b)
    w, b = _params((3, 4, 2))
    b[2][3] = bad
    with pytest.raises(ModelError, match=rf"b\^2 holds a non-finite value {bad} at index \(3,\)"):
        Network(w, b)


@given(
    widths=st.lists(st.integers(1, 5), min_size=2, max_size=5),
    data=st.data(),
)
@settings(max_examples=30, deadline=None)
def test_non_finite_anywhere_is_found_at_its_index(widths: list[int], data: st.DataObject) -> None:
    w, b = _params(tuple(widths))
    l = data.draw(st.integers(2, len(widths)), label="l")
    kind = data.draw(st.sampled_from(["w", "b"]), label="kind")
    target = w[l] if kind == "w" else b[l]
    index = tuple(data.draw(st.integers(0, s - 1)) for s in target.shape)
    target[index] = np.nan
    with pytest.raises(ModelError, match=rf"^{kind}\^{l} holds a non-finite value nan at index {re.escape(str(index))}"):
        Network(w, b)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_data_names_x_or_y_and_index(bad: float) -> None:
    x = np.ones((3, 2))
    x[2, 1] = bad
    with pytest.raises(ModelError, match=rf"x \(the inputs\) holds a non-finite value {bad} at index \(2, 1\)"):
        Batch(x, np.ones((3, 1)))
    y = np.ones((3, 1))
    y[1, 0] = -bad
    with pytest.raises(ModelError, match=rf"y \(the targets\) holds a non-finite value {-bad} at index \(1, 0\)"):
        Batch(np.ones((3, 2)), y)


def test_masked_nan_is_not_smuggled_in() -> None:
    masked = np.ma.array([[np.nan, 1.0]], mask=[[True, False]])
    with pytest.raises(ModelError, match=r"w\^2 holds a non-finite value nan at index \(0, 0\)"):
        Network({2: masked}, {2: np.zeros(1)})


def test_mixed_dtypes_within_a_layer() -> None:
    w, b = _params((2, 3))
    w[2] = w[2].astype(np.float32)
    with pytest.raises(ModelError, match=r"b\^2 has dtype float64 but earlier parameters have float32; use one dtype throughout"):
        Network(w, b)


def test_mixed_dtypes_across_layers() -> None:
    w, b = _params((2, 3, 1))
    w[3] = w[3].astype(np.float16)
    with pytest.raises(ModelError, match=r"w\^3 has dtype float16 but earlier parameters have float64"):
        Network(w, b)


def test_mixed_dtypes_within_a_batch() -> None:
    with pytest.raises(ModelError, match=r"x has dtype float32 but y has float64; use one dtype"):
        Batch(np.ones((1, 2), dtype=np.float32), np.ones((1, 1)))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_each_floating_dtype_is_kept(dtype: type) -> None:
    net = _net((2, 3, 1), dtype=dtype)
    assert net.dtype == np.dtype(dtype)
    assert all(net.w[l].dtype == dtype and net.b[l].dtype == dtype for l in net.layers)


# --- batches and compatibility ----------------------------------------------------------------------


def test_empty_batch() -> None:
    with pytest.raises(ModelError, match=r"the batch is empty; B >= 1 examples are required"):
        Batch(np.ones((0, 2)), np.ones((0, 1)))


def test_batch_rows_must_agree() -> None:
    with pytest.raises(ModelError, match=r"x has 2 examples \(rows\) but y has 3"):
        Batch(np.ones((2, 2)), np.ones((3, 1)))


@pytest.mark.parametrize(("x_shape", "y_shape"), [((2,), (1, 1)), ((1, 2), (1,)), ((1, 2, 1), (1, 1))])
def test_batch_needs_matrices(x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> None:
    message = rf"x and y must be matrices with one example per row, shapes \(B, n\(1\)\) and \(B, n\(L\)\); got x {re.escape(str(x_shape))}"
    with pytest.raises(ModelError, match=message):
        Batch(np.ones(x_shape), np.ones(y_shape))


@pytest.mark.parametrize(
    ("x_width", "y_width", "message"),
    [
        (3, 1, r"x has 3 columns but the input layer 1 has n\(1\) = 2 neurons"),
        (0, 1, r"x has 0 columns but the input layer 1 has n\(1\) = 2 neurons"),
        (2, 2, r"y has 2 columns but the output layer 3 has n\(3\) = 1 neurons"),
    ],
    ids=["input-width", "zero-width-batch", "output-width"],
)
def test_check_compatible_names_the_width_that_does_not_fit(x_width: int, y_width: int, message: str) -> None:
    net = _net((2, 3, 1))
    with pytest.raises(ModelError, match=message):
        check_compatible(net, Batch(np.ones((4, x_width)), np.ones((4, y_width))))


def test_check_compatible_dtype() -> None:
    net = _net((2, 3, 1))
    batch = Batch(np.ones((4, 2), dtype=np.float32), np.ones((4, 1), dtype=np.float32))
    with pytest.raises(ModelError, match=r"the batch has dtype float32 but the network has float64; use one dtype"):
        check_compatible(net, batch)


def test_check_compatible_accepts_a_fitting_batch() -> None:
    net = _net((2, 3, 1))
    check_compatible(net, Batch(np.ones((4, 2)), np.ones((4, 1))))


def test_model_error_is_a_value_error() -> None:
    """Callers that catch ValueError for bad input (as numpy's own users do) also catch ModelError."""
    assert issubclass(ModelError, ValueError)


# --- immutability -----------------------------------------------------------------------------------


def test_parameters_are_copied() -> None:
    w, b = _params((2, 3, 1))
    net = Network(w, b)
    w[2][0, 0] = 99.0
    b[3][0] = 99.0
    w[3] = np.zeros((1, 3))
    assert net.w[2][0, 0] == 0.5
    assert net.b[3][0] == 0.25
    np.testing.assert_array_equal(net.w[3], np.full((1, 3), 0.5))


def test_parameters_are_read_only() -> None:
    net = _net((2, 3, 1))
    with pytest.raises(ValueError, match="read-only"):
        net.w[2][0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        net.b[3][...] = 0.0
    with pytest.raises(TypeError):
        net.w[2] = np.zeros((3, 2))  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.w = {}  # type: ignore[misc]


def test_batch_is_copied_read_only() -> None:
    x, y = np.ones((2, 2)), np.zeros((2, 1))
    batch = Batch(x, y)
    x[0, 0] = 5.0
    assert batch.x[0, 0] == 1.0
    with pytest.raises(ValueError, match="read-only"):
        batch.y[0, 0] = 1.0


def test_gradients_are_copied_read_only() -> None:
    gw = {2: np.ones((3, 2))}
    grads = Gradients(gw, {2: np.ones(3)})
    gw[2][0, 0] = 7.0
    assert grads.w[2][0, 0] == 1.0
    with pytest.raises(ValueError, match="read-only"):
        grads.b[2][0] = 0.0
    assert [(kind, l, arr.shape) for kind, l, arr in grads.items()] == [("w", 2, (3, 2)), ("b", 2, (3,))]


# --- properties and constructors --------------------------------------------------------------------


@given(widths=st.lists(st.integers(1, 6), min_size=2, max_size=6))
@settings(max_examples=30, deadline=None)
def test_properties_follow_the_widths(widths: list[int]) -> None:
    net = _net(tuple(widths))
    L = len(widths)
    assert net.depth == L
    assert net.widths == tuple(widths)
    assert list(net.layers) == list(range(2, L + 1))
    assert net.parameter_count == sum(widths[l - 1] * (widths[l - 2] + 1) for l in range(2, L + 1))
    for l in net.layers:
        assert net.w[l].shape == (widths[l - 1], widths[l - 2])
        assert net.b[l].shape == (widths[l - 1],)


def test_from_lists_numbers_layers_from_two() -> None:
    w2, w3 = np.arange(6.0).reshape(3, 2), np.arange(3.0).reshape(1, 3)
    b2, b3 = np.arange(3.0), np.arange(1.0)
    net = Network.from_lists([w2, w3], [b2, b3])
    assert list(net.w) == [2, 3]
    np.testing.assert_array_equal(net.w[2], w2)
    np.testing.assert_array_equal(net.w[3], w3)
    np.testing.assert_array_equal(net.b[3], b3)
    assert net.widths == (2, 3, 1)


def test_from_lists_counts_must_agree() -> None:
    with pytest.raises(ModelError, match=r"got 2 weight matrices but 1 bias vectors; one of each per layer 2\.\.L"):
        Network.from_lists([np.ones((3, 2)), np.ones((1, 3))], [np.ones(3)])


def test_from_lists_validates_like_the_constructor() -> None:
    with pytest.raises(ModelError, match=r"w\^3 has shape \(1, 4\) but layer 2 has n\(2\) = 3 neurons"):
        Network.from_lists([np.ones((3, 2)), np.ones((1, 4))], [np.ones(3), np.ones(1)])


def test_astype_and_map_revalidate() -> None:
    net = _net((2, 3, 1))
    as32 = net.astype(np.float32)
    assert as32.dtype == np.float32
    np.testing.assert_array_equal(as32.w[2], net.w[2].astype(np.float32))
    with pytest.raises(ModelError, match=r"w\^2 holds a non-finite value"):
        net.map(lambda v: v * np.inf)
    batch = Batch(np.ones((2, 2)), np.ones((2, 1)))
    assert batch.astype(np.float16).x.dtype == np.float16
    assert batch.size == 2


@pytest.mark.parametrize(
    ("kind", "l", "index", "expected"),
    [
        ("w", 3, (0, 1), "w^3_12"),
        ("b", 2, (4,), "b^2_5"),
        ("w", 2, (8, 8), "w^2_99"),
        ("w", 3, (11, 3), "w^3_{12,4}"),
        ("w", 2, (9, 0), "w^2_{10,1}"),
        ("b", 7, (9,), "b^7_{10}"),
        ("w", 10, (0, 0), "w^10_11"),
    ],
)
def test_parameter_name_is_one_based_and_unambiguous(kind: str, l: int, index: tuple[int, ...], expected: str) -> None:
    assert parameter_name(kind, l, index) == expected


def test_adopted_gradients_are_the_same_arrays_made_read_only() -> None:
    """``Gradients.adopt`` skips the copy (the reference hands over arrays nobody else holds) but not the freeze."""
    gw, gb = {2: np.ones((3, 2)), 3: np.ones((1, 3))}, {2: np.ones(3), 3: np.ones(1)}
    grads = Gradients.adopt(gw, gb)
    assert grads.w[2] is gw[2] and grads.b[3] is gb[3]
    with pytest.raises(ValueError, match="read-only"):
        grads.w[3][0, 0] = 0.0
    with pytest.raises(TypeError):
        grads.w[4] = np.ones((1, 1))  # type: ignore[index]
    gw[5] = np.ones((1, 1))
    assert sorted(grads.w) == [2, 3], "the mapping is the adopter's own, not the caller's dict"
    assert [(kind, l) for kind, l, _ in grads.items()] == [("w", 2), ("w", 3), ("b", 2), ("b", 3)]
