"""Reading LoRA factors from a live PEFT model and writing a merged-space update into it.

A jump lands in one of two places (``JumpTarget``): added into the frozen base weight (float32 bases), or held
as a float32 offset beside the LoRA path (``runtime.offset``) where the base's dtype would round it away.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from torch import nn

from rlvr_extrap.linalg.landed import Landed
from rlvr_extrap.linalg.lowrank import Delta, LowRank
from rlvr_extrap.runtime.distributed import broadcast_from_main
from rlvr_extrap.runtime.offset import JumpOffset, fold_offset, offset_of, resolve_jump_into
from rlvr_extrap.runtime.sharding import add_whole, full_weights, whole
from rlvr_extrap.trajectory.trajectory import FactorVelocity

__all__ = [
    "JumpTarget",
    "LoraModule",
    "NoLoraAdapterError",
    "adam_direction",
    "adam_directions",
    "add_to_bases",
    "add_update",
    "factor_velocities",
    "find_lora_modules",
    "snapshot_deltas",
    "unwrapped_name",
]


class NoLoraAdapterError(ValueError):
    """The model has no trainable LoRA module the callback can extrapolate."""


@dataclass
class LoraModule:
    """One trainable LoRA linear layer: effective weight ``W_base + scale * B @ A`` (transposed if fan_in_fan_out)."""

    name: str
    layer: LoraLayer
    adapter: str

    @property
    def base_weight(self) -> nn.Parameter:
        return self.layer.get_base_layer().weight

    @property
    def scale(self) -> float:
        return float(self.layer.scaling[self.adapter])

    @property
    def fan_in_fan_out(self) -> bool:
        return bool(getattr(self.layer, "fan_in_fan_out", False))

    def lora_parameters(self) -> list[nn.Parameter]:
        return [self.layer.lora_A[self.adapter].weight, self.layer.lora_B[self.adapter].weight]

    def lora_delta(self, dtype: torch.dtype = torch.float32) -> LowRank:
        """The live ``scale * B @ A`` as detached CPU copies in ``dtype`` (in (out, in) orientation).

        Under ZeRO-3 / FSDP1, call it inside ``sharding.full_weights``.
        """
        a, b = (whole(p.detach()) for p in self.lora_parameters())
        return LowRank((b.float() * self.scale).to("cpu", dtype), a.to("cpu", dtype, copy=True))

    def add_to_base(self, update: LowRank) -> Landed | None:
        """Add ``update`` to the base weight in place, in the weight's dtype (same Parameter object); what landed."""
        return add_update(self.base_weight, update, self.fan_in_fan_out)

    @property
    def offset(self) -> LowRank | None:
        """The float32 jump offset held beside the LoRA path (out x in), None when there is none."""
        held = offset_of(self.layer)
        return None if held is None else held.factors

    def set_offset(self, factors: LowRank | None) -> None:
        """Hold ``factors`` as the module's jump offset (None: remove it)."""
        held = offset_of(self.layer)
        if factors is None:
            if held is not None:
                held.remove()
        elif held is None:
            JumpOffset(self.layer, self.adapter, factors)
        else:
            held.replace(factors)

    def effective_weight(self) -> torch.Tensor:
        """``W_base + scale * B @ A + offset`` in float32 (for checks; materialises the matrix)."""
        weight = self.base_weight.detach()
        base = self.layer.get_base_layer()
        w = (_dequantized(base) if is_bitsandbytes(self.layer) else whole(weight)).float().cpu()
        delta = self.lora_delta().dense()
        if self.offset is not None:
            delta = delta + self.offset.dense()
        return w + (delta.T if self.fan_in_fan_out else delta)


EDIT_BLOCK = 2**18
"""Elements of the float32 product formed at a time when editing a whole (unsharded) weight (1 MiB: the block, its
copy before the edit and what landed stay in a core's cache)."""


def add_update(weight: torch.Tensor, update: Delta, transposed: bool = False) -> Landed | None:
    """``weight += update`` (``update.T`` if ``transposed``): float32 matmuls of the factors on the weight's device.

    A whole weight is edited in row blocks of about ``EDIT_BLOCK`` elements (the product rounded to the weight's
    dtype, then added), so the edit never holds an ``m x n`` float32 matrix; a dense update (full-parameter runs) is
    added block by block alike. Returns what landed, measured block by block from the weight before and after (None
    for a DTensor, whose blocks live on other processes).
    """
    from torch.distributed.tensor import DTensor

    if isinstance(update, LowRank):
        left, right = update.left.to(weight.device, torch.float32), update.right.to(weight.device, torch.float32)
        if transposed:
            left, right = right.T, left.T

        def rows_of(start: int, stop: int) -> torch.Tensor:
            return left[start:stop] @ right

    else:
        dense = update.T if transposed else update

        def rows_of(start: int, stop: int) -> torch.Tensor:
            return dense[start:stop].to(weight.device, torch.float32)

    if isinstance(weight, DTensor):
        add_whole(weight, rows_of(0, weight.shape[0]))
        return None
    rows = max(1, EDIT_BLOCK // max(weight.shape[1], 1))
    parts = []
    for start in range(0, weight.shape[0], rows):
        block = weight.data[start : start + rows]
        before = block.float()  # a copy unless the weight is float32
        before = before.clone() if before is block else before
        intended = rows_of(start, start + rows)
        block.add_(intended.to(weight.dtype))
        parts.append(Landed.of_dense(block.float() - before, intended))
    return Landed.total(parts)


def find_lora_modules(model: nn.Module, jump_into: str = "auto") -> dict[str, LoraModule]:
    """Every LoRA linear layer with a trainable adapter; raises NoLoraAdapterError if there is none.

    A trainable adapter on a layer whose base weight cannot take an in-place edit is refused by name, with
    the fix (see ``_edit_refusal``): a jump must never be the first place that finds out. A bitsandbytes-quantized
    base (QLoRA) is accepted unless ``jump_into`` is 'base': its jumps are held as float32 offsets beside the LoRA
    path ('auto' resolves to 'offset' for any base that is not float32).
    """
    modules: dict[str, LoraModule] = {}
    refused: list[tuple[str, str]] = []
    for name, layer in model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        for adapter, lora_a in layer.lora_A.items():
            if not lora_a.weight.requires_grad:
                continue  # e.g. the frozen "ref" adapter GRPO adds when beta != 0
            key = unwrapped_name(name)
            reason = _edit_refusal(layer, adapter, quantized_ok=jump_into != "base")
            if reason is not None:
                refused.append((key, reason))
            else:
                modules[f"{key}.{adapter}" if len(layer.lora_A) > 1 else key] = LoraModule(key, layer, adapter)
    if refused:
        (first, reason), others = refused[0], [n for n, _ in refused[1:]]
        more = f" ({len(others)} more LoRA module(s) alike, e.g. {others[:3]})" if others else ""
        raise NoLoraAdapterError(f"LoRA module {first} cannot take an extrapolated update: {reason}{more}")
    if not modules:
        raise NoLoraAdapterError(
            "the model has no trainable LoRA adapter: extrapolation works in the merged LoRA delta space. "
            "Pass peft_config=LoraConfig(...) to GRPOTrainer (or a PeftModel as model), or set extrap_method=None"
        )
    return modules


def _edit_refusal(layer: LoraLayer, adapter: str, quantized_ok: bool = True) -> str | None:
    """Why a jump cannot land on this layer, and the fix; None when it can. A bitsandbytes layer (``quantized_ok``)
    takes its jumps as an offset beside the LoRA path, so its base weight is never edited."""
    from torch.distributed.tensor import DTensor

    base = layer.get_base_layer()
    weight = getattr(base, "weight", None)
    unquantized = (
        "load the base model unquantized (no quantization_config / load_in_8bit / load_in_4bit), or for a "
        "bitsandbytes base leave extrap_jump_into 'auto' (jumps held as float32 offsets beside the LoRA path)"
    )
    if layer.use_dora.get(adapter, False):
        return "it uses DoRA (the magnitude vector rescales the merged weight); set use_dora=False in the LoraConfig"
    if quantized_ok and is_bitsandbytes(layer):
        return None
    if not isinstance(layer, LoraLinear) or not isinstance(weight, torch.Tensor):
        return (
            f"it is a {type(layer).__name__} on a {type(base).__name__}, and only LoRA on plain linear layers can "
            f"jump; leave it out of target_modules in the LoraConfig, or {unquantized}"
        )
    if not weight.is_floating_point():
        return f"its base weight is {weight.dtype}, not a floating-point tensor (a quantized layer); {unquantized}"
    if type(weight) not in (torch.Tensor, nn.Parameter, DTensor):
        return (
            f"its base weight is a {type(weight).__name__}, not a plain tensor (a quantized or wrapped weight that an "
            f"in-place add cannot edit); {unquantized}"
        )
    if weight.device.type == "meta":
        return (
            "its base weight is on the meta device (offloaded: the real values live elsewhere and an edit would be "
            "lost); load the whole model onto one device (no device_map offloading to CPU or disk)"
        )
    if weight.requires_grad:
        return (
            "its base weight is trainable (requires_grad=True): the optimizer also steps the weight a jump edits, "
            "and the trajectory only follows the adapter; keep the base model frozen (get_peft_model freezes it: "
            "do not set requires_grad on base layers afterwards)"
        )
    return None


def is_bitsandbytes(layer: LoraLayer) -> bool:
    """A PEFT LoRA layer over a bitsandbytes 8-bit or 4-bit linear layer (QLoRA)."""
    return type(layer).__module__ == "peft.tuners.lora.bnb"


def _dequantized(base: nn.Module) -> torch.Tensor:
    """A bitsandbytes layer's weight as floats, read without touching its matmul state (PEFT's dequantize writes
    into it). An 8-bit layer's row scales live on the weight until the first forward pass, then in its state."""
    import bitsandbytes as bnb

    weight = base.weight
    if type(weight).__name__ == "Params4bit":
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state)
    scales = weight.SCB if weight.SCB is not None else base.state.SCB
    return bnb.functional.int8_vectorwise_dequant(weight.data, scales)


def snapshot_deltas(
    modules: dict[str, LoraModule], model: nn.Module | None = None, dtype: torch.dtype = torch.float32
) -> dict[str, LowRank]:
    """Detached CPU copies of every module's ``scale * B @ A`` in ``dtype``: all the training thread pays per snapshot.

    ``model`` is the module the trainer hands to callbacks (needed under FSDP1). Under ZeRO-3 and
    FSDP this is a collective: every process calls it.
    """
    params = [p for m in modules.values() for p in m.lora_parameters()]
    with full_weights(model, params):
        return {name: module.lora_delta(dtype) for name, module in modules.items()}


def adam_direction(param: torch.Tensor, state: dict, group: dict) -> torch.Tensor | None:
    """AdamW's next update direction ``u`` of ``param`` (``p <- p - lr * u``) if its moments stayed as they are.

    ``u = m_hat / (sqrt(v_hat) + eps) + wd * p`` with torch's bias corrections; None without Adam moments
    (no step taken yet, or another optimizer).
    """
    if not state or "exp_avg" not in state or "exp_avg_sq" not in state:
        return None
    step = float(state["step"])
    if step <= 0:
        return None
    beta1, beta2 = group["betas"]
    second = state["max_exp_avg_sq"] if group.get("amsgrad") and "max_exp_avg_sq" in state else state["exp_avg_sq"]
    m_hat = state["exp_avg"].float() / (1 - beta1**step)
    denom = second.float().sqrt() / math.sqrt(1 - beta2**step) + group["eps"]
    return m_hat / denom + group.get("weight_decay", 0.0) * param.detach().float()


def adam_directions(optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor], tuple[torch.Tensor, dict] | None]:
    """``param -> (u, its param group)``: ``adam_direction`` of a parameter ``optimizer`` steps (float32, on its
    device); None when it has no Adam moments or the optimizer does not hold it."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the real one
    groups = {id(p): g for g in inner.param_groups for p in g["params"]}

    def direction(param: torch.Tensor) -> tuple[torch.Tensor, dict] | None:
        group = groups.get(id(param))
        u = None if group is None else adam_direction(param, inner.state.get(param), group)
        return None if u is None else (u, group)

    return direction


def factor_velocities(
    modules: dict[str, LoraModule], optimizer: torch.optim.Optimizer, deltas: dict[str, LowRank], dtype: torch.dtype
) -> dict[str, FactorVelocity] | None:
    """Each module's ``FactorVelocity`` at the snapshot ``deltas`` (whose factors it shares), from AdamW's state.

    One elementwise pass over the LoRA parameters and a CPU copy of the result, like the snapshot itself. None
    when any factor has no Adam state yet (before the first step) or the optimizer is not Adam-like.
    """
    direction = adam_directions(optimizer)
    out = {}
    with torch.no_grad():
        for name, module in modules.items():
            a, b = (direction(p) for p in module.lora_parameters())
            if a is None or b is None:
                return None
            (u_a, group_a), (u_b, group_b) = a, b
            d_left = (u_b * (-group_b["lr"] * module.scale)).to("cpu", dtype)
            d_right = (u_a * -group_a["lr"]).to("cpu", dtype)
            delta = deltas[name]
            out[name] = FactorVelocity(delta.left, delta.right, d_left, d_right, float(group_a["betas"][0]))
    return out


def add_to_bases(
    modules: dict[str, LoraModule], updates: Mapping[str, LowRank], model: nn.Module | None = None
) -> Landed | None:
    """Add each module's update into its base weight, in place (a jump, or saved offsets being restored).

    Every process adds the same updates; under ZeRO-3 and FSDP this is a collective. Returns what landed, summed
    over the modules (None where a module's could not be measured).
    """
    with torch.no_grad(), full_weights(model, [modules[n].base_weight for n in updates], writeback=True):
        return Landed.total([modules[name].add_to_base(update) for name, update in updates.items()])


class JumpTarget:
    """Where a run's jumps land: ``into='base'`` adds them into the base weights, ``'offset'`` folds them into
    float32 offsets beside the LoRA path (``runtime.offset``), each cut to ``max_rank`` (None: 4 x the module's
    LoRA rank). Every process calls every method at the same point (the edits are collectives where sharded)."""

    def __init__(self, modules: dict[str, LoraModule], into: str, max_rank: int | None = None) -> None:
        self.modules, self.max_rank = modules, max_rank
        self.into = resolve_jump_into(into, {m.base_weight.dtype for m in modules.values()})

    def rank_cap(self, name: str) -> int:
        """The largest rank module ``name``'s offset keeps."""
        module = self.modules[name]
        return self.max_rank or 4 * module.layer.r[module.adapter]

    def apply(self, updates: Mapping[str, LowRank], model: nn.Module | None = None) -> Landed | None:
        """A jump: add ``updates``; returns what landed (the offsets' truncation included)."""
        if self.into == "base":
            return add_to_bases(self.modules, updates, model)
        folded = broadcast_from_main(self.fold(updates))  # bit-identical offsets on every process
        for name, (offset, _) in folded.items():
            self.modules[name].set_offset(offset)
        return Landed.total([landed for _, landed in folded.values()])

    def fold(self, updates: Mapping[str, LowRank]) -> dict[str, tuple[LowRank, Landed]]:
        """Each module's offset with its update added, cut to the rank cap, and what landed (nothing changes yet)."""
        out = {}
        for name, update in updates.items():
            old = self.modules[name].offset
            offset, dropped_sq, offset_sq = fold_offset(old, update, self.rank_cap(name))
            landed = Landed.of_factors(offset if old is None else offset - old, update)
            landed.dropped_sq, landed.offset_sq = dropped_sq, offset_sq
            out[name] = (offset, landed)
        return out

    @property
    def offsets(self) -> dict[str, LowRank]:
        """The offsets held now (none when jumps go into the base)."""
        return {n: m.offset for n, m in self.modules.items() if m.offset is not None}

    def restore(self, saved: dict[str, LowRank], model: nn.Module | None = None) -> None:
        """Put a saved run's accumulated offsets back (resume, ``apply_offsets``), on top of any held now."""
        if self.into == "base":
            add_to_bases(self.modules, saved, model)
            return
        for name, offset in saved.items():  # held as saved where there is none yet (resume: bit for bit)
            held = self.modules[name].offset
            offset = LowRank(offset.left.float(), offset.right.float())
            self.modules[name].set_offset(offset if held is None else fold_offset(held, offset, None)[0])

    def hold(self, names: list[str]) -> dict[str, torch.Tensor | LowRank | None]:
        """What ``roll_back`` needs to undo edits of modules ``names``: CPU copies of their base weights (or offsets)."""
        if self.into == "base":
            return {name: self.modules[name].base_weight.detach().to("cpu", copy=True) for name in names}
        return {name: self.modules[name].offset for name in names}

    def roll_back(self, held: dict[str, torch.Tensor | LowRank | None]) -> None:
        """Exactly the weights (or offsets) ``hold`` saw: no offset where there was none."""
        with torch.no_grad():
            for name, value in held.items():
                if self.into == "base":
                    self.modules[name].base_weight.data.copy_(value)
                else:
                    self.modules[name].set_offset(value)


def unwrapped_name(name: str) -> str:
    """A module's name as in the plain PeftModel (FSDP1 and activation checkpointing insert wrapper modules)."""
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(wrapper, "")
    return name
