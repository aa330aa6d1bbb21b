"""extrap_preset: each reference's fixed choices, RL-Extra's (m, n) schedule on the toy, and the refusals."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from grpo_utils import WeightProbe, make_trainer

from rlvr_extrap import ExtrapolationCallback
from rlvr_extrap.config import ExtrapolationArguments, ExtrapolationConfigError
from rlvr_extrap.extrapolators import LinearExtrapolator, NextConfig, RelexExtrapolator, linear_weights

# What each reference's code fixes, written out from the code (docs/methods.md gives file:line), not read from
# PRESETS: a preset that drifts from its reference fails here.
GATE_OFF = {
    "extrap_min_skill": None,
    "extrap_min_energy": None,
    "extrap_min_r2": None,
    "extrap_max_update_ratio": None,
    "extrap_guard": False,
    "extrap_alpha": 1.0,
}
REFERENCE_CHOICES: dict[str, dict[str, Any]] = {
    # scripts/svd_extrapolation.py: rank 1, a line over the observed checkpoints (fit_linear), W0 + c v
    "relex": {
        "extrap_method": "relex",
        "extrap_rank": 1,
        "extrap_through_origin": False,
        "extrap_keep_residual": False,
        "extrap_time_axis": "steps",
        **GATE_OFF,
    },
    # src/train.py, compute_target_delta.py: snapshots every 10 steps, the rest in NextConfig.reference()
    "next": {"extrap_method": "next", "extrap_snapshot_every": 10, **GATE_OFF},
    # acceleration/weight_extrapolation.py, scripts/run_rl_extrapolation.sh: W_a + (t - a)/(b - a) (W_b - W_a) in
    # steps over the segment just trained, unconditional, a fresh verl run (so a fresh optimizer) per segment
    "rl-extra": {
        "extrap_method": "linear",
        "extrap_time_axis": "steps",
        "extrap_fit_window": None,
        "extrap_optimizer_policy": "reset",
        **GATE_OFF,
    },
    # AlphaRLBuildPerdictModel.py:49-53 adds x* v^T onto the whole checkpoint; a given target accuracy, no gate
    "alpharl": {"extrap_method": "alpharl", "extrap_add_to_last": True, **GATE_OFF},
}
PARAMETERS = {"alpharl": {"extrap_target_score": 0.8}}  # what the reference takes as input
TRAINER = SimpleNamespace(gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1)


def expanded(**settings: Any) -> ExtrapolationArguments:
    config = ExtrapolationArguments(**settings)
    config.validate_extrapolation()
    return config


@pytest.mark.parametrize("preset", sorted(REFERENCE_CHOICES))
def test_each_preset_sets_its_references_choices_and_reexpands_unchanged(preset):
    config = expanded(extrap_preset=preset, **PARAMETERS.get(preset, {}))
    assert {name: getattr(config, name) for name in REFERENCE_CHOICES[preset]} == REFERENCE_CHOICES[preset]
    again = ExtrapolationArguments.from_object(config)  # what the callback does with the trainer's args
    again.validate_extrapolation()
    assert vars(again) == vars(config)


def test_presets_build_the_reference_extrapolators():
    assert expanded(extrap_preset="next").build_extrapolator().config == NextConfig.reference()
    assert expanded(extrap_preset="next", extrap_fit_window=5).build_extrapolator().config == NextConfig.reference(
        fit_window=5
    )
    assert expanded(extrap_method="next", extrap_min_skill=None).build_extrapolator().config == NextConfig()
    assert isinstance(expanded(extrap_preset="relex").build_extrapolator(), RelexExtrapolator)
    assert isinstance(expanded(extrap_preset="rl-extra").build_extrapolator(), LinearExtrapolator)
    # RL-Extra's alpha = (target - base) / (second - base): the paper's best (m, n) = (20, 100) gives 6
    assert linear_weights([0.0, 20.0], 120.0) == [1.0 - 6.0, 6.0]


def test_rl_extra_jumps_every_m_steps_up_to_max_steps_unless_steps_are_given():
    config = expanded(extrap_preset="rl-extra", extrap_snapshot_every=20)
    config.validate_for_training(SimpleNamespace(max_steps=100, **vars(TRAINER)))
    assert config.extrap_jump_at == [20, 40, 60, 80, 100]
    given = expanded(extrap_preset="rl-extra", extrap_snapshot_every=20, extrap_jump_at=[40])
    given.validate_for_training(SimpleNamespace(max_steps=100, **vars(TRAINER)))
    assert given.extrap_jump_at == [40]
    epochs = expanded(extrap_preset="rl-extra")
    with pytest.raises(ExtrapolationConfigError, match=r"^extrap_preset='rl-extra' .* but max_steps=-1; set max_steps"):
        epochs.validate_for_training(SimpleNamespace(max_steps=-1, **vars(TRAINER)))


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"extrap_preset": "rl-extra", "extrap_min_skill": 0.5}, "extrap_min_skill=0.5"),
        (
            {"extrap_preset": "rl-extra", "extrap_optimizer_policy": "reset_momentum"},
            "extrap_optimizer_policy='reset_momentum'",
        ),
        ({"extrap_preset": "rl-extra", "extrap_fit_window": 3}, "extrap_fit_window=3"),
        ({"extrap_preset": "relex", "extrap_keep_residual": True}, "extrap_keep_residual=True"),
        ({"extrap_preset": "relex", "extrap_guard_prompts": 8, "extrap_alpha": 2.0}, "extrap_alpha=2.0"),
        ({"extrap_preset": "next", "extrap_method": "relex"}, "extrap_method='relex'"),
        ({"extrap_preset": "next", "extrap_snapshot_every": 20}, "extrap_snapshot_every=20"),
    ],
)
def test_a_setting_that_contradicts_the_preset_is_refused_in_one_line_naming_both(settings, named):
    with pytest.raises(ExtrapolationConfigError) as err:
        expanded(**settings)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"extrap_preset={settings['extrap_preset']!r} fixes ")
    assert f"but {named} is set; leave {named.split('=')[0]} unset, or drop extrap_preset" in message


def test_settings_that_agree_with_the_preset_or_are_its_parameters_are_kept():
    config = expanded(
        extrap_preset="rl-extra",
        extrap_optimizer_policy="reset",
        extrap_guard=False,
        extrap_horizon=8,
        extrap_snapshot_every=4,
        extrap_snapshot_dtype="bfloat16",
    )
    assert (config.extrap_horizon, config.extrap_snapshot_every, config.extrap_snapshot_dtype) == (8, 4, "bfloat16")


@pytest.mark.parametrize(("name", "value"), [("extrap_jump_at", ["auto"]), ("extrap_horizon", "auto")])
def test_presets_refuse_backtest_driven_schedules(name, value):
    with pytest.raises(ExtrapolationConfigError, match=rf"^extrap_preset='relex' jumps on a fixed schedule.*{name}="):
        expanded(extrap_preset="relex", **{name: value})


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ExtrapolationConfigError, match=r"^extrap_preset='rlextra' is not a known preset; .*'rl-extra'"):
        expanded(extrap_preset="rlextra")


def test_rl_extra_on_the_toy_takes_every_jump_at_every_m_boundary(tmp_path):
    """(m, n) = (4, 8) over 12 steps: after each m-step segment the weights land on W_a + (m + n)/m (W_b - W_a)
    (W_a the segment's start, W_b its end) and the optimizer starts fresh, as in the reference's loop."""
    m, n = 4, 8
    before, after = WeightProbe(), WeightProbe()
    callback = ExtrapolationCallback()
    trainer = make_trainer(
        tmp_path,
        [before, callback, after],
        max_steps=12,
        extrap_preset="rl-extra",
        extrap_snapshot_every=m,
        extrap_horizon=n,
    )  # the trainer's decaying learning rate: alpha is (m + n)/m only if the preset's time axis is steps
    trainer.train()
    assert trainer.state.global_step == 12
    assert [(j.step, j.skipped) for j in callback.jumps] == [(4, None), (8, None), (12, None)]
    assert all(j.applied for j in callback.jumps)

    alpha = (m + n) / m
    for step in (4, 8, 12):
        start = before.start if step == m else after.at[step - m]  # the segment starts after the previous jump
        for name, end in before.at[step].items():
            expected = start[name] + alpha * (end - start[name])
            torch.testing.assert_close(after.at[step][name], expected, rtol=1e-4, atol=1e-5)
            assert not torch.allclose(after.at[step][name], end)  # it jumped
        assert any(float(s["exp_avg"].abs().sum()) > 0 for s in before.optimizer_state[step])
        for state in after.optimizer_state[step]:  # a fresh optimizer for the next segment
            assert float(state["exp_avg"].abs().sum()) == 0 and float(state["exp_avg_sq"].abs().sum()) == 0
            assert int(state["step"]) == 0
    for step in (1, 2, 3, 5, 6, 7, 9, 10, 11):  # no jump inside a segment
        assert all(torch.equal(before.at[step][k], after.at[step][k]) for k in before.at[step])


def test_the_alpharl_preset_needs_the_target_score_the_reference_takes():
    with pytest.raises(ExtrapolationConfigError, match=r"extrap_preset='alpharl' needs extrap_target_score \("):
        expanded(extrap_preset="alpharl")
    assert expanded(extrap_preset="alpharl", extrap_target_score=0.8).build_extrapolator().config.add_to_last
