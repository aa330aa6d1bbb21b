"""A tiny GRPO setup for tests: random 2-layer Qwen2, char tokenizer, a reward with a clear gradient."""

from __future__ import annotations

from typing import Any

import torch
import transformers
from datasets import Dataset
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from trl import GRPOTrainer

from rlvr_extrap import ExtrapGRPOConfig, ExtrapolationCallback, get_extrapolator
from rlvr_extrap.experiments.toy.tokenizer import build_char_tokenizer
from rlvr_extrap.runtime.dense import find_dense_modules
from rlvr_extrap.runtime.lora import find_lora_modules
from rlvr_extrap.runtime.sharding import full_weights, whole
from rlvr_extrap.trajectory.trajectory import Trajectory


def count_ones_reward(completions: list[str], **kwargs: Any) -> list[float]:
    return [float(c.count("1")) for c in completions]


def tiny_config(vocab_size: int, **overrides: Any) -> transformers.Qwen2Config:
    """A 2-layer, 32-wide Qwen2 config shared by the tests."""
    settings = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        **overrides,
    }
    return transformers.Qwen2Config(vocab_size=vocab_size, **settings)


def tiny_model(tokenizer, seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    config = tiny_config(
        len(tokenizer),
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return transformers.Qwen2ForCausalLM(config)


def make_trainer(
    tmp_path,
    callbacks=(),
    *,
    lora: bool = True,
    max_steps: int = 20,
    reward_funcs=count_ones_reward,
    model_and_tokenizer: tuple[transformers.PreTrainedModel, Any] | None = None,
    lora_targets: str | list[str] = "all-linear",
    **extrap: Any,
) -> GRPOTrainer:
    """A real GRPOTrainer on CPU; ``extrap`` are ExtrapGRPOConfig fields (extrap_*) or GRPO overrides.

    The model is the tiny random Qwen2 with the char tokenizer unless ``model_and_tokenizer`` gives one.
    An ``ExtrapolationCallback`` among ``callbacks`` (built first, to sit between probes) is given the trainer,
    as ``callback.trainer = trainer``.

    The guard is off unless asked for: most tests check that a jump lands exactly where it was planned.
    """
    extrap.setdefault("extrap_guard", False)
    extrap.setdefault("extrap_min_skill", None)  # likewise the skill gate: tests that want it set it
    if model_and_tokenizer is None:
        tokenizer = build_char_tokenizer()
        model_and_tokenizer = tiny_model(tokenizer), tokenizer
    model, tokenizer = model_and_tokenizer
    grpo = {
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 3,
        "learning_rate": 5e-3,
        "logging_steps": 5,
        "save_strategy": "no",
    }
    grpo.update({k: v for k, v in extrap.items() if not k.startswith("extrap_")})
    args = ExtrapGRPOConfig(
        **{
            "output_dir": str(tmp_path / "out"),
            "use_cpu": True,
            "bf16": False,
            "max_steps": max_steps,
            "report_to": [],
            "seed": 0,
            "disable_tqdm": True,
            **grpo,
        },
        **{k: v for k, v in extrap.items() if k.startswith("extrap_")},
    )
    dataset = Dataset.from_dict({"prompt": ["1+2=", "3+4=", "5+6=", "7+8="] * 64})
    trainer = GRPOTrainer(
        model=model,
        args=args,
        reward_funcs=reward_funcs,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=lora_targets, task_type="CAUSAL_LM") if lora else None,
        callbacks=list(callbacks),
    )
    for callback in callbacks:
        if isinstance(callback, ExtrapolationCallback):
            callback.trainer = trainer
    return trainer


class WeightProbe(transformers.TrainerCallback):
    """Records every LoRA module's effective (merged) weight at the start and at each step end."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.at: dict[int, dict[str, torch.Tensor]] = {}
        self.optimizer_state: dict[int, list[dict[str, Any]]] = {}
        self.param_ids: dict[int, list[int]] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start = effective_weights(model)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.at[state.global_step] = effective_weights(model)
        self.param_ids[state.global_step] = [id(p) for p in model.parameters() if p.requires_grad]
        inner = getattr(optimizer, "optimizer", optimizer)
        self.optimizer_state[state.global_step] = [
            {k: v.clone() if torch.is_tensor(v) else v for k, v in inner.state[p].items()}
            for p in model.parameters()
            if p.requires_grad and p in inner.state
        ]


def effective_weights(model) -> dict[str, torch.Tensor]:
    """Every LoRA module's whole ``W_base + s B A`` (gathered under ZeRO-3 / FSDP: call it on every process); in a
    model without LoRA, the decoder layers' 2-D weights."""
    if not any(isinstance(m, LoraLayer) for m in model.modules()):  # the weights the forward pass reads
        dense = find_dense_modules(model, ["*.layers.*"])
        with full_weights(model, [m.weight for m in dense.values()]):
            return {name: whole(m.weight.detach()).to("cpu", torch.float32, copy=True) for name, m in dense.items()}
    modules = find_lora_modules(model)
    params = [p for m in modules.values() for p in (m.base_weight, *m.lora_parameters())]
    with full_weights(model, params):
        return {name: m.effective_weight() for name, m in modules.items()}


def expected_after_jump(
    before: WeightProbe, origin: dict, steps: list[int], method: str, target: int, alpha, window, clock=None
):
    """Independent dense recomputation: fit on W_t - W0 at the snapshot steps (time axis ``clock``), then
    W + alpha (W_hat - W)."""
    traj = Trajectory(clock)
    traj.append(steps[0], {n: w - before.start[n] for n, w in origin.items()})
    for s in steps[1:]:
        traj.append(s, {n: w - before.start[n] for n, w in before.at[s].items()})
    ex = get_extrapolator(method, fit_window=window)
    ex.fit(traj)
    now = before.at[steps[-1]]
    return {n: now[n] + alpha * (before.start[n] + d - now[n]) for n, d in ex.predict(target).items()}
