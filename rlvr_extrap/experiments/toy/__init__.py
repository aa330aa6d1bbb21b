"""Embedded default toy: a tiny character-level Qwen2 model and the "a+b=" addition task."""

from rlvr_extrap.experiments.evaluation import HeldoutAccuracyCallback, evaluate_accuracy
from rlvr_extrap.experiments.toy.model import build_toy_model, default_toy_path, load_toy_model, toy_model_config
from rlvr_extrap.experiments.toy.task import (
    answer_for,
    heldout_pairs,
    heldout_problems,
    prompt_for,
    train_dataset,
    train_pairs,
)
from rlvr_extrap.experiments.toy.tokenizer import build_char_tokenizer

__all__ = [
    "HeldoutAccuracyCallback",
    "answer_for",
    "build_char_tokenizer",
    "build_toy_model",
    "default_toy_path",
    "evaluate_accuracy",
    "heldout_pairs",
    "heldout_problems",
    "load_toy_model",
    "prompt_for",
    "toy_model_config",
    "train_dataset",
    "train_pairs",
]
