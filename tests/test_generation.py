"""Output-space extrapolation: lockstep decoding of two tiny random Qwen2 models against hand computations."""

import math

import pytest
import torch
from grpo_utils import tiny_config
from transformers import Qwen2ForCausalLM

from rlvr_extrap.experiments.generation import extrapolate_logits, extrapolated_generate, sampling_probs

VOCAB, PAD = 20, 0


def tiny_qwen2(seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = tiny_config(VOCAB, pad_token_id=PAD, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def models():
    return tiny_qwen2(0), tiny_qwen2(1)


PROMPTS = [[5, 6, 7, 8, 9], [3, 4], [10, 11, 12]]


def left_padded(prompts):
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@torch.no_grad()
def hand_greedy(model_a, model_b, prompt, alpha, max_new_tokens, eos=()):
    """One unpadded row, full forward passes without cache, argmax of the extrapolated last logits."""
    seq = list(prompt)
    for _ in range(max_new_tokens):
        ids = torch.tensor([seq])
        z_a, z_b = model_a(ids).logits[0, -1], model_b(ids).logits[0, -1]
        seq.append(int((z_a + alpha * (z_b - z_a)).argmax()))
        if seq[-1] in eos:
            break
    return seq[len(prompt) :]


@pytest.mark.parametrize("alpha", [1.5, -0.5])
def test_greedy_matches_a_full_recompute_without_cache(models, alpha):
    model_a, model_b = models
    ids, mask = left_padded(PROMPTS)
    free = [hand_greedy(model_a, model_b, p, alpha, 6) for p in PROMPTS]
    eos = [free[1][2], 19]  # row 1 stops by its third token; the others go on (or stop too)
    expected = [hand_greedy(model_a, model_b, p, alpha, 6, eos=eos) for p in PROMPTS]

    out = extrapolated_generate(
        model_a, model_b, ids, mask, alpha=alpha, max_new_tokens=6, eos_token_id=eos, pad_token_id=PAD
    )
    assert torch.equal(out[:, : ids.shape[1]], ids)
    width = max(map(len, expected))
    assert out.shape[1] == ids.shape[1] + width
    for row, tokens in zip(out[:, ids.shape[1] :].tolist(), expected, strict=True):
        assert row == tokens + [PAD] * (width - len(tokens))
    assert len(expected[1]) <= 3 and any(len(tokens) == 6 for tokens in expected)  # eos did stop one row early


@pytest.mark.parametrize("alpha, which", [(1.0, 1), (0.0, 0)])
def test_alpha_one_and_zero_reproduce_each_models_generate(models, alpha, which):
    ids, mask = left_padded(PROMPTS)
    reference = models[which].generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=2, pad_token_id=PAD
    )
    out = extrapolated_generate(*models, ids, mask, alpha=alpha, max_new_tokens=8, eos_token_id=2, pad_token_id=PAD)
    assert torch.equal(out, reference)


def test_sampling_probs_match_a_hand_computed_nucleus():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0])
    temperature, top_p = 0.7, 0.8
    weights = [math.exp(x / temperature) for x in logits.tolist()]
    probs = [w / sum(weights) for w in weights]
    order = sorted(range(5), key=lambda i: -probs[i])
    kept, mass = [], 0.0
    for i in order:  # smallest set of most likely tokens whose mass reaches top_p
        kept.append(i)
        mass += probs[i]
        if mass >= top_p:
            break
    expected = torch.tensor([probs[i] / mass if i in kept else 0.0 for i in range(5)])
    assert len(kept) == 2  # the nucleus is a proper subset here
    torch.testing.assert_close(sampling_probs(logits, temperature, top_p), expected)
    torch.testing.assert_close(sampling_probs(logits, temperature, 1.0), torch.tensor(probs))
    assert torch.equal(sampling_probs(logits, 1.0, 1e-6), torch.tensor([1.0, 0, 0, 0, 0]))


def test_one_sampled_step_draws_from_the_filtered_extrapolated_distribution(models):
    model_a, model_b = models
    ids, mask = left_padded(PROMPTS)
    alpha, temperature, top_p = 2.0, 1.3, 0.9
    with torch.no_grad():
        z = [
            extrapolate_logits(
                model_a(torch.tensor([p])).logits[0, -1], model_b(torch.tensor([p])).logits[0, -1], alpha
            )
            for p in PROMPTS
        ]
    probs = sampling_probs(torch.stack(z), temperature, top_p)
    assert ((probs > 0).sum(-1) < VOCAB).all()  # top-p removed something in every row
    expected = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(3)).squeeze(-1)
    out = extrapolated_generate(
        model_a,
        model_b,
        ids,
        mask,
        alpha=alpha,
        max_new_tokens=1,
        temperature=temperature,
        top_p=top_p,
        do_sample=True,
        eos_token_id=2,
        pad_token_id=PAD,
        generator=torch.Generator().manual_seed(3),
    )
    assert torch.equal(out[:, -1], expected)


def test_bad_settings_are_clear_errors(models):
    ids, mask = left_padded(PROMPTS)
    with pytest.raises(ValueError, match="temperature=0"):
        extrapolated_generate(
            *models,
            ids,
            mask,
            alpha=1.0,
            max_new_tokens=1,
            temperature=0,
            do_sample=True,
            eos_token_id=2,
            pad_token_id=PAD,
        )
    with pytest.raises(ValueError, match="same"):
        extrapolated_generate(*models, ids, mask[:, 1:], alpha=1.0, max_new_tokens=1, eos_token_id=2, pad_token_id=PAD)
