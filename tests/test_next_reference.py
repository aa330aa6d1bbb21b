"""NExt against the reference code (``RUCAIBox/NExt`` at 84f79de): same weights, same forward, same training step.

Tolerances: the modules run the same float32 Linear layers in the same order, so the forward pass is exact up
to kernel selection (checked at 1e-6 relative). The reference accumulates one backward per checkpoint and we
take one over all rows, so the loss and gradients differ by float32 summation order (1e-5 relative, a few
float32 ulps over a sum of a few hundred terms). AdamW's update divides each gradient by its own running
magnitude, so those rounding differences shrink further in the update (checked at 1e-5 of the update, plus
two float32 ulps of the weight for the rounding of ``weight + update``: a step of lr 2e-5 on weights near 0.1 is
only ~2^10 ulps).
"""

import pytest
import torch
from torch import nn

from rlvr_extrap.extrapolators import NextConfig, NextExtrapolator
from rlvr_extrap.extrapolators import next as next_module
from rlvr_extrap.extrapolators.next import NextPredictor, _loss, _train
from rlvr_extrap.linalg.lowrank import LowRank
from rlvr_extrap.trajectory.trajectory import Trajectory

DIMS = (1, 8, 300)  # sigma, a vector narrower than the width 256, one wider (a true bottleneck)


# One thread: deterministic float32 sums, and no fight with other processes for cores.
pytestmark = pytest.mark.usefixtures("one_thread")


class MatrixPredict(nn.Module):
    """Port of the reference's predictor, ``src/train.py`` lines 7-47 (L1 loss only: ``run_train.sh`` uses l1)."""

    def __init__(self, dim: int) -> None:
        super().__init__()

        def block(d: int, out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(d, 256), nn.Linear(256, d), nn.ReLU(), nn.Linear(d, 256), nn.Linear(256, out)
            )

        self.model_delta = block(dim, dim)
        self.model_last_delta = block(dim, dim)
        self.model_combine = block(2 * dim, dim)

    def forward(self, delta, last_delta, label=None):
        out = self.model_combine(torch.cat([self.model_delta(delta), self.model_last_delta(last_delta)], dim=-1))
        return out if label is None else torch.abs(out - label).sum()


RENAME = {"enc_g": "model_delta", "enc_l": "model_last_delta", "decoder": "model_combine"}


def reference_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our predictor's state dict under the reference's parameter names."""
    return {RENAME[k.split(".", 1)[0]] + "." + k.split(".", 1)[1]: v.clone() for k, v in state.items()}


def reference_training(
    init: NextPredictor, x_g, x_l, y, config: NextConfig
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The reference's training loop (``src/train.py`` lines 114-152) from ``init``'s weights.

    ``x_g``, ``x_l``, ``y``: one (modules, dim) batch per checkpoint, in the dtype to train in. Returns the parameters after training and
    the gradients of the first epoch, in order.
    """
    model = MatrixPredict(x_g.shape[-1])
    model.load_state_dict(reference_state(init.state_dict()))
    model.to(x_g.dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs, eta_min=config.lr * 0.1, last_epoch=-1
    )
    first: list[torch.Tensor] = []
    for _ in range(config.epochs):
        optimizer.zero_grad()
        for c in range(len(x_g)):
            loss = model(x_g[c], x_l[c], y[c]) / len(x_g)
            loss.backward()
        first = first or [p.grad.clone() for p in model.parameters()]
        optimizer.step()
        scheduler.step()
    return [p.detach() for p in model.parameters()], first


def batches(dim: int, points: int = 6, modules: int = 5, dtype: torch.dtype = torch.float32):
    """Random inputs and targets, (points, modules, dim) as the reference batches them."""
    g = torch.Generator().manual_seed(dim)
    return tuple(torch.randn(points, modules, dim, generator=g).to(dtype) for _ in range(3))


def rows(x: torch.Tensor) -> torch.Tensor:
    """Our row order: module by module, each module's points in order."""
    return x.transpose(0, 1).reshape(-1, x.shape[-1])


@pytest.mark.parametrize("dim", DIMS)
def test_reference_architecture_is_the_reference_modules_with_the_same_weights(dim):
    ours = NextPredictor(dim, 256, torch.Generator().manual_seed(0), "reference")
    ref = MatrixPredict(dim)
    ref.load_state_dict(reference_state(ours.state_dict()))  # strict: same names and shapes
    relu_widths = [seq[1].out_features for seq in (ours.enc_g, ours.enc_l, ours.decoder)]
    assert relu_widths == [dim, dim, 2 * dim]  # sigma: 1 and 2 units wide
    x_g, x_l, _ = batches(dim)
    with torch.no_grad():
        torch.testing.assert_close(ours(x_g, x_l), ref(x_g, x_l), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dim", DIMS)
def test_loss_and_gradients_match_the_reference(dim):
    x_g, x_l, y = batches(dim)
    ours = NextPredictor(dim, 256, torch.Generator().manual_seed(0), "reference")
    ref = MatrixPredict(dim)
    ref.load_state_dict(reference_state(ours.state_dict()))
    loss = _loss(ours, rows(x_g), rows(x_l), rows(y), len(x_g))
    loss.backward()
    ref_loss = sum(ref(x_g[c], x_l[c], y[c]) / len(x_g) for c in range(len(x_g)))
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    ours_sum = _loss(ours, rows(x_g), rows(x_l), rows(y), 1)  # our default: the plain L1 sum
    torch.testing.assert_close(ours_sum, ref_loss * len(x_g), rtol=1e-5, atol=0)


def train_both(dim: int, epochs: int, dtype: torch.dtype):
    """Ours (``_train``, the reference preset) and the reference loop from the same initial weights."""
    x_g, x_l, y = batches(dim, dtype=dtype)
    config = NextConfig.reference(epochs=epochs)
    init = NextPredictor(dim, config.hidden, torch.Generator().manual_seed(3), "reference").to(dtype)
    trained, _, ran = _train(rows(x_g), rows(x_l), rows(y), config, torch.Generator().manual_seed(3), len(x_g))
    assert ran == epochs
    expected, grads = reference_training(init, x_g, x_l, y, config)
    return config, list(zip(init.parameters(), trained.parameters(), expected, grads, strict=True))


@pytest.mark.parametrize("dim", DIMS)
def test_one_float32_step_matches_the_reference_loop(dim):
    config, params = train_both(dim, 1, torch.float32)
    ulp = torch.finfo(torch.float32).eps
    checked = total = 0
    for before, after, ref, grad in params:
        assert not torch.equal(after, before)
        diff, step = (after - ref).abs().detach(), (ref - before).abs()
        # Everywhere: within what AdamW's first step can move (lr), plus float32 rounding of the weight.
        assert (diff <= 2 * config.lr + 2 * ulp * ref.abs()).all()
        # The step is lr * g / (|g| + 1e-8): where the gradient is far above its float32 summation error
        # (<= 1.2e-7 measured here), the same step to 1e-5 of itself, plus two ulps for storing weight + step.
        # Near 0 (a sum that cancels) the rounding residue alone decides a step of up to lr.
        sure = grad.abs() > 1e-4
        assert (diff <= 1e-5 * step + 2 * ulp * ref.abs())[sure].all()
        checked, total = checked + int(sure.sum()), total + grad.numel()
    assert checked > 0.5 * total, (checked, total)


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("epochs", [1, 3])
def test_training_steps_match_the_reference_loop_in_float64(dim, epochs):
    """In float64 the gradients' rounding (~1e-16) is far below AdamW's eps: every update matches, every epoch.

    Relative 1e-9 of the update; absolute 1e-7 lr for a gradient that cancels to 0, whose rounding residue
    moves a weight by lr * residue / eps (measured up to 2.5e-8 lr).
    """
    config, params = train_both(dim, epochs, torch.float64)
    for before, after, ref, _ in params:
        assert not torch.equal(after, before)
        torch.testing.assert_close(after - before, ref - before, rtol=1e-9, atol=1e-7 * config.lr)


def rank1_trajectory(points: int = 16, spacing: int = 10) -> tuple[Trajectory, dict[str, tuple]]:
    """``D_t = c f(t) u v^T`` per module with ``f(t) = t^2``: sigma of ``D_s - D_t`` is ``c |f(s) - f(t)|``."""
    g = torch.Generator().manual_seed(0)
    parts = {
        name: (c, torch.randn(m, 1, generator=g), torch.randn(1, n, generator=g))
        for name, c, (m, n) in (("a", 1.0, (6, 4)), ("b", 2.0, (4, 6)))
    }
    traj = Trajectory()
    for i in range(points):
        t = i * spacing
        traj.append(t, {name: LowRank(c * (t / 100) ** 2 * u, v) for name, (c, u, v) in parts.items()})
    scale = {name: c * float(u.norm() * v.norm()) / 1e4 for name, (c, u, v) in parts.items()}
    return traj, scale


@pytest.mark.parametrize(("target_snapshots", "horizon", "apart"), [(5, 30, 5), (5, 100, 5), (None, 30, 3)])
def test_training_targets_are_target_snapshots_apart(monkeypatch, target_snapshots, horizon, apart):
    seen = []

    def recording_train(x_g, x_l, y, config, generator, points=1):
        seen.append((x_g, y, points))
        return train(x_g, x_l, y, config, generator, points)

    train = next_module._train
    monkeypatch.setattr(next_module, "_train", recording_train)
    traj, scale = rank1_trajectory()
    config = NextConfig.reference(epochs=2, target_snapshots=target_snapshots)
    ex = NextExtrapolator(config)
    ex.fit(traj)
    ex.predict_module("a", traj.steps[-1] + horizon)
    assert ex.diagnostics["a"]["target_points"] == apart
    x_g, y, points = next(s for s in seen if s[0].shape[1] == 1)  # the sigma predictor's rows
    pairs = len(traj) - 1 - apart  # points 1.. (point 0 is the origin) whose target is observed
    assert points == pairs and x_g.shape[0] == 2 * pairs
    steps = traj.steps[1 : 1 + pairs]
    expected_x = [scale[name] * t**2 for name in ("a", "b") for t in steps]
    expected_y = [scale[name] * ((t + 10 * apart) ** 2 - t**2) for name in ("a", "b") for t in steps]
    torch.testing.assert_close(x_g[:, 0], torch.tensor(expected_x), rtol=1e-5, atol=0)  # raw sigma
    torch.testing.assert_close(y[:, 0], torch.tensor(expected_y), rtol=1e-4, atol=0)


def test_a_fixed_target_gives_the_same_jump_at_any_requested_step():
    traj, _ = rank1_trajectory()
    ex = NextExtrapolator(NextConfig.reference(epochs=2))
    ex.fit(traj)
    near = ex.predict_module("a", traj.steps[-1] + 10)
    far = ex.predict_module("a", traj.steps[-1] + 200)
    assert torch.equal(near.left, far.left) and torch.equal(near.right, far.right)
    assert list(ex._predicted) == [5]  # trained once
