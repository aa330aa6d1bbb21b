"""One GRPO run on the embedded toy, with or without extrapolation: shared by the demo and the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from transformers import TrainerCallback
from trl import GRPOTrainer

from ..callback import ExtrapolationCallback
from ..config import ExtrapGRPOConfig
from ..rewards import math_verify_reward
from .model import load_toy_model
from .task import HeldoutAccuracyCallback, train_dataset

__all__ = ["ToyRun", "run_toy"]

PROMPTS_PER_STEP = 16  # with 4, the toy's GRPO gradient is mostly noise and accuracy stays flat
NUM_GENERATIONS = 8
DATASET_ROWS = 16000  # fixed, so every run (any length) sees the same prompts in the same order


@dataclass
class ToyRun:
    """Settings of one toy GRPO run; ``extrap`` holds ``extrap_*`` fields (empty: vanilla GRPO)."""

    name: str
    grpo_steps: int
    extrap: dict[str, Any] = field(default_factory=dict)
    learning_rate: float = 1e-3
    lora_rank: int = 8
    seed: int = 0
    eval_every: int = 20
    progress: bool = True
    prompts_per_step: int = PROMPTS_PER_STEP
    lr_scheduler_type: str = "constant"
    """Constant by default: a run stopped at step S equals a longer run read at step S. TRL's default is "linear"."""


def run_toy(
    run: ToyRun,
    output_dir: str | Path,
    model_path: str | Path | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, Any]:
    """Train, evaluate held-out greedy accuracy along the way, and return a report row.

    ``callbacks`` are added after the run's own (extrapolation, then held-out accuracy), e.g. to save snapshots.

    Runs torch on one thread: for a model this small, two threads are slower, and collapse when
    another process shares the cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_toy(run, output_dir, model_path, callbacks)
    finally:
        torch.set_num_threads(threads)


def _run_toy(
    run: ToyRun, output_dir: str | Path, model_path: str | Path | None, callbacks: Sequence[TrainerCallback]
) -> dict[str, Any]:
    model, tokenizer = load_toy_model(model_path)
    args = ExtrapGRPOConfig(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=run.prompts_per_step * NUM_GENERATIONS,
        num_generations=NUM_GENERATIONS,
        max_completion_length=6,
        temperature=1.0,
        learning_rate=run.learning_rate,
        lr_scheduler_type=run.lr_scheduler_type,
        max_steps=run.grpo_steps,
        logging_steps=max(run.grpo_steps // 4, 1),
        save_strategy="no",
        report_to=[],
        seed=run.seed,
        data_seed=run.seed,
        disable_tqdm=not run.progress,
        **run.extrap,
    )
    extrapolation = ExtrapolationCallback()
    accuracy = HeldoutAccuracyCallback(every=run.eval_every)
    trainer = GRPOTrainer(
        model=model,
        args=args,
        reward_funcs=math_verify_reward,
        train_dataset=train_dataset(DATASET_ROWS, seed=run.seed),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=run.lora_rank, lora_alpha=2 * run.lora_rank, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
        # extrapolation first: a jump step is evaluated after the jump
        callbacks=[extrapolation, accuracy, *callbacks],
    )
    start = time.perf_counter()
    trainer.train()
    jumps = [j for j in extrapolation.jumps if "skipped" not in j]
    return {
        "name": run.name,
        "method": run.extrap.get("extrap_method") or "none",
        "grpo_steps": run.grpo_steps,
        "effective_steps": run.grpo_steps + sum(j["horizon"] for j in jumps),
        "heldout_accuracy": accuracy.history[-1][1],
        "history": accuracy.history,
        "jumps": extrapolation.jumps,
        "train_seconds": time.perf_counter() - start,
        "snapshot_seconds": extrapolation.snapshot_seconds,
        "settings": asdict(run),
    }
