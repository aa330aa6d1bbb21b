"""Linear extrapolation of the last segment: ``W_a + alpha * (W_b - W_a)`` (arXiv 2601.04537)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rlvr_extrap.extrapolators.base import Extrapolator, ExtrapolatorConfig

__all__ = ["LinearConfig", "LinearExtrapolator", "linear_weights"]


def linear_weights(steps: Sequence[float], target: float, start: int = 0) -> list[float]:
    """Weights over the points so that their combination is ``W_a + alpha (W_b - W_a)``.

    ``a`` is point ``start``, ``b`` the last point, ``alpha = (target - t_a) / (t_b - t_a)``.
    """
    t_a, t_b = steps[start], steps[-1]
    if t_b <= t_a:
        raise ValueError(f"linear extrapolation needs two distinct steps, got {t_a} and {t_b}")
    alpha = (target - t_a) / (t_b - t_a)
    weights = [0.0] * len(steps)
    weights[start] += 1.0 - alpha
    weights[-1] += alpha
    return weights


@dataclass
class LinearConfig(ExtrapolatorConfig):
    """Segment from the first point in the window (default: the segment origin) to the last."""


class LinearExtrapolator(Extrapolator):
    config_class = LinearConfig
    can_backtest = True  # the prediction combines the points: its error is a quadratic form in their Gram matrix
    can_stream = True

    def _fit_module(self, name: str) -> dict[str, float]:
        return {}

    def combination(self, name: str, step: int) -> list[float]:
        assert self.trajectory is not None
        trajectory = self.trajectory
        return linear_weights(trajectory.times(), trajectory.time(step), self.window_start())
