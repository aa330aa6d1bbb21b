"""Output-space extrapolation at generation time: decode two models in lockstep on extrapolated logits.

``z = z_a + alpha * (z_b - z_a)`` per step (arXiv 2601.04537), then temperature and top-p as usual:
``alpha = 1`` is model ``b``, ``alpha = 0`` model ``a``, ``alpha > 1`` goes past ``b`` along the direction
from ``a`` (e.g. an earlier checkpoint) to ``b``. No weight changes; both models keep their own KV cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import Cache

__all__ = ["extrapolate_logits", "extrapolated_generate", "sampling_probs", "select_tokens"]


def extrapolate_logits(z_a: torch.Tensor, z_b: torch.Tensor, alpha: float) -> torch.Tensor:
    """``z_a + alpha * (z_b - z_a)`` in float32."""
    z_a = z_a.float()
    return z_a + alpha * (z_b.float() - z_a)


def sampling_probs(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """Next-token probabilities: ``softmax(logits / temperature)`` restricted to the top-p nucleus, renormalised.

    The nucleus is the smallest set of most likely tokens whose mass reaches ``top_p`` (a token is kept
    when the mass of the tokens ranked above it is below ``top_p``); the most likely token always is.
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: must be > 0 when sampling (use do_sample=False for greedy)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p}: must be in (0, 1]")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_above = sorted_probs.cumsum(-1) - sorted_probs
    keep_sorted = mass_above < top_p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    probs = probs * keep
    return probs / probs.sum(-1, keepdim=True)


def select_tokens(
    logits: torch.Tensor,
    *,
    do_sample: bool,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of ``logits`` (batch, vocab): argmax, or a draw from ``sampling_probs``."""
    if not do_sample:
        return logits.argmax(-1)
    probs = sampling_probs(logits, temperature, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def extrapolated_generate(
    model_a: torch.nn.Module,
    model_b: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    alpha: float,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    do_sample: bool = False,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """Decode a left-padded batch with both causal LMs in lockstep, each step on extrapolated logits.

    Returns the prompts followed by the new tokens, as ``generate`` does: a row that emitted an eos
    token is padded with ``pad_token_id`` afterwards, and decoding stops once every row has, or after
    ``max_new_tokens``. Positions follow the attention mask, so left padding is handled as in ``generate``.
    """
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must be "
            "the same (batch, length) shape"
        )
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=input_ids.device)
    mask = attention_mask.long()
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    step_ids = input_ids
    caches: list[Cache | None] = [None, None]
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    generated = [input_ids]
    for _ in range(max_new_tokens):
        logits = []
        for i, model in enumerate((model_a, model_b)):
            out = model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=caches[i],
                use_cache=True,
                logits_to_keep=1,
            )
            caches[i] = out.past_key_values
            logits.append(out.logits[:, -1])
        if logits[0].shape[-1] != logits[1].shape[-1]:
            raise ValueError(
                f"model_a and model_b have different vocabularies ({logits[0].shape[-1]} vs {logits[1].shape[-1]} logits)"
            )
        z = extrapolate_logits(logits[0], logits[1], alpha)
        tokens = select_tokens(z, do_sample=do_sample, temperature=temperature, top_p=top_p, generator=generator)
        tokens = torch.where(unfinished, tokens, pad_token_id)
        generated.append(tokens[:, None])
        unfinished &= ~torch.isin(tokens, eos)
        if not unfinished.any():
            break
        step_ids = tokens[:, None]
        positions = positions[:, -1:] + 1
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
    return torch.cat(generated, dim=-1)
