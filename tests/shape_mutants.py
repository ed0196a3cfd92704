"""A parametrised family of shape-dependent bugs: the measure of whether shape coverage generalises.

Each mutant is the correct hand-written backprop of :mod:`mutants` with one corruption that shows only in some
shapes, defined by five parameters -- the same ones the suite's covering design is built on
(:mod:`backprop_conformance.conformance.coverage`), and nothing more specific:

* the **role** of the dimension whose kernel is wrong: ``fan-in`` (the forward product's reduction over
  a^{l−1}), ``fan-out`` (the rows of ∂C/∂w^l and the entries of ∂C/∂b^l), ``batch`` (the sums over examples of the
  weight and bias gradients), ``elements`` (σ′ over a layer's B·n(l) values, as a flat loop), ``narrow`` (the
  forward product out of a hidden layer narrower than both neighbours) or ``depth`` (the weight gradient of layer l,
  flattened);
* the **modulus** m (4, 8, 16, 32, 64) and the **residue** r: the bug shows when the role's size d ≡ r (mod m) ...
* ... and d ≥ the **threshold**, (blocks − 1)·m + 1 for one, two or three blocks;
* the **kind** of corruption, along that dimension: ``dropped`` (its last lane left out), ``scaled`` (its tail, the
  last d mod m lanes or the last block, multiplied by 1 + 2^−4), ``skipped`` (its second block, lanes m..2m − 1,
  left out, when it has one) and ``transposed`` (its leading tile, of side min(m, rows, columns), transposed; for
  the flat roles, its first min(m, d) values reversed).

A mutant is a class made from its name, ``Mutant__<role>__m<m>__r<r>__b<blocks>__<kind>`` (``fan-in`` spelt
``fan_in``), with ``__pooled`` appended for the same bug on a path that declares it compiles per shape, so that the
suite draws its shapes from the pool. The suite's subprocess imports it by that name (``--conformance-backend
tests.shape_mutants:Mutant__batch__m64__r5__b3__dropped``): this module builds the class on first access.

:func:`sample` draws mutants uniformly: a role, then a modulus of that role, then a class (residue and blocks) that a
network within the default limits can reach, then a kind. ``benchmarks/shape_coverage.py`` runs samples of them.
"""

from __future__ import annotations

import random
import re
from typing import Any, ClassVar

import numpy as np

from backprop_conformance.conformance import coverage
from backprop_conformance.reference.model import Batch, Network

try:  # imported as tests.shape_mutants by the suite's subprocess, as shape_mutants by the project's tests
    from tests.mutants import ManualBackprop
except ImportError:  # pragma: no cover - the sibling-module convention of this directory
    from mutants import ManualBackprop  # type: ignore[no-redef]

KINDS: tuple[str, ...] = ("dropped", "scaled", "skipped", "transposed")
SCALE = 1 + 2.0**-4
"""The factor of a scaled tail: far outside any bound in float32 and float64, as a kernel applying a wrong
coefficient would be."""

NAME = re.compile(r"Mutant__(?P<role>[a-z_]+)__m(?P<m>\d+)__r(?P<r>\d+)__b(?P<b>[123])__(?P<kind>[a-z]+)(?P<pooled>__pooled)?")


def name_of(role: str, modulus: int, residue: int, blocks: int, kind: str, pooled: bool = False) -> str:
    return f"Mutant__{role.replace('-', '_')}__m{modulus}__r{residue}__b{blocks}__{kind}" + ("__pooled" if pooled else "")


def _mask(d: int, modulus: int, kind: str) -> np.ndarray | None:
    """Per-lane factors of a dimension of ``d`` lanes for the kinds that scale or drop lanes; None when the kind
    changes nothing at this size (no second block)."""
    mask = np.ones(d)
    if kind == "dropped":
        mask[d - 1] = 0.0
    elif kind == "scaled":
        tail = d % modulus or modulus
        mask[d - tail :] = SCALE
    elif kind == "skipped":
        if d <= modulus:
            return None
        mask[modulus : 2 * modulus] = 0.0
    return mask


def _transposed(matrix: np.ndarray, modulus: int) -> np.ndarray:
    """``matrix`` with its leading tile of side min(modulus, rows, columns) transposed."""
    side = min(modulus, *matrix.shape[-2:])
    out = matrix.copy()
    out[..., :side, :side] = np.swapaxes(matrix[..., :side, :side], -1, -2)
    return out


def _flat(values: np.ndarray, modulus: int, kind: str) -> np.ndarray:
    """A kind applied along ``values`` flattened (the elementwise and depth roles)."""
    flat = values.reshape(-1).copy()
    if kind == "transposed":
        side = min(modulus, flat.size)
        flat[:side] = flat[:side][::-1].copy()
    else:
        mask = _mask(flat.size, modulus, kind)
        if mask is not None:
            flat = flat * mask
    return flat.reshape(values.shape)


class ShapeMutant(ManualBackprop):
    """One member of the family; its parameters are class attributes, set by the class made from a name."""

    role: ClassVar[str] = ""
    modulus: ClassVar[int] = 4
    residue: ClassVar[int] = 0
    blocks: ClassVar[int] = 1
    kind: ClassVar[str] = "dropped"

    def triggered(self, d: int) -> bool:
        return d % self.modulus == self.residue and d >= (self.blocks - 1) * self.modulus + 1

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> Any:
        self._widths = network.widths
        self._batch = batch.size
        return super().run(network, batch, dtype=dtype, path=path, device=device)

    def _narrow_fan_in(self, l: int) -> bool:
        """Whether layer l − 1 is a hidden layer narrower than both neighbours (so layer l's product is a skinny one)."""
        widths = self._widths
        return 3 <= l <= len(widths) and widths[l - 2] < widths[l - 3] and widths[l - 2] < widths[l - 1]

    def weighted_input(self, l: int, W_l: np.ndarray, a_prev: np.ndarray, b_l: np.ndarray) -> np.ndarray:
        d = a_prev.shape[1]
        if (self.role == "fan-in" or (self.role == "narrow" and self._narrow_fan_in(l))) and self.triggered(d):
            if self.kind == "transposed":
                return a_prev @ _transposed(W_l, self.modulus) + b_l
            mask = _mask(d, self.modulus, self.kind)
            if mask is not None:
                return (a_prev * mask) @ W_l + b_l
        return super().weighted_input(l, W_l, a_prev, b_l)

    def sigma_prime(self, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        sp = super().sigma_prime(z, a)
        if self.role == "elements" and self.triggered(sp.size):
            return _flat(sp, self.modulus, self.kind).astype(sp.dtype)
        return sp

    def weight_gradient(self, l: int, delta: Any, a: Any) -> np.ndarray:
        if self.role == "batch" and self.triggered(self._batch):
            d = delta[l]
            if self.kind == "transposed":
                d = _transposed(d, self.modulus)
            else:
                mask = _mask(self._batch, self.modulus, self.kind)
                d = d if mask is None else d * mask[:, None]
            return (d[:, :, None] * a[l - 1][:, None, :]).sum(axis=0)
        gradient = super().weight_gradient(l, delta, a)
        if self.role == "fan-out" and self.triggered(gradient.shape[0]):
            if self.kind == "transposed":
                return _transposed(gradient, self.modulus)
            mask = _mask(gradient.shape[0], self.modulus, self.kind)
            return gradient if mask is None else gradient * mask[:, None]
        if self.role == "depth" and self.triggered(l):
            return _flat(gradient, self.modulus, self.kind)
        return gradient

    def bias_gradient(self, l: int, delta_l: np.ndarray) -> np.ndarray:
        if self.role == "batch" and self.triggered(self._batch) and self.kind != "transposed":
            mask = _mask(self._batch, self.modulus, self.kind)
            return (delta_l if mask is None else delta_l * mask[:, None]).sum(axis=0)
        gradient = super().bias_gradient(l, delta_l)
        if self.role == "fan-out" and self.triggered(gradient.shape[0]) and self.kind != "transposed":
            mask = _mask(gradient.shape[0], self.modulus, self.kind)
            return gradient if mask is None else gradient * mask
        return gradient


def make(name: str) -> type[ShapeMutant]:
    """The mutant class a name describes (see the module docstring)."""
    match = NAME.fullmatch(name)
    if match is None:
        raise AttributeError(f"{name!r} is not a shape mutant's name (Mutant__<role>__m<m>__r<r>__b<blocks>__<kind>[__pooled])")
    role = match["role"].replace("_", "-")
    if role not in coverage.ROLES or match["kind"] not in KINDS:
        raise AttributeError(f"{name!r}: unknown role or kind (roles {', '.join(coverage.ROLES)}; kinds {', '.join(KINDS)})")
    attributes = {
        "role": role,
        "modulus": int(match["m"]),
        "residue": int(match["r"]),
        "blocks": int(match["b"]),
        "kind": match["kind"],
        "name": name.removeprefix("Mutant__").replace("__", "-").replace("_", "-"),
        "compiles_per_shape": bool(match["pooled"]),
        "__module__": __name__,
        "__qualname__": name,
    }
    return type(name, (ShapeMutant,), attributes)


_MADE: dict[str, type[ShapeMutant]] = {}


def __getattr__(name: str) -> type[ShapeMutant]:
    if name.startswith("Mutant__"):
        if name not in _MADE:
            _MADE[name] = make(name)
        return _MADE[name]
    raise AttributeError(name)


def sample(count: int, seed: int) -> list[str]:
    """``count`` distinct mutants' names, drawn with ``seed``: a role, a modulus, a reachable class, a kind, uniformly."""
    space = coverage.reachable(8, coverage.LARGEST, coverage.LARGEST)
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < count:
        role = rng.choice(coverage.ROLES)
        modulus = rng.choice(coverage.ROLE_MODULI[role])
        classes = sorted((r, b) for (ro, m, r, b) in space if ro == role and m == modulus)
        residue, blocks = rng.choice(classes)
        name = name_of(role, modulus, residue, blocks, rng.choice(KINDS))
        if name not in names:
            names.append(name)
    return names
