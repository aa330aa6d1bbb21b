"""The tasks a run can train and evaluate on: the embedded toy's "a+b=" and the graded math levels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from datasets import Dataset

from rlvr_extrap.experiments import math_task
from rlvr_extrap.experiments.evaluation import Checker, exact_match
from rlvr_extrap.experiments.rewards import final_number_correct, final_number_reward, math_verify_reward
from rlvr_extrap.experiments.toy import task as toy_task
from rlvr_extrap.utils.generate import Prompt

__all__ = ["MATH_PREFIX", "TOY_TASK", "Task", "get_task", "task_names"]

TOY_TASK = "toy-arithmetic"
MATH_PREFIX = "math-"


@dataclass(frozen=True)
class Task:
    """Training data, held-out problems, the GRPO reward and the held-out check of one task."""

    name: str
    train_dataset: Callable[[int, int], Dataset]  # (rows, seed) -> columns prompt, answer
    heldout_problems: Callable[[], list[tuple[Prompt, str]]]
    reward: Callable[..., list[float]]
    check: Checker
    max_new_tokens: int  # held-out generation budget


def task_names() -> list[str]:
    """Every task name `get_task` accepts."""
    return [TOY_TASK, *(MATH_PREFIX + level for level in math_task.LEVELS)]


def get_task(name: str) -> Task:
    """Return the task `toy-arithmetic` or `math-<level>` (levels: add, add2, add3d, add3, mul, mix, word)."""
    if name == TOY_TASK:
        return Task(
            name,
            lambda rows, seed: toy_task.train_dataset(rows, seed=seed),
            toy_task.heldout_problems,
            math_verify_reward,
            exact_match,  # stricter than the reward, which also accepts e.g. "1+18" or "19.0" for "19"
            toy_task.MAX_NEW_TOKENS,
        )
    level = name.removeprefix(MATH_PREFIX)
    if not name.startswith(MATH_PREFIX) or level not in math_task.LEVELS:
        raise ValueError(f"task {name!r}: unknown; choose one of {', '.join(task_names())}")

    return Task(
        name,
        partial(math_task.train_dataset, level),
        partial(math_task.heldout_problems, level),
        final_number_reward,
        final_number_correct,
        math_task.MAX_NEW_TOKENS,
    )
