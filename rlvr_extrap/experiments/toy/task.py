"""The embedded toy task: two-number addition "a+b=" with a fixed held-out split."""

from __future__ import annotations

import random
from functools import cache

from datasets import Dataset

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
