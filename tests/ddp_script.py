"""Run by test_distributed under ``torchrun --nproc_per_node 2``: a tiny GRPO run on 2 CPU processes (gloo DDP).

Usage: torchrun --nproc_per_node 2 --master_port PORT tests/ddp_script.py OUTDIR [--no-extrap]

Each rank writes ``OUTDIR/rank{R}.pt`` ({module name: effective LoRA weight W_base + s*B@A}) and
``OUTDIR/rank{R}.json`` (the callback's jump/snapshot history plus facts about the distributed setup).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
import transformers
from accelerate import PartialState
from grpo_utils import WeightProbe, make_trainer
from torch.nn.parallel import DistributedDataParallel

from rlvr_extrap import ExtrapolationCallback
from rlvr_extrap.lora import find_lora_modules

# generation_batch_size = per_device_train_batch_size (8) * num_processes (2) * steps_per_generation (1) = 16,
# divisible by num_generations (4): 4 prompts per step, each rank computes the loss on 8 of the 16 completions.
SETTINGS = {
    "max_steps": 8,
    "per_device_train_batch_size": 8,
    "num_generations": 4,
    "logging_steps": 4,
    "save_strategy": "steps",
    "save_steps": 6,
}
EXTRAP = {
    "extrap_method": "linear",
    "extrap_jump_at": [4],
    "extrap_snapshot_every": 2,
    "extrap_horizon": 4,
}


class DistributedProbe(transformers.TrainerCallback):
    """Records what callbacks see under DDP, and a hash of the completions this rank trained on each step."""

    def __init__(self) -> None:
        self.callback_model_types: set[str] = set()
        self.callback_module_names: list[str] = []
        self.completion_hashes: list[str] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.callback_model_types.add(type(model).__name__)
        self.callback_module_names = sorted(find_lora_modules(model))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.callback_model_types.add(type(model).__name__)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--no-extrap", action="store_true", help="run with extrap_method=None (callback disabled)")
    parser.add_argument("--guard", action="store_true", help="probe-guarded jump (extrap_guard=True)")
    parser.add_argument("--resume", help="checkpoint directory name under OUTDIR/out to resume from")
    parser.add_argument("--tag", default="rank", help="prefix of the result files")
    cli = parser.parse_args()

    extrap = (
        {"extrap_method": None} if cli.no_extrap else {**EXTRAP, "extrap_guard": cli.guard, "extrap_guard_prompts": 8}
    )
    callback, probe = ExtrapolationCallback(), DistributedProbe()
    before, after = WeightProbe(), WeightProbe()  # the weights just before and just after the callback's step end
    trainer = make_trainer(cli.outdir, [before, callback, after, probe], **SETTINGS, **extrap)

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

    assert isinstance(trainer.model_wrapped, DistributedDataParallel), type(trainer.model_wrapped)
    rank = state.process_index
    weights = {name: m.effective_weight() for name, m in find_lora_modules(trainer.model).items()}
    adapters = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad and "lora_" in n}
    cli.outdir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"effective": weights, "adapters": adapters, "start": before.start, "before": before.at, "after": after.at},
        cli.outdir / f"{cli.tag}{rank}.pt",
    )
    report = {
        "rank": rank,
        "num_processes": state.num_processes,
        "distributed_type": str(state.distributed_type),
        "backend": torch.distributed.get_backend(),
        "wrapped_type": type(trainer.model_wrapped).__name__,
        "callback_model_types": sorted(probe.callback_model_types),
        "callback_module_names": probe.callback_module_names,
        "completion_hashes": probe.completion_hashes,
        "jumps": [j["step"] for j in callback.jumps],
        "jump_records": [{k: v for k, v in j.items() if "seconds" not in k} for j in callback.jumps],
        "jumps_skipped": [j["step"] for j in callback.jumps if "skipped" in j],
        "snapshot_steps": callback.snapshot_steps,
        "global_step": trainer.state.global_step,
    }
    (cli.outdir / f"{cli.tag}{rank}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
