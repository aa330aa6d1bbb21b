"""A graded, verifiable arithmetic task for instruction-tuned models, generated locally and reproducibly.

Each level draws problems from its own distribution. The held-out set of a level is a fixed, seeded
draw of distinct problems that training never sees. Prompts are one chat user message ending in
"Reply with only the number."; the final answer is the last number of the completion (a model that
writes "13 + 14 = 27" answers 27), checked with math-verify (``rewards.final_number_reward``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from datasets import Dataset

__all__ = ["HELDOUT_SIZE", "LEVELS", "MAX_NEW_TOKENS", "Level", "heldout_problems", "problem_prompt", "train_dataset"]

HELDOUT_SIZE = 256
MAX_NEW_TOKENS = 16  # held-out generation budget: "13 + 14 = 27" and a closing EOS fit easily
INSTRUCTION = "Reply with only the number."
NAMES = ("Tom", "Ana", "Li", "Sara", "Omar", "Mia", "Ben", "Zoe")
ITEMS = ("apples", "stamps", "marbles", "books", "coins", "cards", "pencils", "shells")


@dataclass(frozen=True)
class Level:
    """One difficulty level: a name, what it asks, and a sampler of (question, integer answer)."""

    name: str
    description: str
    sample: Callable[[random.Random], tuple[str, int]]


def _add(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(1, 30), rng.randint(1, 30)
    return f"What is {a} + {b}?", a + b


def _add2(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a} + {b}?", a + b


def _add3d(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(100, 999), rng.randint(10, 99)
    return f"What is {a} + {b}?", a + b


def _add3(rng: random.Random) -> tuple[str, int]:
    a, b, c = (rng.randint(10, 99) for _ in range(3))
    return f"What is {a} + {b} + {c}?", a + b + c


def _mul(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(11, 99), rng.randint(3, 9)
    return f"What is {a} * {b}?", a * b


def _mix(rng: random.Random) -> tuple[str, int]:
    a, b, c, d = rng.randint(11, 40), rng.randint(2, 9), rng.randint(10, 99), rng.randint(1, 9)
    return f"What is {a} * {b} + {c} - {d}?", a * b + c - d


def _word(rng: random.Random) -> tuple[str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(10, 60), rng.randint(2, 9), rng.randint(3, 12)
    question = (
        f"{name} has {a} {item}. {name} buys {b} boxes with {c} {item} in each box. "
        f"How many {item} does {name} have now?"
    )
    return question, a + b * c


LEVELS: dict[str, Level] = {
    level.name: level
    for level in (
        Level("add", "a + b, operands 1-30 (the easy level)", _add),
        Level("add2", "a + b, operands 10-99 (carries)", _add2),
        Level("add3d", "a + b, a three-digit, b two-digit", _add3d),
        Level("add3", "a + b + c, operands 10-99", _add3),
        Level("mul", "a * b, a two-digit, b one-digit 3-9", _mul),
        Level("mix", "a * b + c - d, four operands", _mix),
        Level("word", "a word problem: a + b boxes of c", _word),
    )
}


def problem_prompt(question: str) -> list[dict[str, str]]:
    """The chat prompt of a question: one user message ending in the instruction."""
    return [{"role": "user", "content": f"{question} {INSTRUCTION}"}]


def _level(name: str) -> Level:
    if name not in LEVELS:
        raise ValueError(f"math level {name!r}: unknown; choose one of {', '.join(LEVELS)}")
    return LEVELS[name]


@cache
def _heldout(name: str) -> tuple[tuple[str, int], ...]:
    """The fixed held-out draw of a level: HELDOUT_SIZE distinct questions, seeded by the level's name."""
    rng = random.Random(f"rlvr_extrap heldout {name}")
    problems: dict[str, int] = {}
    while len(problems) < HELDOUT_SIZE:
        question, answer = _level(name).sample(rng)
        problems.setdefault(question, answer)
    return tuple(problems.items())


def heldout_problems(name: str) -> list[tuple[list[dict[str, str]], str]]:
    """Return the level's held-out problems as (chat prompt, gold answer) pairs; never trained on."""
    return [(problem_prompt(q), str(a)) for q, a in _heldout(name)]


def train_dataset(name: str, num_rows: int, seed: int = 0) -> Dataset:
    """Return `num_rows` training problems of a level (columns `prompt`, `answer`), none of them held out."""
    level, heldout = _level(name), {q for q, _ in _heldout(name)}
    rng = random.Random(seed)
    prompts, answers = [], []
    while len(prompts) < num_rows:
        question, answer = level.sample(rng)
        if question not in heldout:
            prompts.append(problem_prompt(question))
            answers.append(str(answer))
    return Dataset.from_dict({"prompt": prompts, "answer": answers})
