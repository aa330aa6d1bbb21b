"""The probe-guarded jump and the fit timeout, on a real GRPOTrainer."""

from __future__ import annotations

import logging
import time

import pytest
import torch
from grpo_utils import WeightProbe, count_ones_reward, make_trainer

from rlvr_extrap import ExtrapolationCallback
from rlvr_extrap.extrapolators import LinearExtrapolator

JUMP = {
    "max_steps": 6,
    "extrap_method": "linear",
    "extrap_jump_at": [4],
    "extrap_snapshot_every": 2,
    "extrap_horizon": 4,
}


class WeightReward:
    """count_ones plus ``sign * 1000 * ||W - W_pre||``, with W_pre the weights just before the jump.

    The weight term is the same for every completion of a group, so it does not change GRPO's
    advantages; it only decides which candidate the guard's probe prefers.
    """

    __name__ = "weight_reward"

    def __init__(self, sign: float) -> None:
        self.sign = sign
        self.before = WeightProbe()  # registered before the callback: records W_pre at the jump step
        self.trainer = None

    def __call__(self, completions, **kwargs):
        text = count_ones_reward(completions)
        jump_step = JUMP["extrap_jump_at"][0]
        if jump_step not in self.before.at:
            return text
        live = self.trainer.model
        from rlvr_extrap.runtime.lora import find_lora_modules

        now = {n: m.effective_weight() for n, m in find_lora_modules(live).items()}
        dist = sum(float((now[n] - w).norm() ** 2) for n, w in self.before.at[jump_step].items()) ** 0.5
        return [t + self.sign * 1000 * dist for t in text]


def guarded_run(tmp_path, sign: float, **settings):
    reward = WeightReward(sign)
    after = WeightProbe()
    callback = ExtrapolationCallback()
    trainer = make_trainer(
        tmp_path, [reward.before, callback, after], reward_funcs=reward, extrap_guard_prompts=8, **{**JUMP, **settings}
    )
    reward.trainer = trainer
    trainer.train()
    return trainer, callback, reward.before, after


def test_guard_keeps_the_best_step_size(tmp_path):
    _, plain, before_plain, after_plain = guarded_run(tmp_path / "plain", +1.0)
    trainer, guarded, before, after = guarded_run(tmp_path / "guarded", +1.0, extrap_guard=True)
    decision = guarded.jumps[0].guard
    # the reward grows with the distance moved, so the largest candidate wins
    assert decision.scale == 2.0
    scores = [decision.scores[c] for c in (0.5, 1.0, 1.5, 2.0)]
    assert decision.pre_score < scores[0] < scores[1] < scores[2] < scores[3]
    assert decision.prompts == 8
    for n, w in before.at[4].items():
        torch.testing.assert_close(before_plain.at[4][n], w)  # the same run up to the jump
        torch.testing.assert_close(after.at[4][n] - w, 2.0 * (after_plain.at[4][n] - w), rtol=1e-4, atol=1e-6)
    logged = [entry for entry in trainer.state.log_history if "extrap/guard_scale" in entry]
    assert logged and logged[0]["extrap/guard_scale"] == 2.0
    assert plain.jumps[0].guard is None


def test_guard_rolls_back_when_every_candidate_is_worse(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        trainer, callback, before, after = guarded_run(
            tmp_path, -1.0, extrap_guard=True, max_steps=10, extrap_jump_at=[4, 8]
        )
    assert trainer.state.global_step == 10
    first, second = callback.jumps
    assert first.guard.scale is None and "guard" in first.skipped
    assert all(first.guard.scores[c] < first.guard.pre_score for c in (0.5, 1.0, 1.5, 2.0))
    assert first.to_dict()["guard_scale"] == 0.0  # on disk and in the logs, as before
    for n, w in before.at[4].items():
        assert torch.equal(after.at[4][n], w)  # exactly the pre-jump weights
    assert second.guard is not None  # the trajectory went on: the next jump was fitted and scored
    assert "rolled back" in caplog.text


def test_guard_needs_prompts_it_can_score(tmp_path):
    from rlvr_extrap import ExtrapolationConfigError

    trainer = make_trainer(tmp_path, [ExtrapolationCallback()], extrap_guard=True, **JUMP)
    trainer.train_dataset = trainer.train_dataset.rename_column("prompt", "question")
    with pytest.raises(ExtrapolationConfigError, match="extrap_guard.*'prompt' column"):
        trainer.train()


def test_slow_fit_times_out_and_training_goes_on(tmp_path, monkeypatch, caplog):
    fit = LinearExtrapolator.fit

    def slow(self, trajectory):
        time.sleep(3.0)
        return fit(self, trajectory)

    monkeypatch.setattr(LinearExtrapolator, "fit", slow)
    before, after, callback = WeightProbe(), WeightProbe(), ExtrapolationCallback()
    trainer = make_trainer(tmp_path, [before, callback, after], extrap_fit_timeout=0.5, **JUMP)
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert trainer.state.global_step == 6
    assert "extrap_fit_timeout=0.5" in callback.jumps[0].skipped
    assert all(torch.equal(before.at[4][n], after.at[4][n]) for n in before.at[4])
    assert "jump at step 4 skipped" in caplog.text


@pytest.mark.parametrize("kind", ["DEEPSPEED", "FSDP"])
def test_sharded_runs_turn_the_guard_off_loudly_and_refuse_optimizer_resets(monkeypatch, caplog, kind):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from rlvr_extrap import ExtrapolationArguments, ExtrapolationConfigError
    from rlvr_extrap.runtime import distributed

    monkeypatch.setattr(distributed, "PartialState", lambda: SimpleNamespace(distributed_type=DistributedType[kind]))
    config = ExtrapolationArguments(extrap_method="linear")
    assert config.extrap_guard  # on by default
    with caplog.at_level(logging.WARNING):
        distributed.check_distributed_support(config)
    assert not config.extrap_guard and "jumps will not be guarded" in caplog.text
    with pytest.raises(ExtrapolationConfigError, match="extrap_optimizer_policy='reset'.*use 'keep'"):
        distributed.check_distributed_support(
            ExtrapolationArguments(extrap_method="linear", extrap_optimizer_policy="reset")
        )


def test_guard_never_tries_a_step_beyond_the_update_size_limit(tmp_path):
    _, plain, _, _ = guarded_run(tmp_path / "plain", +1.0)
    ratio = plain.jumps[0].figures.update_ratio
    _, guarded, _, _ = guarded_run(tmp_path / "guarded", +1.0, extrap_guard=True, extrap_max_update_ratio=1.2 * ratio)
    decision = guarded.jumps[0].guard
    assert set(decision.scores) == {0.5, 1.0}
    assert decision.scale == 1.0  # 1.5x and 2x would pass the limit; the reward would have preferred them
