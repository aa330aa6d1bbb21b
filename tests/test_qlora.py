"""QLoRA: LoRA over a bitsandbytes 8-bit or 4-bit base, whose weights cannot take an in-place add.

The jumps are held as float32 offsets beside the LoRA path (``runtime.offset``): the quantized weights stay bit for
bit, the effective weight lands on the prediction, and the layer's function changes by exactly ``offset @ x``.
bitsandbytes runs these layers on the CPU (its CPU backend); the toy is 64 wide, as 4-bit blocks need. TRL casts
QLoRA adapters to bf16 (as the QLoRA paper does), so the LoRA path, offset included, runs at bf16 precision.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from grpo_utils import WeightProbe, expected_after_jump, make_trainer, tiny_config

from rlvr_extrap import ExtrapolationCallback
from rlvr_extrap.experiments.toy.tokenizer import build_char_tokenizer
from rlvr_extrap.runtime.lora import NoLoraAdapterError, find_lora_modules

pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.usefixtures("one_thread")

JUMP = {
    "max_steps": 5,
    "extrap_method": "linear",
    "extrap_jump_at": [4],
    "extrap_snapshot_every": 2,
    "extrap_horizon": 4,
    "extrap_time_axis": "steps",
    "extrap_diagnostics": False,
}
QUANTIZED = {
    "8bit": {"load_in_8bit": True},
    "4bit": {"load_in_4bit": True, "bnb_4bit_compute_dtype": torch.float32},
}


def quantized_toy(tmp_path, bits: str):
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    config = tiny_config(
        len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    transformers.Qwen2ForCausalLM(config).save_pretrained(tmp_path / "base")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "base", quantization_config=transformers.BitsAndBytesConfig(**QUANTIZED[bits]), device_map="cpu"
    )
    return model, tokenizer


@pytest.mark.parametrize("bits", sorted(QUANTIZED))
def test_a_jump_on_a_quantized_base_is_held_beside_the_lora_path(tmp_path, bits):
    before, after, callback = WeightProbe(), WeightProbe(), ExtrapolationCallback()
    model, tokenizer = quantized_toy(tmp_path, bits)
    trainer = make_trainer(tmp_path, [before, callback, after], model_and_tokenizer=(model, tokenizer), **JUMP)
    modules = find_lora_modules(trainer.model)
    quantized = {n: m.base_weight.detach().clone() for n, m in modules.items()}
    assert all(not w.is_floating_point() for w in quantized.values())  # int8 / packed 4-bit
    trainer.train()

    (jump,) = callback.jumps
    assert jump.applied and callback.target is None  # cleared at train end
    assert jump.figures.landed_fraction == pytest.approx(1.0, abs=1e-6) and jump.figures.landed_noise < 1e-4
    for name, module in modules.items():
        assert torch.equal(module.base_weight.data, quantized[name]), name  # never edited
        assert module.offset is not None
    expected = expected_after_jump(before, before.start, [0, 2, 4], "linear", 8, 1.0, None)
    for name, w in after.at[4].items():  # dequantized base + s B A + offset
        torch.testing.assert_close(w, expected[name], rtol=1e-4, atol=1e-5)

    name, module = next(iter(modules.items()))
    x = torch.randn(3, module.layer.in_features)
    with torch.no_grad():
        held = module.offset
        out = module.layer(x)
        module.set_offset(None)
        without = module.layer(x)
        module.set_offset(held)
    # TRL keeps QLoRA adapters in bf16, so the LoRA path, and the offset's share of it, is rounded at the adapters'
    # own precision (about 2^-9 of the LoRA output): the bar, not bit equality
    moved, intended = out - without, x @ held.dense().T
    kept = float((moved * intended).sum() / intended.square().sum())
    assert kept == pytest.approx(1.0, abs=0.01)
    assert float((moved - kept * intended).norm() / intended.norm()) <= 0.05


def test_a_quantized_base_with_jumps_into_the_base_is_refused_naming_the_fix(tmp_path):
    model, tokenizer = quantized_toy(tmp_path, "8bit")
    trainer = make_trainer(
        tmp_path, [ExtrapolationCallback()], model_and_tokenizer=(model, tokenizer), extrap_jump_into="base", **JUMP
    )
    with pytest.raises(NoLoraAdapterError, match=r"Linear8bitLt.*leave extrap_jump_into 'auto'") as err:
        trainer.train()
    assert "\n" not in str(err.value)
