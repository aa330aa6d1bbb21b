"""NExt: a small learned predictor over the rank-1 components of global and local deltas (arXiv 2604.11446).

Per module and trajectory point ``t``, the leading singular triples of the global delta ``D_t``, the
local delta ``L_t = D_t - D_{t-1}`` and the target ``D_{t+k} - D_t`` are computed (factored, never
materialised). One predictor per component kind and length (see ``NextConfig.share_uv``), shared by every
module with that size, learns ``target = decoder(cat(enc_g(global), enc_l(local)))`` from all the
observed pairs; at the last point it predicts the next ``k``-point step ``sigma_hat u_hat v_hat^T`` and the
jump adds ``extend`` times it.

``NextConfig()`` is our variant and ``NextConfig.reference()`` the choices of the reference code
(``RUCAIBox/NExt``, ``src/train.py`` and ``src/extrapolate.py``); each field says which is which.
In both, unlike the reference: modules that did not move are skipped and keep ``D_hat = D_now`` exactly
(the reference passes every tensor through its predictor), and only the trajectory's modules (LoRA
targets) are predicted (the reference also predicts biases and norm weights, raw, through its ``n;1``
networks).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Literal

import torch
from torch import nn

from rlvr_extrap.extrapolators.base import Extrapolator, ExtrapolatorConfig
from rlvr_extrap.linalg.lowrank import Delta, LowRank, to_dense
from rlvr_extrap.linalg.svd import align_sign, rank1_svd
from rlvr_extrap.trajectory.trajectory import Trajectory

__all__ = ["NextConfig", "NextExtrapolator", "NextPredictor", "Triple"]

Architecture = Literal["ours", "reference"]
Key = tuple[str, int]
"""A predictor's component kind (``sigma``; ``vector`` for u and v together; ``u``; ``v``) and input length."""


@dataclass(frozen=True)
class Triple:
    """One leading singular triple ``sigma u v^T`` (sign-aligned once it sits in a series, when aligning)."""

    sigma: float
    u: torch.Tensor
    v: torch.Tensor


@dataclass
class NextConfig(ExtrapolatorConfig):
    """Predictor settings. The defaults are our variant; ``NextConfig.reference()`` is the reference code's."""

    hidden: int = 256
    """The reference's width 256 (``train.py:11-31``): in ours the hidden layer and each encoding, in the
    reference architecture the inner width of each pair of Linear layers."""
    epochs: int = 1000
    """Full-batch AdamW steps per predictor (the reference's ``run_train.sh``)."""
    lr: float = 2e-5
    """Peak learning rate; cosine decay to 0.1x over the epochs (the reference's)."""
    seed: int = 0
    """Seed of the predictors' initialisation (the reference does not seed its)."""
    patience: int | None = None
    """Stop a predictor's training once its L1 loss on a held-out slice of the rows (every ``holdout_every``-th
    row) has not improved for this many epochs, keeping the best weights; None trains all epochs (the reference).
    Bounds the training time at scale, where one epoch over every module's vectors is costly."""
    holdout_every: int = 10
    """With ``patience``: every this-many-th training row is held out (none when there are fewer rows)."""
    architecture: Architecture = "ours"
    """``ours``: each encoder and the decoder is Linear(d, hidden) -> ReLU -> Linear(hidden, hidden) (decoder:
    from 2 hidden to d). ``reference`` (``train.py:11-31``): Linear(d, hidden) -> Linear(hidden, d) -> ReLU ->
    Linear(d, hidden) -> Linear(hidden, d), the decoder the same over 2d; the ReLU is d wide (1 and 2 for sigma)."""
    target_snapshots: int | None = None
    """Trajectory points between a training pair's input and its target. None (ours): the jump horizon in
    points, so the predictor learns the step it is asked for. The reference learns ``W_{t+50} - W_t`` with
    snapshots every 10 steps (``compute_target_delta.py:12-16,66``): 5, whatever the jump; the jump is then
    ``extend`` times that prediction and the requested step does not change it (a horizon of about ``extend *
    target_snapshots`` snapshot intervals names the step the jump stands for)."""
    raw_sigma: bool = False
    """Feed singular values as they are (the reference); False (ours) divides them by their mean over the
    training rows, so the predictor sees O(1) numbers, and multiplies the prediction back."""
    share_uv: bool = True
    """One predictor per vector length for u and v together (ours); False: one per shape key, u (``m;1``) and
    v (``1;n``) apart even at equal length (the reference, ``train.py:104-115``)."""
    extend: float = 1.0
    """The jump adds ``extend * sigma_hat u_hat v_hat^T``. The reference's code writes one model per coefficient
    0.5, 1.0, ..., 4.0 (``extrapolate.py:199-214``, ``run_extrapolate.sh:17-19``); its paper uses 1.5."""
    align_signs: bool = True
    """Sign-align singular pairs along each series (each series' first pair to the global one), so the
    prediction does not depend on the signs the SVD returns (ours). False: the SVD's own signs, as the reference
    (no alignment); our factored SVD's signs are not the reference's dense ones, both are arbitrary."""
    mean_over_points: bool = False
    """Divide the L1 sum by the number of training points, as the reference (``train.py:143-147``: each
    checkpoint's loss over ``num_step``). AdamW's step is invariant to this constant up to its ``eps``."""

    @classmethod
    def reference(cls, **overrides: object) -> NextConfig:
        """Every choice the reference code fixes (``RUCAIBox/NExt`` at 84f79de); ``overrides`` replace fields."""
        reference = cls(
            architecture="reference",
            target_snapshots=5,
            raw_sigma=True,
            share_uv=False,
            extend=1.5,
            align_signs=False,
            mean_over_points=True,
        )
        return replace(reference, **overrides)

    def validate(self) -> None:
        super().validate()
        if self.hidden < 1 or self.epochs < 1 or not self.lr > 0:
            raise ValueError(f"next: hidden={self.hidden}, epochs={self.epochs}, lr={self.lr}: all must be positive")
        if (self.patience is not None and self.patience < 1) or self.holdout_every < 2:
            raise ValueError(
                f"next: patience={self.patience} must be >= 1 (or None) and holdout_every={self.holdout_every} >= 2"
            )
        if self.architecture not in ("ours", "reference"):
            raise ValueError(f"next: architecture={self.architecture!r} must be 'ours' or 'reference'")
        if self.target_snapshots is not None and self.target_snapshots < 1:
            raise ValueError(f"next: target_snapshots={self.target_snapshots} must be >= 1 (or None: the horizon)")
        if not (math.isfinite(self.extend) and self.extend > 0):
            raise ValueError(f"next: extend={self.extend} must be a positive number")


def _linear(d_in: int, d_out: int) -> nn.Linear:
    """A Linear left uninitialised (the global RNG belongs to the training thread)."""
    return nn.utils.skip_init(nn.Linear, d_in, d_out)


def _block(d_in: int, hidden: int, d_out: int, architecture: Architecture) -> nn.Sequential:
    """One encoder or the decoder: ours Linear-ReLU-Linear; the reference's two two-Linear maps around a ReLU."""
    if architecture == "ours":
        return nn.Sequential(_linear(d_in, hidden), nn.ReLU(), _linear(hidden, d_out))
    return nn.Sequential(
        _linear(d_in, hidden), _linear(hidden, d_in), nn.ReLU(), _linear(d_in, hidden), _linear(hidden, d_out)
    )


class NextPredictor(nn.Module):
    """``decoder(cat(enc_g(x_g), enc_l(x_l)))``: two encoders and a decoder (``NextConfig.architecture``)."""

    def __init__(self, dim: int, hidden: int, generator: torch.Generator, architecture: Architecture = "ours") -> None:
        super().__init__()
        width = hidden if architecture == "ours" else dim  # of each encoding
        self.enc_g = _block(dim, hidden, width, architecture)
        self.enc_l = _block(dim, hidden, width, architecture)
        self.decoder = _block(2 * width, hidden, dim, architecture)
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


def _aligned_series(
    deltas: Sequence[Delta], references: Sequence[torch.Tensor] | None, align: bool = True
) -> list[Triple]:
    """Rank-1 triples of ``deltas``, each sign-aligned to the previous non-zero one in the series.

    The first (or any pair with nothing before it) is aligned to ``references[i]`` when given (the
    global series' ``u`` at the same point), otherwise by ``align_sign``'s largest-entry rule. Without
    ``align``, the SVD's own signs.
    """
    series: list[Triple] = []
    previous: torch.Tensor | None = None
    for i, delta in enumerate(deltas):
        sigma, u, v = rank1_svd(delta)
        if align:
            reference = previous if previous is not None else (references[i] if references is not None else None)
            u, v = align_sign(u, v, reference)
        series.append(Triple(sigma, u, v))
        if sigma > 0:
            previous = u
    return series


def _loss(model: NextPredictor, x_g: torch.Tensor, x_l: torch.Tensor, y: torch.Tensor, points: int) -> torch.Tensor:
    """The L1 sum over the rows, divided by ``points`` (1: ours; the training points: the reference)."""
    return (model(x_g, x_l) - y).abs().sum() / points


def _train(
    x_g: torch.Tensor,
    x_l: torch.Tensor,
    y: torch.Tensor,
    config: NextConfig,
    generator: torch.Generator,
    points: int = 1,
) -> tuple[NextPredictor, float, int]:
    """Fit one predictor full-batch (``_loss``, AdamW, cosine to 0.1x) in the rows' dtype; return it, its last L1
    per row, its epochs.

    With ``config.patience``, the held-out rows are scored after every epoch and the best weights are kept.
    """
    model = NextPredictor(y.shape[1], config.hidden, generator, config.architecture).to(y.dtype)
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
            loss = _loss(model, *rows, points)
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
    return model.eval(), float(loss.detach()) * points / rows[2].shape[0], epochs


class NextExtrapolator(Extrapolator):
    """NExt over the trajectory's points (within ``fit_window``); the horizon counts trajectory points.

    ``fit`` computes and aligns the global and local triples (cheap); the predictors for a target interval
    are trained on the first ``predict_module`` call that needs them and cached until the next ``fit``.
    ``fit`` returns the live diagnostics: training adds ``train_seconds``, ``horizon_points``, ``target_points``,
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
        """Skip a module that did not move in the window; otherwise keep its (aligned) series."""
        deltas = self._window(name)
        if all(_same_matrix(d, deltas[0]) for d in deltas[1:]):
            return {"skipped": 1.0}
        align = self.config.align_signs
        glob = _aligned_series(deltas[1:], None, align)
        local = _aligned_series([_difference(b, a) for a, b in pairwise(deltas)], [t.u for t in glob], align)
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
        k = self.config.target_snapshots
        if k is not None and len(steps) < k + 2:
            raise ValueError(
                f"next: target_snapshots={k} needs at least {k + 2} trajectory points in the fit window to have "
                f"one training pair, but there are {len(steps)}; snapshot more often (smaller "
                f"extrap_snapshot_every), jump later, or raise extrap_fit_window"
            )
        if k is None and len(steps) < h + 2:
            raise ValueError(
                f"next: predicting {h} snapshot intervals ahead (extrap_horizon / extrap_snapshot_every = "
                f"{step - steps[-1]} / {spacing}) needs at least {h + 2} trajectory points in the fit window to "
                f"have one training pair, but there are {len(steps)}; lower extrap_horizon, snapshot more often "
                f"(smaller extrap_snapshot_every), jump later, or raise extrap_fit_window"
            )
        return h

    def predict_module(self, name: str, step: int) -> Delta:
        """``D_t + extend sigma_hat u_hat v_hat^T`` at the last point, factored when ``D_t`` is (``D_t`` if skipped)."""
        h = self.horizon_points(step)
        current = self._window(name)[-1]
        if name not in self._global:
            return current
        k = self.config.target_snapshots or h
        if k not in self._predicted:
            self._predicted[k] = self._train_and_predict(k, h)
        jump = self._predicted[k][name]
        sigma = self.config.extend * jump.sigma
        if isinstance(current, LowRank):
            dtype = current.left.dtype
            return current + LowRank((sigma * jump.u).to(dtype)[:, None], jump.v.to(dtype)[None, :])
        return current + (sigma * torch.outer(jump.u, jump.v)).to(current.dtype)

    def _keys(self, triple: Triple) -> tuple[Key, Key]:
        """The predictors that take this triple's u and v."""
        if self.config.share_uv:
            return ("vector", triple.u.numel()), ("vector", triple.v.numel())
        return ("u", triple.u.numel()), ("v", triple.v.numel())

    def _seed(self, key: Key) -> int:
        """Each predictor's own seed (u and v of one length apart when they are not shared)."""
        kind, length = key
        offset = {"sigma": 0, "vector": length, "u": length, "v": length + (1 << 32)}[kind]
        return self.config.seed * 1_000_003 + offset

    def _train_and_predict(self, k: int, h: int) -> dict[str, Triple]:
        """Train the predictors for the ``k``-point target and predict every moving module's next triple."""
        start = time.perf_counter()
        rows: dict[Key, tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]] = {}

        def add(key: Key, x_g: torch.Tensor, x_l: torch.Tensor, y: torch.Tensor) -> None:
            bucket = rows.setdefault(key, ([], [], []))
            for column, x in zip(bucket, (x_g, x_l, y), strict=True):
                column.append(x.float())

        sigma_key: Key = ("sigma", 1)
        pairs = 0
        for name, glob in self._global.items():
            deltas, local = self._window(name), self._local[name]
            pairs = len(glob) - k  # glob[i] is the point deltas[i + 1]; its target is deltas[i + 1 + k]
            targets = _aligned_series(
                [_difference(deltas[i + 1 + k], deltas[i + 1]) for i in range(pairs)],
                [t.u for t in glob],
                self.config.align_signs,
            )
            u_key, v_key = self._keys(glob[0])
            for g, loc, y in zip(glob[:pairs], local[:pairs], targets, strict=True):
                add(sigma_key, torch.tensor([g.sigma]), torch.tensor([loc.sigma]), torch.tensor([y.sigma]))
                add(u_key, g.u, loc.u, y.u)
                add(v_key, g.v, loc.v, y.v)

        data = {key: tuple(torch.stack(column) for column in bucket) for key, bucket in rows.items()}
        scale = 1.0 if self.config.raw_sigma else float(data[sigma_key][0].abs().mean()) or 1.0
        data[sigma_key] = tuple(column / scale for column in data[sigma_key])
        points = pairs if self.config.mean_over_points else 1
        models, losses, epochs = {}, {}, {}
        for key in sorted(data):
            generator = torch.Generator().manual_seed(self._seed(key))
            models[key], losses[key], epochs[key] = _train(*data[key], self.config, generator, points)

        predicted = {}
        with torch.no_grad():
            for name, glob in self._global.items():
                g, loc = glob[-1], self._local[name][-1]
                u_key, v_key = self._keys(g)
                sigma = models[sigma_key](torch.tensor([[g.sigma / scale]]), torch.tensor([[loc.sigma / scale]]))
                u = models[u_key](g.u.float()[None], loc.u.float()[None])[0]
                v = models[v_key](g.v.float()[None], loc.v.float()[None])[0]
                predicted[name] = Triple(float(sigma) * scale, _unit(u), _unit(v))

        seconds = time.perf_counter() - start
        for name, glob in self._global.items():
            u_key, v_key = self._keys(glob[-1])
            self.diagnostics[name].update(
                train_seconds=seconds,
                horizon_points=float(h),
                target_points=float(k),
                loss_sigma=losses[sigma_key],
                loss_u=losses[u_key],
                loss_v=losses[v_key],
                epochs_run=float(max(epochs.values())),
            )
        return predicted


def _unit(x: torch.Tensor) -> torch.Tensor:
    """``x / |x|``; a zero vector stays zero (the predicted step is then zero)."""
    norm = x.norm()
    return x / norm if norm > 0 else x
