"""Splitting a run's cells across CI jobs: ``--conformance-shard i/N`` runs the i-th of N deterministic slices.

A matrix job runs one slice; ``backprop-conformance merge`` (:mod:`~backprop_conformance.conformance.merge`) puts the
slices' reports back together. The split is a function of the selection alone -- the cells sorted by id, cut into N
contiguous blocks whose sizes differ by at most one -- so every job of the matrix, given the same options and the same
installed backends, computes the same split without talking to the others, and each cell runs in exactly one job.
Contiguous blocks rather than every N-th cell: cells sorted by id are grouped by backend and path, so a job imports and
compiles for few frameworks, and a JAX path's shapes are compiled once for all its dtypes in the same job.

Each shard's report records the split (:class:`Shard`): its index, the count and every cell id of the whole selection,
so that the merge can tell when a slice is missing instead of giving a verdict on part of the matrix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from backprop_conformance.conformance.cells import Cell

SPEC = re.compile(r"^\s*(?P<index>\d+)\s*/\s*(?P<count>\d+)\s*$")

T = TypeVar("T")


class ShardError(ValueError):
    """A shard specification the suite cannot use (a usage error at start-up); the message says what is allowed."""


@dataclass(frozen=True)
class Shard:
    """The ``index``-th (1-based) of ``count`` slices of a selection whose cell ids are ``selection``, sorted."""

    index: int
    count: int
    selection: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.index}/{self.count}"

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "count": self.count, "selection": list(self.selection)}


def parse(value: str, option: str) -> Shard:
    """``"2/4"`` as a :class:`Shard`; anything else is a :class:`ShardError` naming ``option`` and what it takes."""
    match = SPEC.match(value)
    if match is None:
        raise ShardError(f"{option} takes INDEX/COUNT, two whole numbers with 1 ≤ INDEX ≤ COUNT (e.g. 2/4); got {value!r}")
    index, count = int(match["index"]), int(match["count"])
    if count < 1 or not 1 <= index <= count:
        raise ShardError(f"{option} {value}: INDEX must be between 1 and COUNT, and COUNT at least 1 (e.g. 1/{max(count, 2)})")
    return Shard(index, count)


def block(items: Sequence[T], index: int, count: int) -> list[T]:
    """The ``index``-th (1-based) of ``count`` contiguous blocks of ``items``, sizes differing by at most one."""
    n = len(items)
    return list(items[(index - 1) * n // count : index * n // count])


def select(cells: Sequence[Cell], shard: Shard, option: str) -> tuple[list[Cell], Shard]:
    """The cells of ``shard`` among ``cells``, in the table's order, and the shard with the whole selection recorded.

    More shards than cells is refused, in every job of the matrix alike: some shard would test nothing and pass, and a
    matrix of more shards than cells is a mistake better named than run.
    """
    ordered = sorted(cells, key=lambda c: c.id)
    if shard.count > len(ordered):
        raise ShardError(
            f"{option} {shard.name}: the selection has {len(ordered)} cell(s), fewer than {shard.count} shards, so some shard "
            f"would test nothing; use at most {len(ordered)} shard(s) for it"
            if ordered
            else f"{option} {shard.name}: the selection has no cell to split"
        )
    mine = {c.id for c in block(ordered, shard.index, shard.count)}
    return [c for c in cells if c.id in mine], Shard(shard.index, shard.count, tuple(c.id for c in ordered))
