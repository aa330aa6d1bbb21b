"""AlphaRL: each snapshot's rank-1 ``sigma u`` regressed on its label by PLS, inverted at a target (arXiv 2510.00553).

Reference code: ``caiyuchen-ustc/AlphaRL``, ``eval/analysis/`` (``extract_rank1_au.py``, ``AlphaPredVector.py``,
``AlphaRLBuildPerdictModel.py``). Per module, on its own (the reference loops over modules: ``can_stream``):

1. ``x_i = sigma_1 u_1`` of each snapshot's delta ``D_i = W_i - W0``. The reference aligns signs walking from the
   last snapshot back, each flipped when its cosine with the later one is negative, and negates the prediction when
   the snapshot it builds on was flipped; here the last snapshot of the fit is the anchor (never flipped), which is
   the same prediction.
2. One-component PLS of the ``x_i`` on the labels ``y_i``, centred and scaled as sklearn's
   ``PLSRegression(n_components=1)`` (its default ``scale=True``), then the label as a line in the PLS score.
3. A target label ``y*`` through that line and PLS's inverse transform gives ``x*``; the prediction pairs it with the
   last snapshot's ``v_1``. The reference adds ``x* v_1^T`` onto the last snapshot's whole weights
   (``add_to_last=True``); by default ``x* v_1^T`` replaces the last delta's own ``sigma_1 u_1 v_1^T`` instead, so a
   target equal to the last label predicts (about) the last weights rather than counting their rank-1 part twice.

Labels (``Trajectory.labels``: step -> score, e.g. accuracy or mean reward) are used at the snapshots after the
segment's origin inside the fit window (the reference fits the checkpoints, not the base).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlvr_extrap.extrapolators.base import Extrapolator, ExtrapolatorConfig
from rlvr_extrap.linalg.lowrank import Combination, Delta, LowRank, lincomb
from rlvr_extrap.linalg.svd import rank1_svd
from rlvr_extrap.trajectory.trajectory import Trajectory

__all__ = ["AlphaRLConfig", "AlphaRLExtrapolator", "Pls1", "aligned_rank1", "fit_pls1"]

MIN_LABELS = 3


@dataclass(frozen=True)
class Pls1:
    """One-component PLS of vectors on a label: ``x ~ x_mean + x_std * (score * loadings)``, label ``~ y_mean + slope
    * score``; ``label_vector`` maps a label back through both (the reference's fitted line and ``inverse_transform``).
    """

    x_mean: torch.Tensor
    x_std: torch.Tensor
    loadings: torch.Tensor
    y_mean: float
    slope: float
    r2: float  # in-sample R^2 of the label's line in the score

    def label_vector(self, label: float) -> torch.Tensor:
        return self.x_mean + self.x_std * ((label - self.y_mean) / self.slope) * self.loadings


def fit_pls1(x: torch.Tensor, y: torch.Tensor) -> Pls1 | None:
    """PLS1 (NIPALS, one component) of rows ``x`` (k x d) on ``y`` (k), columns scaled to unit variance.

    None when the vectors do not co-vary with the labels (e.g. a module that does not move).
    """
    x, y = x.double(), y.double()
    x_mean, x_std = x.mean(0), x.std(0)
    x_std = torch.where(x_std == 0, 1.0, x_std)
    xs = (x - x_mean) / x_std
    yc = y - y.mean()
    y_std = float(yc.std()) or 1.0
    weights = xs.T @ (yc / y_std)  # x-weights: for one label NIPALS converges in its first iteration
    if float(weights.norm()) <= 1e-12 * float(xs.norm()) * float((yc / y_std).norm()):
        return None
    scores = xs @ (weights / weights.norm())
    loadings = xs.T @ scores / (scores @ scores)
    slope = float(yc @ scores / (scores @ scores))  # y-loading times y_std: the label per unit score
    residual = yc - slope * scores
    r2 = 1.0 - float(residual @ residual) / float(yc @ yc)
    return Pls1(x_mean, x_std, loadings, float(y.mean()), slope, r2)


def aligned_rank1(deltas: list[Delta]) -> tuple[torch.Tensor, tuple[float, torch.Tensor, torch.Tensor]]:
    """Rows ``sigma_1 u_1`` of ``deltas`` (float64), each sign-aligned to the next non-zero one, the last as its SVD
    returned it; and the last delta's triple ``(sigma, u, v)``."""
    triples = [rank1_svd(d) for d in deltas]
    rows = [(sigma * u).double() for sigma, u, _ in triples]
    reference = rows[-1]
    for i in range(len(rows) - 2, -1, -1):
        if float(rows[i] @ reference) < 0:
            rows[i] = -rows[i]
        if rows[i].any():
            reference = rows[i]
    return torch.stack(rows), triples[-1]


@dataclass
class AlphaRLConfig(ExtrapolatorConfig):
    target_score: float | None = None
    """Label the prediction is made for (e.g. the accuracy aimed at); None: the labels' own linear trend (against the
    fit's time axis) at the predicted step."""

    label_reach: float = 1.0
    """How far a target label may lie outside the fitted labels' range ``[lo, hi]``, in units of ``hi - lo``; a
    target further out raises ValueError (the PLS line is extrapolated that far)."""

    add_to_last: bool = False
    """The reference's model build: ``D_last + x* v^T``. False: ``D_last - sigma u v^T + x* v^T`` (the last delta's
    rank-1 part replaced by the prediction)."""

    def validate(self) -> None:
        super().validate()
        if self.target_score is not None and not math.isfinite(self.target_score):
            raise ValueError(f"extrap_target_score={self.target_score}: must be a finite number or None")
        if not (math.isfinite(self.label_reach) and self.label_reach >= 0):
            raise ValueError(f"extrap_label_reach={self.label_reach}: must be a finite number >= 0")


@dataclass(frozen=True)
class _ModuleFit:
    pls: Pls1 | None  # None: the module's vectors do not co-vary with the labels; it is predicted not to move
    sigma: float
    u: torch.Tensor
    v: torch.Tensor


class AlphaRLExtrapolator(Extrapolator):
    config_class = AlphaRLConfig
    can_stream = True  # one PLS per module (AlphaPredVector.py fits each module on its own); the labels are shared
    needs_labels = True

    def __init__(self, config: AlphaRLConfig | None = None) -> None:
        super().__init__(config)
        self.fits: dict[str, _ModuleFit] = {}
        self.points: list[int] = []
        self.labels: list[float] = []

    def fit(self, trajectory: Trajectory) -> dict[str, dict[str, float]]:
        """Check the labels (ValueError naming the cause), then fit every module."""
        self.points, self.labels = _labelled_points(trajectory, self.config.fit_window)
        self.fits = {}
        return super().fit(trajectory)

    def _fit_module(self, name: str) -> dict[str, float]:
        assert self.trajectory is not None
        history = self.trajectory.deltas[name]
        rows, (sigma, u, v) = aligned_rank1([history[i] for i in self.points])
        pls = fit_pls1(rows, torch.tensor(self.labels, dtype=torch.float64))
        self.fits[name] = _ModuleFit(pls, sigma, u, v)
        return {"r2": math.nan if pls is None else pls.r2}

    def target_label(self, step: int) -> float:
        """The label predicted for: ``target_score``, or the labels' line at ``step``; ValueError when it lies further
        than ``label_reach`` spans outside the fitted labels."""
        assert self.trajectory is not None
        if self.config.target_score is not None:
            target = self.config.target_score
        else:
            t = torch.tensor([self.trajectory.time(self.trajectory.steps[i]) for i in self.points], dtype=torch.float64)
            y = torch.tensor(self.labels, dtype=torch.float64)
            slope = float((t - t.mean()) @ (y - y.mean()) / ((t - t.mean()) @ (t - t.mean())))
            target = float(y.mean()) + slope * (self.trajectory.time(step) - float(t.mean()))
        lo, hi = min(self.labels), max(self.labels)
        outside = max(lo - target, target - hi, 0.0) / (hi - lo)
        if outside > self.config.label_reach:
            raise ValueError(
                f"AlphaRL target label {target:.4g} lies {outside:.2f} label ranges outside the fitted labels "
                f"[{lo:.4g}, {hi:.4g}] (limit extrap_label_reach={self.config.label_reach:g})"
            )
        return target

    def predict_module(self, name: str, step: int) -> Delta:
        """``D_last + (x* - sigma u) v^T`` (``D_last + x* v^T`` with ``add_to_last``), factored when ``D_last`` is."""
        assert self.trajectory is not None
        last, fit = self.trajectory.deltas[name][-1], self.fits[name]
        if fit.pls is None:
            return last
        change = fit.pls.label_vector(self.target_label(step))
        if not self.config.add_to_last:
            change = change - fit.sigma * fit.u.double()
        change = change.to(fit.v.dtype)
        if isinstance(last, LowRank):
            return Combination.of(last, LowRank(change[:, None], fit.v[None, :]))
        return lincomb([1.0, 1.0], [last, torch.outer(change, fit.v)])


def _labelled_points(trajectory: Trajectory, fit_window: int | None) -> tuple[list[int], list[float]]:
    """Indices and labels of the labelled points after the origin inside the window; ValueError on bad labels."""
    n = len(trajectory)
    if n == 0:
        raise ValueError("AlphaRL needs a trajectory with snapshots; got an empty one")
    start = max(1, 0 if fit_window is None else n - fit_window)
    last = trajectory.steps[-1]
    if last not in trajectory.labels:
        raise ValueError(f"AlphaRL needs a label at the last snapshot (step {last}); no label was recorded there")
    points = [i for i in range(start, n) if trajectory.steps[i] in trajectory.labels]
    labels = [float(trajectory.labels[trajectory.steps[i]]) for i in points]
    bad = [(trajectory.steps[i], y) for i, y in zip(points, labels, strict=True) if not math.isfinite(y)]
    if bad:
        raise ValueError(f"AlphaRL label at step {bad[0][0]} is {bad[0][1]}: every label must be a finite number")
    if len(points) < MIN_LABELS:
        raise ValueError(
            f"AlphaRL needs labels at {MIN_LABELS} or more snapshots after the segment's origin in the fit window; "
            f"got {len(points)}"
        )
    lo, hi = min(labels), max(labels)
    if hi - lo <= 1e-12 * max(1.0, abs(hi), abs(lo)):
        raise ValueError(f"AlphaRL labels are constant ({lo:.4g} at {len(points)} snapshots): nothing to regress on")
    return points, labels
