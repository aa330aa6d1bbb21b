"""The regime map's run grids and per-model settings: what ``collect`` trains, and where each run is cached."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rlvr_extrap.runtime.state import STATE_FILE

CACHE = Path(__file__).parents[1] / "cache" / "forecast"


@dataclass(frozen=True)
class RunSpec:
    """One cached training run of the grid."""

    model: str
    learning_rate: float
    prompts_per_step: int
    seed: int
    steps: int = 200
    generations: int = 8
    snapshot_every: int = 10
    lr_schedule: str = "linear"
    lora_rank: int | None = 8
    """None: full-parameter training; the trajectory is the dense ``W_t - W_0`` of the same linear modules
    (``DenseSnapshotRecorder``: bf16, one file per snapshot under ``<run>/snapshots/``)."""
    task: str = ""
    """A level of ``rlvr_extrap.experiments.tasks``; empty: the model's default."""
    eval_every: int | None = None
    """Held-out accuracy every this many steps (a multiple of ``snapshot_every``); None: at every snapshot."""
    save_every: int | None = None
    """Trainer checkpoints every this many steps, kept in ``<run>/trainer``: an interrupted run resumes from the
    latest, and jump arms can branch from them (``steps_saved``); None: none (an interrupted run restarts)."""
    observe_every: int | None = None
    """Full-parameter runs: ``ExtrapolationCallback`` observes the run (no jump), a snapshot every this many steps,
    so each trainer checkpoint carries its state (the origin, and the points under ``<run>/trainer/extrap/points``)
    and a jump arm branches from it with the trajectory (``steps_saved_smollm2.py --full``); every checkpoint is
    kept. None: no observer (the recorder's own state, enough to resume the run only). Not part of ``run_id``."""

    @property
    def completions(self) -> int:
        return self.prompts_per_step * self.generations

    @property
    def run_id(self) -> str:
        adapter = f"r{self.lora_rank}" if self.lora_rank else "full"
        model = f"{self.model}-{self.task}" if self.task else self.model
        return (
            f"{model}_lr{self.learning_rate:g}_c{self.completions}_{adapter}_{self.lr_schedule}"
            f"_s{self.steps}_seed{self.seed}"
        )


def toy_grid(steps: int = 200, large_prompts: int = 64, large_steps: int | None = None) -> list[RunSpec]:
    """lr {1e-3, 2e-4, 5e-5} x completions {32, 8 x large_prompts} x seeds {0, 1}.

    The fast 32-completion runs first, then the large-batch ones (``large_steps`` long, default ``steps``),
    both seeds of a learning rate next to each other, lr 5e-5 and 1e-3 (the two ends) before 2e-4.
    """
    lrs = (5e-5, 1e-3, 2e-4)
    small = [RunSpec("toy", lr, 4, seed, steps=steps) for lr in lrs for seed in (0, 1)]
    large = [RunSpec("toy", lr, large_prompts, seed, steps=large_steps or steps) for lr in lrs for seed in (0, 1)]
    return small + large


def smollm2_spec(learning_rate: float, prompts: int, seed: int, steps: int = 60, task: str = "math-add") -> RunSpec:
    """A SmolLM2 LoRA run as ``steps_saved_smollm2.py`` trains its vanilla arms (so the two share the cache)."""
    return RunSpec(
        "smollm2", learning_rate, prompts, seed, steps=steps, generations=4, snapshot_every=5,
        lr_schedule="constant", lora_rank=16, task=task, eval_every=10, save_every=10,
    )  # fmt: skip


def smollm2_grid(steps: int = 60, large_prompts: int = 16, large_steps: int | None = None) -> list[RunSpec]:
    """SmolLM2 LoRA on ``math-add``, constant lr: 5e-5, 2e-4, 1e-4 (1x, 4x, 2x) x 8 prompts x seeds 0-2.

    These are ``steps_saved_smollm2.py``'s vanilla runs. Then the second batch size: ``large_prompts`` x 4
    completions at 5e-5 and 1e-4, seeds 0 and 1 (``large_steps`` long, default ``steps``). 60 steps at 8 prompts
    is about 25 minutes per run on 2 free cores, so the grid spans sessions: every run checkpoints and resumes.
    (``math-mul`` stayed flat on greedy held-out accuracy at 2e-4 and 4e-4 and collapsed at 8e-4:
    ``results/smollm2_vanilla_partial.md``.)
    """
    small = [smollm2_spec(lr, 8, seed, steps) for seed in (0, 1, 2) for lr in (5e-5, 2e-4, 1e-4)]
    large = [smollm2_spec(lr, large_prompts, seed, large_steps or steps) for seed in (0, 1) for lr in (5e-5, 1e-4)]
    return small + large


FULL_LR = 1e-5
"""Full-parameter SmolLM2 learning rate: see ``smollm2_full_grid``."""


def smollm2_full_spec(
    learning_rate: float, prompts: int, seed: int, steps: int = 60, task: str = "math-add"
) -> RunSpec:
    """A SmolLM2 full-parameter run as ``smollm2_full_grid`` trains it (dense snapshots every 10 steps, a checkpoint
    every 20)."""
    return replace(
        smollm2_spec(learning_rate, prompts, seed, steps, task), snapshot_every=10, lora_rank=None, save_every=20
    )


def smollm2_full_grid(steps: int = 60, learning_rate: float = FULL_LR) -> list[RunSpec]:
    """SmolLM2 full-parameter training on ``math-add`` (issue 12 item 5: is LoRA's ``B @ A`` what makes the
    trajectory unpredictable?): the LoRA grid's task and batch (8 prompts x 4 completions), constant lr, seeds 0
    and 1.

    Snapshots every 10 steps (a dense snapshot is 269 MB in bf16: 212 MB of linear modules, the rest embeddings
    and norms). Checkpoints every 20 steps, the last 2 kept (each is 1.6 GB: weights and AdamW state).
    Learning rate 1e-5, from a 2-step probe on ``math-mul`` (``benchmarks/results/forecast_full_probe.md``):
    AdamW's first step moves every weight by about ``lr``, so the linear modules moved 0.103 (= lr sqrt(106M))
    and then 0.069 per step, against 0.2 per step over the first 5 steps and 0.13 over the next 5 for the merged
    delta of the LoRA run at 2e-4: the same order, so the two trajectories are compared at a like movement per
    step (2e-6 would move 5x less, and 100 steps of it barely leave the base). Held-out accuracy after the 2
    steps: 0.227 -> 0.230 (no collapse).
    """
    return [smollm2_full_spec(learning_rate, 8, seed, steps) for seed in (0, 1)]


GRIDS: dict[str, Callable[..., list[RunSpec]]] = {
    "toy": toy_grid,
    "smollm2": smollm2_grid,
    "smollm2-full": smollm2_full_grid,
}


@dataclass(frozen=True)
class ModelSupport:
    """What the benchmark needs per model: the ``Run`` settings its runs share (``experiment.Run`` fields)."""

    run: dict[str, Any]
    accuracy_variants: tuple[str, ...] | None = None
    """Variants whose predictions get a held-out evaluation (None: all); each costs an evaluation per (H, h)."""
    accuracy_pairs: tuple[tuple[int, int], ...] = ((50, 50), (50, 100), (100, 50), (100, 100))
    """(origin H, horizon h) where the held-out accuracy of the predicted weights is measured."""


# SmolLM2: the demo's settings (rlvr_extrap.experiments.demo), two torch threads on 2 cores
MODELS: dict[str, ModelSupport] = {
    "toy": ModelSupport({}),
    "smollm2": ModelSupport(
        {
            "model": "smollm2",
            "task": "math-add",
            "max_completion_length": 16,
            "dataset_rows": 4000,
            "eval_batch_size": 64,
            "threads": 2,
        },
        accuracy_variants=("drift, last 10 steps", "relex keep residual", "linear from origin"),
        accuracy_pairs=((30, 30), (40, 20), (50, 50)),  # 100-step runs, evaluated every 10 steps
    ),
}


def run_dir(spec: RunSpec, cache: Path = CACHE) -> Path:
    return cache / spec.run_id


def is_cached(spec: RunSpec, cache: Path = CACHE) -> bool:
    return (run_dir(spec, cache) / STATE_FILE).is_file()
