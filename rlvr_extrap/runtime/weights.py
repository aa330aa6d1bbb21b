"""What a run extrapolates: its LoRA factors (``LoraWeights``), or without a LoRA adapter its trainable 2-D weights
(``DenseWeights``, a full-parameter run). The callback holds one and leaves to it everything the two differ in.

Every process holds one; ``worker`` arguments are the main process's ``TrajectoryWorker`` (None elsewhere).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import torch
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers.utils import logging

from rlvr_extrap.config import SNAPSHOT_DTYPES, ExtrapolationArguments, ExtrapolationConfigError
from rlvr_extrap.linalg.lowrank import Delta, LowRank
from rlvr_extrap.runtime.dense import (
    DenseModule,
    DenseTarget,
    NoDenseWeightError,
    dense_velocities,
    find_dense_modules,
    read_weights,
)
from rlvr_extrap.runtime.distributed import broadcast_from_main, sharded_backend
from rlvr_extrap.runtime.lora import (
    JumpTarget,
    LoraModule,
    NoLoraAdapterError,
    factor_velocities,
    find_lora_modules,
    snapshot_deltas,
)
from rlvr_extrap.runtime.state import CallbackState, read_points, write_point
from rlvr_extrap.runtime.worker import TrajectoryWorker
from rlvr_extrap.trajectory.trajectory import Velocity

__all__ = ["DenseWeights", "LoraWeights", "RunWeights", "find_weights"]

logger = logging.get_logger(__name__)

WorkerState = tuple[dict[str, LowRank], list[int], dict[str, list[Delta]]]
"""``TrajectoryWorker.state_now``: (offsets, trajectory steps, trajectory deltas)."""


class RunWeights(Protocol):
    """The modules a run extrapolates, where its jumps land, and how they are snapshotted, saved and restored."""

    target: JumpTarget | DenseTarget

    def check_budget(self, config: ExtrapolationArguments, budget: int) -> None:
        """Refuse an ``extrap_snapshot_memory`` of ``budget`` bytes that cannot hold what one snapshot spills."""

    def read(self, optimizer: torch.optim.Optimizer | None) -> tuple[dict[str, Any], dict[str, Velocity] | None]:
        """A snapshot, and given ``optimizer`` AdamW's velocities there (every process: a collective where sharded)."""

    def add(
        self,
        worker: TrajectoryWorker,
        step: int,
        snapshot: dict[str, Any],
        velocities: dict[str, Velocity] | None,
        label: float | None,
    ) -> None:
        """Hand a snapshot ``read`` returned (its velocities, its score) to the worker."""

    def velocities(self, optimizer: torch.optim.Optimizer) -> dict[str, Velocity] | None:
        """AdamW's velocities at the weights as they are now; None where it holds no Adam state for them yet."""

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters whose optimizer state ``extrap_optimizer_policy`` resets after a jump."""

    def state(
        self, worker: TrajectoryWorker, now: WorkerState, history: dict[str, Any], directory: str
    ) -> CallbackState:
        """The state to save into ``directory``, from the worker's state ``now`` and the callback's ``history``."""

    def resume(
        self,
        worker: TrajectoryWorker | None,
        saved: CallbackState | None,
        offsets: dict[str, LowRank],
        directory: str,
        labels: dict[int, float],
    ) -> bool:
        """Restore the target and the worker from ``saved`` (main process; every process gets ``offsets``) from
        ``directory``; False when the trajectory must start a new segment at the resumed step."""


def find_weights(model: nn.Module, config: ExtrapolationArguments, output_dir: str) -> RunWeights:
    """The LoRA modules, or on a model with no LoRA layer at all the dense weights ``extrap_full_modules`` selects
    (a full-parameter run, whose trajectory points are written under ``output_dir``)."""
    dtype = SNAPSHOT_DTYPES[config.extrap_snapshot_dtype]
    try:
        modules = find_lora_modules(model, config.extrap_jump_into)
    except NoLoraAdapterError:
        if any(isinstance(m, LoraLayer) for m in model.modules()):
            raise  # an adapter the callback cannot use: its message names the fix
    else:
        return LoraWeights(modules, model, dtype, config.extrap_jump_into, config.extrap_offset_rank)
    config.validate_full_parameter()
    try:
        dense = find_dense_modules(model, config.full_module_patterns)
    except NoDenseWeightError as err:
        raise ExtrapolationConfigError(str(err)) from None
    halves = sorted({str(m.weight.dtype).removeprefix("torch.") for m in dense.values()} - {"float32"})
    if halves and sharded_backend() != "DeepSpeed":
        logger.warning(
            f"extrapolation: the trainable weights are {'/'.join(halves)} with no float32 master copy, so a jump "
            "is rounded to their dtype (a small update can be mostly lost; extrap/landed_fraction logs what is "
            "kept); load the model in float32 and train with bf16=True (autocast) to keep jumps exact"
        )
    return DenseWeights(dense, model, dtype, output_dir)


class LoraWeights:
    """A LoRA run: snapshots are the factored ``scale * B @ A``; jumps land as ``extrap_jump_into`` says, and the
    state holds the accumulated offsets and the segment's points."""

    def __init__(
        self, modules: dict[str, LoraModule], model: nn.Module, dtype: torch.dtype, into: str, max_rank: int | None
    ) -> None:
        self.modules, self.model, self.dtype = modules, model, dtype
        self.target = JumpTarget(modules, into, max_rank)

    def check_budget(self, config: ExtrapolationArguments, budget: int) -> None:
        """No check: a LoRA module's snapshot is its two factors, a small part of its weight."""

    def read(self, optimizer: torch.optim.Optimizer | None) -> tuple[dict[str, LowRank], dict[str, Velocity] | None]:
        deltas = snapshot_deltas(self.modules, self.model, self.dtype)
        return deltas, None if optimizer is None else factor_velocities(self.modules, optimizer, deltas, self.dtype)

    def add(
        self,
        worker: TrajectoryWorker,
        step: int,
        snapshot: dict[str, LowRank],
        velocities: dict[str, Velocity] | None,
        label: float | None,
    ) -> None:
        worker.add_snapshot(step, snapshot, velocities, label)

    def velocities(self, optimizer: torch.optim.Optimizer) -> dict[str, Velocity] | None:
        return self.read(optimizer)[1]  # at the factors as they are now

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules.values() for p in m.lora_parameters()]

    def state(
        self, worker: TrajectoryWorker, now: WorkerState, history: dict[str, Any], directory: str
    ) -> CallbackState:
        return CallbackState(*now, history)

    def resume(
        self,
        worker: TrajectoryWorker | None,
        saved: CallbackState | None,
        offsets: dict[str, LowRank],
        directory: str,
        labels: dict[int, float],
    ) -> bool:
        self.target.restore(offsets, self.model)
        if worker is not None:
            worker.restore(saved.offsets, saved.steps, saved.deltas, labels)
        return True


class DenseWeights:
    """A full-parameter run: snapshots are the weights themselves, which the worker measures from the origin (off
    the training thread); jumps land in the weights. The state holds the origin and names the points by file: each
    is written once under ``output_dir``, not into every checkpoint."""

    def __init__(self, modules: dict[str, DenseModule], model: nn.Module, dtype: torch.dtype, output_dir: str) -> None:
        self.modules, self.target, self.model, self.dtype = modules, DenseTarget(modules), model, dtype
        self.output_dir = output_dir
        self.point_files: dict[tuple[int, int], str] = {}  # (segment start, step) -> file

    def check_budget(self, config: ExtrapolationArguments, budget: int) -> None:
        """``extrap_snapshot_memory`` must hold at least one module's snapshot."""
        name, module = max(self.modules.items(), key=lambda item: item[1].nbytes(self.dtype))
        if budget < module.nbytes(self.dtype):
            raise ExtrapolationConfigError(
                f"extrap_snapshot_memory={config.extrap_snapshot_memory!r} is less than one module's snapshot "
                f"({name}: {module.nbytes(self.dtype):,} bytes in {config.extrap_snapshot_dtype}); give at least "
                f"{module.nbytes(self.dtype):,} bytes, better a few snapshots' worth"
            )

    def read(
        self, optimizer: torch.optim.Optimizer | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, Velocity] | None]:
        weights = read_weights(self.modules, self.model)
        return weights, None if optimizer is None else self.velocities(optimizer)

    def add(
        self,
        worker: TrajectoryWorker,
        step: int,
        snapshot: dict[str, torch.Tensor],
        velocities: dict[str, Velocity] | None,
        label: float | None,
    ) -> None:
        worker.add_weights(step, snapshot, self.dtype, velocities, label)

    def velocities(self, optimizer: torch.optim.Optimizer) -> dict[str, Velocity] | None:
        return dense_velocities(self.modules, optimizer, self.dtype)

    def parameters(self) -> list[nn.Parameter]:
        return [m.weight for m in self.modules.values()]

    def state(
        self, worker: TrajectoryWorker, now: WorkerState, history: dict[str, Any], directory: str
    ) -> CallbackState:
        _, steps, deltas = now
        files = [
            os.path.relpath(self._point_file(steps[0], step, i, deltas), directory) for i, step in enumerate(steps)
        ]
        return CallbackState({}, steps, {}, history, origin=worker.origin, point_files=files)

    def resume(
        self,
        worker: TrajectoryWorker | None,
        saved: CallbackState | None,
        offsets: dict[str, LowRank],
        directory: str,
        labels: dict[int, float],
    ) -> bool:
        """The checkpoint's weights hold every jump; the origin and the segment's points come back from their
        files, or without those files the trajectory starts a new segment."""
        points = None if saved is None else read_points(saved, directory)
        found = broadcast_from_main(points is not None)
        if worker is not None and points is not None:
            worker.restore({}, saved.steps, points, labels, origin=saved.origin)
            for file, point_step in zip(saved.point_files, saved.steps, strict=True):
                self.point_files[(saved.steps[0], point_step)] = os.path.join(directory, file)
        elif worker is not None:
            worker.restore({}, [], {}, labels, origin=saved.origin)
        return found

    def _point_file(self, segment: int, step: int, index: int, deltas: dict[str, list]) -> str:
        """The file of a trajectory point, written the first time a checkpoint needs it."""
        key = (segment, step)
        if key not in self.point_files:
            point = {name: points[index] for name, points in deltas.items()}
            self.point_files[key] = str(write_point(self.output_dir, segment, step, point))
        return self.point_files[key]
