"""Jumps held beside the LoRA path in float32, for base weights whose dtype would round them away.

A jump's update is typically 1e-4 to 1e-3 of a weight's norm; added into a bfloat16 weight (8 mantissa bits)
most of it is rounded off. On such bases the accumulated jumps are instead kept as a frozen float32
``left @ right`` per LoRA module, added to the LoRA path's float32 output before PEFT rounds the layer's result to
the base's dtype: the module computes ``W_base x + s B A x + left (right x)`` with one rounding, as PEFT computes
``W_base x + s B A x``, the offset never rounded into ``W_base``. (Added after that rounding instead, a change of
1e-4 of the output would mostly vanish in it: a bfloat16 value plus less than half its last bit rounds back to it.) Merging the adapter
(TRL's vLLM weight sync, ``merge_and_unload``) merges the offset with it, in the base's dtype as any merge is.

The offset's rank stays bounded: after each jump it is compacted (QR of both factors, SVD of the core) and cut
to at most ``max_rank`` singular directions, the dropped relative norm being reported.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora import LoraLayer

from rlvr_extrap.linalg.lowrank import LowRank

__all__ = ["JumpOffset", "fold_offset", "offset_of", "resolve_jump_into"]

OFFSET_ATTRIBUTE = "extrap_jump_offset"
"""The attribute of a LoRA layer that holds its ``JumpOffset`` (absent: no offset)."""


class JumpOffset:
    """A frozen float32 ``left @ right`` (out x in) a LoRA layer adds to its output, merged with ``adapter``.

    ``(x @ right.T) @ left.T`` (float32) is added to ``lora_B``'s output (divided by the scaling PEFT multiplies
    it by), so it joins the LoRA path's float32 sum; where that path does not run (adapters disabled, e.g. GRPO's
    reference model with ``beta != 0``) it is added to the layer's output, since like a jump added into the base the
    offset is part of the base model. Nothing is added while the adapter is merged: the layer's
    ``get_delta_weight(adapter)`` returns ``s B A + offset``, so every merge and unmerge PEFT does carries it.
    """

    def __init__(self, layer: LoraLayer, adapter: str, factors: LowRank) -> None:
        self.layer, self.adapter = layer, adapter
        self.factors = factors
        self._set_device_factors()
        self._input: torch.Tensor | None = None  # the layer's input, until the offset has been added for it
        self._hooks = [
            layer.register_forward_pre_hook(self._capture),
            layer.lora_B[adapter].register_forward_hook(self._beside_lora),
            layer.register_forward_hook(self._after_layer),
        ]
        self._delta_weight = layer.get_delta_weight  # the class's bound method, shadowed on this instance below
        layer.get_delta_weight = self._get_delta_weight
        setattr(layer, OFFSET_ATTRIBUTE, self)

    def replace(self, factors: LowRank) -> None:
        """Hold ``factors`` instead (the adapter must not be merged while it changes)."""
        self._check_unmerged()
        self.factors = factors
        self._set_device_factors()

    def remove(self) -> None:
        """Take the offset off the layer: its forward and merges are PEFT's own again."""
        self._check_unmerged()
        for hook in self._hooks:
            hook.remove()
        del self.layer.get_delta_weight
        delattr(self.layer, OFFSET_ATTRIBUTE)

    def _set_device_factors(self) -> None:
        device = self.layer.lora_A[self.adapter].weight.device
        self.left = self.factors.left.to(device, torch.float32)
        self.right = self.factors.right.to(device, torch.float32)

    def _check_unmerged(self) -> None:
        if self.adapter in self.layer.merged_adapters:
            raise RuntimeError("the jump offset of a merged LoRA layer cannot change; unmerge the adapter first")

    def _extra(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float32) @ self.right.T) @ self.left.T

    def _capture(self, module: Any, args: tuple[Any, ...]) -> None:
        self._input = None if self.adapter in self.layer.merged_adapters else args[0]

    def _beside_lora(self, module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
        x = self._input
        if x is None or args[0].shape[:-1] != x.shape[:-1]:  # a sub-batch (PEFT's mixed adapters): added after
            return None
        self._input = None
        return output + (self._extra(x) / self.layer.scaling[self.adapter]).to(output.dtype)

    def _after_layer(self, module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
        x, self._input = self._input, None
        if x is None:  # merged, or added beside the LoRA path
            return None
        return (output.to(torch.float32) + self._extra(x)).to(output.dtype)

    def _get_delta_weight(self, adapter: str) -> torch.Tensor:
        delta = self._delta_weight(adapter)
        if adapter != self.adapter:
            return delta
        dense = self.left @ self.right
        return delta + (dense.T if getattr(self.layer, "fan_in_fan_out", False) else dense).to(delta.dtype)


def offset_of(layer: LoraLayer) -> JumpOffset | None:
    """The layer's jump offset, None when it has none."""
    return getattr(layer, OFFSET_ATTRIBUTE, None)


def resolve_jump_into(setting: str, base_dtypes: set[torch.dtype]) -> str:
    """'base' or 'offset' for ``extrap_jump_into``: 'auto' holds jumps as offsets iff a base weight is not float32.

    A float32 base keeps a jump to float32 round-off, so it is added into the base as it always was (the same
    weights, bit for bit, and no extra work per forward pass).
    """
    if setting != "auto":
        return setting
    return "offset" if any(dtype != torch.float32 for dtype in base_dtypes) else "base"


def fold_offset(old: LowRank | None, update: LowRank, max_rank: int | None) -> tuple[LowRank, float, float]:
    """``old + update`` compacted in float32 and cut to its best ``max_rank`` directions (None: no cut).

    Returns (the new offset, the squared norm the cut dropped, the squared norm before the cut). The compacted
    factors' left columns are orthogonal with norms the singular values, in decreasing order, so the cut is a slice.
    """
    update = LowRank(update.left.float(), update.right.float())
    total = (update if old is None else old + update).compact()
    norms_sq = total.left.square().sum(0)
    if max_rank is None or total.rank <= max_rank:
        return total, 0.0, float(norms_sq.sum())
    kept = LowRank(total.left[:, :max_rank].contiguous(), total.right[:max_rank].contiguous())
    return kept, float(norms_sq[max_rank:].sum()), float(norms_sq.sum())
