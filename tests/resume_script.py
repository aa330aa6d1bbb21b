"""Run by test_resume: a tiny GRPO run with two jumps that finishes, crashes (SIGKILL), or resumes.

Usage: resume_script.py WORKDIR MODE [lora|full-parameter]

Modes: full, crash (killed at step 8, after checkpoint-6), kill-in-save (killed half-way through writing
checkpoint-6's extrap_state.safetensors), resume (from checkpoint-6). The run trains LoRA adapters (default) or,
with ``full-parameter``, the whole model.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import safetensors.torch
import torch
import transformers
from grpo_utils import effective_weights, make_trainer

import rlvr_extrap.runtime.state
from rlvr_extrap import ExtrapolationCallback

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


def kill_while_writing(tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str]) -> None:
    """safetensors' save_file that writes the first half of the file, then is killed."""
    data = safetensors.torch.save(tensors, metadata=metadata)
    with open(filename, "wb") as f:
        f.write(data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)


def main(workdir: str, mode: str, kind: str = "lora") -> None:
    if mode == "kill-in-save":
        rlvr_extrap.runtime.state.save_file = kill_while_writing
    callback = ExtrapolationCallback()
    extra = [KillAt()] if mode == "crash" else []
    lora = kind == "lora"
    settings = SETTINGS if lora else {**SETTINGS, "learning_rate": 1e-3}
    trainer = make_trainer(Path(workdir), [callback, *extra], lora=lora, **settings)
    resume = str(Path(workdir) / "out" / "checkpoint-6") if mode == "resume" else None
    trainer.train(resume_from_checkpoint=resume)
    weights = effective_weights(trainer.model)
    torch.save(weights, Path(workdir) / "final.pt")
    (Path(workdir) / "history.json").write_text(
        json.dumps(
            {
                "jumps": [j.step for j in callback.jumps],
                "fields": [list(j.to_dict()) for j in callback.jumps],  # a restored record writes what it read
                "snapshots": callback.snapshot_steps,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
