"""Step-numbered checkpoints of any trainer, read lazily tensor by tensor, as per-module trajectories.

Layouts found under a run directory (one layout per run):

- ``checkpoint-N/`` (HF Trainer): a full model dir (``model.safetensors``, or shards with
  ``model.safetensors.index.json``) or a PEFT adapter dir (``adapter_model.safetensors`` +
  ``adapter_config.json``);
- ``global_step_N/actor/lora_adapter/`` (verl LoRA) or ``global_step_N/actor/huggingface/`` (verl full);
- ``step_N/``: either kind of dir.

Deltas are in float32 and relative to the base model ``W0``. A full checkpoint gives ``W_t - W0`` per
tensor, dense. A LoRA adapter gives ``s * B_t @ A_t`` per adapted module, factored, under the base weight
name ``<module>.weight`` (``s = lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with ``use_rslora``;
``alpha_pattern`` is honoured, ``fan_in_fan_out`` transposes). The base is the trajectory's step-0 point
(zero delta) unless the run has a step-0 checkpoint.

Policy for tensors that are not matrices, in full-parameter runs: every floating-point tensor moves by the
same method as the matrices. A 1-D tensor (norm weight, bias) is the ``(1, n)`` matrix and a k-D tensor the
``(shape[0], -1)`` matrix (RELEX flattens every tensor into its time stack anyway); non-floating tensors are
copied from the base.

Memory: a tensor is read only when asked for (``safe_open`` per read, shards too), so building one module's
trajectory holds that module's tensor once per snapshot, never a whole model.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from peft.utils.other import get_pattern_key

from rlvr_extrap.linalg.lowrank import Delta, LowRank
from rlvr_extrap.trajectory.trajectory import Trajectory
from rlvr_extrap.utils.safetensors_io import read_header, read_tensor

__all__ = [
    "CheckpointRun",
    "as_matrix",
    "LoraAdapter",
    "SafetensorsFiles",
    "Snapshot",
    "find_snapshots",
    "natural_key",
    "read_json",
    "read_labels",
]

Kind = Literal["full", "lora"]

LAYOUTS: dict[str, re.Pattern[str]] = {
    "checkpoint-N": re.compile(r"checkpoint-(\d+)"),
    "global_step_N": re.compile(r"global_step_(\d+)"),
    "step_N": re.compile(r"step_(\d+)"),
}
EXPECTED = "checkpoint-N/ (HF Trainer), global_step_N/actor/{huggingface,lora_adapter}/ (verl) or step_N/"
CHECKPOINT_FIX = "re-save that checkpoint or leave its step out with --steps"
BASE_FIX = "--base must be the model this run started from, saved whole (save_pretrained or huggingface-cli download)"

_LORA_KEY = re.compile(r"(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.[^.]+)?\.weight")


def natural_key(name: str) -> list[Any]:
    """Sort key that orders ``layers.2`` before ``layers.10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_json(path: Path, fix: str = CHECKPOINT_FIX) -> dict[str, Any]:
    """Parse a JSON file holding an object; a broken one is a ValueError naming the path and ``fix``."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {fix}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data


def read_labels(path: Path) -> dict[int, float]:
    """Step -> score (e.g. accuracy) from a JSON object ``{"100": 0.41, ...}`` or a CSV of ``step,score`` rows (a
    header row is skipped); ValueError naming the path on anything else."""
    if not path.is_file():
        raise FileNotFoundError(f"--labels {path} is not a file; give a JSON object or CSV of step -> score")
    fix = 'give a JSON object {"step": score, ...} or CSV rows "step,score"'
    if path.suffix.lower() == ".json":
        pairs = list(read_json(path, fix).items())
    else:
        rows = [line.split(",") for line in path.read_text().splitlines() if line.strip()]
        if rows and not rows[0][0].strip().lstrip("-").isdigit():
            rows = rows[1:]  # header
        if any(len(row) != 2 for row in rows):
            raise ValueError(f"--labels {path}: every CSV row must be 'step,score'; {fix}")
        pairs = [(step.strip(), score.strip()) for step, score in rows]
    labels: dict[int, float] = {}
    for step, score in pairs:
        try:
            labels[int(step)] = float(score)
        except (TypeError, ValueError):
            raise ValueError(
                f"--labels {path}: {step!r} -> {score!r} is not an integer step and a number; {fix}"
            ) from None
    if not labels:
        raise ValueError(f"--labels {path} holds no labels; {fix}")
    return labels


class SafetensorsFiles:
    """The tensors of one model or adapter dir (one file, or shards named by an index), read on demand.

    ``fix`` ends every error about these files (what to do about a broken checkpoint, or a broken base).
    """

    def __init__(self, directory: Path, stem: str, fix: str = CHECKPOINT_FIX) -> None:
        self.directory, self.fix = directory, fix
        single, index = directory / f"{stem}.safetensors", directory / f"{stem}.safetensors.index.json"
        if single.is_file():
            files = [single]
        elif index.is_file():
            weight_map = read_json(index, fix).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index} has no weight_map (tensor name -> shard file); {fix}")
            files = [directory / str(name) for name in sorted(set(weight_map.values()))]
        else:
            raise FileNotFoundError(f"{directory} has neither {single.name} nor {index.name}; {fix}")
        self.index = None if single.is_file() else index
        self.files = files
        self.headers: dict[str, tuple[Path, torch.dtype, tuple[int, ...]]] = {}
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(f"{file} is missing (the shard index names it); {fix}")
            for key, (dtype, shape) in read_header(file, fix).items():
                self.headers[key] = (file, dtype, shape)
        self.keys = sorted(self.headers, key=natural_key)

    def keys_in(self, file: Path) -> list[str]:
        return [key for key in self.keys if self.headers[key][0] == file]

    def dtype(self, key: str) -> torch.dtype:
        return self.headers[key][1]

    def shape(self, key: str) -> tuple[int, ...]:
        return self.headers[key][2]

    def get(self, key: str) -> torch.Tensor:
        """Read one tensor (its file is opened for this read only)."""
        return read_tensor(self.headers[key][0], key, self.fix)

    def get_finite(self, key: str) -> torch.Tensor:
        """``get`` that refuses NaN or Inf values (a diverged run), naming the file and the fix."""
        tensor = self.get(key)
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{self.headers[key][0]}: tensor {key!r} has NaN or Inf values; {self.fix}")
        return tensor


@dataclass(frozen=True)
class Snapshot:
    """One checkpoint: its step, the dir holding its weights, and whether it is a full model or a LoRA adapter."""

    step: int
    path: Path
    kind: Kind


def _weights_kind(directory: Path) -> Kind:
    """Whether ``directory`` holds a PEFT adapter or full model weights (safetensors only)."""
    if (directory / "adapter_model.safetensors").is_file():
        if not (directory / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"{directory} has adapter_model.safetensors but no adapter_config.json; copy it from the training run "
                "or leave that step out with --steps"
            )
        return "lora"
    if (directory / "model.safetensors").is_file() or (directory / "model.safetensors.index.json").is_file():
        return "full"
    if any(directory.glob("*.bin")):
        raise ValueError(
            f"{directory} holds only .bin weights; convert them to safetensors (from_pretrained, then "
            "save_pretrained(..., safe_serialization=True))"
        )
    raise FileNotFoundError(
        f"{directory} has no model.safetensors(.index.json) or adapter_model.safetensors (an interrupted save?); "
        f"{CHECKPOINT_FIX}"
    )


def _verl_weights_dir(step_dir: Path) -> Path:
    adapter, full = step_dir / "actor" / "lora_adapter", step_dir / "actor" / "huggingface"
    if (adapter / "adapter_model.safetensors").is_file():
        return adapter
    if full.is_dir() and not any(full.glob("*.safetensors")):
        raise FileNotFoundError(
            f"{full} has no weights: verl writes only config and tokenizer there unless the checkpoint saves "
            f"'hf_model'; merge the FSDP shards first (python -m verl.model_merger merge --backend fsdp "
            f"--local_dir {step_dir / 'actor'} --target_dir {full})"
        )
    if not full.is_dir():
        raise FileNotFoundError(f"{step_dir} has neither actor/lora_adapter/ nor actor/huggingface/")
    return full


def find_snapshots(run_dir: Path, steps: Sequence[int] | None = None) -> list[Snapshot]:
    """The run's checkpoints in step order (only ``steps`` if given); one layout and one kind per run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"RUN_DIR {run_dir} is a file; pass the directory holding {EXPECTED} subdirectories")
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"RUN_DIR {run_dir} does not exist; pass the directory holding {EXPECTED} subdirectories"
        )
    found: dict[str, dict[int, Path]] = {}
    for entry in run_dir.iterdir():
        for layout, pattern in LAYOUTS.items():
            match = pattern.fullmatch(entry.name)
            if match and entry.is_dir():
                found.setdefault(layout, {})[int(match.group(1))] = entry
    if not found:
        raise ValueError(f"no checkpoints in {run_dir}: expected {EXPECTED} subdirectories")
    if len(found) > 1:
        raise ValueError(
            f"{run_dir} mixes checkpoint layouts ({', '.join(sorted(found))}); keep one run per directory "
            "(move the other checkpoints elsewhere)"
        )
    (layout, by_step), *_ = found.items()
    if steps is not None:
        missing = sorted(set(steps) - set(by_step))
        if missing:
            raise ValueError(f"step(s) {missing} not found in {run_dir}; available steps: {sorted(by_step)}")
        by_step = {step: by_step[step] for step in steps}
    snapshots = []
    for step in sorted(by_step):
        directory = _verl_weights_dir(by_step[step]) if layout == "global_step_N" else by_step[step]
        snapshots.append(Snapshot(step, directory, _weights_kind(directory)))
    kinds = {s.kind for s in snapshots}
    if len(kinds) > 1:
        examples = {s.kind: s.path for s in snapshots}
        raise ValueError(
            f"{run_dir} mixes full checkpoints ({examples['full']}) and LoRA adapters ({examples['lora']}); "
            "pick one kind with --steps"
        )
    return snapshots


def _transposed(d: LowRank) -> LowRank:
    return LowRank(d.right.T, d.left.T)


class LoraAdapter:
    """One saved PEFT LoRA adapter: ``s * B @ A`` per adapted module, keyed by the base weight name."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.config: dict[str, Any] = read_json(directory / "adapter_config.json")
        unsupported = [f"{k}=True" for k in ("use_dora", "lora_bias") if self.config.get(k)]
        if self.config.get("peft_type", "LORA") != "LORA":
            unsupported.append(f"peft_type={self.config['peft_type']!r}")
        if unsupported:
            raise ValueError(
                f"{directory}: unsupported adapter ({', '.join(unsupported)}); only plain LoRA adapters can be extrapolated"
            )
        self.files = SafetensorsFiles(directory, "adapter_model")
        self.factors: dict[str, dict[str, str]] = {}
        other = []
        for key in self.files.keys:
            match = _LORA_KEY.fullmatch(key)
            if match is None:
                other.append(key)
                continue
            factors = self.factors.setdefault(f"{match['module']}.weight", {})
            if match["factor"] in factors:
                raise ValueError(
                    f"{directory}: several adapters for {match['module']}; save one adapter per checkpoint"
                )
            factors[match["factor"]] = key
        incomplete = [name for name, f in self.factors.items() if len(f) != 2]
        if other or incomplete:
            raise ValueError(
                f"{directory}: tensors other than LoRA A/B pairs ({(other + incomplete)[:3]}); modules_to_save, "
                "trainable tokens, LoRA on embeddings and DoRA are not supported"
            )
        for name, f in self.factors.items():
            a, b = self.files.shape(f["A"]), self.files.shape(f["B"])
            if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
                raise ValueError(
                    f"{directory}: {name} has lora_A of shape {a} and lora_B of shape {b}, which do not multiply "
                    f"(B @ A needs B (out, r) and A (r, in)); {CHECKPOINT_FIX}"
                )

    @property
    def fan_in_fan_out(self) -> bool:
        return bool(self.config.get("fan_in_fan_out", False))

    def rank(self, name: str) -> int:
        return self.files.shape(self.factors[name]["A"])[0]

    def shape(self, name: str) -> tuple[int, int]:
        """Shape of the module's delta in the base weight's orientation."""
        (m, _), (_, n) = self.files.shape(self.factors[name]["B"]), self.files.shape(self.factors[name]["A"])
        return (n, m) if self.fan_in_fan_out else (m, n)

    def scale(self, name: str) -> float:
        module = name.removesuffix(".weight")
        pattern = self.config.get("alpha_pattern") or {}
        alpha = pattern.get(get_pattern_key(pattern.keys(), module), self.config.get("lora_alpha", 8))  # PEFT's default
        r = self.rank(name)
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    def delta(self, name: str) -> LowRank:
        """``s * B @ A`` in float32, factored, in the base weight's orientation."""
        a = self.files.get_finite(self.factors[name]["A"]).float()
        b = self.files.get_finite(self.factors[name]["B"]).float()
        d = LowRank(b * self.scale(name), a)
        return _transposed(d) if self.fan_in_fan_out else d

    def factors_for(self, delta: LowRank) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, A)`` with ``B @ A`` equal to ``delta`` in this adapter's layer orientation (scale 1)."""
        d = _transposed(delta) if self.fan_in_fan_out else delta
        return d.left, d.right


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """The 2-D view a trajectory stores: ``(1, n)`` for 0-D/1-D tensors, ``(shape[0], -1)`` otherwise."""
    return t.reshape(1, -1) if t.dim() < 2 else t.reshape(t.shape[0], -1)


class CheckpointRun:
    """A base model and a run's snapshots; serves one module's trajectory at a time.

    ``modules`` are the base tensor names that get a trajectory: every floating-point tensor for full
    checkpoints, the adapted modules' weights for LoRA. Construction checks every snapshot against the base
    from the safetensors headers only. ``labels`` (step -> score) go into every trajectory served.
    """

    def __init__(
        self, run_dir: Path, base: Path, steps: Sequence[int] | None = None, labels: dict[int, float] | None = None
    ) -> None:
        self.run_dir, self.base_dir = run_dir, base
        self.labels = dict(labels or {})
        if not base.is_dir():
            raise FileNotFoundError(
                f"--base {base} is not a local model directory; download the model the run started from "
                "(e.g. huggingface-cli download) and pass its path"
            )
        self.snapshots = find_snapshots(run_dir, steps)
        self.kind: Kind = self.snapshots[0].kind
        if not any((base / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
            raise FileNotFoundError(
                f"--base {base} has no model.safetensors(.index.json); re-save it with save_pretrained"
            )
        self.base = SafetensorsFiles(base, "model", fix=BASE_FIX)
        if self.kind == "full":
            self.full = [SafetensorsFiles(s.path, "model") for s in self.snapshots]
            self.adapters: list[LoraAdapter] = []
            self.modules = [k for k in self.base.keys if self.base.dtype(k).is_floating_point]
            self._check_full()
        else:
            self.full = []
            self.adapters = [LoraAdapter(s.path) for s in self.snapshots]
            self.modules = sorted(self.adapters[-1].factors, key=natural_key)
            self._check_lora()
        if len(self.steps) < 2:
            raise ValueError(
                f"{run_dir} has only a step-0 checkpoint; a fit needs the base and at least one later checkpoint"
            )

    @property
    def steps(self) -> list[int]:
        """Trajectory steps: the base at step 0 (unless a step-0 checkpoint exists), then the snapshots."""
        steps = [s.step for s in self.snapshots]
        return steps if steps[0] == 0 else [0, *steps]

    def _mismatch(self, where: Path, key: str, got: tuple[int, ...], want: tuple[int, ...]) -> ValueError:
        return ValueError(
            f"{where}: {key} has shape {got} but the base {self.base_dir} has {want}; --base must be the model "
            "this run started from"
        )

    def _check_full(self) -> None:
        base_keys = set(self.base.keys)
        for files in self.full:
            if set(files.keys) != base_keys:
                diff = sorted(base_keys ^ set(files.keys), key=natural_key)[:3]
                raise ValueError(
                    f"{files.directory} and the base {self.base_dir} have different tensors (e.g. {diff}); "
                    "--base must be the model this run started from"
                )
            for key in self.base.keys:
                if files.shape(key) != self.base.shape(key):
                    raise self._mismatch(files.directory, key, files.shape(key), self.base.shape(key))

    def _check_lora(self) -> None:
        for adapter in self.adapters:
            if set(adapter.factors) != set(self.modules):
                diff = sorted(set(adapter.factors) ^ set(self.modules), key=natural_key)[:3]
                raise ValueError(
                    f"{adapter.directory} adapts other modules than {self.adapters[-1].directory} (e.g. {diff}); "
                    "every checkpoint of a run must adapt the same modules: leave the odd steps out with --steps"
                )
            for name in self.modules:
                if name not in self.base.headers:
                    raise ValueError(
                        f"{adapter.directory}: adapted module {name} is not in the base {self.base_dir}; "
                        "--base must be the model this run started from"
                    )
                if adapter.shape(name) != self.base.shape(name):
                    raise self._mismatch(adapter.directory, name, adapter.shape(name), self.base.shape(name))

    def trajectory(self, name: str) -> Trajectory:
        """Module ``name``'s deltas at every step, read now (one tensor per snapshot, plus the base for full runs)."""
        if self.kind == "full":
            w0 = self.base.get_finite(name).float()
            deltas: list[Delta] = [as_matrix(files.get_finite(name).float() - w0) for files in self.full]
        else:
            deltas = [adapter.delta(name) for adapter in self.adapters]
        trajectory = Trajectory()
        trajectory.labels = dict(self.labels)
        if self.snapshots[0].step > 0:  # the base is the step-0 point
            zero = torch.zeros_like(deltas[0]) if self.kind == "full" else LowRank.zeros(*deltas[0].shape)
            trajectory.append(0, {name: zero})
        for snapshot, delta in zip(self.snapshots, deltas, strict=True):
            trajectory.append(snapshot.step, {name: delta})
        return trajectory
