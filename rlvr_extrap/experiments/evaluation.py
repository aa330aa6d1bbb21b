"""Held-out accuracy of greedy completions, for the demo, the benchmarks and the built-in tasks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from rlvr_extrap.utils.generate import Prompt, encode_prompts, greedy_generate

__all__ = [
    "HeldoutAccuracyCallback",
    "evaluate_accuracy",
    "exact_match",
]

Checker = Callable[[list[str], list[str]], list[bool]]  # (completion texts, gold answers) -> correct?


def exact_match(texts: list[str], answers: list[str]) -> list[bool]:
    """Whether each completion, stripped, is exactly its gold answer."""
    return [text.strip() == gold for text, gold in zip(texts, answers, strict=True)]


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
