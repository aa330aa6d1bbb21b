"""Reading LoRA factors from a live PEFT model and writing a merged-space update into it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from torch import nn

from .lowrank import LowRank
from .sharding import add_whole, full_weights, whole

__all__ = ["LoraModule", "NoLoraAdapterError", "add_to_bases", "find_lora_modules", "snapshot_deltas"]


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

    def lora_delta(self) -> LowRank:
        """The live ``scale * B @ A`` as detached float32 CPU copies (in (out, in) orientation).

        Under ZeRO-3 / FSDP1, call it inside ``sharding.full_weights``.
        """
        a, b = (whole(p.detach()).to("cpu", torch.float32, copy=True) for p in self.lora_parameters())
        return LowRank(b * self.scale, a)

    def add_to_base(self, update: LowRank) -> None:
        """Add ``update`` to the base weight in place, in the weight's dtype (same Parameter object)."""
        dense = update.dense()
        add_whole(self.base_weight, dense.T if self.fan_in_fan_out else dense)

    def effective_weight(self) -> torch.Tensor:
        """``W_base + scale * B @ A`` in float32 (for checks; materialises the matrix)."""
        w = whole(self.base_weight.detach()).float().cpu()
        delta = self.lora_delta().dense()
        return w + (delta.T if self.fan_in_fan_out else delta)


def find_lora_modules(model: nn.Module) -> dict[str, LoraModule]:
    """Every LoRA linear layer with a trainable adapter; raises NoLoraAdapterError if there is none."""
    modules: dict[str, LoraModule] = {}
    unsupported: list[str] = []
    for name, layer in model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        for adapter, lora_a in layer.lora_A.items():
            if not lora_a.weight.requires_grad:
                continue  # e.g. the frozen "ref" adapter GRPO adds when beta != 0
            if layer.use_dora.get(adapter, False):
                unsupported.append(f"{name} (DoRA)")
            elif not isinstance(layer, LoraLinear) or not layer.get_base_layer().weight.is_floating_point():
                unsupported.append(f"{name} ({type(layer.get_base_layer()).__name__})")
            else:
                key = _unwrapped_name(name)
                modules[f"{key}.{adapter}" if len(layer.lora_A) > 1 else key] = LoraModule(key, layer, adapter)
    if unsupported:
        raise NoLoraAdapterError(
            f"these LoRA modules cannot take an extrapolated update: {unsupported[:5]}. Only LoRA on "
            "unquantized linear layers without DoRA is supported; change target_modules / use_dora in "
            "the LoraConfig, or do not quantize the base model"
        )
    if not modules:
        raise NoLoraAdapterError(
            "the model has no trainable LoRA adapter: extrapolation works in the merged LoRA delta space. "
            "Pass peft_config=LoraConfig(...) to GRPOTrainer (or a PeftModel as model), or set extrap_method=None"
        )
    return modules


def snapshot_deltas(modules: dict[str, LoraModule], model: nn.Module | None = None) -> dict[str, LowRank]:
    """Detached CPU copies of every module's ``scale * B @ A``: all the training thread pays per snapshot.

    ``model`` is the module the trainer hands to callbacks (needed under FSDP1). Under ZeRO-3 and
    FSDP this is a collective: every process calls it.
    """
    params = [p for m in modules.values() for p in m.lora_parameters()]
    with full_weights(model, params):
        return {name: module.lora_delta() for name, module in modules.items()}


def add_to_bases(modules: dict[str, LoraModule], updates: dict[str, LowRank], model: nn.Module | None = None) -> None:
    """Add each module's update into its base weight, in place (a jump, or saved offsets being restored).

    Every process adds the same updates; under ZeRO-3 and FSDP this is a collective.
    """
    with torch.no_grad(), full_weights(model, [modules[n].base_weight for n in updates], writeback=True):
        for name, update in updates.items():
            modules[name].add_to_base(update)


def _unwrapped_name(name: str) -> str:
    """A module's name as in the plain PeftModel (FSDP1 and activation checkpointing insert wrapper modules)."""
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(wrapper, "")
    return name
