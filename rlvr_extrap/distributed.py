"""What the callback needs from the process group: which setups it supports, and one broadcast from the main process.

Every collective is entered by every process, on the training thread, at the same global step: the
background worker never calls one.
"""

from __future__ import annotations

from typing import TypeVar

from accelerate import PartialState
from accelerate.utils import DistributedType, broadcast_object_list

__all__ = ["broadcast_from_main", "check_distributed_support"]

T = TypeVar("T")

UNSUPPORTED = {
    DistributedType.DEEPSPEED: "DeepSpeed",
    DistributedType.FSDP: "FSDP",
}


def check_distributed_support() -> None:
    """Raise for sharded setups, where an in-place edit of the base weights is not what the next step sees."""
    kind = UNSUPPORTED.get(PartialState().distributed_type)
    if kind is not None:
        raise NotImplementedError(
            f"ExtrapolationCallback does not support {kind} yet: sharded parameters and optimizer master copies "
            "would silently undo a jump. Train with DDP (accelerate launch --multi_gpu) or one process, "
            "or set extrap_method=None"
        )


def broadcast_from_main(obj: T) -> T:
    """``obj`` as the main process has it, on every process (pickled; a no-op with one process)."""
    if PartialState().num_processes == 1:
        return obj
    return broadcast_object_list([obj], from_process=0)[0]
