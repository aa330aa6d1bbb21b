"""Full-parameter GRPO (no LoRA adapter): the callback snapshots, fits and jumps the trainable 2-D weights.

Real ``GRPOTrainer`` runs of the tiny Qwen2 on one process; the distributed backends are in test_distributed, resume
after SIGKILL in test_resume.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
import transformers
from accelerate.utils import DistributedType
from grpo_utils import WeightProbe, expected_after_jump, make_trainer, tiny_model

from rlvr_extrap import ExtrapolationCallback, apply_offsets
from rlvr_extrap.config import ExtrapolationConfigError
from rlvr_extrap.experiments.toy.tokenizer import build_char_tokenizer
from rlvr_extrap.runtime import distributed
from rlvr_extrap.runtime.dense import find_dense_modules
from rlvr_extrap.skill.forecast import schedule_clock

pytestmark = pytest.mark.usefixtures("one_thread")

JUMPS = {
    "max_steps": 16,
    "extrap_snapshot_every": 4,
    "extrap_jump_at": [12],
    "extrap_horizon": 8,
    "extrap_alpha": 0.5,
    "extrap_fit_window": None,
    "learning_rate": 1e-3,
}


def run(tmp_path, **kwargs):
    before, after = WeightProbe(), WeightProbe()
    callback = ExtrapolationCallback()
    trainer = make_trainer(tmp_path, [before, callback, after], lora=False, **kwargs)
    trainer.train()
    return trainer, callback, before, after


@pytest.mark.parametrize("method", ["relex", "linear"])
def test_full_parameter_jumps_land_on_the_prediction_and_training_continues(tmp_path, method):
    settings = {**JUMPS, "extrap_jump_at": [12, 20], "max_steps": 24}
    trainer, callback, before, after = run(tmp_path, extrap_method=method, **settings)
    assert callback.full and after.at[12].keys() == find_dense_modules(trainer.model, ["*.layers.*"]).keys()
    assert len(after.at[12]) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    assert [(j.step, j.applied) for j in callback.jumps] == [(12, True), (20, True)]
    clock = schedule_clock(trainer.lr_scheduler)
    expected = expected_after_jump(before, before.start, [0, 4, 8, 12], method, 20, 0.5, None, clock)
    for name, w in after.at[12].items():
        torch.testing.assert_close(w, expected[name], rtol=1e-5, atol=1e-7)
        assert not torch.allclose(w, before.at[12][name])
    # the second segment starts at the jumped weights, its deltas still measured from the step-0 weights
    expected = expected_after_jump(before, after.at[12], [12, 16, 20], method, 28, 0.5, None, clock)
    for name, w in after.at[20].items():
        torch.testing.assert_close(w, expected[name], rtol=1e-5, atol=1e-7)
    record = callback.jumps[0]
    assert record.figures.landed_fraction == pytest.approx(1.0, abs=1e-6) and record.figures.edit_rank is None
    assert any(not torch.equal(after.at[20][n], after.at[24][n]) for n in after.at[20])  # trained on


@pytest.mark.parametrize("method", ["next", "alpharl"])
def test_every_other_method_jumps_a_full_parameter_run(tmp_path, method):
    extra = {"logging_steps": 1} if method == "alpharl" else {}  # a label (mean reward) per step
    _, callback, before, after = run(tmp_path, extrap_method=method, **JUMPS, **extra)
    (record,) = callback.jumps
    assert record.applied, record.skipped
    assert any(not torch.equal(before.at[12][n], after.at[12][n]) for n in after.at[12])


def test_optimizer_policy_resets_the_moments_of_the_jumped_weights(tmp_path):
    trainer, callback, _, after = run(tmp_path, extrap_method="linear", extrap_optimizer_policy="reset", **JUMPS)
    assert callback.jumps[0].applied
    weights = {id(m.weight) for m in find_dense_modules(trainer.model, ["*.layers.*"]).values()}
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    reset = [inner.state[p] for p in trainer.model.parameters() if id(p) in weights]
    kept = [inner.state[p] for p in trainer.model.parameters() if p.requires_grad and id(p) not in weights]
    # read at step 12's end, after the jump: the jumped weights' moments are zero, the others' are not
    states = after.optimizer_state[12]
    assert len(states) == len(reset) + len(kept)
    zeroed = [s for s in states if not s["exp_avg"].any() and not s["exp_avg_sq"].any()]
    assert len(zeroed) == len(reset) and kept


def test_tied_embeddings_are_one_weight_and_stay_tied(tmp_path):
    modules = "*.layers.*,model.embed_tokens,lm_head"
    trainer, callback, before, after = run(tmp_path, extrap_method="linear", extrap_full_modules=modules, **JUMPS)
    assert callback.jumps[0].applied
    model = trainer.model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    (embedding,) = [m for n, m in find_dense_modules(model, modules.split(",")).items() if "embed" in n]
    assert embedding.tied == ("lm_head",)


def test_a_bf16_model_without_master_weights_is_told_and_logs_what_landed(tmp_path, caplog):
    tokenizer = build_char_tokenizer()
    pair = tiny_model(tokenizer).to(torch.bfloat16), tokenizer
    with caplog.at_level(logging.WARNING, logger="rlvr_extrap"):
        _, callback, _, _ = run(tmp_path, model_and_tokenizer=pair, extrap_method="linear", **JUMPS)
    assert any("bfloat16 with no float32 master copy" in r.getMessage() for r in caplog.records)
    figures = callback.jumps[0].figures
    assert figures.landed_noise > 0.05  # the rounding, measured (float32 weights: 0, see the first test)


@pytest.mark.parametrize("method", ["linear", "optimizer"])  # optimizer: the dense velocities are spilled too
def test_spilled_snapshots_give_the_same_jump(tmp_path, method):
    _, _, _, kept = run(tmp_path / "memory", extrap_method=method, **JUMPS)
    _, callback, _, spilled = run(tmp_path / "spill", extrap_method=method, extrap_snapshot_memory="60KB", **JUMPS)
    assert callback.jumps[0].applied
    for name, w in kept.at[12].items():
        torch.testing.assert_close(spilled.at[12][name], w, rtol=0, atol=0)


def test_the_guard_probes_a_full_parameter_jump(tmp_path):
    _, callback, before, after = run(
        tmp_path, extrap_method="linear", extrap_guard=True, extrap_guard_prompts=4, **JUMPS
    )
    (record,) = callback.jumps
    assert record.guard is not None and record.guard.scores
    if record.guard.scale is None:  # rolled back exactly
        for name, w in before.at[12].items():
            assert torch.equal(after.at[12][name], w)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"extrap_full_modules": "*.nothing.*"}, r"extrap_full_modules='\*\.nothing\.\*' matches no trainable 2-D"),
        ({"extrap_snapshot_memory": "1KB"}, r"extrap_snapshot_memory='1KB' is less than one module's snapshot"),
        ({"extrap_jump_into": "offset"}, r"extrap_jump_into='offset' does not apply to a full-parameter run"),
        ({"extrap_edit_rank": 2}, r"extrap_edit_rank=2 does not apply to a full-parameter run"),
    ],
)
def test_bad_full_parameter_settings_end_in_one_line_naming_the_option(tmp_path, settings, match):
    settings = {"extrap_method": "linear", **JUMPS, **settings}
    trainer = make_trainer(tmp_path, [ExtrapolationCallback()], lora=False, **settings)
    with pytest.raises(ExtrapolationConfigError, match=match) as err:
        trainer.train()
    assert "\n" not in str(err.value)


class AdamProbe(transformers.TrainerCallback):
    """Each decoder weight, its AdamW state and its param group at the end of ``step`` (before the callback)."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.seen: dict[str, tuple[torch.Tensor, dict, dict]] = {}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step != self.step:
            return
        inner = getattr(optimizer, "optimizer", optimizer)
        for name, module in find_dense_modules(model, ["*.layers.*"]).items():
            (group,) = [g for g in inner.param_groups if any(p is module.weight for p in g["params"])]
            moments = {k: v.clone() if torch.is_tensor(v) else v for k, v in inner.state[module.weight].items()}
            self.seen[name] = (module.weight.detach().clone(), moments, dict(group))


def adamw_step(weight: torch.Tensor, state: dict, group: dict) -> torch.Tensor:
    """AdamW's next change of ``weight`` with its moments held, written out here: ``-lr (m_hat / (sqrt(v_hat) + eps)
    + wd w)`` (float64)."""
    t, (beta1, beta2) = float(state["step"]), group["betas"]
    m_hat = state["exp_avg"].double() / (1 - beta1**t)
    v_hat = state["exp_avg_sq"].double() / (1 - beta2**t)
    return -group["lr"] * (m_hat / (v_hat.sqrt() + group["eps"]) + group["weight_decay"] * weight.double())


@pytest.mark.parametrize(
    ("coast", "dtype", "rel"),
    [(False, "float32", 1e-5), (True, "float32", 1e-5), (False, "bfloat16", 2**-8)],  # bf16: its rounding of -lr u
)
def test_the_optimizer_method_continues_adamw_on_dense_weights(tmp_path, coast, dtype, rel):
    adam, before, after, callback = AdamProbe(12), WeightProbe(), WeightProbe(), ExtrapolationCallback()
    settings = {**JUMPS, "lr_scheduler_type": "constant", "weight_decay": 0.5}
    trainer = make_trainer(
        tmp_path,
        [adam, before, callback, after],
        lora=False,
        extrap_method="optimizer",
        extrap_coast=coast,
        extrap_snapshot_dtype=dtype,
        **settings,
    )
    trainer.train()
    (record,) = callback.jumps
    assert record.applied, record.skipped
    beta1 = trainer.optimizer.param_groups[0]["betas"][0]
    steps = sum(beta1**k for k in range(1, 9)) if coast else 8  # the momentum fading over the 8-step horizon
    assert adam.seen.keys() == after.at[12].keys()
    for name, (weight, state, group) in adam.seen.items():
        expected = JUMPS["extrap_alpha"] * steps * adamw_step(weight, state, group)
        landed = after.at[12][name].double() - before.at[12][name].double()
        assert (landed - expected).norm() <= rel * expected.norm(), name
    assert len(callback.skill_history) >= 2  # the backtest ran on dense predictions from the earlier points


@pytest.mark.parametrize(("kind", "backend"), [("DEEPSPEED", "DeepSpeed"), ("FSDP", "FSDP")])
def test_the_optimizer_method_is_refused_where_adamw_state_is_sharded(tmp_path, monkeypatch, kind, backend):
    monkeypatch.setattr(distributed, "PartialState", lambda: SimpleNamespace(distributed_type=DistributedType[kind]))
    trainer = make_trainer(tmp_path, [ExtrapolationCallback()], lora=False, extrap_method="optimizer", **JUMPS)
    with pytest.raises(ExtrapolationConfigError, match=rf"extrap_method='optimizer' .* sharded under {backend}") as err:
        trainer.train()
    assert "\n" not in str(err.value)


def test_apply_offsets_on_a_full_parameter_state_says_the_jumps_are_in_the_saved_weights(tmp_path):
    trainer, callback, _, _ = run(tmp_path, extrap_method="linear", **JUMPS)
    assert callback.jumps[0].applied
    with pytest.raises(ValueError, match="full-parameter run's state, whose jumps are in the weights it saved"):
        apply_offsets(trainer.model, trainer.args.output_dir)


def test_a_full_parameter_plan_made_beside_training_lands_with_the_planned_update(tmp_path):
    """extrap_wait_for_fit=False in a full-parameter run: the update planned at 8 lands on a later step's weights
    (before the snapshot at 12 at the latest), and the next segment starts there."""
    settings = {**JUMPS, "extrap_jump_at": [8], "extrap_wait_for_fit": False}
    trainer, callback, before, after = run(tmp_path, extrap_method="linear", **settings)
    (record,) = callback.jumps
    landed = record.figures.landed_step
    assert record.applied and record.step == 8 and 9 <= landed <= 12
    clock = schedule_clock(trainer.lr_scheduler)
    planned = expected_after_jump(before, before.start, [0, 4, 8], "linear", 16, 0.5, None, clock)
    for name, w in after.at[landed].items():
        torch.testing.assert_close(
            w, before.at[landed][name] + planned[name] - before.at[8][name], rtol=1e-5, atol=1e-6
        )
    assert all(torch.equal(before.at[8][n], after.at[8][n]) for n in after.at[8])  # nothing at the jump step itself
