"""NExt on synthetic nonlinear rank-1 trajectories, and the factored rank-1 SVD it relies on."""

import math

import pytest
import torch

from rlvr_extrap.extrapolators import NextConfig, NextExtrapolator, get_extrapolator
from rlvr_extrap.extrapolators import next as next_module
from rlvr_extrap.linalg.lowrank import LowRank, to_dense
from rlvr_extrap.linalg.svd import align_sign, rank1_svd
from rlvr_extrap.trajectory.trajectory import Trajectory

FAST = {"epochs": 200, "lr": 3e-3, "hidden": 32}
SHAPES = {"q": (12, 8), "k": (12, 8), "o": (8, 16), "up": (16, 12), "down": (12, 8)}
STEPS = list(range(0, 151, 10))


# Tiny predictors train far faster on one thread (and do not fight other processes for cores).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def train_calls(monkeypatch) -> list[int]:
    """The input width of every predictor ``_train`` trains, in call order (training still runs)."""
    calls: list[int] = []
    train = next_module._train

    def counting_train(*args):
        calls.append(args[0].shape[1])
        return train(*args)

    monkeypatch.setattr(next_module, "_train", counting_train)
    return calls


def saturating(t: float) -> float:
    return 1.0 - math.exp(-t / 60.0)


def synthetic(factored: bool, steps=STEPS, seed: int = 0):
    """``D_t = c f(t) u v^T`` per module (fixed unit u, v, scale c), ``f`` saturating; and the truth."""
    g = torch.Generator().manual_seed(seed)
    parts = {}
    for name, (m, n) in SHAPES.items():
        u, v = torch.randn(m, generator=g), torch.randn(n, generator=g)
        parts[name] = (0.5 + float(torch.rand(1, generator=g)), u / u.norm(), v / v.norm())

    def delta(name, t):
        c, u, v = parts[name]
        if not factored:
            return c * saturating(t) * torch.outer(u, v)
        return LowRank(c * saturating(t) * u[:, None], v[None, :])

    traj = Trajectory()
    for t in steps:
        traj.append(t, {name: delta(name, t) for name in SHAPES})
    return traj, lambda name, t: to_dense(delta(name, t))


def fitted(traj, **config):
    ex = NextExtrapolator(NextConfig(**{**FAST, **config}))
    ex.fit(traj)
    return ex


def total_error(ex, truth, target):
    return sum(float((to_dense(ex.predict_module(name, target)) - truth(name, target)).norm()) for name in SHAPES)


@pytest.mark.parametrize("factored", [True, False])
def test_next_beats_linear_on_a_saturating_trajectory(factored):
    traj, truth = synthetic(factored)
    nxt = fitted(traj)
    linear, velocity = get_extrapolator("linear"), get_extrapolator("linear", fit_window=2)
    linear.fit(traj)
    velocity.fit(traj)  # W_t + k (W_t - W_{t-1}): the local-velocity jump
    for target in (180, 200):
        err_next, err_linear = total_error(nxt, truth, target), total_error(linear, truth, target)
        err_velocity = total_error(velocity, truth, target)
        assert err_next < 0.1 * err_linear and err_next < 0.5 * err_velocity, (target, err_next, err_linear)
    pred = nxt.predict_module("q", 200)
    assert isinstance(pred, LowRank) if factored else isinstance(pred, torch.Tensor)
    assert pred.shape == SHAPES["q"]


def test_prediction_appends_one_rank1_term_to_the_current_factors():
    traj, _ = synthetic(True)
    pred = fitted(traj).predict_module("o", 200)
    current = traj.deltas["o"][-1]
    assert pred.rank == current.rank + 1
    torch.testing.assert_close(pred.left[:, : current.rank], current.left)
    torch.testing.assert_close(pred.right[: current.rank], current.right)


@pytest.mark.parametrize("factored", [True, False])
def test_svd_signs_do_not_change_the_prediction(monkeypatch, factored):
    traj, _ = synthetic(factored)
    reference = {name: to_dense(d) for name, d in fitted(traj).predict(200).items()}

    coin, flips = torch.Generator().manual_seed(1), []

    def flipped_svd(delta):
        sigma, u, v = rank1_svd(delta)
        flips.append(bool(torch.rand(1, generator=coin) < 0.5))
        return (sigma, -u, -v) if flips[-1] else (sigma, u, v)

    monkeypatch.setattr(next_module, "rank1_svd", flipped_svd)
    for name, pred in fitted(traj).predict(200).items():
        torch.testing.assert_close(to_dense(pred), reference[name], rtol=0, atol=1e-6)
    assert 0 < sum(flips) < len(flips)


def test_zero_and_unmoved_modules_are_left_untouched():
    traj_moving, _ = synthetic(True)
    traj = Trajectory()
    constant = LowRank(torch.randn(6, 2), torch.randn(2, 5))
    for i, t in enumerate(traj_moving.steps):
        deltas = {name: traj_moving.deltas[name][i] for name in SHAPES}
        deltas["zero"] = LowRank(torch.zeros(6, 2), torch.randn(2, 5))
        deltas["empty"] = LowRank.zeros(12, 8)
        deltas["constant"] = LowRank(constant.left.clone(), constant.right.clone())
        traj.append(t, deltas)
    ex = NextExtrapolator(NextConfig(**FAST))
    diag = ex.fit(traj)
    for name in ("zero", "empty", "constant"):
        assert diag[name]["skipped"] == 1.0
        assert ex.predict_module(name, 200) is traj.deltas[name][-1]
    assert diag["q"]["skipped"] == 0.0

    dense = Trajectory()
    for t in (0, 10, 20, 30):
        dense.append(t, {"w": torch.zeros(4, 3), "b": torch.full((3, 3), 2.0)})
    ex.fit(dense)
    assert torch.equal(ex.predict_module("w", 50), torch.zeros(4, 3))
    assert torch.equal(ex.predict_module("b", 50), torch.full((3, 3), 2.0))


def test_too_few_points_for_the_horizon_is_a_clear_error():
    traj, _ = synthetic(True, steps=[0, 10, 20, 30, 40, 50])
    ex = fitted(traj)
    ex.predict_module("q", 90)  # h = 4: 6 points give one training pair
    with pytest.raises(ValueError, match=r"needs at least 7 trajectory points.*extrap_horizon.*extrap_snapshot_every"):
        ex.predict_module("q", 100)
    with pytest.raises(ValueError, match="extrap_fit_window"):
        fitted(traj, fit_window=4).predict_module("q", 90)
    with pytest.raises(ValueError, match="half a snapshot interval"):
        ex.predict_module("q", 52)


def test_training_is_lazy_cached_per_horizon_and_deterministic(train_calls):
    calls = train_calls
    traj, _ = synthetic(False)
    ex = fitted(traj)
    assert calls == [] and "train_seconds" not in ex.diagnostics["q"]
    first = ex.predict(200)
    assert sorted(calls) == [1, 8, 12, 16]  # one predictor for sigma and one per vector length
    assert ex.diagnostics["q"]["horizon_points"] == 5.0 and ex.diagnostics["q"]["train_seconds"] > 0
    ex.predict(200)
    assert len(calls) == 4
    ex.predict_module("q", 180)
    assert len(calls) == 8
    again = fitted(traj).predict(200)
    for name in SHAPES:
        assert torch.equal(first[name], again[name])


def test_rank1_svd_of_factored_and_dense_deltas_matches_torch():
    g = torch.Generator().manual_seed(0)
    wide = LowRank(torch.randn(5, 9, generator=g), torch.randn(9, 7, generator=g))  # inner dim > m, n
    thin = LowRank(torch.randn(30, 3, generator=g), torch.randn(3, 20, generator=g))
    diff = thin - LowRank(torch.randn(30, 2, generator=g), torch.randn(2, 20, generator=g))
    for delta in (wide, thin, diff, thin.dense()):
        sigma, u, v = rank1_svd(delta)
        u_ref, s_ref, vh_ref = torch.linalg.svd(to_dense(delta))
        assert sigma == pytest.approx(float(s_ref[0]), rel=1e-5)
        torch.testing.assert_close(sigma * torch.outer(u, v), s_ref[0] * torch.outer(u_ref[:, 0], vh_ref[0]))
    for zero in (LowRank.zeros(4, 3), LowRank(torch.zeros(4, 2), torch.ones(2, 3)), torch.zeros(4, 3)):
        sigma, u, v = rank1_svd(zero)
        assert sigma == 0.0 and not u.any() and not v.any() and u.shape == (4,) and v.shape == (3,)


def test_align_sign_uses_the_reference_then_the_largest_entry():
    u, v = torch.tensor([0.6, -0.8]), torch.tensor([1.0, 2.0])
    a_u, a_v = align_sign(u, v, torch.tensor([-1.0, 0.0]))
    assert torch.equal(a_u, -u) and torch.equal(a_v, -v)
    a_u, a_v = align_sign(u, v, None)  # largest |entry| is -0.8: flip it positive
    assert torch.equal(a_u, -u) and torch.equal(a_v, -v)
    a_u, _ = align_sign(u, v, torch.tensor([0.8, 0.6]))  # orthogonal reference: largest-entry rule
    assert torch.equal(a_u, -u)
    assert torch.equal(align_sign(-u, -v, None)[0], align_sign(u, v, None)[0])


def test_registered_and_validated():
    ex = get_extrapolator("next", epochs=3, hidden=4, lr=1e-3, seed=7, fit_window=None)
    assert isinstance(ex, NextExtrapolator) and ex.config.seed == 7
    assert NextConfig().hidden == 256 and NextConfig().epochs == 1000 and NextConfig().lr == 2e-5
    with pytest.raises(ValueError, match="epochs=0"):
        NextConfig(epochs=0).validate()


def test_patience_stops_training_early_on_a_held_out_slice():
    traj, truth = synthetic(factored=True)
    traj = traj.prefix(11)  # steps 0..100; predict 150
    full = fitted(traj, epochs=400)
    bounded = fitted(traj, epochs=400, patience=20, holdout_every=4)
    errors = [total_error(ex, truth, 150) for ex in (full, bounded)]  # trains both
    assert full.diagnostics["q"]["epochs_run"] == 400
    assert bounded.diagnostics["q"]["epochs_run"] < 400
    assert errors[1] < 2 * errors[0] + 0.1, errors
    with pytest.raises(ValueError, match="patience"):
        NextConfig(patience=0).validate()


def test_reference_config_selects_every_reference_choice():
    choices = ("architecture", "target_snapshots", "raw_sigma", "share_uv", "extend", "align_signs", "mean_over_points")
    ours, ref = NextConfig(), NextConfig.reference()
    assert [getattr(ours, name) for name in choices] == ["ours", None, False, True, 1.0, True, False]
    assert [getattr(ref, name) for name in choices] == ["reference", 5, True, False, 1.5, False, True]
    assert (ref.hidden, ref.epochs, ref.lr, ref.patience) == (256, 1000, 2e-5, None)
    assert NextConfig.reference(extend=2.0, fit_window=8).extend == 2.0
    for bad, match in (
        ({"architecture": "mlp"}, "architecture"),
        ({"target_snapshots": 0}, "target_snapshots"),
        ({"extend": 0.0}, "extend"),
        ({"extend": math.nan}, "extend"),
    ):
        with pytest.raises(ValueError, match=match):
            NextConfig(**bad).validate()


def test_u_and_v_get_their_own_predictors_unless_shared(train_calls):
    calls = train_calls
    traj, _ = synthetic(True)
    ex = fitted(traj, epochs=5, share_uv=False)
    ex.predict(200)
    assert sorted(calls) == [1, 8, 8, 12, 12, 16, 16]  # sigma; u (lengths 8, 12, 16) and v (8, 12, 16) apart
    assert ex.diagnostics["q"]["loss_u"] != ex.diagnostics["up"]["loss_v"]  # q's u and up's v: both 12 long
    shared = fitted(traj, epochs=5)
    shared.predict(200)
    assert shared.diagnostics["q"]["loss_u"] == shared.diagnostics["up"]["loss_v"]


def test_extend_scales_the_predicted_step():
    traj, _ = synthetic(True)
    current = to_dense(traj.deltas["o"][-1])
    steps = [to_dense(fitted(traj, epochs=20, extend=e).predict_module("o", 200)) - current for e in (1.0, 1.5)]
    assert steps[0].norm() > 0
    torch.testing.assert_close(steps[1], 1.5 * steps[0])


def test_without_alignment_the_series_keeps_the_svd_signs(monkeypatch):
    traj, _ = synthetic(True)
    flips = iter([True, False] * 1000)

    def flipped_svd(delta):
        sigma, u, v = rank1_svd(delta)
        return (sigma, -u, -v) if next(flips) else (sigma, u, v)

    monkeypatch.setattr(next_module, "rank1_svd", flipped_svd)
    raw = fitted(traj, align_signs=False)
    signs = [float(torch.sign(t.u @ raw._global["q"][0].u)) for t in raw._global["q"]]
    assert set(signs) == {-1.0, 1.0}
    aligned = fitted(traj)
    assert all(float(t.u @ aligned._global["q"][0].u) > 0 for t in aligned._global["q"])
