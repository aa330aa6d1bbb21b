"""Per-module diagnostics of a weight trajectory (is it rank-1 over time, is the line a good fit) and their plots.

Everything is computed from a ``Trajectory``'s Gram matrix through ``fit_relex``, so it costs O(T^3) per
module whatever the module's size, and makes no assumption about where the trajectory came from (saved
checkpoints or the live callback).

- ``energy``: ``sigma_1^2 / sum sigma^2`` of the time stack ``[D_1; ...; D_T]``.
- ``r2``: in-sample R^2 of the line through the rank-1 coefficient ``c_t = <D_t, v>`` over the fit window.
- ``r2_heldout``: the direction and the line are fitted without the last ``holdout`` points, whose
  coefficients (projections on that direction) the line then predicts:
  ``1 - mean squared error on the held-out points / variance of the coefficient over the window``, i.e.
  the in-sample R^2's formula scored out of sample. None when fewer than 2 points would remain to fit.
- ``update_norm``: Frobenius norm of the update a jump to ``target_step`` applies (default: the RELEX line's
  ``D_hat - D_last``); ``delta_norm``: Frobenius norm of the last observed delta ``D_last``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib
import torch

from rlvr_extrap.extrapolators import fit_relex
from rlvr_extrap.linalg.lowrank import Delta, frobenius_norm
from rlvr_extrap.skill.forecast import SkillRecord
from rlvr_extrap.trajectory.trajectory import Trajectory
from rlvr_extrap.utils.figures import save_figure
from rlvr_extrap.utils.files import write_json

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = [
    "ModuleDiagnostics",
    "combination_update_norm",
    "module_diagnostics",
    "plot_coefficients",
    "plot_layers",
    "plot_skill",
    "write_json",
]


@dataclass(frozen=True)
class ModuleDiagnostics:
    """Diagnostics of one module, with the series behind them (for plots and JSON)."""

    name: str
    steps: list[int]
    coefficients: list[float]  # rank-1 coefficient c_t, signed so that the last one is >= 0
    window_start: int  # index of the first point the line was fitted on
    slope: float
    intercept: float
    target_step: int
    energy: float
    r2: float
    r2_heldout: float | None
    update_norm: float
    delta_norm: float

    @property
    def predicted_coefficient(self) -> float:
        return self.slope * self.target_step + self.intercept

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def module_diagnostics(
    trajectory: Trajectory,
    name: str,
    target_step: int,
    *,
    fit_window: int | None = None,
    holdout: int = 2,
    update: Delta | None = None,
    update_norm: float | None = None,
) -> ModuleDiagnostics:
    """Diagnostics of module ``name``; the jump's ``update`` (or its norm) if known, else the RELEX line's."""
    gram, steps = trajectory.gram(name), trajectory.steps
    n = len(steps)
    start = 0 if fit_window is None else max(0, n - fit_window)
    fit = fit_relex(gram, steps, start=start)
    coef = fit.coefficients()[:, 0]
    sign = -1.0 if coef[-1] < 0 else 1.0
    if update_norm is None:
        update_norm = (
            frobenius_norm(update)
            if update is not None
            else combination_update_norm(gram, fit.weights(target_step).tolist())
        )
    return ModuleDiagnostics(
        name=name,
        steps=list(steps),
        coefficients=(sign * coef).tolist(),
        window_start=start,
        slope=sign * float(fit.slope[0]),
        intercept=sign * float(fit.intercept[0]),
        target_step=target_step,
        energy=fit.energy,
        r2=fit.r2,
        r2_heldout=_heldout_r2(gram, steps, start, holdout),
        update_norm=update_norm,
        delta_norm=max(float(gram[-1, -1]), 0.0) ** 0.5,
    )


def combination_update_norm(gram: torch.Tensor, weights: list[float], alpha: float = 1.0) -> float:
    """``||alpha (sum_t w_t D_t - D_last)||`` from the Gram matrix of the points ``D_t``."""
    x = torch.tensor(weights, dtype=torch.float64)
    x[-1] -= 1.0
    return abs(alpha) * max(float(x @ gram @ x), 0.0) ** 0.5


def _heldout_r2(gram: torch.Tensor, steps: Sequence[int], start: int, holdout: int) -> float | None:
    """R^2 of the line fitted on points ``start..n-holdout-1``, scored on the last ``holdout`` points."""
    n_fit = len(steps) - holdout
    if holdout < 1 or n_fit - start < 2:
        return None
    fit = fit_relex(gram[:n_fit, :n_fit], steps[:n_fit], start=start)
    sigma = float(fit.sigma[0])
    coef = gram[:, :n_fit] @ fit.u[:, 0] / sigma if sigma > 0 else torch.zeros(len(steps), dtype=torch.float64)
    t = torch.tensor(steps[n_fit:], dtype=torch.float64)
    mse = float(((coef[n_fit:] - (fit.slope[0] * t + fit.intercept[0])) ** 2).mean())
    variance = float(coef[start:].var(unbiased=False))
    return 1.0 - mse / variance if variance > 0 else 1.0


def plot_coefficients(diagnostics: Sequence[ModuleDiagnostics], path: str | Path, max_modules: int = 4) -> Path:
    """Rank-1 coefficient against step for up to ``max_modules`` modules spread over the list (PNG).

    Each panel: the observed coefficients, the fitted line from the window's first step to the target step,
    and the prediction at the target step.
    """
    if not diagnostics:
        raise ValueError("plot_coefficients needs at least one module")
    count = min(max_modules, len(diagnostics))
    picked = [diagnostics[round(i * (len(diagnostics) - 1) / max(count - 1, 1))] for i in range(count)]
    fig, axes = plt.subplots(1, count, figsize=(3.6 * count, 3.2), squeeze=False)
    for ax, d in zip(axes[0], picked, strict=True):
        ax.plot(d.steps, d.coefficients, "o", ms=4, label="observed")
        t0 = d.steps[d.window_start]
        ax.plot(
            [t0, d.target_step], [d.slope * t0 + d.intercept, d.predicted_coefficient], "-", lw=1.2, label="line fit"
        )
        ax.plot([d.target_step], [d.predicted_coefficient], "*", ms=11, label=f"step {d.target_step}")
        ax.set_title(f"{d.name}\nenergy {d.energy:.3f}, R² {d.r2:.3f}", fontsize=8)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("rank-1 coefficient")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_layers(diagnostics: Sequence[ModuleDiagnostics], path: str | Path) -> Path:
    """Rank-1 energy (bars) and in-sample / held-out R^2 (lines) against module index (PNG)."""
    index = list(range(len(diagnostics)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.08 * len(index) + 4), 5.5), sharex=True)
    top.bar(index, [d.energy for d in diagnostics], color="tab:blue")
    top.set_ylabel("rank-1 energy")
    top.set_ylim(0, 1.02)
    bottom.plot(index, [d.r2 for d in diagnostics], "o-", ms=3, label="in-sample R²")
    heldout = [math.nan if d.r2_heldout is None else d.r2_heldout for d in diagnostics]
    bottom.plot(index, heldout, "s--", ms=3, label="held-out R²")
    lowest = min([d.r2 for d in diagnostics] + [h for h in heldout if not math.isnan(h)])
    bottom.set_ylim(max(-1.0, lowest) - 0.05, 1.05)
    bottom.set_ylabel("R² of the line (axis floor -1)")
    bottom.set_xlabel("module index (see diagnostics.json for names)")
    bottom.legend(fontsize=8)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_skill(skill: dict[int, float], path: str | Path, title: str = "forecast skill") -> Path:
    """Backtest skill against horizon (PNG), with the line of not moving (skill 0)."""
    horizons = sorted(skill)
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    ax.plot(horizons, [skill[h] for h in horizons], "o-", ms=4)
    ax.axhline(0.0, color="gray", lw=1, ls="--", label="not moving (skill 0)")
    lowest = min([skill[h] for h in horizons] + [0.0])
    ax.set_ylim(max(-2.0, lowest) - 0.05, 1.05)
    ax.set_xlabel("horizon (steps)")
    ax.set_ylabel("skill = 1 - error² / persistence² (floor -2)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def write_jump_report(
    out: Path,
    step: int,
    target_step: int,
    modules: dict[str, dict[str, float]],
    diagnostics: Sequence[ModuleDiagnostics],
    skill: SkillRecord | None,
) -> None:
    """``diagnostics.json``, ``coefficients.png``, ``layers.png`` (and ``skill.png``) of one jump under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    report = {"step": step, "target_step": target_step, "modules": modules}
    if skill is not None:
        report |= {"skill": skill.to_dict()["skill"], "snr": skill.snr}
        plot_skill(skill.skill, out / "skill.png", title=f"backtest at step {step}")
    write_json(out / "diagnostics.json", report)
    plot_coefficients(diagnostics, out / "coefficients.png")
    plot_layers(diagnostics, out / "layers.png")
