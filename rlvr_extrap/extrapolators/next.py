"""NExt: a small learned predictor over the rank-1 components of global and local deltas (arXiv 2604.11446).

Per module and trajectory point ``t``, the leading singular triples of the global delta ``D_t``, the
local delta ``L_t = D_t - D_{t-1}`` and the target ``D_{t+h} - D_t`` are computed (factored, never
materialised). One predictor per vector length (and one for the singular values), shared by every
module with that size, learns ``target = decoder(cat(enc_g(global), enc_l(local)))`` from all the
observed pairs; at the last point it predicts the next ``h``-point step ``sigma_hat u_hat v_hat^T``.

Beyond the paper: singular pairs are sign-aligned along each series (and each series' first pair to
the global one), so the prediction does not depend on the signs the SVD returns; modules that did not
move are skipped and keep ``D_hat = D_now`` exactly; singular values are divided by one shared scale
(their mean over the training rows) so the predictor sees O(1) numbers and the result scales with the
deltas.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from rlvr_extrap.extrapolators.base import Extrapolator, ExtrapolatorConfig
from rlvr_extrap.linalg.lowrank import Delta, LowRank, to_dense
from rlvr_extrap.linalg.svd import align_sign, rank1_svd
from rlvr_extrap.trajectory.trajectory import Trajectory

__all__ = ["NextConfig", "NextExtrapolator", "NextPredictor", "Triple"]


@dataclass(frozen=True)
class Triple:
    """One leading singular triple ``sigma u v^T`` (sign-aligned once it sits in a series)."""

    sigma: float
    u: torch.Tensor
    v: torch.Tensor


@dataclass
class NextConfig(ExtrapolatorConfig):
    """Predictor settings; the defaults are the paper's."""

    hidden: int = 256
    """Width of the encoders' and the decoder's hidden layer (and of each encoding)."""
    epochs: int = 1000
    """Full-batch AdamW steps per predictor."""
    lr: float = 2e-5
    """Peak learning rate; cosine decay to 0.1x over the epochs."""
    seed: int = 0
    """Seed of the predictors' initialisation."""
    patience: int | None = None
    """Stop a predictor's training once its L1 loss on a held-out slice of the rows (every ``holdout_every``-th
    row) has not improved for this many epochs, keeping the best weights; None trains all epochs (the paper).
    Bounds the training time at scale, where one epoch over every module's vectors is costly."""
    holdout_every: int = 10
    """With ``patience``: every this-many-th training row is held out (none when there are fewer rows)."""

    def validate(self) -> None:
        super().validate()
        if self.hidden < 1 or self.epochs < 1 or not self.lr > 0:
            raise ValueError(f"next: hidden={self.hidden}, epochs={self.epochs}, lr={self.lr}: all must be positive")
        if (self.patience is not None and self.patience < 1) or self.holdout_every < 2:
            raise ValueError(
                f"next: patience={self.patience} must be >= 1 (or None) and holdout_every={self.holdout_every} >= 2"
            )


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """Linear-ReLU-Linear, left uninitialised (the global RNG belongs to the training thread)."""
    return nn.Sequential(
        nn.utils.skip_init(nn.Linear, d_in, hidden), nn.ReLU(), nn.utils.skip_init(nn.Linear, hidden, d_out)
    )


class NextPredictor(nn.Module):
    """``decoder(cat(enc_g(x_g), enc_l(x_l)))``: two encoders and a decoder, each Linear-ReLU-Linear."""

    def __init__(self, dim: int, hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        self.enc_g = _mlp(dim, hidden, hidden)
        self.enc_l = _mlp(dim, hidden, hidden)
        self.decoder = _mlp(2 * hidden, hidden, dim)
        with torch.no_grad():
            for layer in self.modules():
                if isinstance(layer, nn.Linear):  # PyTorch's default init, from our own generator
                    bound = layer.in_features**-0.5
                    layer.weight.uniform_(-bound, bound, generator=generator)
                    layer.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, x_g: torch.Tensor, x_l: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([self.enc_g(x_g), self.enc_l(x_l)], -1))


def _difference(a: Delta, b: Delta) -> Delta:
    """``a - b``, factored when both are."""
    if isinstance(a, LowRank) and isinstance(b, LowRank):
        return a - b
    return to_dense(a) - to_dense(b)


def _same_matrix(a: Delta, b: Delta) -> bool:
    """Exact equality of two deltas, checked on the factors when both are factored."""
    if isinstance(a, LowRank) and isinstance(b, LowRank):
        if _is_zero(a) and _is_zero(b):
            return True
        return torch.equal(a.left, b.left) and torch.equal(a.right, b.right)
    return torch.equal(to_dense(a), to_dense(b))


def _is_zero(d: LowRank) -> bool:
    """Whether a factored delta is the zero matrix (no inner dimension, or a zero factor)."""
    return d.rank == 0 or not d.left.any() or not d.right.any()


def _aligned_series(deltas: Sequence[Delta], references: Sequence[torch.Tensor] | None) -> list[Triple]:
    """Rank-1 triples of ``deltas``, each sign-aligned to the previous non-zero one in the series.

    The first (or any pair with nothing before it) is aligned to ``references[i]`` when given (the
    global series' ``u`` at the same point), otherwise by ``align_sign``'s largest-entry rule.
    """
    series: list[Triple] = []
    previous: torch.Tensor | None = None
    for i, delta in enumerate(deltas):
        sigma, u, v = rank1_svd(delta)
        reference = previous if previous is not None else (references[i] if references is not None else None)
        u, v = align_sign(u, v, reference)
        series.append(Triple(sigma, u, v))
        if sigma > 0:
            previous = u
    return series


def _train(
    x_g: torch.Tensor, x_l: torch.Tensor, y: torch.Tensor, config: NextConfig, generator: torch.Generator
) -> tuple[NextPredictor, float, int]:
    """Fit one predictor full-batch (L1 sum, AdamW, cosine to 0.1x); return it, its last loss per row, its epochs.

    With ``config.patience``, the held-out rows are scored after every epoch and the best weights are kept.
    """
    model = NextPredictor(y.shape[1], config.hidden, generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=0.1 * config.lr)
    held = torch.arange(y.shape[0]) % config.holdout_every == config.holdout_every - 1
    early = config.patience is not None and bool(held.any())
    rows = (x_g[~held], x_l[~held], y[~held]) if early else (x_g, x_l, y)
    best, best_state, since, epochs = math.inf, None, 0, 0
    with torch.enable_grad():
        for _ in range(config.epochs):
            epochs += 1
            optimizer.zero_grad(set_to_none=True)
            loss = (model(*rows[:2]) - rows[2]).abs().sum()
            loss.backward()
            optimizer.step()
            schedule.step()
            if early:
                with torch.no_grad():
                    score = float((model(x_g[held], x_l[held]) - y[held]).abs().sum())
                if score < best:
                    best, since = score, 0
                    best_state = {k: v.clone() for k, v in model.state_dict().items()}
                elif (since := since + 1) >= config.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), float(loss.detach()) / rows[2].shape[0], epochs


class NextExtrapolator(Extrapolator):
    """NExt over the trajectory's points (within ``fit_window``); the horizon counts trajectory points.

    ``fit`` computes and aligns the global and local triples (cheap); the predictors for a horizon
    ``h`` are trained on the first ``predict_module`` call that needs them and cached until the next
    ``fit``. ``fit`` returns the live diagnostics: training adds ``train_seconds``, ``horizon_points``,
    the predictors' final L1 loss per row (``loss_sigma``, ``loss_u``, ``loss_v``) and the most epochs any
    predictor ran (``epochs_run``; fewer than ``epochs`` when ``patience`` stopped it) to every moving
    module's entry.
    """

    config_class = NextConfig
    can_backtest = False  # a backtest would train the predictors again at every forecast origin
    can_stream = False  # one predictor is shared by every module of a size
    config: NextConfig

    def __init__(self, config: NextConfig | None = None) -> None:
        super().__init__(config)
        self.diagnostics: dict[str, dict[str, float]] = {}
        self._global: dict[str, list[Triple]] = {}
        self._local: dict[str, list[Triple]] = {}
        self._predicted: dict[int, dict[str, Triple]] = {}

    def fit(self, trajectory: Trajectory) -> dict[str, dict[str, float]]:
        """Compute and align every module's global and local triples; drop the predictors of an earlier fit."""
        self._global, self._local, self._predicted = {}, {}, {}
        self.diagnostics = super().fit(trajectory)
        return self.diagnostics

    def _window(self, name: str) -> list[Delta]:
        """The module's deltas inside the fit window."""
        assert self.trajectory is not None
        return self.trajectory.deltas[name][self.window_start() :]

    def _fit_module(self, name: str) -> dict[str, float]:
        """Skip a module that did not move in the window; otherwise keep its aligned series."""
        deltas = self._window(name)
        if all(_same_matrix(d, deltas[0]) for d in deltas[1:]):
            return {"skipped": 1.0}
        glob = _aligned_series(deltas[1:], None)
        local = _aligned_series([_difference(b, a) for a, b in pairwise(deltas)], [t.u for t in glob])
        self._global[name], self._local[name] = glob, local
        return {"skipped": 0.0, "sigma_global": glob[-1].sigma, "sigma_local": local[-1].sigma}

    def horizon_points(self, step: int) -> int:
        """Trajectory points from the last one to ``step``, at the median snapshot spacing."""
        assert self.trajectory is not None
        steps = self.trajectory.steps[self.window_start() :]
        spacing = statistics.median(b - a for a, b in pairwise(steps))
        h = round((step - steps[-1]) / spacing)
        if h < 1:
            raise ValueError(
                f"next: target step {step} is less than half a snapshot interval ({spacing}) after the last "
                f"point (step {steps[-1]}); use extrap_horizon >= extrap_snapshot_every"
            )
        if len(steps) < h + 2:
            raise ValueError(
                f"next: predicting {h} snapshot intervals ahead (extrap_horizon / extrap_snapshot_every = "
                f"{step - steps[-1]} / {spacing}) needs at least {h + 2} trajectory points in the fit window to "
                f"have one training pair, but there are {len(steps)}; lower extrap_horizon, snapshot more often "
                f"(smaller extrap_snapshot_every), jump later, or raise extrap_fit_window"
            )
        return h

    def predict_module(self, name: str, step: int) -> Delta:
        """``D_t + sigma_hat u_hat v_hat^T`` at the last point, factored when ``D_t`` is (``D_t`` if skipped)."""
        h = self.horizon_points(step)
        current = self._window(name)[-1]
        if name not in self._global:
            return current
        if h not in self._predicted:
            self._predicted[h] = self._train_and_predict(h)
        jump = self._predicted[h][name]
        if isinstance(current, LowRank):
            dtype = current.left.dtype
            return current + LowRank((jump.sigma * jump.u).to(dtype)[:, None], jump.v.to(dtype)[None, :])
        return current + (jump.sigma * torch.outer(jump.u, jump.v)).to(current.dtype)

    def _train_and_predict(self, h: int) -> dict[str, Triple]:
        """Train the shared predictors for horizon ``h`` and predict every moving module's next triple."""
        start = time.perf_counter()
        rows: dict[int | None, tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]] = {}

        def add(key: int | None, x_g: torch.Tensor, x_l: torch.Tensor, y: torch.Tensor) -> None:
            bucket = rows.setdefault(key, ([], [], []))
            for column, x in zip(bucket, (x_g, x_l, y), strict=True):
                column.append(x.float())

        for name, glob in self._global.items():
            deltas, local = self._window(name), self._local[name]
            pairs = len(glob) - h  # glob[i] is the point deltas[i + 1]; its target is deltas[i + 1 + h]
            targets = _aligned_series(
                [_difference(deltas[i + 1 + h], deltas[i + 1]) for i in range(pairs)], [t.u for t in glob]
            )
            for g, loc, y in zip(glob[:pairs], local[:pairs], targets, strict=True):
                add(None, torch.tensor([g.sigma]), torch.tensor([loc.sigma]), torch.tensor([y.sigma]))
                add(g.u.numel(), g.u, loc.u, y.u)
                add(g.v.numel(), g.v, loc.v, y.v)

        data = {key: tuple(torch.stack(column) for column in bucket) for key, bucket in rows.items()}
        scale = float(data[None][0].abs().mean()) or 1.0
        data[None] = tuple(column / scale for column in data[None])
        models, losses, epochs = {}, {}, {}
        for key in sorted(data, key=lambda k: -1 if k is None else k):
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + (key or 0))
            models[key], losses[key], epochs[key] = _train(*data[key], self.config, generator)

        predicted = {}
        with torch.no_grad():
            for name, glob in self._global.items():
                g, loc = glob[-1], self._local[name][-1]
                sigma = models[None](torch.tensor([[g.sigma / scale]]), torch.tensor([[loc.sigma / scale]]))
                u = models[g.u.numel()](g.u.float()[None], loc.u.float()[None])[0]
                v = models[g.v.numel()](g.v.float()[None], loc.v.float()[None])[0]
                predicted[name] = Triple(float(sigma) * scale, _unit(u), _unit(v))

        seconds = time.perf_counter() - start
        for name, glob in self._global.items():
            self.diagnostics[name].update(
                train_seconds=seconds,
                horizon_points=float(h),
                loss_sigma=losses[None],
                loss_u=losses[glob[-1].u.numel()],
                loss_v=losses[glob[-1].v.numel()],
                epochs_run=float(max(epochs.values())),
            )
        return predicted


def _unit(x: torch.Tensor) -> torch.Tensor:
    """``x / |x|``; a zero vector stays zero (the predicted step is then zero)."""
    norm = x.norm()
    return x / norm if norm > 0 else x
