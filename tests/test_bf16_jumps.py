"""Jumps on a bfloat16 base: held as float32 offsets beside the LoRA path, they land as computed.

The toy model is loaded in bfloat16 (``bf16=False`` in the trainer: the model's dtype is what matters), its LoRA
factors in float32 as PEFT keeps them. A linear jump's update is about 1e-4 of each weight's norm; read in float32,
the function after the jump must keep at least 0.99 of it along its direction with at most 0.05 of it off that
direction. Added into the bfloat16 base (``extrap_jump_into='base'``, the negative control) most of it is lost.
"""

from __future__ import annotations

import json

import pytest
import torch
from grpo_utils import (
    WeightProbe,
    count_ones_reward,
    effective_weights,
    expected_after_jump,
    make_trainer,
    tiny_config,
    tiny_model,
)
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

from rlvr_extrap import ExtrapolationCallback, apply_offsets
from rlvr_extrap.cli import main
from rlvr_extrap.experiments.toy.tokenizer import build_char_tokenizer
from rlvr_extrap.linalg.lowrank import LowRank
from rlvr_extrap.runtime.lora import find_lora_modules
from rlvr_extrap.runtime.state import STATE_FILE, load_state

JUMP = {
    "extrap_method": "linear",
    "extrap_jump_at": [4],
    "extrap_snapshot_every": 2,
    "extrap_horizon": 4,
    "extrap_time_axis": "steps",
    "extrap_alpha": 0.001,  # an update of about 1e-4 of each weight's norm
    "extrap_diagnostics": False,
}


def bf16_toy():
    tokenizer = build_char_tokenizer()
    return tiny_model(tokenizer).to(torch.bfloat16), tokenizer


def bf16_run(tmp_path, callbacks=(), **settings):
    before, after, callback = WeightProbe(), WeightProbe(), ExtrapolationCallback()
    settings = {"max_steps": 5, **JUMP, **settings}
    trainer = make_trainer(tmp_path, [before, callback, after, *callbacks], model_and_tokenizer=bf16_toy(), **settings)
    trainer.train()
    return trainer, callback, before, after


def landed(before: torch.Tensor, after: torch.Tensor, expected: torch.Tensor) -> tuple[float, float, float]:
    """(kept fraction along the intended update, off-direction noise, update norm / weight norm), all in float32."""
    intended, moved = expected - before, after - before
    kept = float((moved * intended).sum() / intended.square().sum())
    return kept, float((moved - kept * intended).norm() / intended.norm()), float(intended.norm() / before.norm())


@pytest.mark.parametrize("into", ["auto", "base"], ids=["offset", "base-negative-control"])
def test_a_small_jump_on_a_bf16_base_lands_as_computed(tmp_path, into):
    trainer, callback, before, after = bf16_run(tmp_path, extrap_jump_into=into)
    (jump,) = callback.jumps
    assert jump.applied
    modules = find_lora_modules(trainer.accelerator.unwrap_model(trainer.model))
    assert {m.base_weight.dtype for m in modules.values()} == {torch.bfloat16}
    expected = expected_after_jump(before, before.start, [0, 2, 4], "linear", 8, JUMP["extrap_alpha"], None)
    figures = {name: landed(before.at[4][name], after.at[4][name], expected[name]) for name in expected}
    sizes = [size for _, _, size in figures.values()]
    assert min(sizes) > 2e-5 and max(sizes) < 5e-4  # the regime of the claim: updates of about 0.01% of W
    logged = [e for e in trainer.state.log_history if "extrap/landed_fraction" in e]
    assert [e["extrap/landed_fraction"] for e in logged] == [jump.figures.landed_fraction]
    if into == "auto":  # a bfloat16 base: held as float32 offsets, the base weights untouched
        for name, (kept, noise, _) in figures.items():
            assert kept >= 0.99 and noise <= 0.05, (name, kept, noise)
        assert all(m.offset is not None for m in modules.values())
        fresh = dict(bf16_toy()[0].named_parameters())
        for m in modules.values():
            key = m.name.removeprefix("base_model.model.") + ".weight"
            assert torch.equal(m.base_weight, fresh[key]), key
        assert jump.figures.landed_fraction == pytest.approx(1.0, abs=1e-6)
        assert jump.figures.landed_noise < 1e-4 and jump.figures.offset_truncation == 0.0
    else:  # the negative control: rounded into the bfloat16 base, most of the update is lost
        kept = [k for k, _, _ in figures.values()]
        assert max(kept) < 0.5 and min(noise for _, noise, _ in figures.values()) > 0.05
        assert all(m.offset is None for m in modules.values())
        overall = sum(k * s for k, _, s in figures.values()) / sum(sizes)  # a rough pool, to check the log's scale
        assert jump.figures.landed_fraction < 0.5 and abs(jump.figures.landed_fraction - overall) < 0.1
        assert jump.figures.offset_truncation is None


def test_resume_reattaches_the_offsets_beside_the_lora_path(tmp_path):
    trainer, callback, _, after = bf16_run(tmp_path / "run", max_steps=6, save_strategy="steps", save_steps=6)
    checkpoint = tmp_path / "run" / "out" / "checkpoint-6"
    saved = load_state(checkpoint / STATE_FILE).offsets
    assert saved and all(o.left.dtype == torch.float32 for o in saved.values())

    probe, resumed = WeightProbe(), ExtrapolationCallback()  # probe after the callback: sees the restored model
    trainer = make_trainer(
        tmp_path / "resumed",
        [resumed, probe],
        model_and_tokenizer=bf16_toy(),
        max_steps=6,
        resume_from_checkpoint=str(checkpoint),
        **JUMP,
    )
    trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    modules = find_lora_modules(trainer.accelerator.unwrap_model(trainer.model))
    fresh = dict(bf16_toy()[0].named_parameters())
    for name, module in modules.items():
        torch.testing.assert_close(module.offset.dense(), saved[name].dense(), rtol=0, atol=0)
        assert torch.equal(module.base_weight, fresh[module.name.removeprefix("base_model.model.") + ".weight"])
        torch.testing.assert_close(probe.start[name], after.at[6][name], rtol=0, atol=0)


def test_apply_offsets_reproduces_the_trained_function_and_merging_rounds_it(tmp_path):
    trainer, callback, _, after = bf16_run(tmp_path, max_steps=4)
    trainer.save_model(str(tmp_path / "out"))
    live = trainer.accelerator.unwrap_model(trainer.model).eval()
    ids = torch.tensor([[3, 5, 7, 9, 11, 13]])
    with torch.no_grad():
        want = live(input_ids=ids).logits

    def loaded(into: str) -> PeftModel:
        model = PeftModel.from_pretrained(bf16_toy()[0], str(tmp_path / "out"), is_trainable=True).eval()
        assert apply_offsets(model, tmp_path / "out", into=into) == len(after.at[4])
        return model

    attached = loaded("auto")
    with torch.no_grad():
        assert torch.equal(attached(input_ids=ids).logits, want)
    for name, weight in effective_weights(attached).items():
        torch.testing.assert_close(weight, after.at[4][name], rtol=0, atol=0)

    plain = loaded("base")  # plain weights: the offsets rounded into the bfloat16 base, most of them lost
    merged = effective_weights(plain)
    assert all(m.offset is None for m in find_lora_modules(plain).values())
    offsets = load_state(tmp_path / "out").offsets
    kept = [
        float(((merged[n] - (after.at[4][n] - o.dense())) * o.dense()).sum() / o.dense().square().sum())
        for n, o in offsets.items()
    ]
    assert max(kept) < 0.5


def test_the_guards_rollback_leaves_no_offset(tmp_path):
    seen: list[bool] = []

    def offset_penalty(completions, **kwargs):
        """count_ones, minus 100 while any module holds an offset: every candidate scores below the pre-jump model."""
        held = any(m.offset is not None for m in find_lora_modules(trainer.model).values())
        seen.append(held)
        return [r - 100.0 * held for r in count_ones_reward(completions)]

    before, after, callback = WeightProbe(), WeightProbe(), ExtrapolationCallback()
    trainer = make_trainer(
        tmp_path,
        [before, callback, after],
        model_and_tokenizer=bf16_toy(),
        reward_funcs=offset_penalty,
        max_steps=5,
        **{**JUMP, "extrap_guard": True, "extrap_guard_prompts": 4, "extrap_guard_scales": [1.0, 2.0]},
    )
    trainer.train()
    (jump,) = callback.jumps
    assert not jump.applied and jump.guard.scale is None and any(seen)  # candidates were scored with an offset
    modules = find_lora_modules(trainer.accelerator.unwrap_model(trainer.model))
    assert all(m.offset is None for m in modules.values())
    for name, weight in after.at[4].items():
        assert torch.equal(weight, before.at[4][name])


def test_the_offset_rank_stays_under_its_cap_and_the_cut_is_logged(tmp_path):
    trainer, callback, _, _ = bf16_run(
        tmp_path, max_steps=8, extrap_jump_at=[4, 8], extrap_offset_rank=2, extrap_alpha=1.0
    )
    assert [j.applied for j in callback.jumps] == [True, True]
    modules = find_lora_modules(trainer.accelerator.unwrap_model(trainer.model))
    assert {m.offset.rank for m in modules.values()} == {2}
    assert all(0.0 < j.figures.offset_truncation < 1.0 for j in callback.jumps)
    assert all(j.figures.landed_fraction < 1.0 for j in callback.jumps)  # the cut dropped part of the update
    saved = load_state(tmp_path / "out").offsets  # the trajectory's offsets are the ones the model holds
    for name, module in modules.items():
        torch.testing.assert_close(saved[name].dense(), module.offset.dense(), rtol=0, atol=0)


def test_an_offset_is_in_the_forward_pass_in_every_merge_and_with_adapters_disabled():
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(16, 12, bias=False)).to(torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["0"], init_lora_weights=False))
    (module,) = find_lora_modules(model).values()
    x = torch.randn(5, 16, dtype=torch.bfloat16)
    offset = LowRank(torch.randn(12, 3) * 1e-3, torch.randn(3, 16))
    with torch.no_grad():
        without = model(x).float()
        module.set_offset(offset)
        with_offset = model(x).float()
        torch.testing.assert_close(with_offset - without, x.float() @ offset.dense().T, rtol=0.02, atol=0.02)
        with model.disable_adapter():  # the offset is part of the base: the reference model keeps it
            reference = module.layer.base_layer(x).float() + x.float() @ offset.dense().T
            torch.testing.assert_close(model(x).float(), reference, rtol=2**-7, atol=1e-3)
        weight = module.base_weight.clone()
        model.merge_adapter()  # what TRL's vLLM sync reads: W + s B A + offset, in the base's dtype
        expected = (weight.float() + module.lora_delta().dense() + offset.dense()).to(torch.bfloat16)
        assert (module.base_weight.float() - expected.float()).abs().max() <= 2 * 2**-8 * expected.abs().max()
        model.unmerge_adapter()
        module.base_weight.copy_(weight)  # a bfloat16 merge and unmerge is not exact (PEFT's, with or without offset)
        module.set_offset(None)
        assert torch.equal(model(x).float(), without)


def test_offline_extrapolate_on_bf16_checkpoints_reports_the_rounding_and_writes_float32_on_request(tmp_path, capsys):
    """Full bfloat16 checkpoints moving along a line; a small step ahead (--alpha 0.01, about 3e-4 of the weights)."""
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_config(20)).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "base")
    w0 = {k: v.detach().float() for k, v in model.state_dict().items()}
    direction = {k: 1e-5 * torch.randn(w.shape) for k, w in w0.items()}
    for step in (10, 20, 30):
        model.load_state_dict({k: (w + step * direction[k]).to(torch.bfloat16) for k, w in w0.items()})
        model.save_pretrained(tmp_path / "run" / f"checkpoint-{step}")
    outs = {}
    for dtype in ("base", "float32"):
        outs[dtype] = tmp_path / f"out-{dtype}"
        args = ["extrapolate", str(tmp_path / "run"), "--base", str(tmp_path / "base"), "--method", "linear"]
        assert (
            main([*args, "--target-step", "100", "--alpha", "0.01", "--out", str(outs[dtype]), "--dtype", dtype]) == 0
        )
    printed = capsys.readouterr().out
    reported = {d: json.loads((o / "extrapolation.json").read_text())["rounding"] for d, o in outs.items()}
    assert "--dtype float32 keeps all of it" in printed
    assert reported["float32"]["kept_fraction"] == pytest.approx(1.0, abs=1e-6) and reported["float32"]["noise"] < 1e-6

    last = load_file(tmp_path / "run" / "checkpoint-30" / "model.safetensors")
    base_out, f32_out = (load_file(o / "model.safetensors") for o in outs.values())
    dot = sq = 0.0
    for key, exact in f32_out.items():
        assert exact.dtype == torch.float32 and base_out[key].dtype == torch.bfloat16
        assert torch.equal(exact.to(torch.bfloat16), base_out[key])  # the base-dtype output is the float32 one rounded
        intended, moved = exact - last[key].float(), base_out[key].float() - last[key].float()
        dot, sq = dot + float((moved * intended).sum()), sq + float(intended.square().sum())
    assert dot / sq < 0.9 and dot / sq == pytest.approx(reported["base"]["kept_fraction"], abs=0.02)
    loaded = AutoModelForCausalLM.from_pretrained(outs["float32"])
    assert loaded.dtype == torch.float32


def test_the_offset_joins_the_lora_paths_sum_before_the_output_is_rounded():
    """A 1e-4 offset's effect on a bfloat16 layer's output survives in expectation over many inputs (kept ~1) only
    if it is added before PEFT rounds the result: added after it, it keeps about 0.06, as rounding it into the base."""
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(256, 256, bias=False)).to(torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=8, target_modules=["0"], init_lora_weights=False)).eval()
    (module,) = find_lora_modules(model).values()
    left, right = torch.randn(256, 4), torch.randn(4, 256)
    offset = LowRank(left * (1e-4 * module.base_weight.float().norm() / (left @ right).norm()), right)
    x = torch.randn(4096, 256).to(torch.bfloat16)
    with torch.no_grad():
        without = model(x).float()
        module.set_offset(offset)
        moved, exact = model(x).float() - without, x.float() @ offset.dense().T
    assert float((moved * exact).sum() / exact.square().sum()) > 0.95
