"""The ``optimizer`` extrapolator (AdamW's direction continued) on trajectories with known answers, and in a run."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from grpo_utils import make_trainer

from rlvr_extrap import ExtrapolationCallback, get_extrapolator
from rlvr_extrap.extrapolators.optimizer import coasting_steps
from rlvr_extrap.linalg.lowrank import LowRank
from rlvr_extrap.runtime.dense import DenseModule, dense_velocities
from rlvr_extrap.runtime.lora import adam_direction, factor_velocities
from rlvr_extrap.skill.forecast import backtest_skill, forecast_errors, skill
from rlvr_extrap.trajectory.trajectory import DenseVelocity, Trajectory

SCALE = 2.0  # lora_alpha / r


@dataclass
class FakeLora:
    """What ``factor_velocities`` reads of a LoRA module: its two factors and its scale."""

    a: torch.nn.Parameter
    b: torch.nn.Parameter
    scale: float = SCALE

    def lora_parameters(self) -> list[torch.nn.Parameter]:
        return [self.a, self.b]


def adam_trajectory(steps: int, every: int, zero_gradient_after: int | None = None, weight_decay: float = 0.0):
    """Two LoRA modules trained by AdamW on a linear loss ``<G_A, A> + <G_B, B>`` (B starts at 0, as in LoRA).

    With a constant gradient, Adam's bias-corrected moments are exactly ``g`` and ``g^2``: every step moves each
    factor by the same ``-lr * g / (|g| + eps)``, so the merged delta ``s B A`` is a known quadratic in t, which a
    continuation of the optimizer's direction predicts exactly. After ``zero_gradient_after`` the gradient is 0
    and only the fading momentum moves the factors.
    """
    gen = torch.Generator().manual_seed(0)
    modules = {
        f"m{k}": FakeLora(torch.nn.Parameter(torch.randn(3, 7, generator=gen)), torch.nn.Parameter(torch.zeros(5, 3)))
        for k in range(2)
    }
    grads = {p: torch.randn(p.shape, generator=gen) for m in modules.values() for p in m.lora_parameters()}
    params = list(grads)
    optimizer = torch.optim.AdamW(params, lr=0.01, weight_decay=weight_decay)

    def deltas() -> dict[str, LowRank]:
        return {n: LowRank(m.b.detach().clone() * m.scale, m.a.detach().clone()) for n, m in modules.items()}

    trajectory = Trajectory()
    trajectory.append(0, deltas())  # before any step: no optimizer state, no velocity
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        for p in params:
            p.grad = torch.zeros_like(p) if zero_gradient_after and step > zero_gradient_after else grads[p].clone()
        optimizer.step()
        if step % every == 0:
            now = deltas()
            trajectory.append(step, now, factor_velocities(modules, optimizer, now, torch.float32))
    return trajectory, optimizer, modules


def test_adam_direction_is_the_step_adamw_takes():
    """A step moves ``p`` by ``-lr * u`` with ``u`` computed from the moments after it (the ones the step used)."""
    torch.manual_seed(1)
    p = torch.nn.Parameter(torch.randn(4, 6))
    optimizer = torch.optim.AdamW([p], lr=0.03, weight_decay=0.1, betas=(0.8, 0.99))
    for _ in range(6):
        before = p.detach().clone()
        p.grad = torch.randn_like(p)
        optimizer.step()
        u = adam_direction(before, optimizer.state[p], optimizer.param_groups[0])
        torch.testing.assert_close(p.detach() - before, -0.03 * u, rtol=1e-5, atol=1e-7)
    assert adam_direction(before, {}, optimizer.param_groups[0]) is None  # no step taken yet


def test_constant_gradient_is_predicted_exactly_and_linear_fits_are_not():
    trajectory, _, _ = adam_trajectory(steps=40, every=5)
    assert trajectory.velocities[0] is None and all(v is not None for v in trajectory.velocities[1:])
    exact = get_extrapolator("optimizer", coast=False)
    assert exact.can_backtest
    for origin, target in ((1, 2), (2, 8), (4, 8)):
        error, persistence = forecast_errors(trajectory, exact, origin, target)
        assert skill(error, persistence) > 1 - 1e-6, (origin, target)
    # the merged delta is quadratic in t (B grows from 0 while A moves): a local line misses the curvature
    error, persistence = forecast_errors(trajectory, get_extrapolator("linear", fit_window=2), 2, 8)
    assert skill(error, persistence) < 0.99
    scores = backtest_skill(trajectory, exact)
    assert scores and min(scores.values()) > 1 - 1e-6
    # coasting assumes the gradient stops: it falls short of a gradient that keeps pushing
    error, persistence = forecast_errors(trajectory, get_extrapolator("optimizer"), 2, 8)
    assert skill(error, persistence) < 0.9


def test_coasting_follows_the_fading_momentum_when_the_gradient_stops():
    trajectory, _, _ = adam_trajectory(steps=100, every=5, zero_gradient_after=60)
    origin, target = trajectory.steps.index(60), trajectory.steps.index(90)
    coast = forecast_errors(trajectory, get_extrapolator("optimizer"), origin, target)
    constant = forecast_errors(trajectory, get_extrapolator("optimizer", coast=False), origin, target)
    assert skill(*coast) > 0.98  # beta2 = 0.999 keeps v nearly still: the momentum alone sets the distance
    assert skill(*constant) < 0  # 30 more steps of the full update overshoot the ~9.6 the momentum adds
    assert coasting_steps(30, 0.9) == pytest.approx(sum(0.9**k for k in range(1, 31)))


def test_weight_decay_is_part_of_the_direction():
    trajectory, _, _ = adam_trajectory(steps=20, every=5, weight_decay=0.5)
    error, persistence = forecast_errors(trajectory, get_extrapolator("optimizer", coast=False), 2, 3)
    assert skill(error, persistence) > 0.999  # decay changes p, hence the direction, slowly: near exact at 5 steps


def test_a_dense_velocity_moves_the_weight_linearly_in_float32():
    d = torch.randn(5, 7).to(torch.bfloat16)  # as a bfloat16 snapshot holds it
    moved = DenseVelocity(d, beta1=0.9).move(2.5)
    assert moved.dtype == torch.float32
    torch.testing.assert_close(moved, 2.5 * d.float(), rtol=0, atol=0)


def test_constant_gradient_on_dense_weights_is_predicted_exactly():
    """AdamW with a constant gradient moves a dense weight by the same ``-lr g / (|g| + eps)`` every step: a line in
    t, which the dense velocity continues exactly (through the dense backtest's inner products)."""
    gen = torch.Generator().manual_seed(0)
    modules = {f"m{k}": DenseModule(f"m{k}", torch.nn.Parameter(torch.randn(5, 7, generator=gen))) for k in range(2)}
    grads = {name: torch.randn(5, 7, generator=gen) for name in modules}
    optimizer = torch.optim.AdamW([m.weight for m in modules.values()], lr=0.01, weight_decay=0.0)
    origin = {name: m.weight.detach().clone() for name, m in modules.items()}
    assert dense_velocities(modules, optimizer, torch.float32) is None  # no step taken yet
    trajectory = Trajectory()
    trajectory.append(0, {name: torch.zeros(5, 7) for name in modules})
    for step in range(1, 21):
        for name, module in modules.items():
            module.weight.grad = grads[name].clone()
        optimizer.step()
        if step % 5 == 0:
            deltas = {name: m.weight.detach() - origin[name] for name, m in modules.items()}
            trajectory.append(step, deltas, dense_velocities(modules, optimizer, torch.float32))
    exact = get_extrapolator("optimizer", coast=False)
    for start, target in ((1, 2), (1, 4), (2, 4)):
        error, persistence = forecast_errors(trajectory, exact, start, target)
        assert skill(error, persistence) > 1 - 1e-6, (start, target)
    error, persistence = forecast_errors(trajectory, get_extrapolator("optimizer"), 1, 4)
    assert skill(error, persistence) < 0.9  # coasting assumes the gradient stops: it falls short


def test_a_point_without_optimizer_state_cannot_be_extrapolated():
    trajectory, _, _ = adam_trajectory(steps=10, every=5)
    with pytest.raises(ValueError, match="AdamW's state at the last point"):
        get_extrapolator("optimizer").fit(trajectory.prefix(1))


def test_the_callback_hands_the_worker_the_optimizer_direction_and_jumps(tmp_path):
    callback = ExtrapolationCallback()
    trainer = make_trainer(
        tmp_path,
        [callback],
        max_steps=12,
        lr_scheduler_type="constant",
        extrap_method="optimizer",
        extrap_snapshot_every=2,
        extrap_jump_at=[8],
        extrap_horizon=4,
    )
    trainer.train()
    applied = [j for j in callback.jumps if j.applied]
    assert [j.step for j in applied] == [8] and applied[0].figures.update_norm > 0
    # the fit needs the velocity at the jump step (it refuses without), and the backtest ran on the predictions
    assert len(callback.skill_history) >= 3 and all(r["skill"] for r in callback.skill_history)


@pytest.mark.parametrize("kind", ["DEEPSPEED", "FSDP"])
def test_sharded_runs_refuse_the_optimizer_method(monkeypatch, kind):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from rlvr_extrap import ExtrapolationArguments, ExtrapolationConfigError
    from rlvr_extrap.runtime import distributed

    monkeypatch.setattr(distributed, "PartialState", lambda: SimpleNamespace(distributed_type=DistributedType[kind]))
    with pytest.raises(ExtrapolationConfigError, match="extrap_method='optimizer' reads AdamW's state.*sharded"):
        distributed.check_distributed_support(ExtrapolationArguments(extrap_method="optimizer", extrap_guard=False))
    distributed.check_distributed_support(ExtrapolationArguments(extrap_method="linear", extrap_guard=False))
