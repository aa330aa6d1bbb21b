"""Full-parameter runs (no LoRA adapter): the trainable 2-D weights a jump edits, read and written whole.

A snapshot is a copy of each weight as the optimizer holds it; the worker measures it from the run's origin (the
weights at step 0), so the trajectory is ``W_t - W_0`` as in RELEX and RL-Extra. A jump adds its update into the
copy the optimizer steps from, else the next step would overwrite it:

* one process, DDP: the parameter itself (mixed precision by autocast keeps float32 parameters);
* FSDP1 / FSDP2: the sharded parameter (FSDP's mixed precision casts a float32 shard for compute);
* DeepSpeed ZeRO-1/2/3: the optimizer's float32 partition of the weight and the weight the forward pass reads
  (whole under ZeRO-1/2, gathered and re-partitioned under ZeRO-3), the latter set to the new master's value.

A model loaded in bfloat16 or float16 without a master copy keeps what the weight's rounding keeps (logged as
``extrap/landed_fraction``; the callback says so at train begin).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from rlvr_extrap.linalg.landed import Landed
from rlvr_extrap.linalg.lowrank import Delta, to_dense
from rlvr_extrap.runtime.lora import adam_directions, add_update, unwrapped_name
from rlvr_extrap.runtime.sharding import full_weights, whole
from rlvr_extrap.trajectory.trajectory import DenseVelocity

__all__ = [
    "DenseModule",
    "DenseTarget",
    "NoDenseWeightError",
    "dense_velocities",
    "find_dense_modules",
    "read_weights",
]


class NoDenseWeightError(ValueError):
    """No trainable 2-D weight matches ``extrap_full_modules``."""


@dataclass
class DenseModule:
    """One trainable 2-D weight of a full-parameter run (``tied``: other modules that share it)."""

    name: str
    weight: nn.Parameter
    tied: tuple[str, ...] = ()

    @property
    def base_weight(self) -> nn.Parameter:
        """The weight a jump edits (the name LoRA modules use for theirs)."""
        return self.weight

    @property
    def shape(self) -> tuple[int, ...]:
        """The whole weight's shape (ZeRO-3 keeps only a partition in ``weight``)."""
        return tuple(getattr(self.weight, "ds_shape", self.weight.shape))

    def nbytes(self, dtype: torch.dtype) -> int:
        """Bytes of one copy of the whole weight in ``dtype``."""
        return torch.Size(self.shape).numel() * dtype.itemsize


def find_dense_modules(model: nn.Module, patterns: Sequence[str]) -> dict[str, DenseModule]:
    """Every module whose name matches a glob in ``patterns`` and whose ``weight`` is a trainable 2-D parameter.

    A weight shared by several modules (tied embeddings and ``lm_head``) is one module, named by the first that
    holds it. Under FSDP1 the names and shapes are read inside ``summon_full_params`` (its shards are flat).
    """
    by_param: dict[int, DenseModule] = {}
    with full_weights(model, []):
        for raw, module in model.named_modules():
            weight, name = getattr(module, "weight", None), unwrapped_name(raw)
            if not isinstance(weight, nn.Parameter) or not weight.requires_grad:
                continue
            if len(getattr(weight, "ds_shape", weight.shape)) != 2 or not _matches(name, patterns):
                continue
            if id(weight) in by_param:
                by_param[id(weight)].tied += (name,)
            else:
                by_param[id(weight)] = DenseModule(name, weight)
    if not by_param:
        raise NoDenseWeightError(
            f"extrap_full_modules={','.join(patterns)!r} matches no trainable 2-D weight of the model (module names "
            f"look like {_example_names(model)}); give globs over module names, e.g. '*.layers.*' for the decoder "
            "layers' linear weights"
        )
    return {m.name: m for m in by_param.values()}


def read_weights(modules: Mapping[str, DenseModule], model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """CPU copies of every weight as the optimizer holds it (DeepSpeed: its float32 master copy).

    Under ZeRO and FSDP this is a collective: every process calls it.
    """
    params = [m.weight for m in modules.values()]
    out = {}
    with torch.no_grad(), _gathered(model, params, writeback=False):
        for name, module in modules.items():
            master = _deepspeed_master(module.weight)
            value = whole(module.weight.detach()) if master is None else master
            out[name] = value.to("cpu", copy=True)
    return out


def dense_velocities(
    modules: Mapping[str, DenseModule], optimizer: torch.optim.Optimizer, dtype: torch.dtype
) -> dict[str, DenseVelocity] | None:
    """Each weight's ``DenseVelocity`` (AdamW's next change, ``-lr u``) as a CPU copy in ``dtype``, like the snapshot.

    One elementwise pass per weight on its device (one process, DDP: the optimizer holds the whole weight's state).
    None when any weight has no Adam state yet (before the first step) or the optimizer is not Adam-like.
    """
    direction = adam_directions(optimizer)
    out = {}
    with torch.no_grad():
        for name, module in modules.items():
            found = direction(module.weight)
            if found is None:
                return None
            u, group = found
            out[name] = DenseVelocity(u.mul_(-group["lr"]).to("cpu", dtype), float(group["betas"][0]))
    return out


class DenseTarget:
    """Where a full-parameter run's jumps land: into the trainable weights (and DeepSpeed's master copies).

    The same interface as ``lora.JumpTarget``; the accumulated jumps are part of the weights a checkpoint saves, so
    no offsets are held. Every process calls every method at the same point (the edits are collectives where
    sharded).
    """

    into = "weights"

    def __init__(self, modules: dict[str, DenseModule]) -> None:
        self.modules = modules

    def apply(self, updates: Mapping[str, Delta], model: nn.Module | None = None) -> Landed | None:
        """A jump: add each update into its weight; returns what landed, summed over the modules."""
        params = [self.modules[name].weight for name in updates]
        with torch.no_grad(), _gathered(model, params, writeback=True):
            return Landed.total([_add_to_weight(self.modules[name].weight, u) for name, u in updates.items()])

    @property
    def offsets(self) -> dict:
        """None held: the jumps are in the weights."""
        return {}

    def restore(self, saved: Mapping[str, Delta], model: nn.Module | None = None) -> None:
        """Nothing to put back: a checkpoint's weights already hold its jumps."""
        if saved:
            raise ValueError(f"a full-parameter run holds no jump offsets; got offsets for {sorted(saved)[:3]}")

    def hold(self, names: list[str]) -> dict[str, torch.Tensor]:
        """CPU copies of the weights ``names`` (the guard: one process or DDP, where weights are whole)."""
        return {name: self.modules[name].weight.detach().to("cpu", copy=True) for name in names}

    def roll_back(self, held: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, value in held.items():
                self.modules[name].weight.data.copy_(value)


def _add_to_weight(weight: nn.Parameter, update: Delta) -> Landed | None:
    """``weight += update`` in the copy the optimizer steps from (see the module docstring); what landed there."""
    master = _deepspeed_master(weight)
    if master is None:
        return add_update(weight, update)
    from deepspeed.utils import safe_set_full_fp32_param

    intended = to_dense(update).to(master.device, torch.float32).reshape(master.shape)
    new = master + intended
    safe_set_full_fp32_param(weight, new)  # this process's partition of the master
    weight.data.copy_(new.reshape(weight.shape).to(weight.dtype))  # whole here (ZeRO-3: gathered, written back)
    return Landed.of_dense(new - master, intended)


def _deepspeed_master(weight: nn.Parameter) -> torch.Tensor | None:
    """The whole float32 master copy DeepSpeed's optimizer keeps of ``weight`` (a collective); None elsewhere."""
    if not (hasattr(weight, "ds_id") or hasattr(weight, "_hp_mapping")):
        return None
    from deepspeed.utils import safe_get_full_fp32_param

    master = safe_get_full_fp32_param(weight)
    if master is None:
        return None
    return master.reshape(getattr(weight, "ds_shape", weight.shape))


def _gathered(model: nn.Module | None, params: list[nn.Parameter], writeback: bool):
    """Whole weights where the run shards them; DeepSpeed's masters are read whole without a gather, but a ZeRO-3
    edit also rewrites the gathered compute weight."""
    if any(hasattr(p, "ds_id") for p in params) and not writeback:
        return nullcontext()
    return full_weights(model, params, writeback=writeback)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _example_names(model: nn.Module) -> list[str]:
    names = [
        unwrapped_name(n) for n, m in model.named_modules() if isinstance(getattr(m, "weight", None), nn.Parameter)
    ]
    return names[:3] + (["..."] if len(names) > 3 else [])
