"""The probe-guarded jump: score candidate step sizes on a few prompts with the trainer's rewards, keep the best.

Before a jump the guard generates greedy completions for a small probe set with the live model,
scores them with the trainer's own reward functions (and ``reward_weights``), then does the same
with the update applied at each candidate scale. The best candidate is kept if it scores at least
the pre-jump model minus ``extrap_guard_tolerance``; otherwise the jump is rolled back and training
goes on from exactly the pre-jump weights (kept as a copy while the candidates are scored; where jumps are held
as offsets beside the LoRA path, the pre-jump offsets: no offset where there was none).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from accelerate import PartialState

from rlvr_extrap.runtime.lora import JumpTarget
from rlvr_extrap.runtime.plan import JumpPlan
from rlvr_extrap.utils.generate import greedy_generate

__all__ = ["GuardDecision", "JumpGuard", "probe_rows"]


@dataclass
class GuardDecision:
    """The probe scores of the pre-jump model and of every candidate scale, and the scale kept (None: no jump)."""

    pre_score: float
    scores: dict[float, float]
    scale: float | None
    seconds: float
    prompts: int

    def to_metrics(self) -> dict[str, float]:
        out = {"guard_score_pre": self.pre_score, "guard_seconds": self.seconds, "guard_prompts": self.prompts}
        out.update({f"guard_score_x{scale:g}": score for scale, score in self.scores.items()})
        out["guard_scale"] = 0.0 if self.scale is None else self.scale
        return out

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any]) -> GuardDecision:
        """The decision ``to_metrics`` wrote (other keys in ``metrics`` are ignored)."""
        prefix = "guard_score_x"
        scores = {float(k[len(prefix) :]): v for k, v in metrics.items() if k.startswith(prefix)}
        scale = metrics["guard_scale"] or None  # 0.0: no candidate kept (candidates are > 0)
        return cls(metrics["guard_score_pre"], scores, scale, metrics["guard_seconds"], metrics["guard_prompts"])


def probe_rows(trainer: Any, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` rows for the probe: from the trainer's eval dataset if it has one, else sampled from the train set.

    The count is rounded down to a multiple of the number of processes (each scores its share).
    """
    dataset = trainer.eval_dataset
    if isinstance(dataset, dict):
        dataset = next(iter(dataset.values()), None)
    if dataset is None:
        dataset = trainer.train_dataset
    if dataset is None or "prompt" not in dataset.column_names:
        raise ValueError("extrap_guard: the trainer has no dataset with a 'prompt' column to draw probe prompts from")
    world = PartialState().num_processes
    count = min(count, len(dataset)) // world * world
    if count == 0:
        raise ValueError(f"extrap_guard_prompts: the probe needs at least {world} prompt(s) (one per process)")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator)[:count].tolist()
    return [dataset[i] for i in order]


class JumpGuard:
    """Scores the model on the probe before and after candidate updates, on the training thread of every rank."""

    def __init__(self, trainer: Any, target: JumpTarget, rows: list[dict[str, Any]], max_new_tokens: int) -> None:
        for name in ("_tokenize_prompts", "_calculate_rewards", "reward_weights"):
            if not hasattr(trainer, name):
                raise ValueError(
                    f"extrap_guard needs TRL's GRPOTrainer (its reward functions); {type(trainer).__name__} has no "
                    f"{name}. Set extrap_guard=False"
                )
        self.trainer = trainer
        self.target = target
        self.tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
        state = PartialState()
        self.rows = rows[state.process_index :: state.num_processes]
        self.prompts = [row["prompt"] for row in self.rows]
        self.prompt_count = len(rows)
        self.max_new_tokens = max_new_tokens

    @cached_property
    def prompt_ids(self) -> list[list[int]]:
        """This process's probe prompts, tokenized as the trainer tokenizes them (once, at the first score)."""
        prompt_ids, images, _ = self.trainer._tokenize_prompts(self.prompts)
        if images is not None:
            raise ValueError("extrap_guard does not score image prompts; set extrap_guard=False")
        return prompt_ids

    def decide(self, plan: JumpPlan, scales: list[float], tolerance: float) -> GuardDecision:
        """Try ``plan`` at each scale (a multiple of the planned update); leaves the weights as they were.

        With no scale to try, the decision is not to jump.
        """
        start = time.perf_counter()
        pre = self.score()
        scores: dict[float, float] = {}
        held = self.target.hold(list(plan.updates))
        for scale in scales:
            try:
                self.target.apply(plan.scaled(scale).updates)
                scores[scale] = self.score()
            finally:
                self.target.roll_back(held)
        best = max(scores, key=lambda s: (scores[s], -abs(s - 1.0)), default=None)  # ties: nearest the configured step
        scale = best if best is not None and scores[best] >= pre - tolerance else None
        return GuardDecision(pre, scores, scale, time.perf_counter() - start, self.prompt_count)

    def score(self) -> float:
        """Mean weighted reward of greedy completions of the probe prompts (over all processes)."""
        trainer = self.trainer
        completion_ids = self._generate(self.prompt_ids)
        texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        if isinstance(self.prompts[0], list):  # conversational
            texts = [[{"role": "assistant", "content": t}] for t in texts]
        rewards = trainer._calculate_rewards(self.rows, self.prompts, texts, completion_ids)  # gathered over processes
        weighted = (rewards * trainer.reward_weights.to(rewards.device).unsqueeze(0)).nansum(dim=1)
        return float(weighted.mean())

    def _generate(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        return greedy_generate(model, prompt_ids, pad_id=pad, eos_id=eos, max_new_tokens=self.max_new_tokens)
