"""Extrapolators on synthetic trajectories with known answers."""

import pytest
import torch

from rlvr_extrap.extrapolators import fit_relex, get_extrapolator, linear_weights
from rlvr_extrap.linalg.lowrank import LowRank, inner, lincomb
from rlvr_extrap.trajectory.trajectory import Trajectory


def rank1_linear_trajectory(steps, *, factored: bool, slope=0.3, intercept=-1.0, noise=0.0, seed=0):
    """D_t = (slope * t + intercept) * V for two modules, V a fixed (rank-2, for LowRank) matrix."""
    g = torch.Generator().manual_seed(seed)
    traj = Trajectory()
    bases = {
        "q": (torch.randn(12, 2, generator=g), torch.randn(2, 9, generator=g)),
        "v": (torch.randn(7, 2, generator=g), torch.randn(2, 5, generator=g)),
    }
    for t in steps:
        deltas = {}
        for name, (b, a) in bases.items():
            c = slope * t + intercept
            n = noise * torch.randn(b.shape[0], a.shape[1], generator=g)
            if factored:
                deltas[name] = LowRank(b * c, a) + LowRank(n, torch.eye(a.shape[1]))
            else:
                deltas[name] = c * (b @ a) + n
        traj.append(t, deltas)
    truth = {name: (lambda t, b=b, a=a: (slope * t + intercept) * (b @ a)) for name, (b, a) in bases.items()}
    return traj, truth


@pytest.mark.parametrize("factored", [True, False])
@pytest.mark.parametrize("method", ["relex", "linear"])
def test_exact_recovery_of_rank1_linear_trajectory(method, factored):
    traj, truth = rank1_linear_trajectory([10, 20, 35, 50], factored=factored)
    ex = get_extrapolator(method, fit_window=None)
    ex.fit(traj)
    for name, pred in ex.predict(400).items():
        dense = pred.dense() if isinstance(pred, LowRank) else pred
        torch.testing.assert_close(dense, truth[name](400), rtol=1e-4, atol=1e-4)


def test_relex_uses_step_numbers_not_indices():
    # Irregular spacing: regressing on the index would predict the wrong magnitude.
    traj, truth = rank1_linear_trajectory([1, 2, 10, 40], factored=True, intercept=0.5)
    ex = get_extrapolator("relex", fit_window=None)
    ex.fit(traj)
    torch.testing.assert_close(ex.predict_module("q", 100).dense(), truth["q"](100), rtol=1e-4, atol=1e-4)


def test_relex_denoises_off_direction_noise():
    """Noise outside the rank-1 direction is dropped: RELEX beats linear extrapolation of noisy points."""
    traj, truth = rank1_linear_trajectory(list(range(10, 201, 10)), factored=False, noise=0.5, seed=3)
    errors = {}
    for method in ("relex", "linear"):
        ex = get_extrapolator(method, fit_window=None)
        ex.fit(traj)
        errors[method] = float((ex.predict_module("q", 400) - truth["q"](400)).norm())
    assert errors["relex"] < 0.6 * errors["linear"]


def test_relex_diagnostics_energy_and_r2():
    traj, _ = rank1_linear_trajectory([10, 20, 30], factored=True)
    diag = get_extrapolator("relex").fit(traj)
    assert diag["q"]["energy"] == pytest.approx(1.0, abs=1e-9)
    assert diag["q"]["r2"] == pytest.approx(1.0, abs=1e-9)


def test_relex_window_fits_line_on_recent_points_only():
    # Fast transient, then a straight line: the window ignores the transient.
    v = torch.randn(6, 4)
    coef = {0: 0.0, 10: 5.0, 15: 5.5, 20: 6.0, 30: 7.0, 40: 8.0}
    traj = Trajectory()
    for t, c in coef.items():
        traj.append(t, {"m": c * v})
    ex = get_extrapolator("relex", fit_window=3)
    ex.fit(traj)
    torch.testing.assert_close(ex.predict_module("m", 100), 14.0 * v, rtol=1e-5, atol=1e-5)
    full = get_extrapolator("relex", fit_window=None, through_origin=True)
    full.fit(traj)
    assert not torch.allclose(full.predict_module("m", 100), 14.0 * v, atol=0.5)


def test_relex_paper_fit_leaves_out_the_base_point():
    # c(t) = sqrt(t) on snapshots 40..80: the paper's line (snapshots only) and ours through the base differ.
    v = torch.randn(5, 3)
    steps = [0, 40, 50, 60, 70, 80]
    traj = Trajectory()
    for t in steps:
        traj.append(t, {"m": t**0.5 * v})
    scale = float(v.norm())
    observed = torch.tensor(steps[1:], dtype=torch.float64)
    design = torch.stack([observed, torch.ones_like(observed)], 1)
    slope, intercept = torch.linalg.lstsq(design, observed.sqrt()[:, None]).solution[:, 0]
    paper = get_extrapolator("relex")
    paper.fit(traj)
    predicted = float(torch.sum(paper.predict_module("m", 160) * v)) / scale**2
    assert predicted == pytest.approx(float(slope * 160 + intercept), rel=1e-5)
    through = get_extrapolator("relex", through_origin=True)
    through.fit(traj)
    other = float(torch.sum(through.predict_module("m", 160) * v)) / scale**2
    assert abs(other - predicted) > 0.05 * (80**0.5 - 40**0.5)


def test_relex_rank2_recovers_two_independent_lines():
    v1, v2 = torch.zeros(3, 3), torch.zeros(3, 3)
    v1[0, 0], v2[1, 1] = 1.0, 1.0
    traj = Trajectory()
    for t in (1, 2, 3, 4):
        traj.append(t, {"m": (2 * t) * v1 + (5 - t) * v2})
    r1, r2 = get_extrapolator("relex", rank=1), get_extrapolator("relex", rank=2)
    r1.fit(traj)
    r2.fit(traj)
    expected = 20 * v1 - 5 * v2
    torch.testing.assert_close(r2.predict_module("m", 10), expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(r1.predict_module("m", 10), expected, atol=1e-2)


def test_linear_weights_are_the_segment_formula():
    w = linear_weights([0, 10, 20], target=120, start=0)
    assert w == pytest.approx([1 - 6.0, 0.0, 6.0])  # W_a + 6 (W_b - W_a)
    w = linear_weights([0, 10, 20], target=120, start=1)
    assert w == pytest.approx([0.0, -10.0, 11.0])


def test_fit_relex_on_gram_matches_dense_svd():
    torch.manual_seed(0)
    m = torch.randn(5, 30, dtype=torch.float64)
    fit = fit_relex(m @ m.T, [1, 2, 3, 4, 5])
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    assert float(fit.sigma[0]) == pytest.approx(float(s[0]))
    coef = m @ vh[0]
    assert torch.allclose(fit.coefficients()[:, 0].abs(), coef.abs())


def test_lowrank_inner_and_lincomb_match_dense():
    torch.manual_seed(0)
    a = LowRank(torch.randn(8, 3), torch.randn(3, 6))
    b = LowRank(torch.randn(8, 2), torch.randn(2, 6))
    assert inner(a, b) == pytest.approx(float((a.dense() * b.dense()).sum()), rel=1e-5)
    torch.testing.assert_close(lincomb([2.0, -0.5], [a, b]).dense(), 2 * a.dense() - 0.5 * b.dense())
    c = (a + a + b).compact()
    assert c.rank <= 5
    torch.testing.assert_close(c.dense(), (2 * a.dense() + b.dense()), rtol=1e-4, atol=1e-4)


def test_unknown_method_names_the_field():
    with pytest.raises(ValueError, match="extrap_method='nope'.*relex"):
        get_extrapolator("nope")
