"""The proof of power: hand-written backprop adapters with exactly one planted bug each, and correct ones.

A conformance suite is only worth its green when it turns red for a wrong framework. This module is a
catalogue of adapters that the real suite (``pytest conformance``, default profile) must fail, each
differing from a correct implementation in exactly one small hook, plus correct implementations that
round differently (another σ′ formula, another summation order) and must pass. ``tests/test_mutants.py``
runs the suite against all of them at once (through :mod:`backprop_conformance.conformance.runner`);
``python -m benchmarks.kill_table`` prints which test caught which.

Every adapter here is third-party from the suite's point of view: it is named on the command line as
``--conformance-backend tests.mutants:ClassName`` (``tests`` is a namespace package: no ``__init__.py``).

The page's notation throughout: layers l = 1..L with layer 1 the input, z^l = w^l a^{l−1} + b^l,
a^l = σ(z^l), C = Σ_x 1/2 Σ_j (y_j − a^L_j)², δ^l = ∂C/∂z^l, ∂C/∂w^l_jk = Σ_x δ^l_j a^{l−1}_k and
∂C/∂b^l_j = Σ_x δ^l_j. Per-example arrays have one row per example, shape (B, n(l)).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from backprop_conformance.adapters.base import Adapter, AdapterOutput, Capabilities
from backprop_conformance.reference.dtypes import MIXED, float_format, round_to
from backprop_conformance.reference.mixed_precision import POLICY_OPERATIONS, MixedPolicy, Simulation, accumulate
from backprop_conformance.reference.model import Batch, Gradients, Network

MODULE = "tests.mutants"
"""The import name the suite's subprocess uses, run from the repository root (``tests/test_mutants.py`` imports this
file as ``mutants``, the sibling-module convention of this test directory, so ``__name__`` cannot be used)."""
PATH = "manual"
"""The one execution path every adapter here declares."""

Arrays = Mapping[int, np.ndarray]


class ManualBackprop(Adapter):
    """Correct: backprop written out by hand in numpy, σ′(z) = σ(z)·σ(−z) from a stable σ.

    The reference implementation every mutant below starts from. Each step of the page's derivation
    is one small method (a hook), so that a mutant is a subclass overriding exactly one hook.

    The framework layout of a weight is the transpose of the page's: the adapter stores w^l as an
    (n(l−1), n(l)) matrix W^l and computes z^l = a^{l−1} W^l + b^l, as a framework that multiplies
    row vectors from the left does. That makes the layout round trip of
    :meth:`load_parameters` a real conversion that can be got wrong.
    """

    requires: ClassVar[tuple[str, ...]] = ("numpy",)
    name: ClassVar[str] = "ok-stable"
    dtypes: ClassVar[tuple[str, ...]] = ("float64", "float32")
    cost_factor: ClassVar[float] = 0.5
    """The ½ of C = Σ_x 1/2 Σ_j (y_j − a^L_j)²; ∂C/∂a^L_j = 2·cost_factor·(a^L_j − y_j)."""
    compiles_per_shape: ClassVar[bool] = False
    """Declare the path as compiling per shape, so that the suite draws its shapes from the pool (as it does for
    ``jax.jit``): the shape-coverage benchmark runs each shape-dependent mutant both ways."""

    def capabilities(self) -> Capabilities:
        return Capabilities(
            name=self.name,
            framework=f"NumPy hand-written backprop ({type(self).__name__}, tests/mutants.py)",
            version=np.__version__,
            dtypes=self.dtypes,
            paths=(PATH,),
            default_paths=(PATH,),
            shape_compiled_paths=(PATH,) if self.compiles_per_shape else (),
            policies=self.policies(),
        )

    def policies(self) -> dict[str, MixedPolicy]:
        """The mixed-precision policies among :attr:`dtypes`: none here."""
        return {}

    # Layout: page (n(l), n(l−1)) <-> framework (n(l−1), n(l)).

    def to_framework_layout(self, w_l: np.ndarray) -> np.ndarray:
        """W^l = (w^l)ᵀ: row k of W^l holds the weights leaving neuron k of layer l−1."""
        return np.ascontiguousarray(w_l.T)

    def from_framework_layout(self, stored: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Read W^l back in page layout: w^l = (W^l)ᵀ, of shape (n(l), n(l−1))."""
        return stored.T

    def load_parameters(self, network: Network, *, dtype: str, device: str = "cpu") -> Network:
        carrier = float_format(dtype).carrier
        stored = {l: self.to_framework_layout(network.w[l].astype(carrier)) for l in network.layers}
        return Network(
            {l: self.from_framework_layout(stored[l], network.w[l].shape) for l in network.layers},
            {l: network.b[l].astype(carrier) for l in network.layers},
        )

    # Forward pass.

    def weighted_input(self, l: int, W_l: np.ndarray, a_prev: np.ndarray, b_l: np.ndarray) -> np.ndarray:
        """z^l_j = Σ_k w^l_jk a^{l−1}_k + b^l_j for every example, as a^{l−1} W^l + b^l."""
        return a_prev @ W_l + b_l

    def sigmoid(self, z: np.ndarray) -> np.ndarray:
        """σ(z) = 1/(1 + e^{−z}), exponentiating only −|z| so that nothing overflows."""
        e = np.exp(-np.abs(z))
        return np.where(z >= 0, 1, e) / (1 + e)

    def sigma_prime(self, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        """σ′(z) = σ(z)·σ(−z): the symmetric form, accurate to a few ulps relative even when a^l rounds to 1."""
        return self.sigmoid(z) * self.sigmoid(-z)

    # The cost and its derivative; the weights make a mean over outputs or examples a one-hook bug.

    def output_weight(self, n_L: int) -> float:
        """The weight of each output j in C: 1, since the page sums over j = 1..n(L)."""
        return 1.0

    def example_weight(self, B: int) -> float:
        """The weight of each example in C: 1, since the suite's C sums over the batch."""
        return 1.0

    def cost(self, a_L: np.ndarray, y: np.ndarray) -> float:
        """C = Σ_x 1/2 Σ_j (y_j − a^L_j)²."""
        r = y - a_L
        weight = self.cost_factor * self.output_weight(a_L.shape[1]) * self.example_weight(a_L.shape[0])
        return float(weight * np.sum(r * r))

    def output_gradient(self, a_L: np.ndarray, y: np.ndarray) -> np.ndarray:
        """∂C/∂a^L_j = a^L_j − y_j (the ½ cancels the 2 of the square)."""
        weight = 2 * self.cost_factor * self.output_weight(a_L.shape[1]) * self.example_weight(a_L.shape[0])
        return weight * (a_L - y)

    # Backward pass.

    def output_error(self, dC_da_L: np.ndarray, sp_L: np.ndarray) -> np.ndarray:
        """δ^L_j = ∂C/∂a^L_j σ′(z^L_j) (the page's base case, with the prime it lost)."""
        return dC_da_L * sp_L

    def hidden_error(self, l: int, L: int, W_next: np.ndarray, delta_next: np.ndarray, sp_l: np.ndarray) -> np.ndarray:
        """δ^l_j = (Σ_i δ^{l+1}_i w^{l+1}_ij) σ′(z^l_j); with W^{l+1} = (w^{l+1})ᵀ the sum is δ^{l+1} (W^{l+1})ᵀ."""
        return (delta_next @ W_next.T) * sp_l

    def batch_sum(self, per_example: np.ndarray) -> np.ndarray:
        """Σ_x over the leading (example) axis."""
        return per_example.sum(axis=0)

    def weight_gradient(self, l: int, delta: Arrays, a: Arrays) -> np.ndarray:
        """∂C/∂w^l_jk = Σ_x δ^l_j(x) a^{l−1}_k(x), in page layout (n(l), n(l−1))."""
        return self.batch_sum(delta[l][:, :, None] * a[l - 1][:, None, :])

    def bias_gradient(self, l: int, delta_l: np.ndarray) -> np.ndarray:
        """∂C/∂b^l_j = Σ_x δ^l_j(x): the page's ``???``, the weight formula with a^{l−1}_k replaced by 1."""
        return self.batch_sum(delta_l)

    def gradient_layers(self, L: int) -> range:
        """The layers that have parameters, l = 2..L."""
        return range(2, L + 1)

    def returned(self, kind: str, l: int, gradient: np.ndarray, carrier: np.dtype) -> np.ndarray:
        """The gradient as handed to the suite: in the requested format's carrier dtype, nothing kept."""
        return gradient.astype(carrier)

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        carrier = float_format(dtype).carrier
        L = network.depth
        W = {l: self.to_framework_layout(network.w[l].astype(carrier)) for l in network.layers}
        b = {l: network.b[l].astype(carrier) for l in network.layers}
        y = batch.y.astype(carrier)
        a: dict[int, np.ndarray] = {1: batch.x.astype(carrier)}
        z: dict[int, np.ndarray] = {}
        for l in network.layers:
            z[l] = self.weighted_input(l, W[l], a[l - 1], b[l])
            a[l] = self.sigmoid(z[l])
        sp = {l: self.sigma_prime(z[l], a[l]) for l in network.layers}
        delta: dict[int, np.ndarray] = {L: self.output_error(self.output_gradient(a[L], y), sp[L])}
        for l in range(L - 1, 1, -1):
            delta[l] = self.hidden_error(l, L, W[l + 1], delta[l + 1], sp[l])
        layers = self.gradient_layers(L)
        gradients = Gradients(
            {l: self.returned("w", l, self.weight_gradient(l, delta, a), carrier) for l in layers},
            {l: self.returned("b", l, self.bias_gradient(l, delta[l]), carrier) for l in layers},
        )
        return AdapterOutput(gradients, self.cost(a[L], y), a=a, z=z, delta=delta)


# Correct variants: the same mathematics, rounded differently. The suite must pass every one.


class OutputSigmaPrime(ManualBackprop):
    """Correct: the textbook σ(z) = 1/(1 + e^{−z}) and σ′ computed from the output, a(1 − a).

    This is what torch and jax do; a(1 − a) loses all relative accuracy once a^l rounds to 1
    (z ≳ 36.7 in float64, ≳ 16.6 in float32), and the bound's E_s term must allow exactly that.
    """

    name = "ok-output-sigma-prime"

    def sigmoid(self, z: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # e^{−z} overflows to inf for very negative z, and 1/inf = 0 is right
            return 1 / (1 + np.exp(-z))

    def sigma_prime(self, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        return a * (1 - a)


class MatmulBatchSum(ManualBackprop):
    """Correct: the batch sums done by BLAS, ∂C/∂w^l = (δ^l)ᵀ a^{l−1}, and numpy's pairwise sum for b^l.

    A different summation order over the batch (and a fused multiply-add where BLAS uses one), so
    its rounding differs from the outer-product-then-sum of the base class.
    """

    name = "ok-matmul-batch-sum"

    def weight_gradient(self, l: int, delta: Arrays, a: Arrays) -> np.ndarray:
        return delta[l].T @ a[l - 1]

    def bias_gradient(self, l: int, delta_l: np.ndarray) -> np.ndarray:
        return np.sum(delta_l.T, axis=1)


class ReversedLoopBatchSum(ManualBackprop):
    """Correct: per-example accumulation in a Python loop, last example first.

    The order of the B − 1 additions is reversed; the bound's γ_B covers every order.
    """

    name = "ok-reversed-loop"

    def batch_sum(self, per_example: np.ndarray) -> np.ndarray:
        total = np.zeros_like(per_example[0])
        for term in per_example[::-1]:
            total = total + term
        return total


# Mixed precision: float32 parameters, arithmetic rounded as a declared policy says (reference/mixed_precision.py).


class ManualMixed(ManualBackprop):
    """Correct: mixed bfloat16 simulated exactly: bfloat16 operands, every result, sum and gradient in float32.

    The computation is :class:`~backprop_conformance.reference.mixed_precision.Simulation` of the declared policy, which
    rounds through every format it names and accumulates term by term; a planted bug is a :attr:`simulation` that
    rounds differently from what is declared, or a gradient handed back wrong.
    """

    name = "ok-mixed"
    dtypes = ("mixed-bfloat16",)
    declared: ClassVar[dict[str, str]] = dict.fromkeys(("dot", "matmul", "sigma", "cost", "batch_sum", "cost_sum", "gradient"), "float32")
    """The policy's formats beside the compute format: here only the products' operands are bfloat16."""
    simulation: ClassVar[type[Simulation]] = Simulation
    loss_scale: ClassVar[float] = 1.0
    """The first loss scale tried; a power of two above 1 is halved while a gradient overflows, as GradScaler does."""

    def policies(self) -> dict[str, MixedPolicy]:
        return {dtype: MixedPolicy.of(dtype, **self.declared) for dtype in self.dtypes}

    def computed(self, dtype: str) -> MixedPolicy:
        """The policy the simulation rounds as: the declared one, for every adapter that declares honestly."""
        return self.caps.policies[dtype]

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        policy = self.computed(dtype)
        scale = self.loss_scale
        with np.errstate(over="ignore", invalid="ignore"):
            result = self.simulation(policy, scale).run(network, batch)
            while scale > 1 and not all(np.all(np.isfinite(g)) for _, _, g in result.gradients.items()):
                scale /= 2  # GradScaler: an overflow skips the step and halves the scale
                result = self.simulation(policy, scale).run(network, batch)
        carrier = float_format(MIXED[dtype][0]).carrier
        gradients = Gradients(
            {l: self.returned("w", l, g, carrier) for l, g in result.gradients.w.items()},
            {l: self.returned("b", l, g, carrier) for l, g in result.gradients.b.items()},
        )
        return AdapterOutput(gradients, result.cost, a=result.a, z=result.z, delta=result.delta)


class ManualAutocastLossScaled(ManualMixed):
    """Correct: mixed float16 as torch.autocast rounds it, with GradScaler's loss scale (2^16, halved on overflow).

    The scale changes no rounding while nothing overflows
    (:func:`~backprop_conformance.reference.mixed_precision.largest_exact_loss_scale`), so the policy's bound judges it
    as it judges the unscaled computation.
    """

    name = "ok-mixed-loss-scaled"
    dtypes = ("mixed-float16",)
    declared: ClassVar[dict[str, str]] = dict.fromkeys(("dot", "cost", "batch_sum", "cost_sum"), "float32")
    loss_scale = 2.0**16


class _NotUnscaled(Simulation):
    def unscale(self, gradient: np.ndarray) -> np.ndarray:
        return self.to("storage", gradient)


class LossScaleNotRemoved(ManualAutocastLossScaled):
    """The loss scale is never divided out: every gradient is S times too large.

    Caught by: every gradient, at a ratio of about S; the verdict names the scale ("a loss scale of 2^16 not removed").
    """

    name = "mut-mixed-scale-kept"
    simulation = _NotUnscaled


class _UnscaledTwice(Simulation):
    def unscale(self, gradient: np.ndarray) -> np.ndarray:
        return self.to("storage", gradient / self.loss_scale / self.loss_scale)


class LossScaleRemovedTwice(ManualAutocastLossScaled):
    """The loss scale is divided out twice (an optimizer unscaling what the scaler already unscaled): gradients S times too small.

    Caught by: every gradient; the verdict names the scale ("a loss scale of 2^16 removed twice").
    """

    name = "mut-mixed-scale-twice"
    simulation = _UnscaledTwice


class GradientInComputeFormat(ManualAutocastLossScaled):
    """The weight and bias gradients returned in float16, the compute format, instead of the float32 parameters' format.

    Caught by: the contract ("has dtype float16, expected float32 ... the gradient of the compute copy").
    """

    name = "mut-mixed-compute-gradient"

    def returned(self, kind: str, l: int, gradient: np.ndarray, carrier: np.dtype) -> np.ndarray:
        return gradient.astype(np.float16)


class ManualBfloat16Gradients(ManualMixed):
    """Correct: mixed bfloat16 with the forward and backward passes in float32 and the gradients rounded to bfloat16.

    The policy of a framework that keeps its arithmetic wide and stores (or communicates) gradients in bfloat16.
    """

    name = "ok-mixed-bf16-gradients"
    declared: ClassVar[dict[str, str]] = {op: "float32" for op in POLICY_OPERATIONS if op != "gradient"}


def _in_format(fmt: str, values: np.ndarray) -> np.ndarray:
    return round_to(fmt, values).astype(np.float64)


class _SigmaPrimeFromCompute(Simulation):
    def sigma_prime(self, a: np.ndarray) -> np.ndarray:
        saved = _in_format(self.policy.compute, a)  # a bfloat16 copy of a, saved for the backward pass
        return self.to("sigma", saved * self.to("sigma", 1 - saved))


class SigmaPrimeFromComputeActivation(ManualBfloat16Gradients):
    """σ′ = a(1 − a) computed from a bfloat16 copy of a saved for the backward pass, where the policy keeps σ in float32.

    Caught by: the gradients, wherever a unit's 1 − a is below about 1/4: a bfloat16 a leaves 1 − a a relative
    error of 2^-9/(1 − a), beyond the gradients' own bfloat16 rounding.
    """

    name = "mut-mixed-bf16-sigma-prime"
    simulation = _SigmaPrimeFromCompute


class _AccumulatesInCompute(Simulation):
    def sum(self, accumulation: str, terms: np.ndarray, axis: int) -> np.ndarray:
        return accumulate(self.policy.compute, terms, axis)


class AccumulationInComputeFormat(ManualBfloat16Gradients):
    """Every sum (products, batch sums, the cost) accumulated in bfloat16, where the policy says float32.

    Caught by: z^l and everything after it: a bfloat16 sum of n products is off by up to about n·2^-9 of their
    magnitudes, where the declared float32 accumulation allows about n·2^-24.
    """

    name = "mut-mixed-bf16-accumulation"
    simulation = _AccumulatesInCompute


class LooseDeclaration(ManualMixed):
    """Declares z^l and σ in bfloat16 (a looser bound) while computing them in float32, as :class:`ManualMixed` does.

    Caught by: the contract ("z^2 holds ..., which is not a bfloat16 value, yet the declared policy ...").
    """

    name = "mut-mixed-loose-declaration"
    declared: ClassVar[dict[str, str]] = {op: "float32" for op in ("dot", "cost", "batch_sum", "cost_sum", "gradient")}

    def computed(self, dtype: str) -> MixedPolicy:
        return MixedPolicy.of(dtype, **ManualMixed.declared)


class MasterCopyNotTheParameter(ManualMixed):
    """The bfloat16 compute copy is cast from the float32 master copy when the model is built, before the parameters are
    assigned to the master: the gradient refers to the initial weights, not the parameters.

    The master copy, which the round trip reads back, holds the parameters; the forward and backward passes read the
    compute copy of the initializer's values (a fixed draw per shape, biases 0), so the output is repeatable and
    self-consistent. Caught by: the contract ("negating every parameter left every gradient unchanged: the gradients
    refer to a copy of the parameters other than those given"), and the gradients.
    """

    name = "mut-mixed-master-copy"

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        initial = Network(
            {l: round_to("float32", np.random.default_rng(w.shape).uniform(-1, 1, w.shape)).astype(w.dtype) for l, w in network.w.items()},
            {l: np.zeros_like(b) for l, b in network.b.items()},
        )
        return super().run(initial, batch, dtype=dtype, path=path, device=device)


CORRECT: tuple[type[ManualBackprop], ...] = (
    ManualBackprop,
    OutputSigmaPrime,
    MatmulBatchSum,
    ReversedLoopBatchSum,
    ManualMixed,
    ManualAutocastLossScaled,
    ManualBfloat16Gradients,
)
"""Implementations the default suite must pass."""


# Mutants: one planted bug each. The docstring's first line is the bug; the rest says what catches it.


class SigmaTypo(ManualBackprop):
    """σ(z) in place of σ′(z) everywhere: the page's own typo, taken literally.

    Caught by: any unsaturated unit with a nonzero residual (σ(z) ≥ σ′(z) by a factor of 4 or more).
    """

    name = "mut-sigma-typo"

    def sigma_prime(self, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        return a


class CostWithoutHalf(ManualBackprop):
    """The ½ is missing from the cost, C = Σ (y − a)²: the cost and every gradient are doubled.

    Caught by: any network with a nonzero residual (ratio grows with |g| / bound, about 1/u).
    """

    name = "mut-no-half"
    cost_factor = 1.0


class MeanOverOutputs(ManualBackprop):
    """A mean instead of a sum over the outputs j: C and every gradient divided by n(L).

    Caught by: any output layer with n(L) ≥ 2 (with n(L) = 1 the mean is the sum).
    """

    name = "mut-mean-outputs"

    def output_weight(self, n_L: int) -> float:
        return 1.0 / n_L


class MeanOverBatch(ManualBackprop):
    """A mean instead of a sum over the batch: C and every gradient divided by B.

    Caught by: any batch with B ≥ 2 (with B = 1 the mean is the sum).
    """

    name = "mut-mean-batch"

    def example_weight(self, B: int) -> float:
        return 1.0 / B


class TransposedSquareGradient(ManualBackprop):
    """∂C/∂w^l returned transposed when w^l is square, so the shape is right and only the values are wrong.

    Caught by: a square layer, n(l) = n(l−1) ≥ 2, which the architectures draw on purpose (each
    layer repeats the previous width half the time); the contract network's square w^3 does not
    catch it because the contract checks only the parameter round trip and the output's form.
    """

    name = "mut-transposed-square"

    def weight_gradient(self, l: int, delta: Arrays, a: Arrays) -> np.ndarray:
        g = super().weight_gradient(l, delta, a)
        return g.T if g.shape[0] == g.shape[1] else g


class CrossEntropyShortcut(ManualBackprop):
    """δ^L = a^L − y: the cross-entropy shortcut applied to the quadratic cost, σ′(z^L) forgotten at the output.

    Caught by: any nonzero residual at an unsaturated output (the true δ^L is at most a quarter of it).
    """

    name = "mut-cross-entropy-delta"

    def output_error(self, dC_da_L: np.ndarray, sp_L: np.ndarray) -> np.ndarray:
        return dC_da_L


class ZeroBiasGradient(ManualBackprop):
    """∂C/∂b^l = 0 for every layer: the bias gradient the page leaves as ``???``, never filled in.

    Caught by: any nonzero δ; the verdict says "framework returned exactly 0".
    """

    name = "mut-zero-bias"

    def bias_gradient(self, l: int, delta_l: np.ndarray) -> np.ndarray:
        return np.zeros_like(delta_l[0])


class WrongLayerActivation(ManualBackprop):
    """∂C/∂w^l uses a^l instead of a^{l−1} wherever the shapes allow it (an off-by-one in the layer index).

    Caught by: a square layer n(l) = n(l−1), where the wrong activation has the right shape.
    """

    name = "mut-wrong-layer-activation"

    def weight_gradient(self, l: int, delta: Arrays, a: Arrays) -> np.ndarray:
        source = a[l] if a[l].shape == a[l - 1].shape else a[l - 1]
        return self.batch_sum(delta[l][:, :, None] * source[:, None, :])


class WrongExampleActivation(ManualBackprop):
    """∂C/∂w^l pairs δ^l of example x with a^{l−1} of the previous example (rows shifted by one, cyclically).

    Caught by: B ≥ 2 with examples whose activations differ.
    """

    name = "mut-wrong-example-activation"

    def weight_gradient(self, l: int, delta: Arrays, a: Arrays) -> np.ndarray:
        return self.batch_sum(delta[l][:, :, None] * np.roll(a[l - 1], 1, axis=0)[:, None, :])


class Float32MatmulInLayer2(ManualBackprop):
    """z^2 computed with a float32 matrix product inside a float64 run (one layer's matmul in the wrong precision).

    Caught by: the float64 cell; the error is ~1e-8 relative where the float64 bound allows ~1e-15.
    Invisible in the float32 cell, where float32 is the requested precision.
    """

    name = "mut-float32-matmul"

    def weighted_input(self, l: int, W_l: np.ndarray, a_prev: np.ndarray, b_l: np.ndarray) -> np.ndarray:
        if l != 2:
            return super().weighted_input(l, W_l, a_prev, b_l)
        return (a_prev.astype(np.float32) @ W_l.astype(np.float32)).astype(a_prev.dtype) + b_l


class TinyScaleOnWeightGradient(ManualBackprop):
    """∂C/∂w^2 multiplied by (1 + 1e-9): a relative error far below any fixed tolerance.

    Caught by: the float64 cell, where the derived bound is ~1e-15 relative. In float32, 1 + 1e-9
    rounds to 1 and the adapter is correct.
    """

    name = "mut-scale-1e-9"

    def weight_gradient(self, l: int, delta: Arrays, a: Arrays) -> np.ndarray:
        g = super().weight_gradient(l, delta, a)
        return g * (1 + 1e-9) if l == 2 else g


class FirstExampleOnly(ManualBackprop):
    """Gradients taken from the first example of the batch only (the cost is still summed over all of it).

    Caught by: any batch with B ≥ 2.
    """

    name = "mut-first-example"

    def batch_sum(self, per_example: np.ndarray) -> np.ndarray:
        return per_example[0]


class AccumulatesAcrossCalls(ManualBackprop):
    """Gradients accumulate in the adapter from one call to the next, as a framework's ``.grad`` without zero_grad.

    Caught by: the contract's repeatability check (two identical calls) and, from its second
    example on, the gradient test.
    """

    name = "mut-accumulates"

    def __init__(self) -> None:
        self.grad: dict[tuple[str, int, tuple[int, ...], np.dtype], np.ndarray] = {}

    def returned(self, kind: str, l: int, gradient: np.ndarray, carrier: np.dtype) -> np.ndarray:
        key = (kind, l, gradient.shape, carrier)
        self.grad[key] = self.grad.get(key, np.zeros(gradient.shape, dtype=carrier)) + gradient.astype(carrier)
        return self.grad[key].copy()


SATURATION = 30.0
"""The |z| beyond which the saturation mutants misbehave: below 36.7, where float64's σ(z) rounds to 1, so that
their error is visible on the positive side in float64 as well as on the negative side in both formats."""


class FlushedSigmaPrime(ManualBackprop):
    """σ′(z) flushed to 0 for |z| > 30 ("the unit is saturated anyway").

    Caught by: the saturation corner. For z < −30 in either format, σ′ ≈ a is tiny but accurately
    computable (no cancellation on that side), so the bound is tiny too; for 30 < z ≲ 34 in
    float64 the true σ′ (1e-13 .. 1e-15) is still above float64's rounding of a(1 − a) (measured on
    one unit: ratio 2.6 at z = 33, 0.13 at z = 36). It is *not* caught for z > 30 in float32, where
    a(1 − a) is already exactly 0 from z ≈ 16.7 and the bound allows the 0.
    """

    name = "mut-saturation-flush"

    def sigma_prime(self, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        return np.where(np.abs(z) > SATURATION, 0, super().sigma_prime(z, a))


class ClippedWeightedInput(ManualBackprop):
    """z^l clipped to [−30, 30] before σ ("to avoid overflow in exp"): a saturated unit gets σ(±30), σ′(30) ≈ 9e-14.

    Caught by: the saturation corner, |z| > 30 (the strategies reach 800+ in float64 and 100 in
    float32). For z < −30, a^l = σ(−30) ≈ 9e-14 where the truth is far smaller, in either format;
    for z > 30 in float64, a^l and σ′ are wrong by ~1e-13, some fifty times float64's bound
    (measured on one unit, at any z from 33 to 800). For z > 30 in float32, σ(30) already rounds
    to 1 and the clip is invisible.
    """

    name = "mut-saturation-clip"

    def weighted_input(self, l: int, W_l: np.ndarray, a_prev: np.ndarray, b_l: np.ndarray) -> np.ndarray:
        return np.clip(super().weighted_input(l, W_l, a_prev, b_l), -SATURATION, SATURATION)


class DeepLayersWithoutSigmaPrime(ManualBackprop):
    """For l < L − 4 the backward step forgets σ′(z^l): a hand-unrolled recursion whose extra steps were pasted wrong.

    Wrong only when L ≥ 7 (then δ^2 = Σ_i δ^3_i w^3_i·); caught by the depth corner of the architectures.
    """

    name = "mut-deep-only"

    def hidden_error(self, l: int, L: int, W_next: np.ndarray, delta_next: np.ndarray, sp_l: np.ndarray) -> np.ndarray:
        if l < L - 4:
            return delta_next @ W_next.T
        return super().hidden_error(l, L, W_next, delta_next, sp_l)


TRUNCATED_WIDTH = 32


class TruncatedWideSum(ManualBackprop):
    """z^l sums only the first 32 terms Σ_{k ≤ 32} w^l_jk a^{l−1}_k (a fixed-size tile never looped over).

    Wrong only when a layer feeding another has n(l−1) ≥ 33; caught by the sizes beyond one 32-wide block.
    """

    name = "mut-wide-only"

    def weighted_input(self, l: int, W_l: np.ndarray, a_prev: np.ndarray, b_l: np.ndarray) -> np.ndarray:
        return a_prev[:, :TRUNCATED_WIDTH] @ W_l[:TRUNCATED_WIDTH, :] + b_l


BATCH_TILE = 8


class TruncatedBatchSum(ManualBackprop):
    """Only the first 8 examples are summed into the gradients (one batch tile).

    Wrong only when B ≥ 9; caught by the larger batches (up to 24).
    """

    name = "mut-big-batch-only"

    def batch_sum(self, per_example: np.ndarray) -> np.ndarray:
        return per_example[:BATCH_TILE].sum(axis=0)


class RemainderLoopDropsALane(ManualBackprop):
    """z^l loses the last term of Σ_k w^l_jk a^{l−1}_k when the fan-in n(l−1) ≥ 15 is ≡ 7 mod 8 (a remainder loop one lane short).

    Wrong only for those fan-ins (15, 23, 31, ...); caught by the strategies' sizes with every remainder of 8.
    """

    name = "mut-remainder-lane"

    def weighted_input(self, l: int, W_l: np.ndarray, a_prev: np.ndarray, b_l: np.ndarray) -> np.ndarray:
        fan_in = a_prev.shape[1]
        if fan_in >= 15 and fan_in % 8 == 7:
            return a_prev[:, :-1] @ W_l[:-1, :] + b_l
        return super().weighted_input(l, W_l, a_prev, b_l)


class OddBatchTailDropped(ManualBackprop):
    """The last example of an odd batch of B ≥ 13 is left out of the batch sums (a vectorised sum's tail never added).

    Wrong only for B = 13, 15, 17, ...; caught by the strategies' odd batches above 12.
    """

    name = "mut-odd-tail"

    def batch_sum(self, per_example: np.ndarray) -> np.ndarray:
        B = per_example.shape[0]
        if B >= 13 and B % 2 == 1:
            return per_example[:-1].sum(axis=0)
        return super().batch_sum(per_example)


SECOND_BLOCK = 32


class SecondBlockWithoutBias(ManualBackprop):
    """Neurons j > 32 of a layer at least 40 wide get no bias b^l_j: the kernel for the second 32-wide block forgets it.

    Wrong only when some n(l) ≥ 40; caught by the strategies' sizes beyond one 32-wide block.
    """

    name = "mut-second-block"

    def weighted_input(self, l: int, W_l: np.ndarray, a_prev: np.ndarray, b_l: np.ndarray) -> np.ndarray:
        z = super().weighted_input(l, W_l, a_prev, b_l)
        if z.shape[1] >= 40:
            z = z.copy()
            z[:, SECOND_BLOCK:] -= b_l[SECOND_BLOCK:]
        return z


class TransposedLayout(ManualBackprop):
    """load_parameters reads W^l back with a reshape instead of a transpose: the page layout comes back scrambled.

    The gradients are right (the run itself is correct); caught by the contract's layout round trip,
    whose message says "transposed".
    """

    name = "mut-transposed-layout"

    def from_framework_layout(self, stored: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return stored.reshape(shape)


class ReturnsFloat64(ManualBackprop):
    """Gradients returned as float64 arrays whatever format was requested.

    Caught by: the contract's output check in the float32 cell ("has dtype float64, expected float32").
    """

    name = "mut-float64-output"

    def returned(self, kind: str, l: int, gradient: np.ndarray, carrier: np.dtype) -> np.ndarray:
        return gradient.astype(np.float64)


class MissingFirstLayer(ManualBackprop):
    """The gradient loop starts at l = 3: ∂C/∂w^2 and ∂C/∂b^2 are missing from the output.

    Caught by: the contract's output check ("a missing layer means a dropped gradient").
    """

    name = "mut-missing-layer"

    def gradient_layers(self, L: int) -> range:
        return range(3, L + 1)


MUTANTS: tuple[type[ManualBackprop], ...] = (
    SigmaTypo,
    CostWithoutHalf,
    MeanOverOutputs,
    MeanOverBatch,
    TransposedSquareGradient,
    CrossEntropyShortcut,
    ZeroBiasGradient,
    WrongLayerActivation,
    WrongExampleActivation,
    Float32MatmulInLayer2,
    TinyScaleOnWeightGradient,
    FirstExampleOnly,
    AccumulatesAcrossCalls,
    FlushedSigmaPrime,
    ClippedWeightedInput,
    DeepLayersWithoutSigmaPrime,
    TruncatedWideSum,
    TruncatedBatchSum,
    RemainderLoopDropsALane,
    OddBatchTailDropped,
    SecondBlockWithoutBias,
    TransposedLayout,
    ReturnsFloat64,
    MissingFirstLayer,
    LossScaleNotRemoved,
    LossScaleRemovedTwice,
    GradientInComputeFormat,
    SigmaPrimeFromComputeActivation,
    AccumulationInComputeFormat,
    LooseDeclaration,
    MasterCopyNotTheParameter,
)
"""Adapters with one planted bug each; the default suite must fail every one."""


def backend_name(adapter: type[ManualBackprop]) -> str:
    """The ``--conformance-backend`` argument that names ``adapter``: ``tests.mutants:ClassName``."""
    return f"{MODULE}:{adapter.__name__}"


def bug(adapter: type[ManualBackprop]) -> str:
    """The first line of the adapter's docstring: the planted bug (or "Correct: ...")."""
    return (adapter.__doc__ or "").strip().splitlines()[0]


CONFORMANCE_ONLY = ("-m", "not fidelity")
"""The catalogue is about conformance: its adapters compute σ′ in numpy, and the fidelity tier (exactness of σ′
against mpmath) would only restate, for the a(1 − a) variants, what ``OutputSigmaPrime``'s docstring says."""


def cells(adapter: type[ManualBackprop]) -> list[str]:
    """The ids of ``adapter``'s cells: ``<name>-manual-<dtype>``."""
    return [f"{adapter.name}-{PATH}-{dtype}" for dtype in adapter.dtypes]
