"""Data-parallel bugs planted in torch's ``ddp`` path: the suite must fail each one, and say which it is.

Each is the built-in torch adapter with one thing changed: the adapter's own conversion of DDP's mean into the
summed cost's gradient, or a DDP communication hook (``register_comm_hook``) in the rank processes, the place
where real data-parallel bugs live. Named on the command line as ``--conformance-backend tests.ddp_mutants:Name``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from backprop_conformance.adapters.base import Capabilities
from backprop_conformance.adapters.torch_adapter import TorchAdapter
from backprop_conformance.reference.model import Gradients

MODULE = "tests.ddp_mutants"
DTYPES = ("float64", "float32")


def _reduce(bucket: Any, zero_rank: int | None = None) -> Any:
    """DDP's default all-reduce hook (divide by the world size, then sum), optionally zeroing one rank's bucket first."""
    import torch.distributed as dist

    buffer = bucket.buffer()
    if zero_rank is not None and dist.get_rank() == zero_rank:
        buffer.zero_()
    buffer.div_(dist.get_world_size())
    return dist.all_reduce(buffer, async_op=True).get_future().then(lambda future: future.value()[0])


# The hooks' parameters are not annotated: DDP refuses a hook whose ``bucket`` annotation is not dist.GradBucket,
# and with postponed annotations it would see the string "Any".


def drop_last_rank(state, bucket):
    """All-reduce in which the last rank contributes zeros: its share of the gradient is lost."""
    import torch.distributed as dist

    return _reduce(bucket, zero_rank=dist.get_world_size() - 1)


def no_all_reduce(state, bucket):
    """Every rank keeps its own local gradient: the all-reduce never runs."""
    import torch

    future: Any = torch.futures.Future()
    future.set_result(bucket.buffer())
    return future


def one_path(caps: Capabilities, name: str, path: str) -> Capabilities:
    """A built-in adapter's capabilities narrowed to one path and :data:`DTYPES`, that path's own declarations (its
    ranks, levels, dtypes, whether it compiles per shape, accumulates or scans its layers) kept as they are."""
    return dataclasses.replace(
        caps,
        name=name,
        dtypes=DTYPES,
        paths=(path,),
        default_paths=(path,),
        shape_compiled_paths=tuple(p for p in caps.shape_compiled_paths if p == path),
        accumulation={},
        policies={},
        default_dtypes=None,
        ranks={p: n for p, n in caps.ranks.items() if p == path},
        levels={path: caps.levels_of(path)},
        path_dtypes={p: tuple(d for d in dtypes if d in DTYPES) for p, dtypes in caps.path_dtypes.items() if p == path},
        micro_batch_paths=tuple(p for p in caps.micro_batch_paths if p == path),
        per_example_paths=tuple(p for p in caps.per_example_paths if p == path),
        layer_scan_paths=tuple(p for p in caps.layer_scan_paths if p == path),
    )


class _DdpMutant(TorchAdapter):
    name: ClassVar[str] = ""
    bug: ClassVar[str] = ""
    """Words the failure message must contain: the diagnosis naming this bug."""

    def capabilities(self) -> Capabilities:
        return one_path(super().capabilities(), self.name, "ddp")


class MeanAsSum(_DdpMutant):
    """Returns DDP's mean over ranks as if it were the gradient of the summed cost (the ×R forgotten)."""

    name = "ddp-mean-as-sum"
    bug = "the mean over the 2 ranks returned as the gradient of the summed cost"

    def gradient_of_sum(self, mean: Gradients, ranks: int, dtype: str) -> Gradients:
        return mean


class DroppedRank(_DdpMutant):
    """The last rank's gradient never reaches the reduction."""

    name = "ddp-dropped-rank"
    bug = "rank 1's share"
    ddp_comm_hook = f"{MODULE}:drop_last_rank"


class NoAllReduce(_DdpMutant):
    """Each rank keeps its local gradient; rank 0's is returned."""

    name = "ddp-no-all-reduce"
    bug = "no all-reduce"
    ddp_comm_hook = f"{MODULE}:no_all_reduce"


class Float16Reduction(_DdpMutant):
    """torch's own ``fp16_compress_hook``: float32 gradients cast to float16 for the all-reduce."""

    name = "ddp-float16-reduction"
    bug = "the cross-rank reduction was done in float16"
    ddp_comm_hook = "torch.distributed.algorithms.ddp_comm_hooks.default_hooks:fp16_compress_hook"


MUTANTS = (MeanAsSum, DroppedRank, NoAllReduce, Float16Reduction)
