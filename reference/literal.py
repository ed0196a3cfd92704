"""The page's per-index recursion, transcribed loop for loop, for one example at a time.

This is deliberately slow and deliberately literal: every step is one equation of the page, written
with the page's indices (l for layers, j for a neuron of layer l, k for one of layer l−1, i for one of
layer l+1), on plain Python floats. It shares no code with :mod:`backprop_conformance.reference.vectorized` except the
scalar sigmoid, so the two cross-check each other: a transposed matrix or a misplaced σ′ in the
vectorized code would show as a disagreement.

Sums use :func:`math.fsum` (correctly rounded), so the literal result is as accurate as float64
allows at each step and differs from the vectorized one only by the vectorized code's own rounding.

Errata of the page, at the steps where they apply below: the page prints σ(z) where the derivative
σ′(z) is meant in ∂a^l_j/∂w^l_jk (and its base case), in ∂a^{l+1}_i/∂a^l_j, and in both factors of the
theorem's formula; and it leaves ∂C/∂b^l_j as ``???``.
"""

from __future__ import annotations

import math

import numpy as np

from backprop_conformance.reference.model import Batch, Gradients, Network, check_compatible
from backprop_conformance.reference.sigmoid import sigmoid_prime_scalar, sigmoid_scalar


def literal_gradients(network: Network, batch: Batch) -> Gradients:
    """∂C/∂w^l_jk and ∂C/∂b^l_j by the page's recursion, for C = Σ_x 1/2 Σ_j (y_j − a^L_j)².

    The page treats one example; the batch cost is the sum of per-example costs, so the gradient is
    the sum of per-example gradients (the outermost loop). Returned in float64.

    The bias formula the page leaves as ``???``: C depends on b^l_j only through a^l_j = σ(z^l_j), and
    z^l_j = Σ_k w^l_jk a^{l−1}_k + b^l_j has ∂z^l_j/∂b^l_j = 1, so by the chain rule
    ∂C/∂b^l_j = ∂C/∂a^l_j · σ′(z^l_j) · 1.
    """
    check_compatible(network, batch)
    L = network.depth
    n = {l: width for l, width in enumerate(network.widths, start=1)}
    w = {l: network.w[l].astype(np.float64).tolist() for l in network.layers}
    b = {l: network.b[l].astype(np.float64).tolist() for l in network.layers}
    # Page indices are 1-based; the lists are 0-based, so w^l_jk is w[l][j - 1][k - 1].
    dC_dw = {l: [[0.0] * n[l - 1] for _ in range(n[l])] for l in network.layers}
    dC_db = {l: [0.0] * n[l] for l in network.layers}
    per_example_w: dict[tuple[int, int, int], list[float]] = {}
    per_example_b: dict[tuple[int, int], list[float]] = {}

    for x_row, y_row in zip(batch.x.astype(np.float64).tolist(), batch.y.astype(np.float64).tolist(), strict=False):
        # Forward pass: a^1 is the input.
        a: dict[int, list[float]] = {1: list(x_row)}
        z: dict[int, list[float]] = {}
        for l in range(2, L + 1):
            # z^l_j = Σ_k w^l_jk a^{l−1}_k + b^l_j
            z[l] = [
                math.fsum([w[l][j - 1][k - 1] * a[l - 1][k - 1] for k in range(1, n[l - 1] + 1)] + [b[l][j - 1]])
                for j in range(1, n[l] + 1)
            ]
            # a^l_j = σ(z^l_j)
            a[l] = [sigmoid_scalar(z[l][j - 1]) for j in range(1, n[l] + 1)]

        # Base case: ∂C/∂a^L_j = a^L_j − y_j
        dC_da: dict[int, list[float]] = {L: [a[L][j - 1] - y_row[j - 1] for j in range(1, n[L] + 1)]}
        # Inductive step, l = L−1 down to 2:
        # ∂C/∂a^l_j = Σ_i ∂C/∂a^{l+1}_i ∂a^{l+1}_i/∂a^l_j, with ∂a^{l+1}_i/∂a^l_j = σ′(z^{l+1}_i) w^{l+1}_ij
        # (the page prints σ(z^{l+1}_i) here: the prime was lost).
        for l in range(L - 1, 1, -1):
            dC_da[l] = [
                math.fsum(
                    dC_da[l + 1][i - 1] * sigmoid_prime_scalar(z[l + 1][i - 1]) * w[l + 1][i - 1][j - 1] for i in range(1, n[l + 1] + 1)
                )
                for j in range(1, n[l] + 1)
            ]

        for l in range(2, L + 1):
            for j in range(1, n[l] + 1):
                # ∂a^l_j/∂w^l_jk = σ′(z^l_j) a^{l−1}_k  (page: σ(z^l_j) a^{l−1}_k, and σ(z^L_j) in the base case: lost prime)
                dC_daj_sp = dC_da[l][j - 1] * sigmoid_prime_scalar(z[l][j - 1])
                for k in range(1, n[l - 1] + 1):
                    # ∂C/∂w^l_jk = ∂C/∂a^l_j σ′(z^l_j) a^{l−1}_k
                    per_example_w.setdefault((l, j, k), []).append(dC_daj_sp * a[l - 1][k - 1])
                # ∂C/∂b^l_j = ∂C/∂a^l_j σ′(z^l_j)  (the page's ???; derivation in the docstring)
                per_example_b.setdefault((l, j), []).append(dC_daj_sp)

    # C = Σ_x C_x, so ∂C/∂θ = Σ_x ∂C_x/∂θ, summed correctly rounded.
    for (l, j, k), terms in per_example_w.items():
        dC_dw[l][j - 1][k - 1] = math.fsum(terms)
    for (l, j), terms in per_example_b.items():
        dC_db[l][j - 1] = math.fsum(terms)
    return Gradients({l: np.array(dC_dw[l]) for l in network.layers}, {l: np.array(dC_db[l]) for l in network.layers})
