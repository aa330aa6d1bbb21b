"""Forecast skill on synthetic trajectories with known answers, the skill gate, and skill on a real GRPO run."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from grpo_utils import make_trainer
from transformers import get_scheduler
from trl import TrlParser

from rlvr_extrap import ExtrapGRPOConfig, ExtrapolationCallback, ExtrapolationConfigError, get_extrapolator
from rlvr_extrap.linalg.lowrank import LowRank
from rlvr_extrap.runtime.plan import JumpGate, JumpSkipped
from rlvr_extrap.runtime.worker import TrajectoryWorker
from rlvr_extrap.skill.forecast import backtest_skill, drift_to_noise, forecast_errors, lr_clock, schedule_clock
from rlvr_extrap.trajectory.trajectory import Trajectory

EVERY = 10  # steps between points


def walk(drift: float, noise: float, points: int = 21, dim: int = 40000, seed: int = 0) -> list[torch.Tensor]:
    """``D_t``, t = 0, 10, ..., of a random walk with a per-step drift ``mu`` (norm ``drift``) and per-step noise."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(dim, generator=gen)
    mu *= drift / mu.norm()
    d, out = torch.zeros(dim), []
    for k in range(points):
        if k:
            d = d + EVERY * mu + noise * math.sqrt(EVERY) * torch.randn(dim, generator=gen)
        out.append(d.clone())
    return out


def trajectory(deltas: list[torch.Tensor], modules: int = 2) -> Trajectory:
    """Split each flat delta into ``modules`` dense (rows, 100) matrices."""
    traj = Trajectory()
    for k, d in enumerate(deltas):
        parts = d.reshape(modules, -1, 100)
        traj.append(EVERY * k, {f"m{i}": parts[i] for i in range(modules)})
    return traj


def analytic_linear_skill(horizon: int, n: int, drift: float, noise: float, dim: int, origins: int = 3) -> float:
    """Expected pooled skill of linear-from-origin on a drift + noise walk.

    From the origin at t_H: ``P - D_T = (h / t_H) W_H - (W_T - W_H)``, so ``E err = d s^2 h (h / t_H + 1)``;
    not moving: ``E persist = h^2 |mu|^2 + d s^2 h``.
    """
    err = persist = 0.0
    for target in range(n - origins, n):
        origin = target - horizon // EVERY
        if origin < 1:
            continue
        t_h = EVERY * origin
        err += dim * noise**2 * horizon * (horizon / t_h + 1)
        persist += horizon**2 * drift**2 + dim * noise**2 * horizon
    return 1 - err / persist


def test_exact_linear_drift_has_skill_one_for_every_method():
    traj = trajectory(walk(drift=1.0, noise=0.0))
    for method in ("linear", "relex"):
        scores = backtest_skill(traj, get_extrapolator(method))
        assert set(scores) == {EVERY * k for k in range(1, 20)}
        assert min(scores.values()) > 1 - 1e-3, method  # float32 deltas
    assert drift_to_noise(traj) > 1e4


def test_pure_random_walk_has_no_skill():
    traj = trajectory(walk(drift=0.0, noise=1.0))
    for method in ("linear", "relex"):
        scores = backtest_skill(traj, get_extrapolator(method))
        assert max(scores.values()) < 0.05, (method, scores)
    assert drift_to_noise(traj) < 0.2


@pytest.mark.parametrize("drift", [0.005, 0.01, 0.02])
def test_drift_plus_noise_matches_the_analytic_skill(drift):
    dim, noise = 40000, 0.01 / math.sqrt(40000) * 20  # per-step drift vs noise norms of the same order
    traj = trajectory(walk(drift=drift, noise=noise, dim=dim))
    scores = backtest_skill(traj, get_extrapolator("linear"))
    for horizon in (10, 50, 100, 150):
        expected = analytic_linear_skill(horizon, len(traj), drift, noise, dim)
        assert scores[horizon] == pytest.approx(expected, abs=0.06), (horizon, scores[horizon], expected)


def test_forecast_errors_from_the_gram_matrix_equal_the_dense_errors():
    gen = torch.Generator().manual_seed(1)
    traj = Trajectory()
    for k in range(8):
        traj.append(7 * k + k * k, {"a": LowRank(torch.randn(8, 2, generator=gen), torch.randn(2, 5, generator=gen))})
    for method in ("relex", "linear", "next"):
        ex = get_extrapolator(method) if method != "next" else get_extrapolator("next", epochs=5)
        error, persistence = forecast_errors(traj, ex, 5, 6)
        fitted = type(ex)(ex.config)
        fitted.fit(traj.prefix(6))
        dense = [d.dense() for d in traj.deltas["a"]]
        predicted = fitted.predict_module("a", traj.steps[6])
        predicted = predicted.dense() if isinstance(predicted, LowRank) else predicted
        assert error == pytest.approx(float(((predicted - dense[6]) ** 2).sum()), rel=1e-5), method
        assert persistence == pytest.approx(float(((dense[5] - dense[6]) ** 2).sum()), rel=1e-5)


def test_bf16_dense_trajectories_score_like_float64():
    """Full-parameter snapshots are stored in bf16: Gram entries, errors and predictions are computed in float32+.

    A bf16 dot product would round each Gram entry to 3 significant digits, and ``||D_i - D_j||^2`` of nearby
    snapshots (a difference of large, nearly equal entries) would be mostly rounding error.
    """
    deltas = walk(drift=0.02, noise=0.01, points=11, dim=40000)
    exact, half = trajectory([d.double() for d in deltas]), trajectory([d.bfloat16() for d in deltas])
    rounded = trajectory([d.bfloat16().double() for d in deltas])  # the same bf16 values, scored in float64
    for name in exact.modules:
        torch.testing.assert_close(half.gram(name), rounded.gram(name), rtol=1e-5, atol=0.0)
        torch.testing.assert_close(half.gram(name), exact.gram(name), rtol=1e-2, atol=0.0)
    for method in ("linear", "relex"):
        for origin, target in ((5, 6), (8, 10)):
            got = forecast_errors(half, get_extrapolator(method), origin, target)
            want = forecast_errors(rounded, get_extrapolator(method), origin, target)
            assert got == pytest.approx(want, rel=1e-4), (method, origin, target)
        model = get_extrapolator(method)
        model.fit(half.prefix(6))
        predicted = model.predict_module("m0", 100)
        assert predicted.dtype == torch.float32  # summed in float32, not in the snapshots' bf16


def test_schedule_clock_is_the_cumulative_learning_rate_of_the_real_scheduler():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=3, num_training_steps=20)
    used = []
    for _ in range(25):
        used.append(optimizer.param_groups[0]["lr"])  # the rate this optimizer step uses
        optimizer.step()
        scheduler.step()
    clock, reference = schedule_clock(scheduler), lr_clock(used)
    scale = reference(25) / clock(25)  # the same axis up to its scale (line fits ignore the scale)
    assert [scale * clock(t) for t in range(30)] == pytest.approx([reference(t) for t in range(30)], abs=1e-12)
    assert clock(0) == 0.0
    assert schedule_clock(object()) is None


def feed(worker: TrajectoryWorker, deltas: list[torch.Tensor]) -> int:
    for k, d in enumerate(deltas):
        worker.add_snapshot(EVERY * k, {"m": LowRank(d.reshape(-1, 100), torch.eye(100))})
    return EVERY * (len(deltas) - 1)


def test_gate_takes_the_jump_on_drift_and_skips_it_on_a_random_walk():
    worker = TrajectoryWorker(get_extrapolator("linear"), JumpGate(min_skill=0.5))
    try:
        step = feed(worker, walk(drift=1.0, noise=0.0, points=8, dim=2000))
        plan = worker.plan_jump(step, "auto", 1.0).result()
        assert plan.target_step == step + step - EVERY  # the longest horizon the history verifies
        assert plan.skill == pytest.approx(1.0)
        assert worker.plan_jump(step, 50, 1.0).result().target_step == step + 50
        with pytest.raises(JumpSkipped, match="longer than the history can verify"):
            worker.plan_jump(step, 500, 1.0).result()
    finally:
        worker.close()
    worker = TrajectoryWorker(get_extrapolator("linear"), JumpGate(min_skill=0.0))
    try:
        step = feed(worker, walk(drift=0.0, noise=1.0, points=8, dim=2000))
        with pytest.raises(JumpSkipped, match="no backtested horizon reaches skill 0.0"):
            worker.plan_jump(step, "auto", 1.0).result()
        with pytest.raises(JumpSkipped, match="below extrap_min_skill=0.0"):
            worker.plan_jump(step, 20, 1.0).result()
    finally:
        worker.close()


def test_auto_settings_parse_from_the_command_line(tmp_path):
    (args,) = TrlParser((ExtrapGRPOConfig,)).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--use_cpu", "true", "--report_to", "none", "--extrap_method", "linear"]
        + ["--extrap_jump_at", "auto", "--extrap_horizon", "auto", "--extrap_min_skill", "0.3"]
    )
    assert (args.extrap_jump_at, args.extrap_horizon, args.extrap_min_skill) == ("auto", "auto", 0.3)
    (args,) = TrlParser((ExtrapGRPOConfig,)).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--use_cpu", "true", "--report_to", "none", "--extrap_method", "relex"]
        + ["--extrap_jump_at", "40", "80", "--extrap_horizon", "60"]
    )
    assert (args.extrap_jump_at, args.extrap_horizon) == ([40, 80], 60)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"extrap_method": "next", "extrap_min_skill": 0.2}, "extrap_min_skill"),
        ({"extrap_method": "next", "extrap_horizon": "auto"}, "extrap_horizon=auto"),
        ({"extrap_method": "relex", "extrap_min_skill": 1.5}, "extrap_min_skill=1.5"),
        ({"extrap_method": "relex", "extrap_horizon": "soon"}, "extrap_horizon='soon'"),
        ({"extrap_method": "relex", "extrap_jump_at": ["auto", "40"]}, "extrap_jump_at"),
        ({"extrap_method": "relex", "extrap_time_axis": "epochs"}, "extrap_time_axis='epochs'"),
    ],
)
def test_bad_skill_settings_name_the_field(tmp_path, settings, field):
    with pytest.raises(ExtrapolationConfigError, match=field):
        ExtrapGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **settings)


def noise_reward(completions, **kwargs):
    """A reward with no signal: GRPO's update is then a random direction each step."""
    return [float(torch.rand(()).item()) for _ in completions]


def run_auto(tmp_path, reward, **settings):
    callback = ExtrapolationCallback()
    settings = {
        "extrap_method": "linear",
        "extrap_snapshot_every": 2,
        "extrap_jump_at": "auto",
        "extrap_horizon": "auto",
        "extrap_min_skill": 0.5,
        **settings,
    }
    trainer = make_trainer(
        tmp_path, [callback], max_steps=40, reward_funcs=reward, lr_scheduler_type="constant", **settings
    )
    trainer.train()
    logged = [row for row in trainer.state.log_history if "extrap/snr" in row]
    return callback, logged


def test_unpredictable_run_never_jumps_and_logs_its_skill(tmp_path):
    callback, logged = run_auto(tmp_path, noise_reward, learning_rate=5e-3)
    assert not any(j.applied for j in callback.jumps)
    assert logged and all("extrap/skill" in row for row in logged)  # every snapshot's backtest reached the logs
    assert max(row["extrap/skill"] for row in logged) < 0.5
    assert [r["step"] for r in callback.skill_history] == [2 * k for k in range(2, 21)]


def test_auto_jumps_land_a_fit_window_apart_at_a_verified_horizon(tmp_path):
    callback, logged = run_auto(tmp_path, noise_reward, learning_rate=5e-3, extrap_min_skill=-1e9)
    taken = [j for j in callback.jumps if j.applied]
    assert [j.step for j in taken] == [6, 12, 18, 24, 30, 36]  # every min_jump_gap() = 3 snapshots of 2 steps
    # each jump's horizon is the longest its own segment had backtested: 2 snapshots back from a 4-point segment
    assert all(j.horizon == 4 and j.target_step == j.step + 4 for j in taken)
    assert all(j.skill is not None for j in taken)


def test_a_refused_jump_says_why_by_default_only_when_asked_for_by_step(tmp_path, caplog):
    """A refused jump that extrap_jump_at named warns with the reason; a refused 'auto' jump is said at INFO."""
    gate = {"extrap_method": "linear", "extrap_snapshot_every": 2, "extrap_min_skill": 1.0}  # a bar no fit reaches

    def said(jump_at, **settings) -> tuple[ExtrapolationCallback, list[dict], list[tuple[int, str]]]:
        caplog.clear()
        callback = ExtrapolationCallback()
        trainer = make_trainer(
            tmp_path / str(jump_at), [callback], max_steps=8, extrap_jump_at=jump_at, **gate, **settings
        )
        with caplog.at_level(logging.INFO, logger="rlvr_extrap"):
            trainer.train()
        messages = [(r.levelno, r.getMessage()) for r in caplog.records if "jump at step" in r.getMessage()]
        return callback, trainer.state.log_history, messages

    callback, logged, messages = said([4], extrap_horizon=2)
    assert [level for level, _ in messages] == [logging.WARNING]
    assert "jump at step 4 not taken" in messages[0][1] and "extrap_min_skill=1.0" in messages[0][1]
    assert [(j.step, j.applied) for j in callback.jumps] == [(4, False)]
    assert any(row.get("extrap/jump_skipped") == 1.0 for row in logged)

    callback, logged, messages = said("auto", extrap_horizon="auto")
    assert messages and {level for level, _ in messages} == {logging.INFO}  # tried at steps 6 and 8
    assert callback.jumps == [] and not any("extrap/jump_skipped" in row for row in logged)
