"""One GRPO run with or without extrapolation, on any model and task: shared by the demo and the benchmarks."""

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

from rlvr_extrap.config import ExtrapGRPOConfig
from rlvr_extrap.experiments.evaluation import HeldoutAccuracyCallback
from rlvr_extrap.experiments.models import TOY, load_model
from rlvr_extrap.experiments.tasks import TOY_TASK, get_task
from rlvr_extrap.runtime.callback import ExtrapolationCallback

__all__ = ["Run", "run_experiment"]


@dataclass
class Run:
    """Settings of one GRPO run; ``extrap`` holds ``extrap_*`` fields (empty: vanilla GRPO).

    The defaults are the embedded toy's; ``model`` is anything ``models.load_model`` takes.
    """

    name: str
    grpo_steps: int
    extrap: dict[str, Any] = field(default_factory=dict)
    model: str = TOY
    task: str = TOY_TASK
    learning_rate: float = 1e-3
    lora_rank: int | None = 8
    """None: full-parameter training (no adapter)."""
    prompts_per_step: int = 16  # with 4, the toy's GRPO gradient is mostly noise and accuracy stays flat
    num_generations: int = 8
    max_completion_length: int = 6
    dataset_rows: int = 16000  # fixed, so every run (any length) sees the same prompts in the same order
    eval_batch_size: int = 128
    heldout_size: int | None = None  # evaluate on the first this many held-out problems (None: all of them)
    threads: int | None = 1  # torch threads during the run (None: leave as is)
    seed: int = 0
    eval_every: int = 20
    progress: bool = True
    lr_scheduler_type: str = "constant"
    """Constant by default: a run stopped at step S equals a longer run read at step S. TRL's default is "linear"."""
    save_every: int | None = None
    """Save a trainer checkpoint (adapter, optimizer, scheduler, RNG) every this many steps; None: none."""
    save_total_limit: int | None = None
    """Keep only this many checkpoints (the Trainer deletes older ones); None: all."""


def run_experiment(
    run: Run,
    output_dir: str | Path,
    callbacks: Sequence[TrainerCallback] = (),
    resume_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train, evaluate held-out greedy accuracy along the way, and return a report row.

    ``callbacks`` are added after the extrapolation and accuracy callbacks (e.g. a timer). ``resume_from``:
    a checkpoint folder of this run (``save_every``) to continue from.

    The toy runs torch on one thread: for a model this small, two threads are slower, and collapse
    when another process shares the cores.
    """
    threads = torch.get_num_threads()
    if run.threads is not None:
        torch.set_num_threads(run.threads)
    try:
        return _run(run, output_dir, callbacks, resume_from)
    finally:
        torch.set_num_threads(threads)


def _run(
    run: Run, output_dir: str | Path, callbacks: Sequence[TrainerCallback], resume_from: str | Path | None
) -> dict[str, Any]:
    model, tokenizer = load_model(run.model)
    task = get_task(run.task)
    args = ExtrapGRPOConfig(
        output_dir=str(output_dir),
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        activation_checkpointing=False,
        per_device_train_batch_size=run.prompts_per_step * run.num_generations,
        num_generations=run.num_generations,
        max_completion_length=run.max_completion_length,
        temperature=1.0,
        beta=0.0,
        learning_rate=run.learning_rate,
        lr_scheduler_type=run.lr_scheduler_type,
        max_steps=run.grpo_steps,
        logging_steps=max(run.grpo_steps // 4, 1),
        save_strategy="steps" if run.save_every else "no",
        save_steps=run.save_every or 500,
        save_total_limit=run.save_total_limit,
        report_to=[],
        seed=run.seed,
        data_seed=run.seed,
        resume_from_checkpoint=str(resume_from) if resume_from else None,
        disable_tqdm=not run.progress,
        **run.extrap,
    )
    extrapolation = ExtrapolationCallback()
    accuracy = HeldoutAccuracyCallback(
        task.heldout_problems()[: run.heldout_size],
        every=run.eval_every,
        batch_size=run.eval_batch_size,
        max_new_tokens=task.max_new_tokens,
        check=task.check,
        verbose=run.progress,
    )
    trainer = GRPOTrainer(
        model=model,
        args=args,
        reward_funcs=task.reward,
        train_dataset=task.train_dataset(run.dataset_rows, run.seed),
        processing_class=tokenizer,
        peft_config=None
        if run.lora_rank is None
        else LoraConfig(
            r=run.lora_rank, lora_alpha=2 * run.lora_rank, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
        callbacks=[extrapolation, accuracy, *callbacks],  # extrapolation first: a jump step is evaluated after the jump
    )
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
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
        "worker_cpu_seconds": extrapolation.worker_cpu_seconds,
        "settings": asdict(run),
    }
