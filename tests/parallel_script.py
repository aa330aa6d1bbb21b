"""Run by test_distributed under ``torchrun --nproc_per_node 2``: a tiny GRPO run on 2 CPU processes (gloo).

Usage: torchrun --standalone --nproc_per_node 2 tests/parallel_script.py OUTDIR [--backend ddp|zero2|zero3|fsdp1|fsdp2]
       [--no-extrap] [--guard] [--full] [--resume CHECKPOINT] [--tag NAME]

Each rank writes ``OUTDIR/{tag}{R}.pt`` (whole effective LoRA weights W_base + s*B@A, or with --full the decoder
layers' weights: at the start, before and
after the callback at every step end) and ``OUTDIR/{tag}{R}.json`` (the callback's history and facts about the
distributed setup).

Backends on CPU (what each needs, found by experiment with accelerate 1.15 / deepspeed 0.19):
* ddp: nothing (use_cpu=True gives accelerate's MULTI_CPU with gloo).
* zero2 / zero3: ``pip install deepspeed``; env ACCELERATE_USE_DEEPSPEED, ACCELERATE_DEEPSPEED_ZERO_STAGE,
  DS_ACCELERATOR=cpu, and use_cpu=False with ddp_backend="gloo" (accelerate skips DeepSpeed with use_cpu=True).
  zero3 sets stage3_param_persistence_threshold=0, else the tiny test weights are never partitioned.
* fsdp1 / fsdp2: fsdp="full_shard" with fsdp_config version; env ACCELERATE_TORCH_DEVICE=cpu, and a patch so
  that accelerate honours the FSDP plugin on CPU processes (it only does for GPU-like types; a test-only
  workaround); fsdp1 also needs sync_module_states=False on a machine without accelerators.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from accelerate import PartialState
from grpo_utils import effective_weights, make_trainer, tiny_model
from peft.tuners.lora import LoraLayer
from torch.nn.parallel import DistributedDataParallel

from rlvr_extrap import ExtrapolationCallback
from rlvr_extrap.experiments.toy.tokenizer import build_char_tokenizer
from rlvr_extrap.runtime.dense import find_dense_modules
from rlvr_extrap.runtime.lora import find_lora_modules
from rlvr_extrap.runtime.offset import JumpOffset

# generation_batch_size = per_device_train_batch_size (8) * num_processes (2) * steps_per_generation (1) = 16,
# divisible by num_generations (4): 4 prompts per step, each rank computes the loss on 8 of the 16 completions.
SETTINGS = {
    "max_steps": 8,
    "per_device_train_batch_size": 8,
    "num_generations": 4,
    "logging_steps": 4,
}
EXTRAP = {
    "extrap_method": "linear",
    "extrap_jump_at": [4],
    "extrap_snapshot_every": 2,
    "extrap_horizon": 4,
    "extrap_time_axis": "steps",
    "extrap_min_skill": None,  # the jump is the subject here, not whether the toy run is predictable  # the test recomputes the prediction from the snapshots alone
}


BACKENDS = ("ddp", "zero2", "zero3", "fsdp1", "fsdp2")


def setup(backend: str) -> dict:
    """Environment and GRPOConfig overrides for ``backend`` (before the trainer builds accelerate's state)."""
    if backend.startswith("zero"):
        os.environ.update(
            ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE=backend[-1], DS_ACCELERATOR="cpu"
        )
        if backend == "zero3":
            config = {
                "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
                **dict.fromkeys(("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"), "auto"),
                **dict.fromkeys(("train_batch_size", "gradient_clipping"), "auto"),
            }
            path = Path(tempfile.mkdtemp()) / "zero3.json"
            path.write_text(json.dumps(config))
            os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = str(path)
        return {"use_cpu": False, "ddp_backend": "gloo"}
    if backend.startswith("fsdp"):
        os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"
        patch_accelerate_fsdp_on_cpu()
        fsdp_config = {"version": int(backend[-1])}
        if backend == "fsdp1":
            fsdp_config["sync_module_states"] = False
        return {"fsdp": "full_shard", "fsdp_config": fsdp_config}
    return {}


def patch_accelerate_fsdp_on_cpu() -> None:
    """Make AcceleratorState honour an FSDP plugin on MULTI_CPU (accelerate 1.15 drops it there: DDP would run)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type in (DistributedType.MULTI_CPU, DistributedType.NO):
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = __init__


def count_offset_uses() -> dict[str, int]:
    """Counts, per step, how often a jump offset was added to a layer's output in a forward pass (it must be used
    in training after the jump, not only held)."""
    uses: dict[str, int] = {}
    extra = JumpOffset._extra

    def counted(self, x):
        step = str(TRAINER_STEP[0])
        uses[step] = uses.get(step, 0) + 1
        return extra(self, x)

    JumpOffset._extra = counted
    return uses


TRAINER_STEP = [0]  # the global step the trainer is on, set by StepMark


class StepMark(transformers.TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        TRAINER_STEP[0] = state.global_step + 1


class EffectiveProbe(transformers.TrainerCallback):
    """Whole effective LoRA weights at the start and at every step end (gathered: every rank calls it)."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.at: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start = effective_weights(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.at[state.global_step] = effective_weights(model)


class DistributedProbe(transformers.TrainerCallback):
    """Records what callbacks see under DDP, and a hash of the completions this rank trained on each step."""

    def __init__(self) -> None:
        self.callback_model_types: set[str] = set()
        self.callback_module_names: list[str] = []
        self.completion_hashes: list[str] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.callback_model_types.add(type(model).__name__)
        lora = any(isinstance(m, LoraLayer) for m in model.modules())
        self.callback_module_names = sorted(
            find_lora_modules(model) if lora else find_dense_modules(model, ["*.layers.*"])
        )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.callback_model_types.add(type(model).__name__)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--backend", choices=BACKENDS, default="ddp")
    parser.add_argument("--no-extrap", action="store_true", help="run with extrap_method=None (callback disabled)")
    parser.add_argument("--guard", action="store_true", help="probe-guarded jump (extrap_guard=True)")
    parser.add_argument("--resume", help="checkpoint directory name under OUTDIR/out to resume from")
    parser.add_argument("--tag", default="rank", help="prefix of the result files")
    parser.add_argument("--bf16-base", action="store_true", help="the toy in bfloat16: jumps held as float32 offsets")
    parser.add_argument("--full", action="store_true", help="full-parameter GRPO (no LoRA adapter)")
    parser.add_argument(
        "--beside", action="store_true", help="the plan made beside training (extrap_wait_for_fit=False)"
    )
    cli = parser.parse_args()

    extrap = (
        {"extrap_method": None} if cli.no_extrap else {**EXTRAP, "extrap_guard": cli.guard, "extrap_guard_prompts": 8}
    )
    overrides = setup(cli.backend)
    if cli.backend == "ddp":  # the resume test uses its step-6 checkpoint (FSDP1's state_dict crashes on CPU)
        overrides.update(save_strategy="steps", save_steps=6)
    callback, probe = ExtrapolationCallback(), DistributedProbe()
    before, after = EffectiveProbe(), EffectiveProbe()  # the weights just before and just after the callback
    offset_uses = count_offset_uses() if cli.bf16_base else None
    if cli.bf16_base:
        tokenizer = build_char_tokenizer()
        overrides["model_and_tokenizer"] = tiny_model(tokenizer).to(torch.bfloat16), tokenizer
    if cli.full:
        overrides.update(lora=False, learning_rate=1e-3)
    if cli.beside:
        extrap["extrap_wait_for_fit"] = False
    trainer = make_trainer(cli.outdir, [StepMark(), before, callback, after, probe], **SETTINGS, **overrides, **extrap)

    state = PartialState()
    assert state.num_processes == 2, f"expected 2 processes, got {state.num_processes} ({state.distributed_type})"
    assert torch.distributed.get_backend() == "gloo", torch.distributed.get_backend()

    generate = trainer._generate_and_score_completions

    def recording_generate(inputs):  # completions differ per rank (GRPO seeds each process differently)
        out = generate(inputs)
        digest = hashlib.sha1(out["completion_ids"].numpy().tobytes()).hexdigest()[:12]
        probe.completion_hashes.append(digest)
        return out

    trainer._generate_and_score_completions = recording_generate
    trainer.train(resume_from_checkpoint=str(cli.outdir / "out" / cli.resume) if cli.resume else None)

    if cli.backend == "ddp":
        assert isinstance(trainer.model_wrapped, DistributedDataParallel), type(trainer.model_wrapped)
    rank = state.process_index
    results = {"effective": after.at[trainer.state.global_step], "start": before.start, "before": before.at}
    results["after"] = after.at
    if not cli.full:
        modules = find_lora_modules(trainer.accelerator.unwrap_model(trainer.model)).items()
        results["offsets"] = {n: m.offset.dense() for n, m in modules if m.offset is not None}
    if cli.backend in ("ddp", "zero2") and not cli.full:  # whole on every rank: the adapters themselves must match too
        results["adapters"] = {
            n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad and "lora_" in n
        }
    cli.outdir.mkdir(parents=True, exist_ok=True)
    torch.save(results, cli.outdir / f"{cli.tag}{rank}.pt")
    report = {
        "rank": rank,
        "num_processes": state.num_processes,
        "distributed_type": str(trainer.accelerator.state.distributed_type),
        "backend": torch.distributed.get_backend(),
        "wrapped_type": type(trainer.model_wrapped).__name__,
        "callback_model_types": sorted(probe.callback_model_types),
        "callback_module_names": probe.callback_module_names,
        "completion_hashes": probe.completion_hashes,
        "jumps": [j.step for j in callback.jumps],
        "jump_records": [{k: v for k, v in j.to_dict().items() if "seconds" not in k} for j in callback.jumps],
        "jumps_skipped": [j.step for j in callback.jumps if not j.applied],
        "snapshot_steps": callback.snapshot_steps,
        "global_step": trainer.state.global_step,
        "offset_uses": offset_uses,
    }
    (cli.outdir / f"{cli.tag}{rank}.json").write_text(json.dumps(report, indent=1))
    trainer.accelerator.end_training()  # destroy the process group while the interpreter is whole (see README)
    # gloo's threads outlive the group once DDP/FSDP used it (torch 2.13) and can abort a normal interpreter
    # shutdown (pytorch#190489). Everything this harness reports is written above, so leave without that race.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
