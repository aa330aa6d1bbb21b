"""The embedded toy model: a tiny Qwen2 causal LM warm-started on the train split of the addition task."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, Qwen2Config

from rlvr_extrap.experiments.toy.task import answer_for, prompt_for, train_pairs
from rlvr_extrap.experiments.toy.tokenizer import build_char_tokenizer
from rlvr_extrap.utils.build import build_in_child, build_once, cache_root

TOY_NAME = "toy-v1"
SFT_LEARNING_RATE = 1e-3
SFT_BATCH_SIZE = 64


def toy_model_config(vocab_size: int) -> Qwen2Config:
    """Return the config of the tiny (~0.6M parameter) Qwen2 toy model."""
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )


def _sft_batch(
    tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return right-padded (input_ids, attention_mask, labels) with the loss on the answer and `<eos>` only."""
    rows = []
    for a, b in pairs:
        prompt = tokenizer(prompt_for(a, b))["input_ids"]
        answer = tokenizer(answer_for(a, b))["input_ids"] + [tokenizer.eos_token_id]
        rows.append((prompt + answer, [-100] * len(prompt) + answer))
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), -100)
    for i, (ids, row_labels) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        labels[i, : len(ids)] = torch.tensor(row_labels)
    return input_ids, attention_mask, labels


def warm_start(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    steps: int,
    seed: int,
    learning_rate: float = SFT_LEARNING_RATE,
    batch_size: int = SFT_BATCH_SIZE,
    progress: bool = True,
) -> None:
    """Train `model` in place with AdamW on next-token loss over random batches of train pairs."""
    rng = random.Random(seed)
    pairs = train_pairs()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps)),
    )
    # One thread: bit-reproducible across machines, and as fast as more threads for a model this small.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.train()
    try:
        for _ in tqdm(range(steps), desc="toy warm start", disable=not progress):
            input_ids, attention_mask, labels = _sft_batch(tokenizer, rng.sample(pairs, batch_size))
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
    finally:
        model.eval()
        torch.set_num_threads(threads)


def _new_model(tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """Return a randomly initialised toy model whose special token ids match `tokenizer`."""
    torch.manual_seed(seed)
    config = toy_model_config(len(tokenizer))
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = None
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def default_toy_path() -> Path:
    """Return the toy cache directory: `$RLVR_EXTRAP_CACHE/toy-v1`, else `~/.cache/rlvr_extrap/toy-v1`."""
    return cache_root() / TOY_NAME


def _is_complete(path: Path) -> bool:
    """Return whether `path` holds a saved toy model and tokenizer."""
    return all((path / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json"))


def write_toy_model(directory: str | os.PathLike[str], *, sft_steps: int, seed: int, progress: bool) -> None:
    """Build and warm-start the toy model and save it with its tokenizer into `directory` (in this process)."""
    tokenizer = build_char_tokenizer()
    model = _new_model(tokenizer, seed)
    warm_start(model, tokenizer, steps=sft_steps, seed=seed, progress=progress)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def build_toy_model(
    path: str | os.PathLike[str], *, sft_steps: int = 150, seed: int = 0, progress: bool = True
) -> Path:
    """Return `path` holding the toy model and tokenizer, building them first if no process has.

    One process builds (the others wait for it, see `build_once`), in a builder process of its own (any
    rank of a torchrun job can be the one, see `build_in_child`), into a temporary folder renamed onto
    `path` once complete. An existing complete `path` is kept as it is.
    """
    path = Path(path)

    def build(tmp: Path) -> None:
        build_in_child(
            "rlvr_extrap.experiments.toy.model:write_toy_model",
            tmp,
            f"toy model ({path})",
            echo=progress,
            sft_steps=sft_steps,
            seed=seed,
            progress=progress,
        )

    return build_once(path, _is_complete, build)


def ensure_toy_model(path: str | os.PathLike[str] | None = None) -> Path:
    """Return the toy model folder (`path`, default the cache), building it first if missing."""
    return build_toy_model(path if path is not None else default_toy_path())


def load_toy_model(
    path: str | os.PathLike[str] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the toy model (float32, eval mode) and tokenizer from `path`, building them first if missing."""
    path = ensure_toy_model(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer
