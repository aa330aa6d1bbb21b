"""Tests for the embedded toy tokenizer, task, reward and model."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr_extrap.experiments.rewards import math_verify_reward
from rlvr_extrap.experiments.toy import (
    HeldoutAccuracyCallback,
    build_char_tokenizer,
    build_toy_model,
    default_toy_path,
    evaluate_accuracy,
    heldout_pairs,
    heldout_problems,
    load_toy_model,
    train_dataset,
    train_pairs,
)


def test_tokenizer_round_trip_and_save_load(tmp_path: Path) -> None:
    tokenizer = build_char_tokenizer()
    ids = tokenizer("12+7=19")["input_ids"]
    assert len(ids) == 7
    assert tokenizer.decode(ids + [tokenizer.eos_token_id], skip_special_tokens=True) == "12+7=19"
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("12+7=19")["input_ids"] == ids
    assert loaded.decode(loaded(r"\boxed{19} x")["input_ids"]) == r"\boxed{19} x"
    assert loaded.padding_side == "left"
    assert (loaded.pad_token, loaded.eos_token) == ("<pad>", "<eos>")
    batch = loaded(["1+2=", "12+13="], padding=True)
    assert batch["input_ids"][0][:2] == [loaded.pad_token_id] * 2


def test_split_is_fixed_and_disjoint() -> None:
    train, heldout = set(train_pairs()), set(heldout_pairs())
    assert len(heldout) == 80
    assert len(train) + len(heldout) == 400
    assert not train & heldout
    heldout_prompts = {prompt for prompt, _ in heldout_problems()}
    data = train_dataset(num_rows=1000, seed=3)
    assert len(data) == 1000
    assert not heldout_prompts & set(data["prompt"])
    assert data["prompt"] == train_dataset(num_rows=1000, seed=3)["prompt"]
    assert data["prompt"] != train_dataset(num_rows=1000, seed=4)["prompt"]
    for prompt, answer in zip(data["prompt"][:50], data["answer"][:50], strict=True):
        a, b = prompt.removesuffix("=").split("+")
        assert answer == str(int(a) + int(b))


def test_math_verify_reward() -> None:
    completions = ["19", " 19", "18", r"\boxed{19}", "The answer is $\\boxed{19}$", "", "}{\\=+-", "abc"]
    assert math_verify_reward(completions, ["19"] * len(completions)) == [1, 1, 0, 1, 1, 0, 0, 0]
    conversational = [[{"role": "assistant", "content": r"so \boxed{19}"}], [{"role": "assistant", "content": "7"}]]
    assert math_verify_reward(conversational, [r"\boxed{19}", "19"]) == [1.0, 0.0]
    result: list[list[float]] = []
    thread = threading.Thread(target=lambda: result.append(math_verify_reward(["19", "9"], ["19", "19"])))
    thread.start()
    thread.join()
    assert result == [[1.0, 0.0]]


# The built toy (150 SFT steps, seed 0, on one thread: bit-reproducible) answers 21 of its 80 held-out problems
# (0.2625, torch 2.13 on CPU); 30 SFT steps answer 3 (0.0375), random weights none. GRPO needs room both ways.
TOY_ACCURACY = (0.15, 0.45)


def test_toy_model_loads_with_partial_accuracy(toy_model_path: Path) -> None:
    assert toy_model_path == default_toy_path()
    model, tokenizer = load_toy_model()
    low, high = TOY_ACCURACY
    accuracy = evaluate_accuracy(model, tokenizer, heldout_problems())
    assert low <= accuracy <= high, f"toy held-out accuracy {accuracy} is outside {TOY_ACCURACY}"
    torch.manual_seed(0)
    untrained = AutoModelForCausalLM.from_config(model.config)  # same config, random weights: the bound fails
    assert not low <= evaluate_accuracy(untrained, tokenizer, heldout_problems()) <= high
    model.train()  # other batches, train mode: the same greedy answers, and the mode is left as it was
    assert evaluate_accuracy(model, tokenizer, heldout_problems(), batch_size=7) == accuracy
    assert model.training


def test_build_is_atomic(toy_model_path: Path) -> None:
    def temporaries() -> list[Path]:
        return [p for p in toy_model_path.parent.iterdir() if p.name.startswith(".")]

    assert not temporaries()
    # A second build into an existing complete cache keeps the existing one and leaves no temp dir.
    before = (toy_model_path / "model.safetensors").stat().st_mtime_ns
    build_toy_model(toy_model_path, sft_steps=1, progress=False)
    assert (toy_model_path / "model.safetensors").stat().st_mtime_ns == before
    assert not temporaries()


def test_callback_records_each_step_once(toy_model_path: Path) -> None:
    model, tokenizer = load_toy_model(toy_model_path)
    callback = HeldoutAccuracyCallback(every=2, problems=heldout_problems()[:4])

    state = SimpleNamespace(global_step=0, log_history=[])
    kwargs = {"model": model, "processing_class": tokenizer}
    callback.on_train_begin(None, state, None, **kwargs)
    for step in range(1, 5):
        state.global_step = step
        callback.on_step_end(None, state, None, **kwargs)
    callback.on_train_end(None, state, None, **kwargs)
    assert [step for step, _ in callback.history] == [0, 2, 4]
    assert [entry["step"] for entry in state.log_history] == [0, 2, 4]


def test_evaluate_accuracy_on_peft_model(toy_model_path: Path) -> None:
    model, tokenizer = load_toy_model(toy_model_path)
    base = evaluate_accuracy(model, tokenizer, heldout_problems())
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert evaluate_accuracy(peft_model, tokenizer, heldout_problems()) == base
