"""Training-loop bugs planted in torch's ``accumulate``, ``per-example`` and ``checkpoint`` paths: the suite must fail each, and say which.

Each is the built-in torch adapter with one step of its training loop changed (one hook of
:class:`~backprop_conformance.adapters.torch_adapter.TorchAdapter` overridden), the place where these bugs live in
users' loops and in the libraries they use. Named on the command line as ``--conformance-backend
tests.training_mutants:Name``; ``benchmarks/kill_table.py`` lists them beside :mod:`tests.mutants`' catalogue.
"""

from __future__ import annotations

from typing import Any, ClassVar

from backprop_conformance.adapters.base import Capabilities
from backprop_conformance.adapters.torch_adapter import TorchAdapter
from backprop_conformance.adapters.torch_model import build, import_torch
from backprop_conformance.reference.model import Network
from tests.ddp_mutants import DTYPES, one_path

MODULE = "tests.training_mutants"


class TrainingMutant(TorchAdapter):
    """The built-in torch adapter narrowed to one training-loop path and two formats; a subclass plants one bug."""

    name: ClassVar[str] = ""
    path: ClassVar[str] = ""
    bug: ClassVar[str] = ""
    """Words the failure message must contain: the diagnosis (or the contract's complaint) naming this bug."""

    def capabilities(self) -> Capabilities:
        return one_path(super().capabilities(), self.name, self.path)


class AveragedMicroBatches(TrainingMutant):
    """Each micro-batch's cost divided by k before ``backward()``: the accumulation averages instead of summing."""

    name = "train-averaged-micro-batches"
    path = "accumulate"
    bug = "the micro-batch gradients were averaged"

    def micro_batch_cost(self, cost: Any, micro_batches: int) -> Any:
        return cost / micro_batches


class DroppedMicroBatch(TrainingMutant):
    """The last micro-batch's ``backward()`` never runs (a step condition off by one): its gradient is lost."""

    name = "train-dropped-micro-batch"
    path = "accumulate"
    bug = "dropped from the accumulation"

    def micro_batch_backward(self, cost: Any, index: int, micro_batches: int) -> None:
        if index < micro_batches - 1 or micro_batches == 1:
            cost.backward()


class GradNotZeroed(TrainingMutant):
    """The model is kept from one step to the next and its ``.grad`` never zeroed: each step adds the previous steps' gradients."""

    name = "train-grad-not-zeroed"
    path = "accumulate"
    bug = "gradients must not accumulate"

    def __init__(self) -> None:
        self.models: dict[tuple[Any, ...], Any] = {}

    def fresh_model(self, network: Network, tdtype: Any, device: str) -> Any:
        torch = import_torch()
        key = (network.widths, tdtype, device)
        if key not in self.models:
            self.models[key] = build(network, tdtype, device)
            return self.models[key]
        model = self.models[key]
        linears = [m for m in model if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for l, linear in zip(network.layers, linears, strict=True):
                linear.weight.copy_(torch.tensor(network.w[l], dtype=tdtype))
                linear.bias.copy_(torch.tensor(network.b[l], dtype=tdtype))
        return model


class AveragedPerExample(TrainingMutant):
    """The per-example gradients averaged over the batch instead of summed (a DP-SGD step's mean taken as the gradient)."""

    name = "train-averaged-per-example"
    path = "per-example"
    bug = "the per-example gradients were averaged"

    def per_example_sum(self, per_example: Any) -> Any:
        return per_example.mean(0)


class BroadcastFirstExample(TrainingMutant):
    """The first example's gradient broadcast to every example (a vmap whose in_dims left the batch unmapped after one)."""

    name = "train-broadcast-example"
    path = "per-example"
    bug = "of example 2 alone"

    def per_example_terms(self, per_example: Any) -> Any:
        return per_example[:1].expand_as(per_example).contiguous()


class StaleRemat(TrainingMutant):
    """The recompute of each checkpointed block uses the parameters of the step before (a snapshot never refreshed)."""

    name = "train-stale-remat"
    path = "checkpoint"
    bug = "so the error arises in the gradient step itself"

    def __init__(self) -> None:
        self.previous: dict[tuple[Any, ...], Any] = {}

    def block(self, index: int, linear: Any, sigmoid: Any) -> Any:
        torch = import_torch()
        key = (index, tuple(linear.weight.shape), linear.weight.dtype)
        stale = self.previous.get(key)
        self.previous[key] = linear.weight.detach().clone()
        calls = []

        def forward(a: Any) -> Any:
            calls.append(a)
            if len(calls) == 1 or stale is None:
                return sigmoid(linear(a))
            weight = stale + (linear.weight - linear.weight.detach())  # the stale values, the gradient still reaching w
            return sigmoid(torch.nn.functional.linear(a, weight, linear.bias))

        return forward


MUTANTS = (AveragedMicroBatches, DroppedMicroBatch, GradNotZeroed, AveragedPerExample, BroadcastFirstExample, StaleRemat)


def backend_name(adapter: type[TrainingMutant]) -> str:
    """The ``--conformance-backend`` argument that names ``adapter``."""
    return f"{MODULE}:{adapter.__name__}"


def cells(adapter: type[TrainingMutant]) -> list[str]:
    """The ids of ``adapter``'s cells: ``<name>-<path>-<dtype>``."""
    return [f"{adapter.name}-{adapter.path}-{dtype}" for dtype in DTYPES]
