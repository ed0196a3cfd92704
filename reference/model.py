"""The page's network, its data and its gradients, in the page's own indices.

The page numbers layers 1..L with layer 1 the input, so every per-layer quantity here is held in a
mapping keyed by the page's layer number ``l``: ``network.w[l]`` is w^l and ``network.b[l]`` is b^l for
l = 2..L. ``w[l][j-1, k-1]`` is w^l_jk, the weight from neuron k of layer l-1 to neuron j of layer l,
so w^l has shape (n(l), n(l-1)) -- the same layout as ``torch.nn.Linear.weight``. Keying by the page's
l instead of a 0-based list index removes the commonest off-by-one in backpropagation code.

A batch holds B examples as rows: ``x`` has shape (B, n(1)) and ``y`` has shape (B, n(L)).

Construction validates everything and copies the arrays read-only: the network is the ground truth
every framework is judged against, so it must neither be malformed nor change after the fact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType

import numpy as np


class ModelError(ValueError):
    """A network, batch or gradient that does not fit the page's model; the message says what and where."""


def _frozen(array: np.ndarray) -> np.ndarray:
    copy = np.array(array, copy=True)
    copy.setflags(write=False)
    return copy


def _check_float_array(value: object, what: str) -> np.ndarray:
    """Convert to a plain ndarray and check that it is a real floating array with finite entries.

    ``np.asarray`` also drops subclasses such as masked arrays, whose masked NaN would otherwise
    pass the finiteness check and reach the network.
    """
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, RuntimeError) as exc:  # ragged nested lists, tensors that refuse conversion
        raise ModelError(f"{what} is ragged or not array-like: {exc}") from None
    if arr.dtype == object:
        raise ModelError(f"{what} is ragged or holds non-numbers (numpy made an object array of it)")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ModelError(f"{what} has complex dtype {arr.dtype}; the page's model is real: use float16, float32 or float64")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ModelError(f"{what} has dtype {arr.dtype}; a real floating dtype (float16, float32, float64 or longdouble) is required")
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ModelError(
            f"{what} holds a non-finite value {arr[tuple(bad)]} at index {tuple(int(i) for i in bad)}; parameters and data must be finite"
        )
    return arr


@dataclass(frozen=True)
class Network:
    """A fully connected sigmoid network: weights w^l and biases b^l for l = 2..L.

    Attributes:
        w: mapping l -> w^l of shape (n(l), n(l-1)); ``w[l][j-1, k-1]`` is w^l_jk.
        b: mapping l -> b^l of shape (n(l),); ``b[l][j-1]`` is b^l_j.
    """

    w: Mapping[int, np.ndarray]
    b: Mapping[int, np.ndarray]

    def __init__(self, w: Mapping[int, np.ndarray], b: Mapping[int, np.ndarray]) -> None:
        if not isinstance(w, Mapping) or not isinstance(b, Mapping):
            raise ModelError(
                "weights and biases must be mappings keyed by the page's layer number l = 2..L "
                "(use Network.from_lists for 0-based sequences)"
            )
        for name, mapping in (("weights", w), ("biases", b)):
            bad_keys = [key for key in mapping if isinstance(key, bool) or not isinstance(key, (int, np.integer))]
            if bad_keys:
                raise ModelError(f"{name} must be keyed by the page's integer layer numbers l = 2..L; got keys {bad_keys!r}")
        layers = sorted(int(key) for key in w)
        if len(layers) < 1:
            raise ModelError("the network needs L >= 2 layers (an input layer and at least one computed layer); got no weights")
        expected_layers = list(range(2, len(layers) + 2))
        if layers != expected_layers:
            raise ModelError(f"weights must be keyed by layers 2..L without gaps; got keys {layers}")
        if sorted(int(key) for key in b) != expected_layers:
            raise ModelError(f"biases must be keyed by the same layers as the weights, {expected_layers}; got keys {sorted(b)}")
        ws: dict[int, np.ndarray] = {}
        bs: dict[int, np.ndarray] = {}
        dtype = None
        previous_width: int | None = None
        for l in expected_layers:
            wl = _check_float_array(w[l], f"w^{l}")
            if wl.ndim != 2:
                raise ModelError(f"w^{l} must be a matrix of shape (n({l}), n({l - 1})); got an array of shape {wl.shape}")
            if previous_width is not None and wl.shape[1] != previous_width:
                raise ModelError(
                    f"w^{l} has shape {wl.shape} but layer {l - 1} has n({l - 1}) = {previous_width} neurons; "
                    f"expected shape ({wl.shape[0]}, {previous_width})"
                )
            if 0 in wl.shape:
                zero_layer = l if wl.shape[0] == 0 else l - 1
                raise ModelError(f"layer {zero_layer} has zero width (w^{l} has shape {wl.shape}); every layer needs at least one neuron")
            bl = _check_float_array(b[l], f"b^{l}")
            if bl.shape != (wl.shape[0],):
                raise ModelError(f"b^{l} has shape {bl.shape}; expected ({wl.shape[0]},) to match n({l}) = {wl.shape[0]} from w^{l}")
            for name, arr in ((f"w^{l}", wl), (f"b^{l}", bl)):
                if dtype is None:
                    dtype = arr.dtype
                elif arr.dtype != dtype:
                    raise ModelError(f"{name} has dtype {arr.dtype} but earlier parameters have {dtype}; use one dtype throughout")
            ws[l] = _frozen(wl)
            bs[l] = _frozen(bl)
            previous_width = wl.shape[0]
        object.__setattr__(self, "w", MappingProxyType(ws))
        object.__setattr__(self, "b", MappingProxyType(bs))

    @classmethod
    def from_lists(cls, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray]) -> Network:
        """Build from 0-based sequences: ``weights[0]`` is w^2, ``weights[-1]`` is w^L."""
        if not isinstance(weights, Sequence) or not isinstance(biases, Sequence):
            raise ModelError(
                f"from_lists takes two sequences (w^2..w^L and b^2..b^L); got {type(weights).__name__} and {type(biases).__name__}"
            )
        if len(weights) != len(biases):
            raise ModelError(f"got {len(weights)} weight matrices but {len(biases)} bias vectors; one of each per layer 2..L")
        return cls({l: wl for l, wl in enumerate(weights, start=2)}, {l: bl for l, bl in enumerate(biases, start=2)})

    @property
    def depth(self) -> int:
        """L, the number of layers counting the input layer."""
        return len(self.w) + 1

    @cached_property
    def widths(self) -> tuple[int, ...]:
        """(n(1), ..., n(L)); kept once asked, since the parameters cannot change (every check asks it several times)."""
        return (self.w[2].shape[1], *tuple(self.w[l].shape[0] for l in range(2, self.depth + 1)))

    @property
    def layers(self) -> range:
        """The page's l = 2..L, the layers that have weights."""
        return range(2, self.depth + 1)

    @property
    def dtype(self) -> np.dtype:
        return self.w[2].dtype

    @property
    def parameter_count(self) -> int:
        return sum(self.w[l].size + self.b[l].size for l in self.layers)

    def astype(self, dtype: np.dtype | type) -> Network:
        """The same network with every parameter converted to ``dtype``."""
        return Network({l: v.astype(dtype) for l, v in self.w.items()}, {l: v.astype(dtype) for l, v in self.b.items()})

    def map(self, fn: object) -> Network:
        """A network whose every parameter array is ``fn(array)`` (used to round to a format)."""
        return Network({l: fn(v) for l, v in self.w.items()}, {l: fn(v) for l, v in self.b.items()})  # type: ignore[operator]


@dataclass(frozen=True)
class Batch:
    """B examples: inputs ``x`` of shape (B, n(1)) and targets ``y`` of shape (B, n(L)).

    ``micro_batches``, when given, is how a training loop that accumulates gradients splits the batch: the sizes
    (B_1, ..., B_k) of k consecutive micro-batches, each ≥ 1, summing to B. The page's gradient does not depend on
    it (the batch sum is the same sum however it is split); a path that accumulates (torch's ``accumulate``) splits
    the batch as it says, and the error bound charges the k − 1 additions of the partial sums
    (:func:`~backprop_conformance.reference.error_bound.micro_batch_accumulation_bound`). None: one piece.
    """

    x: np.ndarray
    y: np.ndarray
    micro_batches: tuple[int, ...] | None = None

    def __init__(self, x: np.ndarray, y: np.ndarray, micro_batches: Sequence[int] | None = None) -> None:
        xa = _check_float_array(x, "x (the inputs)")
        ya = _check_float_array(y, "y (the targets)")
        if xa.ndim != 2 or ya.ndim != 2:
            raise ModelError(
                f"x and y must be matrices with one example per row, shapes (B, n(1)) and (B, n(L)); got x {xa.shape} and y {ya.shape}"
            )
        if xa.shape[0] == 0:
            raise ModelError("the batch is empty; B >= 1 examples are required")
        if xa.shape[0] != ya.shape[0]:
            raise ModelError(f"x has {xa.shape[0]} examples (rows) but y has {ya.shape[0]}")
        if xa.dtype != ya.dtype:
            raise ModelError(f"x has dtype {xa.dtype} but y has {ya.dtype}; use one dtype")
        object.__setattr__(self, "x", _frozen(xa))
        object.__setattr__(self, "y", _frozen(ya))
        object.__setattr__(self, "micro_batches", None if micro_batches is None else _check_split(micro_batches, xa.shape[0]))

    @property
    def size(self) -> int:
        """B, the number of examples."""
        return self.x.shape[0]

    @property
    def pieces(self) -> tuple[slice, ...]:
        """The micro-batches as consecutive slices of the examples (one slice of all B when there is no split)."""
        sizes = self.micro_batches or (self.size,)
        ends = np.cumsum(sizes).tolist()
        return tuple(slice(end - n, end) for n, end in zip(sizes, ends, strict=True))

    def astype(self, dtype: np.dtype | type) -> Batch:
        return Batch(self.x.astype(dtype), self.y.astype(dtype), self.micro_batches)

    def map(self, fn: object) -> Batch:
        return Batch(fn(self.x), fn(self.y), self.micro_batches)  # type: ignore[operator]

    def split(self, micro_batches: Sequence[int] | None) -> Batch:
        """The same examples, split into micro-batches of the given sizes (None: in one piece)."""
        return Batch(self.x, self.y, micro_batches)


def _check_split(micro_batches: object, batch_size: int) -> tuple[int, ...]:
    """``micro_batches`` as a tuple of whole sizes ≥ 1 summing to B, or a :class:`ModelError` saying what is wrong."""
    if isinstance(micro_batches, (str, bytes)) or not isinstance(micro_batches, Sequence):
        raise ModelError(f"micro_batches must be a sequence of micro-batch sizes, got {type(micro_batches).__name__}")
    sizes = tuple(micro_batches)
    if not sizes or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in sizes):
        raise ModelError(f"micro_batches must be whole sizes ≥ 1 (at least one), got {list(sizes)!r}")
    if sum(sizes) != batch_size:
        raise ModelError(f"micro_batches {list(sizes)} sum to {sum(sizes)}, but the batch has B = {batch_size} examples")
    return tuple(int(n) for n in sizes)


def check_compatible(network: Network, batch: Batch) -> None:
    """Raise a :class:`ModelError` unless the batch fits the network's input and output widths."""
    widths = network.widths
    if batch.x.shape[1] != widths[0]:
        raise ModelError(f"x has {batch.x.shape[1]} columns but the input layer 1 has n(1) = {widths[0]} neurons")
    if batch.y.shape[1] != widths[-1]:
        raise ModelError(
            f"y has {batch.y.shape[1]} columns but the output layer {network.depth} has n({network.depth}) = {widths[-1]} neurons"
        )
    if batch.x.dtype != network.dtype:
        raise ModelError(f"the batch has dtype {batch.x.dtype} but the network has {network.dtype}; use one dtype")


@dataclass(frozen=True)
class Gradients:
    """∂C/∂w^l and ∂C/∂b^l for l = 2..L, in the same layout as the network's parameters."""

    w: Mapping[int, np.ndarray]
    b: Mapping[int, np.ndarray]

    def __init__(self, w: Mapping[int, np.ndarray], b: Mapping[int, np.ndarray]) -> None:
        object.__setattr__(self, "w", MappingProxyType({l: _frozen(v) for l, v in w.items()}))
        object.__setattr__(self, "b", MappingProxyType({l: _frozen(v) for l, v in b.items()}))

    @classmethod
    def adopt(cls, w: Mapping[int, np.ndarray], b: Mapping[int, np.ndarray]) -> Gradients:
        """Wrap arrays that nothing else refers to, marking them read-only instead of copying them.

        For producers that have just computed the arrays (the vectorized reference): the defensive copy
        the constructor makes costs as much as a backward step through a width-512 layer, for arrays
        that no one else holds. Passing arrays that someone still writes to breaks the read-only promise.
        """
        for array in (*w.values(), *b.values()):
            array.setflags(write=False)
        gradients = object.__new__(cls)
        object.__setattr__(gradients, "w", MappingProxyType(dict(w)))
        object.__setattr__(gradients, "b", MappingProxyType(dict(b)))
        return gradients

    def items(self) -> list[tuple[str, int, np.ndarray]]:
        """Every gradient array as (kind, l, array), kind "w" or "b", in layer order."""
        return [("w", l, self.w[l]) for l in sorted(self.w)] + [("b", l, self.b[l]) for l in sorted(self.b)]


def parameter_name(kind: str, l: int, index: tuple[int, ...]) -> str:
    """The page's name for one parameter, 1-based: ("w", 3, (0, 1)) -> "w^3_12", ("b", 2, (4,)) -> "b^2_5".

    Indices above 9 are separated by commas (w^3_{12,4}) so that they stay unambiguous.
    """
    one_based = [i + 1 for i in index]
    if all(i < 10 for i in one_based):
        sub = "".join(str(i) for i in one_based)
    else:
        sub = "{" + ",".join(str(i) for i in one_based) + "}"
    return f"{kind}^{l}_{sub}"
