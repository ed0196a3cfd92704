"""Where a run's time goes: self-time per category, for the benchmark and the time split it prints.

The categories are the ones a conformance run is made of: ``framework`` (the adapter's call, i.e.
the framework's own gradient), ``reference`` (the float64 backprop), ``bound`` (the error bound and
the comparison), ``generation`` (hypothesis drawing the network and data, minus the reference work
the strategy triggers). Timers nest and record *self* time, so a reference computation inside a
generation counts once, as reference. Two ``perf_counter`` calls per timer: cheap enough to stay on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter

CATEGORIES = ("framework", "reference", "bound", "generation")

_totals: defaultdict[str, float] = defaultdict(float)
_children: list[float] = []


@contextmanager
def timed(category: str) -> Iterator[None]:
    """Add the self time of the block (its time minus that of timers nested in it) to ``category``."""
    start = perf_counter()
    _children.append(0.0)
    try:
        yield
    finally:
        elapsed = perf_counter() - start
        nested = _children.pop()
        _totals[category] += elapsed - nested
        if _children:
            _children[-1] += elapsed


def take() -> dict[str, float]:
    """The totals since the last call, per category, and reset them."""
    totals = {category: _totals.get(category, 0.0) for category in CATEGORIES}
    _totals.clear()
    return totals
