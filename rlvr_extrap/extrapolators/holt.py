"""Holt's linear trend: exponentially smoothed level and slope of the trajectory, continued to the target."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .base import Extrapolator, ExtrapolatorConfig

__all__ = ["HoltConfig", "HoltExtrapolator", "holt_weights"]


def holt_weights(times: Sequence[float], target: float, level: float, trend: float, start: int = 0) -> list[float]:
    """Weights over the points whose combination is Holt's forecast at ``target``.

    Time-aware Holt on points ``start..T-1``: ``l_k = a y_k + (1-a)(l_{k-1} + b_{k-1} dt_k)``,
    ``b_k = c (l_k - l_{k-1}) / dt_k + (1-c) b_{k-1}``, started at ``l = y_start`` and the first slope; the
    forecast is ``l_T + b_T (target - t_T)``. Level and slope are linear in the points, so they are run on
    unit vectors (one per point) and the forecast is a combination of the observed deltas.
    """
    n = len(times)
    if n - start < 2:
        raise ValueError(f"holt needs at least 2 points in the fit window, got {n - start}")
    eye = torch.eye(n, dtype=torch.float64)
    lvl = eye[start]
    slope = (eye[start + 1] - eye[start]) / (times[start + 1] - times[start])
    for k in range(start + 1, n):
        dt = times[k] - times[k - 1]
        new_lvl = level * eye[k] + (1 - level) * (lvl + slope * dt)
        slope = trend * (new_lvl - lvl) / dt + (1 - trend) * slope
        lvl = new_lvl
    return (lvl + slope * (target - times[-1])).tolist()


@dataclass
class HoltConfig(ExtrapolatorConfig):
    level_smoothing: float = 0.5
    """Weight of the newest point in the level (1: the level is the last point)."""
    trend_smoothing: float = 0.2
    """Weight of the newest level change in the slope (small: a slope averaged over a long stretch)."""

    def validate(self) -> None:
        super().validate()
        for name in ("level_smoothing", "trend_smoothing"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"extrap_{name}={value}: a smoothing weight lies in (0, 1]; e.g. 0.5 or 0.2")


class HoltExtrapolator(Extrapolator):
    """Holt's linear trend per module: denoises the slope by exponential smoothing instead of a line fit."""

    config_class = HoltConfig

    def _fit_module(self, name: str) -> dict[str, float]:
        return {}

    def combination(self, name: str, step: int) -> list[float]:
        assert self.trajectory is not None
        cfg, trajectory = self.config, self.trajectory
        return holt_weights(
            trajectory.times(), trajectory.time(step), cfg.level_smoothing, cfg.trend_smoothing, self.window_start()
        )
