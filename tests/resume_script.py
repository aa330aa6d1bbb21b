"""Run by test_resume: a tiny GRPO run with two jumps that finishes, crashes (SIGKILL), or resumes."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
import transformers
from grpo_utils import make_trainer

from rlvr_extrap import ExtrapolationCallback
from rlvr_extrap.lora import find_lora_modules

SETTINGS = {
    "max_steps": 12,
    "extrap_method": "linear",
    "extrap_jump_at": [4, 10],
    "extrap_snapshot_every": 2,
    "extrap_horizon": 4,
    "extrap_min_skill": None,
    "save_strategy": "steps",
    "save_steps": 6,
}


class KillAt(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 8:
            os.kill(os.getpid(), signal.SIGKILL)


def main(workdir: str, mode: str) -> None:
    callback = ExtrapolationCallback()
    extra = [KillAt()] if mode == "crash" else []
    trainer = make_trainer(Path(workdir), [callback, *extra], **SETTINGS)
    resume = str(Path(workdir) / "out" / "checkpoint-6") if mode == "resume" else None
    trainer.train(resume_from_checkpoint=resume)
    weights = {n: m.effective_weight() for n, m in find_lora_modules(trainer.model).items()}
    torch.save(weights, Path(workdir) / "final.pt")
    (Path(workdir) / "history.json").write_text(
        json.dumps({"jumps": [j["step"] for j in callback.jumps], "snapshots": callback.snapshot_steps})
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
