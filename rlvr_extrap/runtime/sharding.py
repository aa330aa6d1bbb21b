"""Whole-tensor access to LoRA layers' weights where the run shards them: DeepSpeed ZeRO-3, FSDP1, FSDP2.

ZeRO-1/2 and DDP keep every parameter whole on every process; ZeRO-3 partitions each parameter
(``param.data`` is empty outside a gather), FSDP1 flattens them into per-rank shards (whole only inside
``summon_full_params``), FSDP2 makes them DTensors. The frozen base weights a jump edits are not in
the optimizer under any of them, so no fp32 master copy can undo the edit (checked for ZeRO-2/3).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["add_whole", "full_weights", "whole"]


@contextmanager
def full_weights(model: nn.Module | None, params: list[nn.Parameter], writeback: bool = False) -> Iterator[None]:
    """Inside, ``params`` hold their whole values on every process; edits persist when ``writeback``.

    A collective under ZeRO-3 and FSDP1: every process must enter it, at the same point.
    """
    if any(hasattr(p, "ds_id") for p in params):  # ZeRO-3 partitioned parameters
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=0 if writeback else None):
            yield  # with modifier_rank=0, rank 0's values are broadcast and re-partitioned on exit
        return
    if model is not None and _is_fsdp1(model):
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, writeback=writeback):
            yield
        return
    yield


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The full value of a (possibly DTensor, FSDP2) parameter; a collective for a DTensor."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def add_whole(weight: nn.Parameter, dense: torch.Tensor) -> None:
    """``weight += dense`` in place, ``dense`` being the whole update (the same on every process)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(weight, DTensor):  # FSDP2: add this process's shard of the update to its shard
        dense = distribute_tensor(
            dense.to(device=weight.device, dtype=weight.dtype),
            weight.device_mesh,
            weight.placements,
            src_data_rank=None,
        )
        weight.add_(dense)
    else:
        weight.data.add_(dense.to(device=weight.device, dtype=weight.dtype))


def _is_fsdp1(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(model, FullyShardedDataParallel)
