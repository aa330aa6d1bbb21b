"""RELEX: rank-1 (or rank-r) subspace of the time stack, coefficients fitted by a line (arXiv 2605.21468)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlvr_extrap.extrapolators.base import Extrapolator, ExtrapolatorConfig

__all__ = ["RelexConfig", "RelexExtrapolator", "RelexFit", "fit_relex"]


@dataclass(frozen=True)
class RelexFit:
    """Top-r right singular directions of the stack ``M = [D_1; ...; D_T]`` and a line per coefficient.

    Direction ``v_j = M^T u_j / sigma_j`` and coefficients ``c_j(t) = <D_t, v_j> = sigma_j u_j[t]``, all
    from the Gram matrix ``G = M M^T = U diag(sigma^2) U^T``. A prediction is a combination of the
    observed deltas: ``sum_j c_j_hat v_j = sum_t w_t D_t``.
    """

    u: torch.Tensor  # (T, r) left singular vectors of M
    sigma: torch.Tensor  # (r,)
    slope: torch.Tensor  # (r,)
    intercept: torch.Tensor  # (r,)
    energy: float  # sigma_1^2 / sum sigma^2: how rank-1 the time stack is
    r2: float  # in-sample R^2 of the line through c_1 over the window

    def coefficients(self) -> torch.Tensor:
        """Observed coefficients ``c[t, j]`` (T x r)."""
        return self.u * self.sigma

    def weights(self, step: float) -> torch.Tensor:
        """``w`` such that the predicted delta at ``step`` is ``sum_t w[t] D_t``."""
        c_hat = self.slope * step + self.intercept
        safe = self.sigma > 0
        scale = torch.where(safe, c_hat / torch.where(safe, self.sigma, 1.0), 0.0)
        return self.u @ scale


def fit_relex(gram: torch.Tensor, steps: Sequence[float], rank: int = 1, start: int = 0) -> RelexFit:
    """Fit RELEX from the Gram matrix of a module's deltas; the line uses points ``start..T-1``.

    ``steps`` are the points' time coordinates (step numbers, or any other clock such as the cumulative
    learning rate); predictions take the same coordinate.
    """
    evals, evecs = torch.linalg.eigh(gram.to(torch.float64))
    evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
    total = float(evals.sum())
    rank = min(rank, len(steps))
    sigma = evals[:rank].sqrt()
    tiny = sigma <= 1e-12 * max(float(sigma[0]), 1e-300)
    sigma = torch.where(tiny, 0.0, sigma)
    u = evecs[:, :rank]
    coef = u * sigma  # (T, r)

    t = torch.tensor(steps, dtype=torch.float64)[start:]
    design = torch.stack([t, torch.ones_like(t)], 1)
    solution = torch.linalg.lstsq(design, coef[start:]).solution  # (2, r)
    slope, intercept = solution[0], solution[1]

    resid = coef[start:, 0] - (slope[0] * t + intercept[0])
    ss_tot = float(((coef[start:, 0] - coef[start:, 0].mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    energy = float(evals[0]) / total if total > 0 else 1.0
    return RelexFit(u=u, sigma=sigma, slope=slope, intercept=intercept, energy=energy, r2=r2)


@dataclass
class RelexConfig(ExtrapolatorConfig):
    rank: int = 1
    """Number of singular directions of the time stack to extrapolate (the paper: 1 is enough)."""

    through_origin: bool = False
    """Fit the coefficient line through the segment's origin too (the base weights, or the post-jump point).
    False is the paper's fit: only the observed snapshots (the origin is used only while there is a single one)."""

    keep_residual: bool = False
    """Continue from the current weights, ``D_now + (c_hat(t*) - c_hat(t_now)) v``, instead of the paper's
    ``W0 + c_hat(t*) v``, which drops the part of ``D_now`` off the fitted direction."""

    def validate(self) -> None:
        super().validate()
        if self.rank < 1:
            raise ValueError(f"extrap_rank={self.rank}: RELEX needs rank >= 1 (the paper uses 1)")


class RelexExtrapolator(Extrapolator):
    config_class = RelexConfig
    can_backtest = True  # the prediction combines the points: its error is a quadratic form in their Gram matrix
    can_stream = True

    def __init__(self, config: RelexConfig | None = None) -> None:
        super().__init__(config)
        self.fits: dict[str, RelexFit] = {}

    def _fit_module(self, name: str) -> dict[str, float]:
        assert self.trajectory is not None
        trajectory = self.trajectory
        start = self.window_start()
        if not self.config.through_origin and start == 0 and len(trajectory) >= 3:
            start = 1  # the paper regresses on the observed checkpoints only
        fit = fit_relex(trajectory.gram(name), trajectory.times(), self.config.rank, start)
        self.fits[name] = fit
        return {"energy": fit.energy, "r2": fit.r2}

    def combination(self, name: str, step: int) -> list[float]:
        assert self.trajectory is not None
        fit, trajectory = self.fits[name], self.trajectory
        weights = fit.weights(trajectory.time(step))
        if self.config.keep_residual:
            weights = weights - fit.weights(trajectory.time(trajectory.steps[-1]))
            weights[-1] += 1.0
        return weights.tolist()
