"""Hypothesis strategies for whole networks: architectures, scales, data and targets.

Why each strategy below is built once per set of arguments (``functools.cache`` over ``st.composite``), and so is
every strategy they draw from (the module's ``_``-prefixed constants and caches): hypothesis validates every
strategy object the first time it is drawn from, and a strategy made afresh for each example is a new object
each time. Reusing the composites, and the strategies inside them, pays that validation once instead of once per
example, which was most of the generation time. Neither changes a draw: the same networks come out either way
(checked on derandomized draws).

Why the values come from a seeded numpy generator and not from hypothesis' own float strategies:
a depth-8, width-64 network has ~30,000 parameters, and drawing each through hypothesis would
dominate the run time. Hypothesis draws the *structure* (depth, widths, batch size, scales, kind of
targets) and a seed; shrinking acts on the structure, so a failure shrinks to the smallest network,
batch and scale that still fails, which is what a bug report needs.

The corners the strategies reach, and why each matters:

* depth L from 2 to 8, half of the networks at L ≥ 5: errors compound through the backward recursion;
* widths from 1 to 96 and batches from 1 to 24, steered to the sizes where kernels change code paths
  (:data:`BLOCKS`: both sides of multiples of 4, 8, 16 and 64, every remainder, more than one 32- or
  64-wide block), with width-1 layers and equal adjacent widths (a transposed square weight gradient has
  the right shape and is only caught when the layer is square). Drawn shapes reach a kernel's classes by
  chance; every cell also runs a covering design (:func:`covering`, :mod:`~backprop_conformance.conformance.coverage`)
  that reaches every class of every role by construction, batches and widths up to 192 included;
* batch 1, and odd and even batches above 12 (a gradient taken from one example only, a mean instead of
  a sum, an odd tail dropped);
* weight and bias scales up to saturation: |z| beyond 40 in float32 and beyond 800 in float64, where
  σ′ computed as a(1 − a) degrades and then vanishes;
* targets equal to the outputs (zero residual), binary targets, and targets within rounding of the
  outputs, besides uniform ones.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from backprop_conformance.conformance import coverage
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.conformance.timing import timed
from backprop_conformance.reference.dtypes import float_format, round_to
from backprop_conformance.reference.model import Batch, Network
from backprop_conformance.reference.vectorized import activation, weighted_input


@dataclass(frozen=True)
class Limits:
    """The largest network the strategies generate, the pool of shapes most examples of a compiling path take, and the
    covering design every path runs first.

    The default limits are the design card's corners; the ``large`` hypothesis profile selects
    :data:`LARGE_LIMITS`, which stress memory and time rather than numerics.
    """

    max_depth: int
    max_width: int
    max_batch: int
    pool: tuple[tuple[tuple[int, ...], int], ...]
    free_odds: int | None = None
    covering: tuple[tuple[tuple[int, ...], int], ...] = ()
    """The shapes a path that draws its shapes freely runs first, each once (:data:`~backprop_conformance.conformance.coverage.COVERING`):
    every class of every role a kernel gives a dimension, reached in the first examples of every cell. A path that
    compiles per shape runs its :attr:`pool` that way instead. Empty: no covering phase (the ``large`` profile)."""
    """On a path that compiles per shape, about one example in this many draws its shape freely from the full
    limits instead of from the pool (:func:`_coin`); None keeps those paths on the pool, which covers every
    shape class, so that a run pays a bounded number of compilations. Each free shape on a compiling path costs
    a compilation."""


Z_REACH: dict[str, float] = {
    "float64": 1000.0,
    "float32": 100.0,
    "bfloat16": 100.0,
    "float16": 30.0,
    "mixed-bfloat16": 100.0,
    "mixed-float16": 30.0,
}
"""How far into saturation biases reach, per format: beyond 800 in float64 and 40 in float32/bfloat16
(the design card's corners). float16 stops earlier: its range (65504) must hold every intermediate."""

OVERFLOW_MARGIN = 64.0
"""A case is rejected when any reference value exceeds finfo.max / OVERFLOW_MARGIN of the format:
it would overflow in the framework for reasons that have nothing to do with gradients."""

WEIGHT_SCALES = (1.0, 0.1, 4.0, 30.0)
INPUT_SCALES = (1.0, 0.01, 10.0)
TARGET_KINDS = ("uniform", "outputs", "binary", "near-outputs")


BLOCKS = (4, 8, 16, 32, 64)
"""The sizes at which kernels change code paths: SIMD lanes of 4, 8 and 16 floats, and register or cache
tiles of 32 and 64. A dimension that is not a multiple of its kernel's block runs a remainder loop; one
that exceeds a block runs a second one. Bugs live there: a remainder loop that drops its last lane, a
second tile that is never visited, a batch whose odd tail is lost."""

POOL_SIZE = 48
"""How many shapes a path that compiles per shape draws from: a run pays one compilation per shape and dtype."""

SHAPE_POOL: tuple[tuple[tuple[int, ...], int], ...] = coverage.pool_design(
    POOL_SIZE, coverage.dense_design() + coverage.COVERING, coverage.reachable(8, coverage.LARGEST, coverage.LARGEST)
)
"""The shapes of the paths that compile per shape: the classic corners (one neuron, two units, a deep square network),
then the networks of the covering design and of :func:`~backprop_conformance.conformance.coverage.dense_design` that
add the most classes of the roles a dimension plays in the kernels per second they cost
(:func:`~backprop_conformance.conformance.coverage.pool_design`), cheapest first, so that a failure shrinks toward the
smallest pooled network. They reach batches and widths in their third 64-wide block, every class modulo 4, 8 and 16
of every role, and most of the larger moduli's; the batch, one per network, least (``python -m
benchmarks.shape_coverage --classes`` prints how many of each role's classes).

Why a pool: compiling frameworks pay per *shape*. ``jax.jit`` compiles each new (widths, batch) once,
while a repeated shape runs in about a millisecond. Values, scales and targets are drawn fresh for every
example either way; only the shape is reused, so the cost of a run is bounded by the pool instead of
growing with the number of examples. Paths that do not compile per shape draw their shapes freely, after the
covering design.
"""

LARGE_POOL: tuple[tuple[tuple[int, ...], int], ...] = (
    ((1024, 1024), 512),
    ((3, 1024, 1), 512),
    ((256,) * 16, 64),
    ((1024, 512, 1024, 1), 512),
    ((1024,) * 16, 512),
)
"""The ``large`` profile's pool: each limit reached alone, and all of them at once (width 1024, depth 16,
batch 512: 16.8 million parameters)."""

DEFAULT_LIMITS = Limits(max_depth=8, max_width=96, max_batch=24, pool=SHAPE_POOL, covering=coverage.COVERING)
THOROUGH_LIMITS = Limits(max_depth=8, max_width=96, max_batch=24, pool=SHAPE_POOL, free_odds=512, covering=coverage.COVERING)
"""The ``thorough`` profile's: 2,000 examples per cell can afford compiling some shapes outside the pool too.

How many: once hypothesis has drawn a free shape it mutates that example into others, so the free shapes of a
cell far outnumber 2,000/``free_odds`` (2,000 examples, two runs each: odds 32 gave 191 and 280 distinct free
shapes, 128 gave 81 and 70, 512 gave 23 and 7). With the former odds of 16 a JAX cell of the thorough profile
spent nearly all of its time compiling free shapes; at 512 the profile's run of torch and JAX with ``-n 2`` fits
its time budget (docs/speed.md)."""
LARGE_LIMITS = Limits(max_depth=16, max_width=1024, max_batch=512, pool=LARGE_POOL)


_BOOLEANS = st.booleans()
_SEEDS = st.integers(0, 2**32 - 1)
_WEIGHT_SCALES = st.sampled_from(WEIGHT_SCALES)
_BIAS_SCALES = {dtype: st.sampled_from((1.0, 0.1, 10.0, reach)) for dtype, reach in Z_REACH.items()}
_INPUT_SCALES = st.sampled_from(INPUT_SCALES)
_TARGET_KINDS = st.sampled_from(TARGET_KINDS)


@functools.cache
def _depths(max_depth: int) -> st.SearchStrategy[int]:
    return st.one_of(st.integers(2, min(4, max_depth)), st.integers(min(5, max_depth), max_depth))


@functools.cache
def _kinds_and_sizes(high: int) -> tuple[st.SearchStrategy[str], dict[str, st.SearchStrategy[int]]]:
    """:func:`dimension`'s two choices for sizes up to ``high``: the kind, then a size of that kind."""
    kinds = sizes(high)
    return st.sampled_from(tuple(kinds)), {kind: st.sampled_from(values) for kind, values in kinds.items()}


@functools.cache
def _pooled(limits: Limits) -> st.SearchStrategy[tuple[tuple[int, ...], int]]:
    return st.sampled_from(limits.pool)


@functools.cache
def sizes(high: int) -> dict[str, tuple[int, ...]]:
    """The sizes 1..``high`` by kind, each kind sorted small to large (so that shrinking goes to small sizes).

    * ``small``: 1 to 8 (width 1, B = 1, the sub-vector sizes);
    * ``around a block``: q·m − 1, q·m and q·m + 1 for every block m of :data:`BLOCKS`: both sides of a multiple;
    * ``remainder``: every size from 9 up, so every remainder of 4, 8 and 16 equally often (fan-ins ≡ 7 mod 8
      and ≥ 15 among them);
    * ``beyond a block``: more than one 32-wide block, up to ``high`` (more than one 64-wide block when ``high``
      exceeds 64); for a ``high`` under 66, its upper half.

    A kind with no size in 1..``high`` (no block fits under 4) is left out rather than drawn empty.
    """
    around = sorted({q * m + r for m in BLOCKS for q in range(1, high // m + 1) for r in (-1, 0, 1)} & set(range(1, high + 1)))
    kinds = {
        "small": tuple(range(1, min(8, high) + 1)),
        "around a block": tuple(around),
        "remainder": tuple(range(min(9, high), high + 1)),
        "beyond a block": tuple(range(min(33, high // 2 + 1), high + 1)),
    }
    return {kind: values for kind, values in kinds.items() if values}


@functools.cache
@st.composite
def dimension(draw: st.DrawFn, high: int, label: str) -> int:
    """One width or batch size in 1..``high``, steered to the sizes where kernels change paths (:data:`BLOCKS`).

    Two choices: the kind of size (:func:`sizes`), each kind equally likely so that a hundred examples
    reach every kind many times over, then a size of that kind. Few choices per size keep hypothesis'
    bookkeeping per example small: its cost grows with the number of choices an example makes.
    """
    kinds, of_kind = _kinds_and_sizes(high)
    kind = draw(kinds, label=f"{label}: kind")
    return draw(of_kind[kind], label=label)


@functools.cache
@st.composite
def architectures(draw: st.DrawFn, limits: Limits = DEFAULT_LIMITS) -> tuple[int, ...]:
    """Widths (n(1), ..., n(L)); each layer either repeats the previous width (a square layer) or draws a new one.

    Half of the networks are shallow (L = 2..4) and half deep (L ≥ 5), where errors compound through the
    backward recursion; widths come from :func:`dimension`.
    """
    depth = draw(_depths(limits.max_depth), label="L")
    widths = [draw(dimension(limits.max_width, "n(1)"))]
    for l in range(2, depth + 1):
        repeat = draw(_BOOLEANS, label=f"n({l}) = n({l - 1})")
        widths.append(widths[-1] if repeat else draw(dimension(limits.max_width, f"n({l})")))
    return tuple(widths)


def equal_hidden(shape: tuple[tuple[int, ...], int]) -> tuple[tuple[int, ...], int]:
    """``shape`` with every hidden layer as wide as its first, (n(1), h, ..., h, n(L)): the networks a path that runs its
    hidden layers as a scan over stacked weights can take (:attr:`~backprop_conformance.adapters.base.Capabilities.layer_scan_paths`).

    A network without a hidden layer (L = 2) gets one as wide as its output, (n(1), n(2), n(2)): a scan needs a
    hidden layer to start from. Used to map the covering design and the shape pool, so that such a path runs the
    same batches, inputs, outputs and first hidden widths as every other path.
    """
    widths, batch_size = shape
    if len(widths) == 2:
        return (widths[0], widths[1], widths[1]), batch_size
    return (widths[0], *(widths[1],) * (len(widths) - 2), widths[-1]), batch_size


@functools.cache
def equal_hidden_shapes(shapes: tuple[tuple[tuple[int, ...], int], ...]) -> tuple[tuple[tuple[int, ...], int], ...]:
    """:func:`equal_hidden` of each shape, in order, each once (two shapes may map to the same)."""
    return tuple(dict.fromkeys(equal_hidden(shape) for shape in shapes))


@functools.cache
def _scan_depths(max_depth: int) -> st.SearchStrategy[int]:
    return st.one_of(st.integers(3, min(4, max_depth)), st.integers(min(5, max_depth), max_depth))


@functools.cache
@st.composite
def equal_hidden_architectures(draw: st.DrawFn, limits: Limits = DEFAULT_LIMITS) -> tuple[int, ...]:
    """Widths (n(1), h, ..., h, n(L)), L ≥ 3: one hidden width h for every hidden layer, for a path that scans them.

    Half of the networks have L ≥ 5, so that the scan runs over two or more stacked layers (L − 3 of them: the first
    hidden layer, fed by n(1) inputs, and the output layer are outside the stack), where a scan step that reads the
    wrong slice of the stack shows; L = 3 scans none, and L = 4 one.
    """
    depth = draw(_scan_depths(limits.max_depth), label="L")
    first = draw(dimension(limits.max_width, "n(1)"))
    hidden = draw(dimension(limits.max_width, "h, every hidden width"))
    return (first, *(hidden,) * (depth - 2), draw(dimension(limits.max_width, "n(L)")))


@functools.cache
def _pooled_equal_hidden(limits: Limits) -> st.SearchStrategy[tuple[tuple[int, ...], int]]:
    return st.sampled_from(equal_hidden_shapes(limits.pool))


@functools.cache
@st.composite
def shapes(draw: st.DrawFn, limits: Limits = DEFAULT_LIMITS, pooled: bool = True, scanned: bool = False) -> tuple[tuple[int, ...], int]:
    """(widths, batch size): free for a path that does not compile per shape; for one that does, from the
    limits' pool (ordered small to large, so that a failure shrinks toward the smallest pooled network),
    or now and then free where the limits allow it (:attr:`Limits.free_odds`). ``scanned``: every hidden layer
    of one width (:func:`equal_hidden`), the pool mapped to that form."""
    if pooled and (limits.free_odds is None or not _coin(draw, limits.free_odds)):
        return draw(_pooled_equal_hidden(limits) if scanned else _pooled(limits), label="pooled shape")
    widths = draw(equal_hidden_architectures(limits) if scanned else architectures(limits))
    return widths, draw(dimension(limits.max_batch, "B"))


def _coin(draw: st.DrawFn, odds: int) -> bool:
    """True about once in ``odds`` draws: a uniform number from a numpy generator seeded by hypothesis, below 1/``odds``.

    Not ``integers(0, odds - 1) == k`` for some k: hypothesis favours 0, the bounds and values it has seen before,
    so such a draw came up in 13-26 % of 2,000 examples for odds of 16 to 32 (measured), and every free shape on a
    compiling path costs a compilation. Seeding a generator maps whatever seeds hypothesis favours to uniform
    numbers; the seed shrinks toward 0, whose number (0.64) is not a free shape.
    """
    seed = draw(_SEEDS, label="free-shape coin")
    return float(np.random.default_rng(seed).random()) * odds < 1


MAX_MICRO_BATCHES = 8
"""The most micro-batches a path that accumulates gradients is given (at most B): gradient-accumulation loops use a few."""


@functools.cache
def _micro_batch_counts(batch_size: int) -> st.SearchStrategy[int]:
    return st.integers(1, min(batch_size, MAX_MICRO_BATCHES))


@functools.cache
def _cuts(batch_size: int, count: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(1, batch_size - 1), min_size=count, max_size=count, unique=True)


def even_split(batch_size: int, k: int) -> tuple[int, ...]:
    """B examples in k micro-batches as equal as they can be, the larger first (``numpy.array_split``'s sizes)."""
    return tuple(batch_size // k + (1 if i < batch_size % k else 0) for i in range(k))


def _micro_batches(draw: st.DrawFn, batch_size: int) -> tuple[int, ...]:
    """k micro-batch sizes summing to B: k from 1 to :data:`MAX_MICRO_BATCHES`, then an even split or cuts anywhere
    (an uneven split: a last micro-batch of one, a first that holds nearly everything). Shrinks toward one piece."""
    k = draw(_micro_batch_counts(batch_size), label="micro-batches k")
    if k == 1 or draw(_BOOLEANS, label="uneven split"):
        cuts = sorted(draw(_cuts(batch_size, k - 1), label="micro-batch cuts")) if k > 1 else []
        ends = [*cuts, batch_size]
        return tuple(end - start for start, end in zip([0, *cuts], ends, strict=True))
    return even_split(batch_size, k)


@functools.cache
@st.composite
def problems(
    draw: st.DrawFn, dtype: str, limits: Limits = DEFAULT_LIMITS, pooled: bool = True, split: bool = False, scanned: bool = False
) -> Problem:
    """A network and batch in ``dtype`` (held in float64, see :class:`Problem`); ``pooled`` for a path that compiles per shape,
    ``split`` for one that accumulates gradients over micro-batches (the batch then carries a drawn split,
    :attr:`~backprop_conformance.reference.model.Batch.micro_batches`), ``scanned`` for one that runs its hidden layers
    as a scan (every hidden layer of one width, :func:`equal_hidden`)."""
    float_format(dtype)
    shape = draw(shapes(limits, pooled, scanned))
    weight_scale = draw(_WEIGHT_SCALES, label="weight scale")
    bias_scale = draw(_BIAS_SCALES[dtype], label="bias scale")
    input_scale = draw(_INPUT_SCALES, label="input scale")
    targets = draw(_TARGET_KINDS, label="targets")
    seed = draw(_SEEDS, label="seed")
    problem = build(dtype, shape, weight_scale, bias_scale, input_scale, targets, seed)
    assume(_fits(problem))
    return problem.split(_micro_batches(draw, problem.batch.size)) if split else problem


COVERING_RETRIES = 8
"""Draws at unit scales a covering shape gets when its cycled scales overflow the format, before it is a design error."""


@functools.cache
def covering(dtype: str, shapes: tuple[tuple[tuple[int, ...], int], ...]) -> tuple[Problem, ...]:
    """One problem per shape of a covering design, in ``dtype``: the examples a cell runs first (:attr:`Limits.covering`).

    The shapes are the design's. The values are drawn as a generated example's are, from a generator seeded by the
    example's position, at the scales and targets where a wrong kernel shows most: weights of scale 1 or 4/√n,
    biases of 1 or 0.1, unit inputs, and uniform or binary targets, alternating. Not the saturating scales, nor
    targets equal to (or within rounding of) the outputs, which hypothesis' draws reach: a covering example is
    there to find a kernel that mishandles a size, and a saturated network or a zero residual makes every gradient
    (nearly) zero, which a dropped lane or a skipped block leaves unchanged. Fixed seeds make the design the same
    in every run (a failure of it is replayed from its case files, like any other). A draw that would overflow the
    format is drawn again at unit scales (:data:`COVERING_RETRIES` times; a design whose shape cannot hold the
    format's values at all is an error, which the project's tests check for every format). Cached per dtype and
    design: every cell of a dtype runs the same problems, and the reference's trace of each is computed once.
    """
    made = []
    for i, shape in enumerate(shapes):
        problem = build(dtype, shape, (1.0, 4.0)[i % 2], (1.0, 0.1)[(i // 2) % 2], 1.0, ("uniform", "binary")[(i // 4) % 2], i, shared=True)
        for retry in range(1, COVERING_RETRIES + 1):
            if _fits(problem):
                break
            problem = build(dtype, shape, 1.0, 1.0, 1.0, "uniform", i + 1_000_000 * retry, shared=True)
        else:
            if not _fits(problem):
                raise ValueError(f"the covering shape {shape} cannot hold a {dtype} problem within the format's range")
        made.append(problem)
    return tuple(made)


@functools.cache
def covering_split(dtype: str, shapes: tuple[tuple[tuple[int, ...], int], ...]) -> tuple[Problem, ...]:
    """:func:`covering`'s problems for a path that accumulates gradients, each batch split into micro-batches: k cycles
    through 2, 3 and 5 (at most B), the split even for every other problem and uneven for the rest (a first
    micro-batch of one example, the others even), so that the design reaches both in every run."""
    made = []
    for i, problem in enumerate(covering(dtype, shapes)):
        B = problem.batch.size
        k = min(B, (2, 3, 5)[i % 3])
        sizes = even_split(B, k) if i % 2 == 0 or k < 2 else (1, *even_split(B - 1, k - 1))
        made.append(problem.split(sizes))
    return tuple(made)


def design(
    dtype: str, shapes: tuple[tuple[tuple[int, ...], int], ...], *, split: bool = False, scanned: bool = False
) -> tuple[Problem, ...]:
    """The designed problems a cell runs after its generated ones: :func:`covering` over ``shapes`` (the covering design,
    or the pool of a path that compiles per shape), split into micro-batches for a path that accumulates
    (:func:`covering_split`), each shape's hidden layers made equal for a path that scans them (:func:`equal_hidden`)."""
    designed = equal_hidden_shapes(shapes) if scanned else shapes
    return (covering_split if split else covering)(dtype, designed)


def build(
    dtype: str,
    shape: tuple[tuple[int, ...], int],
    weight_scale: float,
    bias_scale: float,
    input_scale: float,
    targets: str,
    seed: int,
    *,
    shared: bool = False,
) -> Problem:
    """The network and batch of one example, from its shape, scales, kind of targets and seed (see the module docstring);
    ``shared`` for a problem judged in many cells (:attr:`Problem.shared`)."""
    widths, batch_size = shape
    rng = np.random.default_rng(seed)
    weights = [
        _in_format(dtype, rng.standard_normal((widths[i + 1], widths[i])) * weight_scale / np.sqrt(widths[i]))
        for i in range(len(widths) - 1)
    ]
    biases = [_in_format(dtype, rng.standard_normal(widths[i + 1]) * bias_scale) for i in range(len(widths) - 1)]
    x = _in_format(dtype, rng.standard_normal((batch_size, widths[0])) * input_scale)
    with timed("reference"):
        outputs = _outputs(weights, biases, x)
    if targets == "uniform":
        y = rng.uniform(size=outputs.shape)
    elif targets == "binary":
        y = rng.integers(0, 2, size=outputs.shape).astype(np.float64)
    elif targets == "outputs":
        y = outputs
    else:
        y = outputs * (1 + rng.standard_normal(outputs.shape) * 4 * float_format(dtype).u)
    return Problem(Network.from_lists(weights, biases), Batch(x, _in_format(dtype, y)), dtype, shared)


def _in_format(dtype: str, values: np.ndarray) -> np.ndarray:
    """``values`` rounded to ``dtype`` and held in float64, as :meth:`Problem.rounded` holds them.

    The strategy rounds each array as it draws it and builds the :class:`Problem` once: rounding a whole
    network twice (once before the outputs are known, once with the targets) and validating it twice was a
    fifth of the generation time, and the values are the same either way.
    """
    return round_to(dtype, values).astype(np.float64)


def _outputs(weights: list[np.ndarray], biases: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """a^L for every example, by the reference's own equations: the forward pass alone, which is all the targets need."""
    a = x
    for w, b in zip(weights, biases, strict=True):
        a, _ = activation(weighted_input(w, a, b))
    return a


def _fits(problem: Problem) -> bool:
    """True when no reference value comes near the format's overflow threshold."""
    limit = float_format(problem.dtype).largest / OVERFLOW_MARGIN
    with timed("reference"):
        trace = problem.trace
    arrays = [*trace.z.values(), *trace.dC_da.values(), *trace.delta.values(), *(g for _, _, g in trace.gradients.items())]
    return all(float(np.max(np.abs(v))) <= limit for v in arrays) and abs(trace.cost) <= limit
