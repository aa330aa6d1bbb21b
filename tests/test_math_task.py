"""The graded math task: every level has a fixed held-out set that training never sees, and a checker that
takes the completion's last number."""

from __future__ import annotations

import re

import pytest

from rlvr_extrap.experiments import math_task
from rlvr_extrap.experiments.tasks import MATH_PREFIX, get_task, task_names


@pytest.mark.parametrize("level", list(math_task.LEVELS))
def test_heldout_is_fixed_distinct_and_never_trained_on(level: str) -> None:
    task = get_task(MATH_PREFIX + level)
    heldout = task.heldout_problems()
    questions = [prompt[0]["content"] for prompt, _ in heldout]
    assert len(heldout) == math_task.HELDOUT_SIZE == len(set(questions))
    assert all(q.endswith(math_task.INSTRUCTION) for q in questions)
    math_task._heldout.cache_clear()  # drawn again from its seed, not read from the cache
    assert task.heldout_problems() == heldout

    train = task.train_dataset(500, 0)
    assert not {p[0]["content"] for p in train["prompt"]} & set(questions)
    assert train["prompt"] == task.train_dataset(500, 0)["prompt"] != task.train_dataset(500, 1)["prompt"]
    for prompt, answer in zip(train["prompt"][:50], train["answer"][:50], strict=True):
        operands = [int(x) for x in re.findall(r"\d+", prompt[0]["content"])]
        assert int(answer) == eval_question(level, operands)  # the gold answer is the question's value


def eval_question(level: str, operands: list[int]) -> int:
    """The value of a question from its operands, written independently of the generators."""
    if level == "word":
        a, b, c = operands
        return a + b * c
    expression = {"add": "a+b", "add2": "a+b", "add3d": "a+b", "add3": "a+b+c", "mul": "a*b", "mix": "a*b+c-d"}[level]
    return eval(expression, dict(zip("abcd", operands, strict=False)))  # noqa: S307 (our own constant strings)


def test_the_final_number_is_the_answer() -> None:
    check = get_task("math-add2").check
    completions = ["13 + 14 = 27", "The answer is 27.", "27 - 1 = 26", "no number"]
    assert check(completions, ["27"] * 4) == [True, True, False, False]
    assert "math-add2" in task_names()
    with pytest.raises(ValueError, match="math-add4.*choose one of"):
        get_task("math-add4")
