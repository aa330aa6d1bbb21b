"""ExtrapolationCallback on a real GRPOTrainer (tiny random model, CPU)."""

from __future__ import annotations

import json
import logging
import threading

import pytest
import torch
import transformers
from grpo_utils import WeightProbe, expected_after_jump, make_trainer, tiny_model
from peft import PeftModel
from trl import GRPOConfig, TrlParser

from rlvr_extrap import ExtrapGRPOConfig, ExtrapolationCallback, ExtrapolationConfigError, apply_offsets
from rlvr_extrap.extrapolators import LinearExtrapolator, RelexExtrapolator
from rlvr_extrap.linalg.lowrank import LowRank
from rlvr_extrap.runtime import callback as callback_module
from rlvr_extrap.runtime.lora import NoLoraAdapterError, find_lora_modules
from rlvr_extrap.runtime.state import STATE_FILE
from rlvr_extrap.runtime.worker import TrajectoryWorker
from rlvr_extrap.skill.forecast import schedule_clock
from rlvr_extrap.trajectory.trajectory import Trajectory


def run(tmp_path, **kwargs):
    before, after = WeightProbe(), WeightProbe()
    callback = ExtrapolationCallback()
    trainer = make_trainer(tmp_path, [before, callback, after], **kwargs)
    trainer.train()
    return trainer, callback, before, after


@pytest.mark.parametrize("method", ["relex", "linear"])
def test_jumps_land_on_the_prediction_and_training_continues(tmp_path, method):
    trainer, callback, before, after = run(
        tmp_path,
        max_steps=24,
        extrap_method=method,
        extrap_snapshot_every=4,
        extrap_jump_at=[12, 20],
        extrap_horizon=10,
        extrap_alpha=0.5,
        extrap_fit_window=None,
    )
    assert callback.snapshot_steps == [0, 4, 8, 12, 16, 20, 24]  # after the last jump too: skill is measured
    assert [j.step for j in callback.jumps] == [12, 20]
    assert all(j.applied for j in callback.jumps)

    # First jump: segment from step 0 (W0) through step 12, fitted against the cumulative learning rate.
    clock = schedule_clock(trainer.lr_scheduler)
    expected = expected_after_jump(before, before.start, [0, 4, 8, 12], method, 22, 0.5, None, clock)
    for name, w in after.at[12].items():
        torch.testing.assert_close(w, expected[name], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(w, before.at[12][name])  # it moved
    # Second jump: new segment whose origin is the post-jump state at step 12 (global deltas from W0).
    expected = expected_after_jump(before, after.at[12], [12, 16, 20], method, 30, 0.5, None, clock)
    for name, w in after.at[20].items():
        torch.testing.assert_close(w, expected[name], rtol=1e-4, atol=1e-5)

    # Only the jump steps see a discontinuity between the two probes; other steps are untouched.
    for step in (4, 8, 16, 24):
        for name in before.at[step]:
            assert torch.equal(before.at[step][name], after.at[step][name])
    # Training went on after the last jump with the very same Parameter objects.
    assert trainer.state.global_step == 24
    assert after.param_ids[12] == after.param_ids[24] == before.param_ids[1]
    assert any(not torch.equal(after.at[20][n], after.at[24][n]) for n in after.at[20])
    logged = [h for h in trainer.state.log_history if "extrap/update_norm" in h]
    assert [h["extrap/step"] for h in logged] == [12, 20] and all(h["extrap/update_norm"] > 0 for h in logged)


def test_disabled_callback_is_identical_to_no_callback(tmp_path):
    with_cb = make_trainer(tmp_path, max_steps=6)
    with_cb.add_callback(ExtrapolationCallback())  # no method set: it needs no trainer either
    with_cb.train()
    without = make_trainer(tmp_path, [], max_steps=6)
    without.train()
    a = dict(with_cb.model.named_parameters())
    b = dict(without.model.named_parameters())
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.startswith("extrap/") for h in with_cb.state.log_history for k in h)


def test_optimizer_reset_policy_zeroes_adam_moments_at_the_jump(tmp_path):
    _, _, before, after = run(
        tmp_path,
        max_steps=8,
        extrap_method="linear",
        extrap_jump_at=[4],
        extrap_snapshot_every=2,
        extrap_horizon=4,
        extrap_optimizer_policy="reset",
    )
    assert before.optimizer_state[4] and any(float(s["exp_avg"].abs().sum()) > 0 for s in before.optimizer_state[4])
    for s in after.optimizer_state[4]:
        assert float(s["exp_avg"].abs().sum()) == 0 and float(s["exp_avg_sq"].abs().sum()) == 0
        assert int(s["step"]) == 0


def test_constructor_settings_work_with_a_plain_grpo_config(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=6)
    callback = ExtrapolationCallback(trainer, method="linear", jump_at=[4], snapshot_every=2, horizon=3)
    trainer.add_callback(callback)
    assert type(trainer.args) is ExtrapGRPOConfig  # args without extrap fields would work too:
    trainer.args.extrap_method = None  # the constructor's settings win over args
    trainer.train()
    assert [j.step for j in callback.jumps] == [4]
    logged = [h for h in trainer.state.log_history if "extrap/update_norm" in h]
    assert [h["extrap/step"] for h in logged] == [4]  # through the trainer it was given


def test_an_active_callback_without_its_trainer_says_how_to_pass_it(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=6, extrap_method="linear", extrap_jump_at=[4], extrap_snapshot_every=2)
    trainer.add_callback(ExtrapolationCallback())
    with pytest.raises(ExtrapolationConfigError, match=r"pass the trainer: .*ExtrapolationCallback\(trainer\)\)$"):
        trainer.train()


@pytest.mark.parametrize("error", [RuntimeError, torch.OutOfMemoryError, MemoryError])
def test_worker_failure_skips_the_jump_and_training_finishes(tmp_path, monkeypatch, caplog, error):
    def boom(self, trajectory):
        raise error("injected fit failure")

    monkeypatch.setattr(RelexExtrapolator, "fit", boom)
    with caplog.at_level(logging.WARNING):
        trainer, callback, before, after = run(
            tmp_path, max_steps=6, extrap_method="relex", extrap_jump_at=[4], extrap_snapshot_every=2
        )
    assert trainer.state.global_step == 6
    assert "injected fit failure" in callback.jumps[0].skipped
    assert all(torch.equal(before.at[4][n], after.at[4][n]) for n in before.at[4])
    assert "jump at step 4 skipped" in caplog.text


def test_a_failed_streamed_reduction_is_applied_exact_and_only_numbers_are_logged(tmp_path, monkeypatch):
    def boom(self, name, delta, rank=None):
        raise RuntimeError("injected reduce failure")

    monkeypatch.setattr(Trajectory, "reduce", boom)
    trainer, callback, before, after = run(
        tmp_path, max_steps=6, extrap_method="relex", extrap_jump_at=[4], extrap_snapshot_every=2, extrap_edit_rank=1
    )
    jump = callback.jumps[0]
    assert jump.applied and jump.figures.reduce_error == "RuntimeError: injected reduce failure"
    assert any(not torch.equal(before.at[4][n], after.at[4][n]) for n in before.at[4])  # it jumped, exact
    logged = [h for h in trainer.state.log_history if any(k.startswith("extrap/") for k in h)]
    assert any("extrap/update_norm" in h for h in logged)
    assert all(isinstance(v, int | float) for h in logged for v in h.values())  # the error text stays in the record


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"extrap_method": "nope"}, r"extrap_method='nope'.*choose one of"),
        ({"extrap_horizon": 0}, r"extrap_horizon=0"),
        ({"extrap_horizon": -5}, r"extrap_horizon=-5"),
        ({"extrap_jump_at": [5], "extrap_snapshot_every": 10}, r"extrap_jump_at.*before two snapshots exist"),
        ({"extrap_jump_at": [20, 25], "extrap_snapshot_every": 10}, r"jump at step 25 comes before two snapshots"),
        ({"extrap_jump_at": [30, 20]}, r"extrap_jump_at.*increasing order"),
        ({"extrap_fit_window": 1}, r"extrap_fit_window=1"),
        ({"extrap_optimizer_policy": "forget"}, r"extrap_optimizer_policy='forget'"),
        ({"extrap_alpha": 0.0}, r"extrap_alpha"),
        ({"extrap_rank": 0, "extrap_method": "relex"}, r"extrap_rank=0"),
        ({"extrap_min_energy": 1.5}, r"extrap_min_energy=1.5"),
        ({"extrap_min_r2": 2.0}, r"extrap_min_r2=2.0"),
        ({"extrap_max_update_ratio": 0.0}, r"extrap_max_update_ratio=0.0"),
        ({"extrap_guard_scales": []}, r"extrap_guard_scales=\[\].*at least one"),
        ({"extrap_guard_scales": [1.0, -0.5]}, r"extrap_guard_scales=.*> 0"),
        ({"extrap_guard_prompts": 0}, r"extrap_guard_prompts=0"),
        ({"extrap_guard_tolerance": -1.0}, r"extrap_guard_tolerance=-1.0"),
        ({"extrap_fit_timeout": 0.0}, r"extrap_fit_timeout=0.0.*None"),
    ],
)
def test_bad_config_names_the_field_and_the_fix(tmp_path, fields, match):
    fields = {"extrap_method": "linear", "extrap_jump_at": [20], **fields}
    with pytest.raises(ExtrapolationConfigError, match=match):
        ExtrapGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **fields)


def test_jump_off_the_generation_buffer_boundary_is_refused(tmp_path):
    # steps_per_generation=2: completions generated every 2 optimizer steps; a jump at step 6 is fine, 5 is not.
    trainer = make_trainer(
        tmp_path,
        [ExtrapolationCallback()],
        extrap_method="linear",
        extrap_jump_at=[5],
        extrap_snapshot_every=2,
        steps_per_generation=2,
    )
    with pytest.raises(ExtrapolationConfigError, match=r"extrap_jump_at=\[5\].*generation-buffer.*multiples of 2"):
        trainer.train()


def test_a_model_whose_lora_adapters_are_all_frozen_is_refused(tmp_path):
    """LoRA layers but no trainable adapter: not a full-parameter run (whose weights would be frozen too)."""
    trainer = make_trainer(tmp_path, [ExtrapolationCallback()], extrap_method="relex", extrap_jump_at=[10])
    for name, param in trainer.model.named_parameters():
        if "lora_" in name:
            param.requires_grad_(False)
    with pytest.raises(NoLoraAdapterError, match="peft_config=LoraConfig"):
        trainer.train()


def test_unknown_callback_setting_lists_the_valid_names():
    with pytest.raises(ExtrapolationConfigError, match=r"extrap_jump_every.*valid names: (\w+, )*alpha, "):
        ExtrapolationCallback(jump_every=10)


def test_extrap_fields_are_cli_flags(tmp_path):
    (args,) = TrlParser((ExtrapGRPOConfig,)).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "true",
            "--report_to",
            "none",
            "--extrap_method",
            "relex",
            "--extrap_jump_at",
            "150",
            "300",
            "--extrap_horizon",
            "50",
            "--extrap_fit_window",
            "4",
        ]
    )
    assert (args.extrap_method, args.extrap_jump_at, args.extrap_horizon, args.extrap_fit_window) == (
        "relex",
        [150, 300],
        50,
        4,
    )
    assert isinstance(args, GRPOConfig)


def test_diagnostics_are_written_and_the_gate_holds_modules_back(tmp_path):
    trainer, callback, before, after = run(
        tmp_path,
        max_steps=8,
        extrap_method="relex",
        extrap_jump_at=[6],
        extrap_snapshot_every=2,
        extrap_horizon=4,
        extrap_min_r2=0.999999,
    )
    out = tmp_path / "out" / "extrap" / "step-6"
    report = json.loads((out / "diagnostics.json").read_text())
    modules = report["modules"]
    assert set(modules) == set(before.at[6])
    for d in modules.values():
        assert 0.0 < d["energy"] <= 1.0 + 1e-9 and d["r2"] <= 1.0 + 1e-9 and d["update_norm"] >= 0
        assert d["jumped"] == (d["r2"] >= 0.999999)
    for png in ("coefficients.png", "layers.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    held = [n for n, d in modules.items() if not d["jumped"]]
    assert held, "with 4 noisy points some module should miss an R^2 of 0.999999"
    for name in held:  # held modules did not move at the jump
        assert torch.equal(before.at[6][name], after.at[6][name])
    logged = next(h for h in trainer.state.log_history if "extrap/modules_held" in h)
    assert logged["extrap/modules_held"] == len(held)
    assert logged["extrap/modules_jumped"] == len(modules) - len(held)


def test_saved_adapter_plus_offsets_reproduce_the_jumped_model(tmp_path):
    trainer, callback, _, after = run(
        tmp_path,
        max_steps=6,
        extrap_method="linear",
        extrap_jump_at=[4],
        extrap_snapshot_every=2,
        extrap_horizon=4,
        save_strategy="steps",
        save_steps=4,
    )
    assert (tmp_path / "out" / "checkpoint-4" / STATE_FILE).exists()
    trainer.save_model(str(tmp_path / "final"))
    base = tiny_model(trainer.processing_class)  # same seed: the same base weights
    plain = PeftModel.from_pretrained(base, str(tmp_path / "final"), is_trainable=True)
    live = {n: m.effective_weight() for n, m in find_lora_modules(trainer.model).items()}
    without = {n: m.effective_weight() for n, m in find_lora_modules(plain).items()}
    assert any(not torch.allclose(without[n], live[n]) for n in live)  # the adapter alone misses the jump
    assert apply_offsets(plain, tmp_path / "out") == len(live)
    for name, module in find_lora_modules(plain).items():
        torch.testing.assert_close(module.effective_weight(), live[name], rtol=1e-5, atol=1e-6)


def test_nan_update_is_refused_and_training_goes_on(tmp_path, monkeypatch):
    original = LinearExtrapolator.predict_module

    def poisoned(self, name, step):
        d = original(self, name, step)
        return LowRank(d.left * float("nan"), d.right)

    monkeypatch.setattr(LinearExtrapolator, "predict_module", poisoned)
    trainer, callback, before, after = run(
        tmp_path, max_steps=6, extrap_method="linear", extrap_jump_at=[4], extrap_snapshot_every=2, extrap_horizon=4
    )
    assert "NaN or Inf" in callback.jumps[0].skipped
    assert all(torch.equal(before.at[4][n], after.at[4][n]) for n in before.at[4])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_update_far_beyond_the_travelled_distance_is_refused(tmp_path):
    _, callback, before, after = run(
        tmp_path,
        max_steps=6,
        extrap_method="linear",
        extrap_jump_at=[4],
        extrap_snapshot_every=2,
        extrap_horizon=100,
        extrap_max_update_ratio=5.0,
        extrap_time_axis="steps",  # on the lr axis the decayed schedule barely moves past step 6
    )
    assert "above extrap_max_update_ratio=5.0" in callback.jumps[0].skipped  # horizon 100 from 4 steps: ~25x
    assert all(torch.equal(before.at[4][n], after.at[4][n]) for n in before.at[4])


def test_a_plan_made_beside_training_lands_at_a_later_step_with_the_planned_update(tmp_path, monkeypatch):
    """extrap_wait_for_fit=False: training goes on while the worker fits; here the fit is held until step 12's end
    (the next snapshot), where the callback must wait for it and land it before snapshotting."""
    release = threading.Event()
    fit = LinearExtrapolator.fit

    def held_fit(self, trajectory):
        assert release.wait(timeout=120)
        return fit(self, trajectory)

    class Release(transformers.TrainerCallback):  # before the extrapolation callback: releases the fit at step 12
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 12:
                release.set()

    monkeypatch.setattr(LinearExtrapolator, "fit", held_fit)
    before, after, callback = WeightProbe(), WeightProbe(), ExtrapolationCallback()
    trainer = make_trainer(
        tmp_path, [before, Release(), callback, after], max_steps=16, extrap_method="linear",
        extrap_snapshot_every=4, extrap_jump_at=[8], extrap_horizon=10, extrap_alpha=0.5, extrap_fit_window=None,
        extrap_wait_for_fit=False,
    )  # fmt: skip
    trainer.train()
    (jump,) = callback.jumps
    assert jump.applied and jump.step == 8 and jump.figures.landed_step == 12
    clock = schedule_clock(trainer.lr_scheduler)
    planned = expected_after_jump(before, before.start, [0, 4, 8], "linear", 18, 0.5, None, clock)
    for name, w in after.at[12].items():  # the update planned at 8, added to the weights of step 12
        torch.testing.assert_close(w, before.at[12][name] + planned[name] - before.at[8][name], rtol=1e-4, atol=1e-5)
    for step in (8, 9, 10, 11, 13):
        assert all(torch.equal(before.at[step][n], after.at[step][n]) for n in before.at[step])
    assert callback.snapshot_steps == [0, 4, 8, 12, 16]
    logged = [h for h in trainer.state.log_history if "extrap/landed_step" in h]
    assert [(h["extrap/step"], h["extrap/landed_step"]) for h in logged] == [(8, 12)]


@pytest.mark.parametrize("lend", [True, False])
def test_the_training_thread_lends_its_idle_cores_to_a_jump_unless_told_not_to(tmp_path, monkeypatch, lend):
    calls = []
    monkeypatch.setattr(TrajectoryWorker, "lend_threads", lambda self, threads: calls.append(threads))
    monkeypatch.setattr(callback_module, "idle_threads", lambda own: own + 1)  # as if a core were idle
    _, callback, _, _ = run(
        tmp_path, max_steps=8, extrap_method="linear", extrap_snapshot_every=2, extrap_jump_at=[4], extrap_horizon=4,
        extrap_lend_threads=lend,
    )  # fmt: skip
    assert [j.applied for j in callback.jumps] == [True]
    assert calls == ([2] if lend else [])  # once, at the jump step: the worker's 1 thread and the idle one
