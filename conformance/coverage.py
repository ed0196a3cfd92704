"""Shape coverage by design: the roles a dimension plays in the kernels, their classes, and the shapes that cover them.

A shape-dependent bug lives in one kernel's handling of one dimension: a remainder loop that drops its last lane, a
second tile that is never visited, a tail scaled twice. Which dimension, and of which kernel, is the bug's *role*;
the sizes at which it shows are a *class*: a residue modulo the kernel's block (its SIMD lanes of 4, 8, 16, or a
tile of 32 or 64) and a number of blocks (the second and third block run code the first does not). A list of bugs
someone thought of does not generalise to bugs nobody listed; covering every class of every role does, for every
bug that depends on a size only through its class.

The roles, for a dense layer l with n(l − 1) inputs, n(l) outputs and a batch of B examples (:func:`role_values`):

* ``fan-in``, n(l − 1): the reduction of the forward matrix product z^l = a^{l−1} (w^l)ᵀ;
* ``fan-out``, n(l): the other side of that product, the reduction of the backward product (w^l)ᵀ δ^l that makes
  ∂C/∂a^{l−1}, and the rows of the weight gradient;
* ``batch``, B: the rows of every product, and the reduction of the weight and bias gradients over examples;
* ``elements``, B·n(l): the length of each layer's elementwise work (σ, σ′, the products of δ), which vectorised
  loops run over flat;
* ``narrow``, n(l) of a hidden layer narrower than both neighbours: a skinny product between wide ones, which BLAS
  libraries route to other kernels (a matrix–vector product at n(l) = 1);
* ``depth``, the layer index l: the first hidden layer, the output layer and the ones between run different steps
  of the backward recursion.

The classes of a role are (modulus, residue, blocks) for the moduli :data:`MODULI` and one, two and three blocks:
the size is ≡ residue (mod modulus) and spans at least that many blocks of the modulus (:func:`covered`). Covering
"at least three blocks" for every residue modulo 64 takes every size from 129 to 192, which also covers every
smaller modulus and block count; that is the design of :data:`COVERING` (:func:`covering_design`), the networks
that paths drawing their shapes freely run after hypothesis' generated examples, each once, within the profile's
number of examples (:func:`~backprop_conformance.conformance.trial.check_cell`). Paths that compile per shape run
:data:`~backprop_conformance.conformance.strategies.SHAPE_POOL` that way instead, a bounded pool chosen for the same
classes (:func:`pool_design`): it covers what a few dozen compilations can.

``benchmarks/shape_coverage.py`` measures what this buys against a family of shape-dependent bugs defined by exactly
these parameters (``tests/shape_mutants.py``), on a sample drawn after the design was frozen.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

Shape = tuple[tuple[int, ...], int]
"""(widths n(1), ..., n(L); batch size B)."""

ROLES: tuple[str, ...] = ("fan-in", "fan-out", "batch", "elements", "narrow", "depth")

MODULI: tuple[int, ...] = (4, 8, 16, 32, 64)
"""SIMD lanes of 4, 8 and 16 floats, and register or cache tiles of 32 and 64: where kernels change code paths."""

BLOCKS: tuple[int, ...] = (1, 2, 3)
"""One, two and three blocks of a modulus: the first block alone, a second one, and a third (past two tiles)."""

ROLE_MODULI: dict[str, tuple[int, ...]] = {
    "fan-in": MODULI,
    "fan-out": MODULI,
    "batch": MODULI,
    "elements": MODULI,
    "narrow": (4, 8),
    "depth": (4, 8),
}
"""The moduli each role is covered for. A narrow layer is narrow: its classes stop at three blocks of 8 (24 wide, in
networks up to 192 wide); the depth of a network stops at 8 layers, so its positions are covered modulo 4 and 8
(every position 2..8)."""

LARGEST = 3 * max(MODULI)
"""192: three blocks of the largest modulus, the size up to which every class of a dimension can be reached."""


def role_values(shape: Shape) -> dict[str, frozenset[int]]:
    """The sizes each role takes in a network of these widths and batch size (see the module docstring)."""
    widths, batch = shape
    L = len(widths)
    layers = range(2, L + 1)
    narrow = {widths[l - 1] for l in range(2, L) if widths[l - 1] < widths[l - 2] and widths[l - 1] < widths[l]}
    return {
        "fan-in": frozenset(widths[l - 2] for l in layers),
        "fan-out": frozenset(widths[l - 1] for l in layers),
        "batch": frozenset({batch}),
        "elements": frozenset(batch * widths[l - 1] for l in layers),
        "narrow": frozenset(narrow),
        "depth": frozenset(layers),
    }


def class_of(size: int, modulus: int) -> tuple[int, int]:
    """(residue, blocks): the size's residue modulo ``modulus`` and how many of its blocks it spans, at most 3."""
    return size % modulus, min(-(-size // modulus), max(BLOCKS))


def covered(shapes: Iterable[Shape]) -> set[tuple[str, int, int, int]]:
    """Every (role, modulus, residue, blocks) the shapes reach: a size of the role ≡ residue with at least that many blocks.

    "At least": a size in its third block also reaches the first two of its residue, since a bug that needs a second
    block is there in the third too.
    """
    found: set[tuple[str, int, int, int]] = set()
    for shape in shapes:
        for role, sizes in role_values(shape).items():
            for size in sizes:
                for modulus in ROLE_MODULI[role]:
                    residue, blocks = class_of(size, modulus)
                    found.update((role, modulus, residue, b) for b in range(1, blocks + 1))
    return found


def reachable(max_depth: int, max_width: int, max_batch: int) -> set[tuple[str, int, int, int]]:
    """Every class some network within these limits reaches: the target of a covering design."""
    space: set[tuple[str, int, int, int]] = set()
    highs = {
        "fan-in": max_width,
        "fan-out": max_width,
        "batch": max_batch,
        "elements": max_batch * max_width,
        "narrow": max_width - 1,
        "depth": max_depth,
    }
    for role, high in highs.items():
        low = 2 if role == "depth" else 1
        for modulus in ROLE_MODULI[role]:
            for size in range(low, min(high, 3 * modulus) + 1):
                residue, blocks = class_of(size, modulus)
                space.update((role, modulus, residue, b) for b in range(1, blocks + 1))
    return space


def missing(shapes: Iterable[Shape], max_depth: int, max_width: int, max_batch: int) -> set[tuple[str, int, int, int]]:
    """The classes within the limits that ``shapes`` do not reach."""
    return reachable(max_depth, max_width, max_batch) - covered(shapes)


def _cycle(values: Sequence[int], start: int, count: int) -> list[int]:
    return [values[(start + i) % len(values)] for i in range(count)]


def covering_design(max_depth: int = 8, high: int = LARGEST) -> tuple[Shape, ...]:
    """Networks that together reach every class of every role within depth ``max_depth``, widths and batches up to ``high``.

    One large dimension per product, the others small, so that every network costs about what a generated example
    does:

    * **batch** (64 networks): every B from ``high`` − 63 to ``high`` (129 to 192: every residue modulo 64 in its
      third block), each with one wide layer between two of width 2, ``(2, W, 2, ..., 1)``, whose W takes every size
      from ``high`` − 63 to ``high`` as a fan-out (layer 2) and as a fan-in (layer 3), and whose output layer does
      B·1 elementwise operations, so the elementwise work takes every residue of the batch too; small layers
      (2 to 5 wide) come between, so that the depths cycle from 4 to ``max_depth`` and every position in depth
      occurs. Width 2, not 1, beside the wide layer, and depth 4 at least: a kernel that transposes a tile (of a
      weight, of δ^l, of the weight gradient) shows only where the tile has a side of 2 or more, so every wide size
      and every batch meets a neighbour 2 wide. Networks of depth 2 and 3 are hypothesis' to draw;
    * **narrow** (8 networks, B = 1): every narrow width from 1 to 24 between two wide layers, three per network,
      each a skinny product between wide ones; their wide layers take the sizes that a depth-2 network of the first
      family gave one role only.
    """
    tops = list(range(high - 63, high + 1))
    shapes: list[Shape] = []
    for i, batch in enumerate(tops):
        wide = tops[(i * 37) % len(tops)]  # another order than the batch's: the two roles' residues do not move together
        depth = 4 + i % (max_depth - 3)
        tail = [2 + (i + k) % 4 for k in range(depth - 4)]
        shapes.append(((2, wide, 2, *tail, 1), batch))
    reached = covered(shapes)
    needs_in = [w for w in tops if ("fan-in", 64, w % 64, 3) not in reached]
    needs_out = [w for w in tops if ("fan-out", 64, w % 64, 3) not in reached]
    narrows = list(range(1, 3 * max(ROLE_MODULI["narrow"]) + 1))
    per = (max_depth - 1) // 2
    for j in range(-(-len(narrows) // per)):
        widths = [needs_in.pop(0) if needs_in else tops[-1 - j]]
        for n in narrows[j * per : (j + 1) * per]:
            wide = needs_out.pop(0) if needs_out else needs_in.pop(0) if needs_in else tops[-1 - j]
            widths += [n, wide]
        shapes.append(((*widths[: max_depth - 1], 1), 1))
    return tuple(shapes)


def dense_design(max_depth: int = 8, high: int = LARGEST) -> tuple[Shape, ...]:
    """Networks that each reach many classes at once, for a pool: a bounded number of shapes must do what
    :func:`covering_design`'s cheap ones do in 72.

    One per batch size from ``high`` − 63 to ``high``, depths cycling from 2 to ``max_depth``; the widths alternate
    between wide ones (the same 64 sizes, each placed where it is still missing as a fan-in or a fan-out) and
    narrow ones (1 to 24, hidden ones between two wide layers), and the output is 1 wide (the elementwise work B·1
    takes the batch's residue, and the cost fits in float16). A network then carries classes of every role, at
    about twenty times the arithmetic of a covering one: affordable for a few dozen pooled shapes, whose paths
    compile once per shape, not for every example of every path.
    """
    tops = list(range(high - 63, high + 1))
    narrows = list(range(1, 3 * max(ROLE_MODULI["narrow"]) + 1))
    needs_in, needs_out = list(tops), list(tops)
    hidden_narrow, input_narrow = itertools.cycle(narrows[::-1]), itertools.cycle(narrows)
    shapes: list[Shape] = []
    for i, batch in enumerate(tops):
        depth = 2 + i % (max_depth - 1)
        widths: list[int] = []
        for position in range(depth):
            if (depth - 1 - position) % 2 == 0:
                widths.append(1 if position == depth - 1 else next(input_narrow if position == 0 else hidden_narrow))
                continue
            fan_in, fan_out = position < depth - 1, position > 0
            wanted = [w for w in tops if (w in needs_in or not fan_in) and (w in needs_out or not fan_out)]
            either = [w for w in tops if (fan_in and w in needs_in) or (fan_out and w in needs_out)]
            width = (wanted or either or tops[i:] + tops[:i])[0]
            widths.append(width)
            if fan_in and width in needs_in:
                needs_in.remove(width)
            if fan_out and width in needs_out:
                needs_out.remove(width)
        shapes.append((tuple(widths), batch))
    return tuple(shapes)


CORNERS: tuple[Shape, ...] = (((1, 1), 1), ((2, 2), 3), ((3, 3, 3, 3, 3, 3, 3), 4))
"""The classic corners a pool keeps whatever its size: one neuron, two units, a deep square network."""


def weights(space: set[tuple[str, int, int, int]]) -> dict[tuple[str, int, int, int], float]:
    """Each class's share when every role counts alike, every modulus of a role alike, and every class of those alike:
    the prior a pool is chosen by, favouring no particular bug."""
    groups: dict[tuple[str, int], int] = {}
    for role, modulus, _, _ in space:
        groups[(role, modulus)] = groups.get((role, modulus), 0) + 1
    return {c: 1 / len(ROLES) / len(ROLE_MODULI[c[0]]) / groups[(c[0], c[1])] for c in space}


COMPILE_SECONDS = 0.066
"""What one more pooled shape costs a run per cell, before any example: JAX's tracing, lowering and cache lookup of
its program in a warm run. Measured once, on the machine the pool was chosen on: scaling every cost alike changes
no choice of :func:`pool_design`, so only the ratios of these costs matter."""

EXAMPLE_SECONDS = (0.004, 0.033e-6)
"""What one example of a shape costs, fixed and per multiply–add of its forward pass: the framework's call, the
reference and the bound, measured as :data:`COMPILE_SECONDS` was."""


def pool_design(size: int, candidates: Sequence[Shape], space: set[tuple[str, int, int, int]], examples: int = 100) -> tuple[Shape, ...]:
    """A pool of ``size`` shapes for paths that compile per shape: :data:`CORNERS`, then, greedily, the candidate that
    adds the most share of ``space`` (:func:`weights`) per second it costs a cell of ``examples`` examples -- one
    compilation, and its share of the examples (:data:`COMPILE_SECONDS`, :data:`EXAMPLE_SECONDS`). Dense networks
    reach many classes, but every pooled example that draws one pays their arithmetic; the cost keeps the pool's
    networks about as cheap as the classes allow. Ordered from the cheapest to the largest, so that a failure on a
    pooled path shrinks toward the smallest pooled network."""
    share = weights(space)
    chosen = list(CORNERS)
    reached = covered(chosen)
    remaining = [s for s in candidates if s not in chosen]
    classes = {s: covered([s]) for s in remaining}  # once per candidate, not once per candidate and round: it ran at every import
    fixed, per_mac = EXAMPLE_SECONDS

    def value(shape: Shape) -> tuple[float, int]:
        # fsum: a set of string tuples iterates in an order PYTHONHASHSEED picks, and a rounded sum in that order
        # could break a near-tie differently in each process (xdist workers, a replay); the exact sum cannot.
        gain = math.fsum(share.get(c, 0.0) for c in classes[shape] - reached)
        seconds = COMPILE_SECONDS + examples / size * (fixed + per_mac * _cost(shape))
        return gain / seconds, -_cost(shape)

    while len(chosen) < size and remaining:
        best = max(remaining, key=value)
        chosen.append(best)
        reached |= classes[best]
        remaining.remove(best)
    return tuple(sorted(chosen, key=_cost))


def _cost(shape: Shape) -> int:
    """Multiply–adds of one forward pass: what a shape costs to compute, the order a pool is kept in."""
    widths, batch = shape
    return batch * sum(a * b for a, b in itertools.pairwise(widths))


COVERING: tuple[Shape, ...] = covering_design()
"""The covering design of the default limits: 72 networks, depths 2 to 8, widths and batches to :data:`LARGEST`."""
