"""The optimizer's own denoised direction: AdamW's next update of the weights, continued (issue 12, item 4).

AdamW's update ``lr * m_hat / (sqrt(v_hat) + eps)`` is a running average of the gradients, scaled per entry:
the optimizer's own estimate of where the weights are heading. Continuing it for ``h`` steps moves each factor
linearly, so in the merged space the prediction is exact and low-rank:
``D_hat = D_now + s (B + h dB)(A + h dA) - s B A`` with ``dB = -lr u_B``, ``dA = -lr u_A``. A dense weight (a
full-parameter run) moves linearly itself: ``D_hat = D_now + h (-lr u)``. It needs the optimizer state at the last
point, which the callback hands the worker with each snapshot (``Trajectory.velocities``). ``coast=True`` lets the
momentum fade as it would with no new gradient, ``sum_{k=1..h} beta1^k`` steps in all (at most
``beta1 / (1 - beta1)``, 9 at 0.9).
"""

from __future__ import annotations

from dataclasses import dataclass

from rlvr_extrap.extrapolators.base import Extrapolator, ExtrapolatorConfig
from rlvr_extrap.linalg.lowrank import Combination, Delta, LowRank, lincomb
from rlvr_extrap.trajectory.trajectory import Trajectory

__all__ = ["OptimizerConfig", "OptimizerExtrapolator", "coasting_steps"]


def coasting_steps(steps: float, beta1: float) -> float:
    """``sum_{k=1..steps} beta1^k``: how many of the current updates the fading momentum still adds."""
    return beta1 * (1 - beta1**steps) / (1 - beta1)


@dataclass
class OptimizerConfig(ExtrapolatorConfig):
    coast: bool = True
    """Let the momentum fade (``beta1^k`` per future step) instead of continuing the current update unchanged."""


class OptimizerExtrapolator(Extrapolator):
    config_class = OptimizerConfig
    can_backtest = True  # a prediction's error is a few inner products of its factors with the points
    can_stream = False  # saved checkpoints hold no optimizer state to continue
    needs_optimizer_state = True  # the callback reads the optimizer state at each snapshot

    def fit(self, trajectory: Trajectory) -> dict[str, dict[str, float]]:
        if len(trajectory) and trajectory.velocities[-1] is None:
            raise ValueError(
                f"extrap_method='optimizer' needs AdamW's state at the last point (step {trajectory.steps[-1]}), "
                "and there is none: the first snapshot precedes any optimizer step, a resumed run restores points "
                "without it, and only an AdamW-style optimizer (exp_avg, exp_avg_sq) has one"
            )
        return super().fit(trajectory)

    def _fit_module(self, name: str) -> dict[str, float]:
        return {}

    def steps_ahead(self, step: int) -> float:
        """``step`` in optimizer steps at the last point's rate (on an lr clock: the cumulative lr ratio)."""
        assert self.trajectory is not None
        t = self.trajectory
        now = t.steps[-1]
        return (t.time(step) - t.time(now)) / (t.time(now + 1) - t.time(now))

    def predict_module(self, name: str, step: int) -> Delta:
        assert self.trajectory is not None
        velocity = self.trajectory.velocities[-1][name]
        steps = self.steps_ahead(step)
        if self.config.coast:
            steps = coasting_steps(steps, velocity.beta1)
        now, move = self.trajectory.deltas[name][-1], velocity.move(steps)
        return Combination.of(now, move) if isinstance(now, LowRank) else lincomb([1.0, 1.0], [now, move])
