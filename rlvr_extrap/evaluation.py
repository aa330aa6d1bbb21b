"""Batched greedy generation and held-out accuracy, shared by the demo, the benchmarks and the guard's probe."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

__all__ = [
    "HeldoutAccuracyCallback",
    "encode_prompts",
    "evaluate_accuracy",
    "exact_match",
    "greedy_generate",
    "left_pad",
]

Prompt = str | list[dict[str, str]]  # plain text, or chat messages (the chat template is applied)
Checker = Callable[[list[str], list[str]], list[bool]]  # (completion texts, gold answers) -> correct?


def exact_match(texts: list[str], answers: list[str]) -> list[bool]:
    """Whether each completion, stripped, is exactly its gold answer."""
    return [text.strip() == gold for text, gold in zip(texts, answers, strict=True)]


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Token ids of each prompt as GRPOTrainer feeds it: chat messages through the chat template, text as is."""
    ids = []
    for prompt in prompts:
        if isinstance(prompt, str):
            ids.append(tokenizer(prompt)["input_ids"])
        else:
            text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


def left_pad(
    prompt_ids: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of prompts padded on the left to the longest one."""
    width = max(map(len, prompt_ids))
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompt_ids], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    return input_ids, mask


def greedy_generate(
    model: PreTrainedModel, prompt_ids: Sequence[Sequence[int]], *, pad_id: int, eos_id: int, max_new_tokens: int
) -> list[list[int]]:
    """Greedy completions of left-padded prompts in one `generate` call, each cut after its first EOS."""
    input_ids, mask = left_pad(prompt_ids, pad_id, next(model.parameters()).device)
    width = input_ids.shape[1]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
            )
    finally:
        model.train(was_training)
    return [row[: row.index(eos_id) + 1] if eos_id in row else row for row in out[:, width:].tolist()]


def evaluate_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[tuple[Prompt, str]],
    batch_size: int = 128,
    *,
    max_new_tokens: int = 4,
    check: Checker = exact_match,
) -> float:
    """Return the fraction of (prompt, answer) problems whose greedy completion `check` accepts (plain or PEFT model)."""
    correct = 0
    for start in range(0, len(problems), batch_size):
        prompts, answers = zip(*problems[start : start + batch_size], strict=True)
        completions = greedy_generate(
            model,
            encode_prompts(tokenizer, prompts),
            pad_id=tokenizer.pad_token_id,
            eos_id=tokenizer.eos_token_id,
            max_new_tokens=max_new_tokens,
        )
        texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
        correct += sum(check(texts, list(answers)))
    return correct / len(problems)


class HeldoutAccuracyCallback(TrainerCallback):
    """Evaluate held-out greedy accuracy at the start, every `every` optimizer steps, and at the end (printed if `verbose`)."""

    def __init__(
        self,
        problems: Sequence[tuple[Prompt, str]],
        every: int = 50,
        batch_size: int = 128,
        *,
        max_new_tokens: int = 4,
        check: Checker = exact_match,
        verbose: bool = False,
    ) -> None:
        self.every = every
        self.verbose = verbose
        self.problems = list(problems)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.check = check
        self.history: list[tuple[int, float]] = []

    def _evaluate(self, state: Any, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        """Evaluate once per global step and record the result."""
        step = state.global_step
        if self.history and self.history[-1][0] == step:
            return
        accuracy = evaluate_accuracy(
            model, tokenizer, self.problems, self.batch_size, max_new_tokens=self.max_new_tokens, check=self.check
        )
        self.history.append((step, accuracy))
        state.log_history.append({"heldout_accuracy": accuracy, "step": step})
        if self.verbose:
            print(f"step {step}: held-out accuracy {accuracy:.3f} ({len(self.problems)} problems)", flush=True)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Evaluate before the first optimizer step.

        On a resume, the evaluations the checkpoint logged before its step are kept, and its step is evaluated
        again: a branch may have changed the weights there (e.g. a jump at the resume step).
        """
        logged = [e for e in state.log_history if "heldout_accuracy" in e and e["step"] < state.global_step]
        self.history = [(e["step"], e["heldout_accuracy"]) for e in logged]
        self._evaluate(state, kwargs["model"], kwargs["processing_class"])

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Evaluate every `every` optimizer steps."""
        if state.global_step % self.every == 0:
            self._evaluate(state, kwargs["model"], kwargs["processing_class"])

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Evaluate the final model."""
        self._evaluate(state, kwargs["model"], kwargs["processing_class"])
