"""Verifiable reward functions for TRL's GRPOTrainer."""

from __future__ import annotations

import re
import threading
from typing import Any

from math_verify import parse, verify

_TIMEOUT_SECONDS = 5
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _completion_text(completion: Any) -> str:
    """Return the text of a completion: the string itself, or the content of the last message."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"] if completion else ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def _verify(gold: str, prediction: str, timeout: int | None) -> bool:
    """Return whether math_verify judges `prediction` equal to `gold`, False on any failure."""
    try:
        gold_parsed = parse(gold, parsing_timeout=timeout)
        if not gold_parsed:
            return False
        pred_parsed = parse(prediction, parsing_timeout=timeout)
        return bool(pred_parsed) and verify(gold_parsed, pred_parsed, timeout_seconds=timeout)
    except Exception:
        return False


def _timeout() -> int | None:
    # math_verify's timeouts use SIGALRM, which only works in the main thread; elsewhere run without them.
    return _TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


def math_verify_reward(completions: list[Any], answer: list[str], **kwargs: Any) -> list[float]:
    """Score 1.0 where math_verify finds the completion equal to the gold answer, else 0.0."""
    timeout = _timeout()
    return [
        1.0 if _verify(str(gold), _completion_text(completion), timeout) else 0.0
        for completion, gold in zip(completions, answer, strict=True)
    ]


def final_number(text: str) -> str | None:
    """The final answer of a completion: its last number ("13 + 14 = 27" -> "27"; thousands commas dropped)."""
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def final_number_reward(completions: list[Any], answer: list[str], **kwargs: Any) -> list[float]:
    """Score 1.0 where math_verify finds the completion's last number equal to the gold answer, else 0.0."""
    timeout = _timeout()
    finals = [final_number(_completion_text(completion)) for completion in completions]
    return [
        1.0 if final is not None and _verify(str(gold), final, timeout) else 0.0
        for final, gold in zip(finals, answer, strict=True)
    ]


def final_number_correct(texts: list[str], answers: list[str]) -> list[bool]:
    """Whether each completion's last number is its gold answer (the held-out check of the math task)."""
    return [score == 1.0 for score in final_number_reward(texts, answers)]
