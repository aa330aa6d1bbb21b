"""What jumps added to the base weights, saved next to the adapter: a PEFT adapter alone cannot hold a jump.

A jump edits each LoRA module's base weight (``W_base += update``) and leaves A, B alone, so
``adapter_model.safetensors`` does not contain it. The callback writes the accumulated, factored
offsets as ``extrap_offsets.safetensors`` into every checkpoint and into ``output_dir`` at the end of
training; ``apply_offsets`` puts them back onto a freshly loaded ``PeftModel``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .lora import find_lora_modules
from .lowrank import LowRank

__all__ = ["OFFSETS_FILE", "apply_offsets", "load_offsets", "save_offsets"]

OFFSETS_FILE = "extrap_offsets.safetensors"


def save_offsets(offsets: dict[str, LowRank], directory: str | Path) -> Path:
    """Write ``offsets`` (module name -> factored update) atomically into ``directory``."""
    path = Path(directory) / OFFSETS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, offset in offsets.items():
        tensors[f"{name}.left"] = offset.left.contiguous()
        tensors[f"{name}.right"] = offset.right.contiguous()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"format": "rlvr_extrap.offsets.v1"})
    os.replace(tmp, path)
    return path


def load_offsets(path: str | Path) -> dict[str, LowRank]:
    path = Path(path)
    if path.is_dir():
        path = path / OFFSETS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {OFFSETS_FILE} here; it is written next to the adapter by the callback")
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        names = sorted({k.rsplit(".", 1)[0] for k in keys})
        return {n: LowRank(f.get_tensor(f"{n}.left"), f.get_tensor(f"{n}.right")) for n in names}


def apply_offsets(model: nn.Module, path: str | Path) -> int:
    """Add saved jump offsets into the base weights of a loaded PeftModel; returns the number of modules."""
    offsets = load_offsets(path)
    modules = find_lora_modules(model)
    missing = sorted(set(offsets) - set(modules))
    if missing:
        raise ValueError(
            f"{path}: offsets for modules the model does not have as trainable LoRA layers, e.g. {missing[:3]}; "
            "load the adapter the offsets were saved with (PeftModel.from_pretrained(base, dir, is_trainable=True))"
        )
    with torch.no_grad():
        for name, offset in offsets.items():
            modules[name].add_to_base(offset)
    return len(offsets)
