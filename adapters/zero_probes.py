"""The page's forward pass with a zero added to every z^l: the recipe by which an autodiff framework hands out δ^l.

Frameworks give gradients with respect to their inputs, not to intermediate values. Adding a zero array to every
z^l and differentiating with respect to those zeros too yields δ^l = ∂C/∂z^l as their cotangents, from the same
backward pass as the gradients, while z^l itself stays exact (x + 0 = x). docs/adapters.md gives the recipe to
plug-in authors; the MLX and Flax adapters' models call this for their forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def forward(
    layers: Sequence[Callable[[Any], Any]], sigmoid: Callable[[Any], Any], x: Any, zeros: Sequence[Any]
) -> tuple[Any, list[Any], list[Any]]:
    """a^L and the trace ([z^2..z^L], [a^1..a^L]) of ``layers`` (each computes a^{l−1} (w^l)ᵀ + b^l) with σ between
    them, ``zeros[l − 2]`` added to z^l; any framework's arrays, since only its layers, σ and ``+`` are called."""
    a, zs, activations = x, [], [x]
    for layer, zero in zip(layers, zeros, strict=True):
        z = layer(a) + zero
        a = sigmoid(z)
        zs.append(z)
        activations.append(a)
    return a, zs, activations
