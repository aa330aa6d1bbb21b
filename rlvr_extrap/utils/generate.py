"""Batched greedy generation of prompts as GRPOTrainer feeds them (the guard's probe and held-out evaluation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["Prompt", "encode_prompts", "greedy_generate", "left_pad"]

Prompt = str | list[dict[str, str]]  # plain text, or chat messages (the chat template is applied)


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
