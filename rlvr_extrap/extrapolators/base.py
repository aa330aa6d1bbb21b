"""The one interface every extrapolator implements: fit a trajectory, predict a step."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from rlvr_extrap.linalg.lowrank import Delta
from rlvr_extrap.trajectory.trajectory import Trajectory

__all__ = ["Extrapolator", "ExtrapolatorConfig"]


@dataclass
class ExtrapolatorConfig:
    """Settings shared by every method."""

    fit_window: int | None = None
    """Number of most recent trajectory points the fit uses (the segment origin counts); None: all."""

    def validate(self) -> None:
        if self.fit_window is not None and self.fit_window < 2:
            raise ValueError(
                f"extrap_fit_window={self.fit_window}: a fit needs at least 2 points; use 2 or more, or None for all"
            )


class Extrapolator(ABC):
    """Fits a per-module trajectory of weight deltas and predicts the delta at a later step.

    ``fit`` returns per-module diagnostics (plain floats); ``predict_module`` returns the predicted
    global delta ``D_hat`` of one module, in the same representation as the trajectory's deltas
    (factored for LoRA, dense otherwise), without materialising factored ones: a combination of the
    observed points is a lazy ``Combination`` that references them. What a method can do is declared once, on
    its class: ``can_backtest``, ``can_stream``, ``needs_optimizer_state``, ``needs_labels``.
    """

    config_class: ClassVar[type[ExtrapolatorConfig]] = ExtrapolatorConfig
    can_backtest: ClassVar[bool] = False
    """Whether a forecast-skill backtest is cheap (inner products on factors, no refit of a network): needed by
    ``extrap_min_skill``, ``extrap_horizon=auto`` and ``extrap_jump_at=auto``."""
    can_stream: ClassVar[bool] = False
    """Whether each module is fitted on its own, so the offline tools can stream checkpoints module by module."""
    needs_optimizer_state: ClassVar[bool] = False
    """Whether the fit reads the optimizer's state of the weights at its last point (``Trajectory.velocities``)."""
    needs_labels: ClassVar[bool] = False
    """Whether the fit reads a score per snapshot (``Trajectory.labels``: accuracy, mean reward)."""

    def __init__(self, config: ExtrapolatorConfig | None = None) -> None:
        self.config = config or self.config_class()
        self.config.validate()
        self.trajectory: Trajectory | None = None

    def fit(self, trajectory: Trajectory) -> dict[str, dict[str, float]]:
        if len(trajectory) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 trajectory points, got {len(trajectory)}")
        self.trajectory = trajectory
        return {name: self._fit_module(name) for name in trajectory.modules}

    def predict(self, step: int) -> dict[str, Delta]:
        if self.trajectory is None:
            raise RuntimeError("call fit() before predict()")
        return {name: self.predict_module(name, step) for name in self.trajectory.modules}

    def window_start(self) -> int:
        """Index of the first trajectory point inside the fit window."""
        assert self.trajectory is not None
        n = len(self.trajectory)
        return 0 if self.config.fit_window is None else max(0, n - self.config.fit_window)

    @abstractmethod
    def _fit_module(self, name: str) -> dict[str, float]:
        """Fit one module's trajectory; return its diagnostics."""

    def combination(self, name: str, step: int) -> list[float] | None:
        """Weights ``w`` with prediction ``sum_t w[t] D_t``, for methods whose prediction is one; else None."""
        return None

    def predict_module(self, name: str, step: int) -> Delta:
        """The predicted global delta of module ``name`` at ``step``."""
        assert self.trajectory is not None
        weights = self.combination(name, step)
        if weights is None:
            raise NotImplementedError(f"{type(self).__name__} must implement predict_module or combination")
        return self.trajectory.combine(name, weights)
