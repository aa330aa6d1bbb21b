"""The embedded toy task: two-number addition "a+b=" with a fixed held-out split."""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import cache
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

MAX_OPERAND = 19
NUM_HELDOUT = 80
SPLIT_SEED = 1234
MAX_NEW_TOKENS = 4


def prompt_for(a: int, b: int) -> str:
    """Return the prompt for a + b, e.g. "12+7="."""
    return f"{a}+{b}="


def answer_for(a: int, b: int) -> str:
    """Return the gold answer string for a + b."""
    return str(a + b)


@cache
def _split() -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    """Return (train pairs, held-out pairs), fixed for all runs."""
    pairs = [(a, b) for a in range(MAX_OPERAND + 1) for b in range(MAX_OPERAND + 1)]
    heldout = set(random.Random(SPLIT_SEED).sample(pairs, NUM_HELDOUT))
    return tuple(p for p in pairs if p not in heldout), tuple(p for p in pairs if p in heldout)


def train_pairs() -> list[tuple[int, int]]:
    """Return the operand pairs available for training (supervised warm start and GRPO)."""
    return list(_split()[0])


def heldout_pairs() -> list[tuple[int, int]]:
    """Return the operand pairs that are never trained on."""
    return list(_split()[1])


def train_dataset(num_rows: int, seed: int = 0) -> Dataset:
    """Return `num_rows` train problems (columns `prompt`, `answer`) in shuffled epochs over the train pairs."""
    rng = random.Random(seed)
    pairs = train_pairs()
    rows: list[tuple[int, int]] = []
    while len(rows) < num_rows:
        rng.shuffle(pairs)
        rows.extend(pairs[: num_rows - len(rows)])
    return Dataset.from_dict(
        {"prompt": [prompt_for(a, b) for a, b in rows], "answer": [answer_for(a, b) for a, b in rows]}
    )


def heldout_problems() -> list[tuple[str, str]]:
    """Return the held-out problems as (prompt, answer) pairs."""
    return [(prompt_for(a, b), answer_for(a, b)) for a, b in heldout_pairs()]


def evaluate_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[tuple[str, str]],
    batch_size: int = 128,
) -> float:
    """Return the greedy exact-match accuracy of `model` (plain or PEFT) on (prompt, answer) problems."""
    # Exact match is stricter than math_verify_reward, which also accepts e.g. "1+18" or "19.0" for "19".
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    try:
        with torch.no_grad():
            for start in range(0, len(problems), batch_size):
                prompts, answers = zip(*problems[start : start + batch_size], strict=True)
                inputs = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
                inputs = inputs.to(device)
                output = model.generate(
                    **inputs,
                    do_sample=False,
                    max_new_tokens=MAX_NEW_TOKENS,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
                correct += sum(text.strip() == gold for text, gold in zip(texts, answers, strict=True))
    finally:
        model.train(was_training)
    return correct / len(problems)


class HeldoutAccuracyCallback(TrainerCallback):
    """Evaluate held-out greedy accuracy at the start, every `every` optimizer steps, and at the end."""

    def __init__(
        self, every: int = 50, problems: Sequence[tuple[str, str]] | None = None, batch_size: int = 128
    ) -> None:
        self.every = every
        self.problems = list(problems) if problems is not None else heldout_problems()
        self.batch_size = batch_size
        self.history: list[tuple[int, float]] = []

    def _evaluate(self, state: Any, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        """Evaluate once per global step and record the result."""
        step = state.global_step
        if self.history and self.history[-1][0] == step:
            return
        accuracy = evaluate_accuracy(model, tokenizer, self.problems, self.batch_size)
        self.history.append((step, accuracy))
        state.log_history.append({"heldout_accuracy": accuracy, "step": step})

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Evaluate before the first optimizer step."""
        self._evaluate(state, kwargs["model"], kwargs["processing_class"])

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Evaluate every `every` optimizer steps."""
        if state.global_step % self.every == 0:
            self._evaluate(state, kwargs["model"], kwargs["processing_class"])

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Evaluate the final model."""
        self._evaluate(state, kwargs["model"], kwargs["processing_class"])
