"""The callback's state on disk, next to the adapter: a PEFT adapter alone cannot hold a jump.

A jump edits each LoRA module's base weight (``W_base += update``), or on a bfloat16 / float16 base is held as a
float32 offset beside the LoRA path (``runtime.offset``), and leaves A, B alone, so ``adapter_model.safetensors``
does not contain it. The callback writes ``extrap_state.safetensors``
into every checkpoint and into ``output_dir`` at the end of training: the accumulated jump offsets
(factored) and the current segment's trajectory, with the snapshot and jump history as metadata.

A full-parameter run's jumps are in the weights the checkpoint saves; its state holds the origin the trajectory is
measured from (one copy of the extrapolated weights) and names the segment's points, each a dense matrix per
weight, which are written once to ``<output_dir>/extrap/points/`` and shared by every checkpoint (so a checkpoint does
not grow with the snapshot count). A resume that finds them continues the trajectory; without them it starts a new
segment.
``apply_offsets`` puts the offsets back onto a freshly loaded ``PeftModel``; a resumed run restores
everything from the checkpoint it resumes from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from rlvr_extrap.config import JUMP_INTO
from rlvr_extrap.linalg.lowrank import LowRank
from rlvr_extrap.runtime.lora import JumpTarget, NoLoraAdapterError, find_lora_modules
from rlvr_extrap.utils.files import atomic_path
from rlvr_extrap.utils.safetensors_io import read_tensors, write_streaming

__all__ = [
    "STATE_FILE",
    "CallbackState",
    "StateFileError",
    "apply_offsets",
    "load_state",
    "read_points",
    "read_resume_state",
    "save_state",
    "write_point",
]

STATE_FILE = "extrap_state.safetensors"


@dataclass
class CallbackState:
    """Jump offsets, the current segment's trajectory, and the history (JSON-able) of one run; a full-parameter
    run's ``origin`` (the weights its deltas are measured from) instead of offsets and points."""

    offsets: dict[str, LowRank]
    steps: list[int]
    deltas: dict[str, list[LowRank]]
    history: dict[str, Any]
    origin: dict[str, torch.Tensor] | None = None
    point_files: list[str] | None = None  # full-parameter runs: one file per point, relative to the state's directory


def save_state(state: CallbackState, directory: str | Path) -> Path:
    """Write ``state`` atomically as ``directory/extrap_state.safetensors``."""
    path = Path(directory) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, offset in state.offsets.items():
        tensors[f"offset.{name}.left"], tensors[f"offset.{name}.right"] = offset.left, offset.right
    for name, deltas in state.deltas.items():
        for i, d in enumerate(deltas):
            tensors[f"point.{i}.{name}.left"], tensors[f"point.{i}.{name}.right"] = d.left, d.right
    for name, weight in (state.origin or {}).items():
        tensors[f"origin.{name}"] = weight
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    metadata = {
        "format": "rlvr_extrap.state.v1",
        "steps": json.dumps(state.steps),
        "history": json.dumps(state.history),
    }
    if state.point_files is not None:
        metadata["point_files"] = json.dumps(state.point_files)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_state(path: str | Path) -> CallbackState:
    """Read ``extrap_state.safetensors`` (or the one in directory ``path``); bad files are one-line ValueErrors."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no {STATE_FILE} here; pass the output_dir or checkpoint-N/ dir the callback wrote it to"
        )
    damaged = "use the copy in an earlier checkpoint-N/ (or retrain from there)"
    tensors, meta = read_tensors(path, damaged)
    if meta.get("format") != "rlvr_extrap.state.v1":
        raise ValueError(
            f"{path}: not an rlvr_extrap state file (format {meta.get('format')!r}); pass the {STATE_FILE} "
            "that ExtrapolationCallback wrote (next to adapter_model.safetensors), or its directory"
        )
    try:
        return _parse_state(meta, tensors)
    except (KeyError, ValueError, IndexError, TypeError) as err:
        raise ValueError(f"{path}: damaged rlvr_extrap state ({type(err).__name__}: {err}); {damaged}") from None


class StateFileError(ValueError):
    """A resume cannot restore the callback's state from its checkpoint; the message names the file and the fix."""


def read_resume_state(directory: str | Path, step: int, jump_at: Sequence[int]) -> CallbackState | None:
    """The state in checkpoint ``directory`` for a resume at ``step``; None if it has none and needs none.

    A checkpoint without the file (a run killed while saving it: the write is atomic, so a half-written file is
    never there) can only be resumed when no jump was due at or before ``step``: otherwise the jumps would be
    silently missing from the base weights. Raises StateFileError, one line naming the file and the fix.
    """
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        due = [j for j in jump_at if j <= step]
        if due:
            raise StateFileError(
                f"{path} is missing (the run was stopped while saving this checkpoint?), but extrap_jump_at has "
                f"step(s) {due} at or before step {step}: their jumps live in the base weights only this file "
                f"restores. Resume from an earlier checkpoint-N/ that has {STATE_FILE}, or drop those steps from "
                "extrap_jump_at to resume without their jumps"
            )
        return None
    try:
        return load_state(path)
    except ValueError as err:
        raise StateFileError(str(err)) from None


def _parse_state(meta: dict[str, str], tensors: dict[str, Any]) -> CallbackState:
    steps = json.loads(meta["steps"])
    offsets, deltas, origin = {}, {}, {}
    for key in tensors:
        kind, rest = key.split(".", 1)
        if kind == "origin":
            origin[rest] = tensors[key]
            continue
        if not key.endswith(".left"):
            continue
        if kind == "offset":
            name = rest[: -len(".left")]
            offsets[name] = LowRank(tensors[key], tensors[f"offset.{name}.right"])
        else:
            index, name = rest[: -len(".left")].split(".", 1)
            deltas.setdefault(name, [None] * len(steps))[int(index)] = LowRank(
                tensors[key], tensors[f"point.{index}.{name}.right"]
            )
    missing = sorted(name for name, points in deltas.items() if any(d is None for d in points))
    if missing:
        raise ValueError(f"trajectory points missing for {missing[:3]}")
    files = json.loads(meta["point_files"]) if "point_files" in meta else None
    return CallbackState(offsets, steps, deltas, json.loads(meta["history"]), origin or None, files)


POINTS_DIR = Path("extrap") / "points"


def write_point(output_dir: str | Path, segment: int, step: int, deltas: dict[str, torch.Tensor]) -> Path:
    """Write one full-parameter trajectory point (``W_step - origin`` per weight) under ``output_dir``, atomically."""
    path = Path(output_dir) / POINTS_DIR / f"segment-{segment}-step-{step}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    specs = [(name, d.dtype, tuple(d.shape)) for name, d in deltas.items()]
    with atomic_path(path) as tmp:  # streamed, as the spill writes: no second copy of the point in memory
        write_streaming(tmp, specs, deltas.values())
    return path


def read_points(state: CallbackState, directory: str | Path) -> dict[str, list[torch.Tensor]] | None:
    """A full-parameter state's points, memory-mapped from their files; None when a file is missing or unreadable
    (the resume then starts a new segment)."""
    if not state.point_files:
        return None
    deltas: dict[str, list[torch.Tensor]] = {}
    try:
        for file in state.point_files:
            tensors, _ = read_tensors(Path(directory) / file, "")
            for name, delta in tensors.items():
                deltas.setdefault(name, []).append(delta)
    except (OSError, ValueError):
        return None
    return deltas


def apply_offsets(model: nn.Module, path: str | Path, into: str = "auto") -> int:
    """Put saved jump offsets onto a loaded PeftModel; returns the number of modules.

    ``into``: 'base' adds them into the base weights, rounded to the weights' dtype (plain weights; on a bfloat16
    base most of a small jump is rounded away); 'offset' holds them as float32 offsets beside the LoRA path, which
    reproduces the trained function exactly (``model.merge_and_unload()`` then merges them with the adapter, in the
    base's dtype); 'auto' (default): 'offset' when a base weight is not float32, else 'base', as the callback does.
    Every module's name and shape is checked before any weight changes, so a mismatch leaves the model as it was.
    """
    if into not in JUMP_INTO:
        raise ValueError(f"apply_offsets(into={into!r}): choose one of {list(JUMP_INTO)}")
    state = load_state(path)
    if state.origin is not None:
        raise ValueError(
            f"apply_offsets: {path} is a full-parameter run's state, whose jumps are in the weights it saved: load "
            "that model directory with from_pretrained, there is nothing to apply"
        )
    offsets = state.offsets
    load_hint = (
        "PeftModel.from_pretrained(base, adapter_dir, is_trainable=True) with the adapter saved with the offsets"
    )
    try:
        modules = find_lora_modules(model)
    except NoLoraAdapterError:
        raise ValueError(
            f"apply_offsets: the model has no trainable LoRA layer (unquantized, without DoRA) to add the offsets "
            f"of {path} to; load it with {load_hint}"
        ) from None
    missing = sorted(set(offsets) - set(modules))
    if missing:
        raise ValueError(
            f"{path}: offsets for modules the model does not have as trainable LoRA layers, e.g. {missing[:3]}; "
            f"load the adapter the offsets were saved with ({load_hint})"
        )
    for name, offset in offsets.items():
        layer = modules[name].layer  # (out, in) as the offset, quantized (packed) base weights included
        shape = (layer.out_features, layer.in_features)
        if tuple(offset.shape) != shape:
            raise ValueError(
                f"{path}: the offset of {name} has shape {tuple(offset.shape)} but the model's base weight has "
                f"{shape}; load the base model the run trained ({load_hint})"
            )
    JumpTarget(modules, into).restore(offsets)
    return len(offsets)
