"""Forecast skill: is this trajectory predictable, measured on the points it already holds.

For a prediction ``P`` of the delta at a later point ``T`` made from the points up to ``H``:
``error = sum over modules ||P - D_T||^2`` and ``persistence = sum over modules ||D_H - D_T||^2`` (the error
of not moving), and ``skill = 1 - error / persistence``: 1 is a perfect forecast, 0 is as good as not moving,
below 0 is worse. A *backtest* scores the extrapolator on the trajectory's own past: fit on the points up to
``t - h``, predict ``t``, for the latest targets ``t`` and every horizon ``h`` the history allows, pooling the
errors of the targets per horizon. That is what a run can know before it jumps.

For methods whose prediction is a combination of the observed points (relex, linear) every error is a
quadratic form in the Gram matrix the trajectory keeps anyway, so a backtest costs O(T^3) per module and no
pass over the weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch

from rlvr_extrap.extrapolators import Extrapolator
from rlvr_extrap.linalg.lowrank import Delta, inner
from rlvr_extrap.trajectory.trajectory import Clock, Trajectory

__all__ = [
    "SkillRecord",
    "backtest_errors",
    "backtest_skill",
    "schedule_clock",
    "drift_to_noise",
    "forecast_errors",
    "gram_distance",
    "lr_clock",
    "prediction_error",
    "skill",
]


def skill(error: float, persistence: float) -> float:
    """``1 - error / persistence``; NaN when nothing moved between the two points."""
    return 1.0 - error / persistence if persistence > 0 else math.nan


def forecast_errors(
    trajectory: Trajectory, extrapolator: Extrapolator, origin: int, target: int
) -> tuple[float, float]:
    """``(error, persistence)`` of a forecast of point ``target`` fitted on points ``0..origin`` (indices).

    Fits a fresh copy of ``extrapolator`` (same config), so the caller's fitted state is left alone.
    """
    if not 0 < origin < target < len(trajectory):
        raise ValueError(f"need 0 < origin < target < {len(trajectory)}, got origin={origin}, target={target}")
    return _errors(trajectory, _fitted(trajectory, extrapolator, origin), origin, target)


def _fitted(trajectory: Trajectory, extrapolator: Extrapolator, origin: int) -> Extrapolator:
    """A fresh copy of ``extrapolator`` fitted on points ``0..origin``."""
    model = type(extrapolator)(extrapolator.config)
    model.fit(trajectory.prefix(origin + 1))
    return model


def _errors(trajectory: Trajectory, model: Extrapolator, origin: int, target: int) -> tuple[float, float]:
    """``(error, persistence)`` of ``model`` (fitted on points ``0..origin``) forecasting point ``target``."""
    step = trajectory.steps[target]
    error = persistence = 0.0
    for name in trajectory.modules:
        gram = trajectory.gram(name)
        persist = torch.zeros(len(trajectory), dtype=torch.float64)
        persist[origin], persist[target] = 1.0, -1.0
        persistence += _quadratic(gram, persist)
        weights = model.combination(name, step)
        if weights is not None:
            x = torch.zeros(len(trajectory), dtype=torch.float64)
            x[: origin + 1] = torch.tensor(weights, dtype=torch.float64)
            x[target] -= 1.0
            error += _quadratic(gram, x)
        else:  # a prediction that is not a combination: inner products on the factors
            error += prediction_error(trajectory, name, model.predict_module(name, step), target)
    return error, persistence


def prediction_error(trajectory: Trajectory, name: str, predicted: Delta, target: int) -> float:
    """``||predicted - D_target||^2`` of module ``name``, from inner products on the factors."""
    actual, gram = trajectory.deltas[name][target], trajectory.gram(name)
    return max(inner(predicted, predicted) - 2 * inner(predicted, actual) + float(gram[target, target]), 0.0)


def backtest_errors(
    trajectory: Trajectory, extrapolator: Extrapolator, origins: int = 3, min_points: int = 2
) -> dict[int, tuple[float, float]]:
    """Pooled ``(error, persistence)`` per horizon (in steps), from the trajectory's own past.

    Targets are the latest ``origins`` points; for each, every earlier point with at least ``min_points``
    points up to it is a forecast origin.
    """
    pooled: dict[int, tuple[float, float]] = {}
    n = len(trajectory)
    fits: dict[int, Extrapolator] = {}  # one fit per origin, shared by its targets
    for target in range(max(min_points, n - origins), n):
        for origin in range(min_points - 1, target):
            if extrapolator.needs_optimizer_state and trajectory.velocities[origin] is None:
                continue  # no optimizer state at that point (e.g. restored on resume): nothing to continue
            if origin not in fits:
                fits[origin] = _fitted(trajectory, extrapolator, origin)
            horizon = trajectory.steps[target] - trajectory.steps[origin]
            error, persistence = _errors(trajectory, fits[origin], origin, target)
            before = pooled.get(horizon, (0.0, 0.0))
            pooled[horizon] = (before[0] + error, before[1] + persistence)
    return dict(sorted(pooled.items()))


def backtest_skill(
    trajectory: Trajectory, extrapolator: Extrapolator, origins: int = 3, min_points: int = 2
) -> dict[int, float]:
    """Skill per horizon (in steps) from ``backtest_errors``; horizons with no movement to score are left out."""
    scores = {h: skill(e, p) for h, (e, p) in backtest_errors(trajectory, extrapolator, origins, min_points).items()}
    return {h: s for h, s in scores.items() if not math.isnan(s)}


def drift_to_noise(trajectory: Trajectory, window: int | None = None) -> float:
    """``||mean increment||^2 / mean ||increment - mean increment||^2`` over the last ``window`` points, all modules.

    Increments are between consecutive points (assumed evenly spaced). Large: a steady drift that
    extrapolation can follow; small: step-to-step noise that it cannot. NaN with fewer than 3 points.
    """
    n = len(trajectory)
    start = 0 if window is None else max(0, n - window)
    count = n - 1 - start
    if count < 2:
        return math.nan
    drift = spread = 0.0
    for name in trajectory.modules:
        gram = trajectory.gram(name)
        mean = torch.zeros(n, dtype=torch.float64)
        mean[start], mean[-1] = -1.0 / count, 1.0 / count
        mean_sq = _quadratic(gram, mean)
        squares = sum(gram_distance(gram, k, k - 1) for k in range(start + 1, n)) / count
        drift += mean_sq
        spread += max(squares - mean_sq, 0.0)
    return drift / spread if spread > 0 else math.inf


def lr_clock(lrs: Sequence[float]) -> Clock:
    """``tau(t) = sum(lrs[:t])``: time measured in learning rate; ``lrs[s]`` is the rate of optimizer step ``s + 1``.

    Steps past the end of ``lrs`` continue at its last rate.
    """
    if not lrs:
        raise ValueError("lr_clock needs at least one learning rate")
    cumulative = [0.0, *accumulate(float(lr) for lr in lrs)]
    last = float(lrs[-1])

    def clock(step: int) -> float:
        if step < len(cumulative):
            return cumulative[max(step, 0)]
        return cumulative[-1] + last * (step - len(cumulative) + 1)

    return clock


def schedule_clock(scheduler: object) -> Clock | None:
    """Cumulative learning rate of a ``LambdaLR`` schedule (transformers' schedules are): its future is known.

    Returns None for any other scheduler (the caller falls back to steps). The scale does not matter: line
    fits are unchanged by an affine change of the time axis, so the multiplier alone is summed.
    """
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps the real one
    if not isinstance(inner, torch.optim.lr_scheduler.LambdaLR):
        return None
    multiplier = inner.lr_lambdas[0]
    cumulative = [0.0]

    def clock(step: int) -> float:
        while len(cumulative) <= step:
            cumulative.append(cumulative[-1] + float(multiplier(len(cumulative) - 1)))
        return cumulative[max(step, 0)]

    return clock


@dataclass(frozen=True)
class SkillRecord:
    """The backtest at one snapshot: skill per horizon (steps) and the drift-to-noise ratio of the movement."""

    step: int
    skill: dict[int, float]
    snr: float

    def at(self, horizon: int) -> float | None:
        return self.skill.get(horizon)

    def longest_horizon(self, bar: float) -> int | None:
        """The longest backtested horizon whose skill is at least ``bar``."""
        passing = [h for h, s in self.skill.items() if s >= bar]
        return max(passing) if passing else None

    def headline(self, horizon: int | None) -> float | None:
        """Skill at the longest backtested horizon up to ``horizon`` (any, when None)."""
        verified = [h for h in self.skill if horizon is None or h <= horizon]
        return self.skill[max(verified)] if verified else None

    def to_metrics(self, horizon: int | None) -> dict[str, float | None]:
        metrics = {"extrap/skill": self.headline(horizon), "extrap/snr": self.snr}
        return metrics | {f"extrap/skill_h{h}": s for h, s in self.skill.items()}

    def to_dict(self) -> dict[str, object]:
        return {"step": self.step, "skill": {str(h): s for h, s in self.skill.items()}, "snr": self.snr}


def measure_skill(trajectory: Trajectory, extrapolator: Extrapolator, origins: int = 3) -> SkillRecord | None:
    """The backtest at the trajectory's last point; None while too short (3 points) or for costly methods."""
    if len(trajectory) < 3 or not extrapolator.can_backtest:
        return None
    window = extrapolator.config.fit_window
    return SkillRecord(
        trajectory.steps[-1], backtest_skill(trajectory, extrapolator, origins), drift_to_noise(trajectory, window)
    )


def gram_distance(gram: torch.Tensor, i: int, j: int) -> float:
    """``||D_i - D_j||^2`` from the Gram matrix of the points (clamped at 0 against round-off)."""
    return max(float(gram[i, i] - 2 * gram[i, j] + gram[j, j]), 0.0)


def _quadratic(gram: torch.Tensor, x: torch.Tensor) -> float:
    """``||sum_t x_t D_t||^2`` from the Gram matrix (clamped at 0 against round-off)."""
    return max(float(x @ gram @ x), 0.0)
