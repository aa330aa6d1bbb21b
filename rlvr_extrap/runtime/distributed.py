"""What the callback needs from the process group: which settings each setup supports, and one broadcast.

Every collective is entered by every process, on the training thread, at the same global step: the
background worker never calls one.
"""

from __future__ import annotations

from typing import TypeVar

from accelerate import PartialState
from accelerate.utils import DistributedType, broadcast_object_list
from transformers.utils import logging

from rlvr_extrap.config import ExtrapolationArguments, ExtrapolationConfigError

logger = logging.get_logger(__name__)

__all__ = ["broadcast_from_main", "check_distributed_support", "sharded_backend"]

T = TypeVar("T")

SHARDED = {DistributedType.DEEPSPEED: "DeepSpeed", DistributedType.FSDP: "FSDP"}


def sharded_backend() -> str | None:
    """'DeepSpeed' or 'FSDP' when the run shards its model; None for one process or DDP."""
    return SHARDED.get(PartialState().distributed_type)


def check_distributed_support(config: ExtrapolationArguments) -> None:
    """Refuse settings the run's parallelism cannot honour; under DeepSpeed / FSDP the guard is turned off, loudly."""
    kind = sharded_backend()
    if kind is None:
        return
    if config.extrap_guard:
        logger.warning(
            f"extrap_guard is not supported under {kind} (the probe generates with the unwrapped model): jumps "
            "will not be guarded. Set extrap_guard=False to silence this, or train with DDP to keep the guard"
        )
        config.extrap_guard = False
    if config.probe_labels:
        raise ExtrapolationConfigError(
            f"extrap_label_source='probe' is not supported under {kind} (the probe generates with the unwrapped "
            "model); use 'reward', or train with DDP"
        )
    if config.enabled and config.build_extrapolator().needs_optimizer_state:
        raise ExtrapolationConfigError(
            f"extrap_method={config.extrap_method!r} reads AdamW's state of the weights it extrapolates (LoRA factors "
            f"or dense weights), which is partitioned or sharded under {kind}; use relex or linear, or train with DDP"
        )
    if config.extrap_optimizer_policy != "keep":
        raise ExtrapolationConfigError(
            f"extrap_optimizer_policy={config.extrap_optimizer_policy!r} is not supported under {kind} (the "
            "optimizer state is sharded); use 'keep', or train with DDP"
        )


def broadcast_from_main(obj: T) -> T:
    """``obj`` as the main process has it, on every process (pickled; a no-op with one process)."""
    if PartialState().num_processes == 1:
        return obj
    return broadcast_object_list([obj], from_process=0)[0]
