"""RELEX against the reference code (``weizhepei/RELEX`` at e4548ba, ``scripts/svd_extrapolation.py``), ported.

The reference's functions for one tensor in ``--mode extrapolate --fit_method linear`` are ported below as it
computes them (numpy; file:line in the comments). Both sides run in float64 here: the reference reads float16
deltas into float32 arrays (:93-105), which would only add its own rounding. Tolerance: rtol 1e-9 (plus 1e-12 of
the largest entry, for the frozen module's zeros and entries that cancel). The two sides reach the same numbers by
different float64 routes (our Gram matrix from the factors and ``lstsq`` in steps, its ``M M^T`` and the centred
closed form in checkpoint indices), and the trajectories below have a top singular value far above the next one,
so the direction is well conditioned: the largest difference measured is 4e-15 of the predicted delta's largest
entry (2e-12 relative on the entry of ``W0 + delta`` that cancels most), far under the check.

The reference's clock is the checkpoint index within the window (:362), its target
``W - 1 + (_eff(label) - last_history_step)`` (:873-874) with ``_eff(label) = round(label * scaling)`` (:539-541):
a target counted in the metadata's checkpoint numbers (consecutive, ``global_step_1..T``:
``download_rlvr_trajectory.py:29-30``, ``run_qwen2.5-math-1.5b.sh:34-38``). Ours, under the preset, is the optimizer step. With a snapshot every ``k``
steps, snapshot ``j`` at step ``k j`` is the reference's checkpoint ``j``, and our target step ``T*`` is its
paper-facing label with ``--target_step_scaling_factor 1/k`` (checkpoint ``T*/k``): the same line in an affine
map of time, hence the same prediction (``test_the_time_axes_differ_by_an_affine_map``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlvr_extrap import ExtrapolationArguments
from rlvr_extrap.extrapolators import RelexExtrapolator, RelexFit
from rlvr_extrap.linalg.lowrank import LowRank, to_dense
from rlvr_extrap.trajectory.trajectory import Trajectory

pytestmark = pytest.mark.usefixtures("one_thread")

RTOL = 1e-9
SHAPES = {"q_proj": (12, 9), "down_proj": (7, 15), "frozen": (5, 6)}  # "frozen" never moves
LORA_RANK = 3


# --- The reference's functions, ported (weizhepei/RELEX @ e4548ba, scripts/svd_extrapolation.py) ------------------


def compute_svd(M: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """:141-189, as written: the top right singular vectors of ``M`` [T, d] from its Gram matrix ``M M^T``."""
    T, d = M.shape
    rank = min(rank, T)  # :155
    G = M @ M.T  # :158
    eigenvalues, eigenvectors = np.linalg.eigh(G)  # :161
    idx = np.argsort(eigenvalues)[::-1]  # :164-166 descending
    eigenvalues = eigenvalues[idx]
    eigenvectors = eigenvectors[:, idx]
    total_var = np.sum(np.maximum(eigenvalues, 0))  # :169-171
    top_var = np.sum(np.maximum(eigenvalues[:rank], 0))
    explained_var = top_var / total_var if total_var > 0 else 0.0
    eigenvalues = eigenvalues[:rank]  # :174-175
    U_r = eigenvectors[:, :rank]
    S = np.sqrt(np.maximum(eigenvalues, 0))  # :178
    V_r = M.T @ U_r  # :181-187: V_r = M^T U_r / S, zero below 1e-6 S[0]
    for i in range(rank):
        sv_threshold = S[0] * 1e-6 if S[0] > 0 else 1e-12
        if S[i] > sv_threshold:
            V_r[:, i] /= S[i]
        else:
            V_r[:, i] = 0.0
    return V_r, S, U_r, explained_var


def fit_linear(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:351-376, as written: a line with intercept per column of ``C`` [T, rank], time ``0..T-1``."""
    T, rank = C.shape
    t = np.arange(T, dtype=np.float64)  # :362 the checkpoint's index is the time
    t_mean = t.mean()
    t_centered = t - t_mean
    t_var = np.sum(t_centered**2)
    slopes = np.zeros(rank, dtype=np.float64)
    intercepts = np.zeros(rank, dtype=np.float64)
    for i in range(rank):
        y = C[:, i].astype(np.float64)
        y_mean = y.mean()
        slopes[i] = np.sum(t_centered * (y - y_mean)) / t_var
        intercepts[i] = y_mean - slopes[i] * t_mean
    return slopes, intercepts


def reference_extrapolate(
    theta_0: np.ndarray,
    deltas: dict[int, np.ndarray],
    history_steps: int,
    label: float,
    window: int = -1,
    scaling: float = 1.0,
    rank: int = 1,
) -> np.ndarray:
    """``main()`` for one tensor: ``deltas`` maps the metadata's step (checkpoint number) to ``theta_t - theta_0``."""
    steps = list(deltas)  # :553 metadata["steps"]; the base is not among them (precompute_deltas.py:360-367)
    shape = theta_0.shape
    history_indices = [i for i, s in enumerate(steps) if s <= history_steps]  # :597-599
    T = len(history_indices)
    last_history_step = steps[history_indices[-1]]
    M = np.zeros((T, theta_0.size))  # :742-745 (float32 there)
    for i, hist_idx in enumerate(history_indices):
        M[i] = deltas[steps[hist_idx]].reshape(-1)
    V_r, S, U_r, _ = compute_svd(M, rank)
    C = np.zeros((T, rank))  # :770-773 C = M V_r
    for i, hist_idx in enumerate(history_indices):
        C[i] = deltas[steps[hist_idx]].reshape(-1) @ V_r
    W = T if window == -1 else min(window, T)  # :860
    C_fit = C[-W:]  # :868
    slopes, intercepts = fit_linear(C_fit)  # :871
    steps_ahead = int(round(label * scaling)) - last_history_step  # :873 with _eff (:539-541)
    target_t = W - 1 + steps_ahead  # :874
    c_pred = slopes * target_t + intercepts  # :875
    delta = (c_pred @ V_r.T).reshape(shape)  # :933
    return theta_0 + delta  # :992 W0 + c(T*) v


# --- Synthetic trajectories --------------------------------------------------------------------------------------


def make_deltas(factored: bool, points: int, seed: int = 0) -> dict[str, list[torch.Tensor | LowRank]]:
    """Per module, ``points`` deltas that grow mostly along one direction, bending and with noise (float64).

    Dense: ``(0.5 + j + 0.05 j^2) u v^T + noise``. LoRA: ``B_j A_j`` with both factors drifting, as a run trains them.
    """
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    out: dict[str, list[torch.Tensor | LowRank]] = {}
    for name, (m, n) in SHAPES.items():
        if name == "frozen":
            zero = LowRank(torch.zeros(m, LORA_RANK, dtype=torch.float64), randn(LORA_RANK, n))
            out[name] = [zero if factored else torch.zeros(m, n, dtype=torch.float64)] * points
            continue
        if factored:
            b_dir, b_noise, a0, a_dir = (
                randn(m, LORA_RANK),
                randn(m, LORA_RANK),
                randn(LORA_RANK, n),
                randn(LORA_RANK, n),
            )
            out[name] = [
                LowRank((1.0 + j) * b_dir + 0.05 * (j + 1) * b_noise * randn(1, LORA_RANK), a0 + 0.02 * j * a_dir)
                for j in range(points)
            ]
        else:
            u, v = randn(m, 1), randn(1, n)
            out[name] = [(0.5 + j + 0.05 * j**2) * u @ v + 0.1 * randn(m, n) for j in range(points)]
    return out


def ours(deltas: dict[str, list], steps: list[int], target: int, window: int | None) -> dict[str, torch.Tensor]:
    """Our prediction under ``extrap_preset="relex"``: origin (zero delta) at step 0, then the snapshots."""
    config = ExtrapolationArguments(extrap_preset="relex", extrap_fit_window=window)
    config.validate_extrapolation()
    assert config.extrap_time_axis == "steps"  # a Trajectory without a clock: time is the step
    extrapolator = config.build_extrapolator()
    assert isinstance(extrapolator, RelexExtrapolator)
    traj = Trajectory()
    for i, step in enumerate([0, *steps]):
        traj.append(step, {name: (zero(d[0]) if i == 0 else d[i - 1]) for name, d in deltas.items()})
    extrapolator.fit(traj)
    return {name: to_dense(delta) for name, delta in extrapolator.predict(target).items()}


def zero(like: torch.Tensor | LowRank) -> torch.Tensor | LowRank:
    """The origin's delta: a LoRA adapter starts at ``B = 0``."""
    if isinstance(like, LowRank):
        return LowRank(torch.zeros_like(like.left), like.right)
    return torch.zeros_like(like)


def base(name: str) -> np.ndarray:
    return np.random.default_rng(len(name)).normal(size=SHAPES[name])


def reference(deltas: dict[str, list], checkpoints: list[int], label: float, window: int | None, scaling: float):
    """The reference's prediction per module, from the merged deltas (its checkpoints are merged weights)."""
    out = {}
    for name, history in deltas.items():
        by_step = {c: to_dense(d).numpy() for c, d in zip(checkpoints, history, strict=True)}
        out[name] = reference_extrapolate(base(name), by_step, checkpoints[-1], label, window or -1, scaling)
    return out


def assert_same_prediction(mine: dict[str, torch.Tensor], theirs: dict[str, np.ndarray]) -> None:
    for name, predicted in theirs.items():
        expected = torch.from_numpy(predicted)
        atol = 1e-12 * float(expected.abs().max())
        torch.testing.assert_close(torch.from_numpy(base(name)) + mine[name], expected, rtol=RTOL, atol=atol)


@pytest.mark.parametrize("factored", [False, True], ids=["dense", "lora"])
@pytest.mark.parametrize("window", [None, 2, 4, 8, 9, 50])  # 8 = every checkpoint; 9 counts our origin too
@pytest.mark.parametrize(("every", "horizon"), [(1, 5), (4, 40), (10, 170)])
def test_prediction_matches_the_reference(factored, window, every, horizon):
    """8 snapshots every ``every`` steps; our target step is the reference's label with scaling ``1 / every``."""
    deltas = make_deltas(factored, points=8)
    steps = [every * j for j in range(1, 9)]
    target = steps[-1] + horizon
    mine = ours(deltas, steps, target, window)
    theirs = reference(deltas, list(range(1, 9)), target, window, scaling=1 / every)
    assert_same_prediction(mine, theirs)
    assert float(mine["q_proj"].norm()) > 1.3 * float(to_dense(deltas["q_proj"][-1]).norm())  # it went far ahead
    assert not mine["frozen"].any()  # the module that never moved stays at W0 on both sides


def our_fit(history: list[torch.Tensor], steps: list[int], window: int | None) -> RelexFit:
    """Our preset's fit of one module, its origin (zero delta) at step 0."""
    config = ExtrapolationArguments(extrap_preset="relex", extrap_fit_window=window)
    config.validate_extrapolation()
    extrapolator = config.build_extrapolator()
    traj = Trajectory()
    traj.append(0, {"q_proj": torch.zeros_like(history[0])})
    for step, d in zip(steps, history, strict=True):
        traj.append(step, {"q_proj": d})
    extrapolator.fit(traj)
    return extrapolator.fits["q_proj"]


def reference_line(history: list[torch.Tensor], window: int) -> tuple[np.ndarray, float, float]:
    """The reference's coefficients ``C = M V_r`` (:745, :770-773) and its line over the last ``window`` (:868-871)."""
    M = np.stack([d.numpy().reshape(-1) for d in history])
    V_r, _, _, _ = compute_svd(M, 1)
    C = M @ V_r
    a, b = fit_linear(C[-window:])
    return C[:, 0], float(a[0]), float(b[0])


def test_the_time_axes_differ_by_an_affine_map():
    """Same coefficients (up to the eigenvector's sign, which ``c v`` does not see), same line, two clocks.

    Ours: time = step ``s``; the reference's: ``i`` = index in the window (:362). For steps ``s = s_1 + k i`` its
    line ``a i + b`` is ours with slope ``a / k`` and intercept ``b - a s_1 / k``, and the target ``T*`` is its
    index ``W - 1 + (T* - s_last) / k`` (:874 with the label ``T*`` and ``_eff`` scaling ``1/k``).
    """
    every, window, target = 5, 4, 120
    history = make_deltas(factored=False, points=8)["q_proj"]
    steps = [every * j for j in range(1, 9)]
    C, a, b = reference_line(history, window)
    fit = our_fit(history, steps, window)
    c = fit.coefficients()[:, 0].numpy()
    assert c[0] == 0.0  # the origin (base) is a zero row of our stack: it moves neither direction nor coefficients
    sign = float(np.sign(c[1:] @ C))  # eigh picks either sign, on both sides
    np.testing.assert_allclose(sign * c[1:], C, rtol=RTOL)
    s_first = steps[-window]
    np.testing.assert_allclose(sign * float(fit.slope[0]), a / every, rtol=RTOL)
    np.testing.assert_allclose(sign * float(fit.intercept[0]), b - a * s_first / every, rtol=RTOL)
    index = window - 1 + (round(target / every) - len(steps))  # :873-874, checkpoint numbers 1..8
    assert index == (target - s_first) / every
    np.testing.assert_allclose(sign * float(fit.slope[0] * target + fit.intercept[0]), a * index + b, rtol=RTOL)


def test_checkpoints_named_by_step_put_the_reference_k_times_further_ahead():
    """The reference counts the horizon in metadata steps but fits in indices (:873-874 against :362): fed
    checkpoints named by optimizer step (every ``k``) with scaling 1, it predicts at ``k`` times our horizon."""
    every, horizon = 4, 12
    deltas = make_deltas(factored=False, points=6)
    steps = [every * j for j in range(1, 7)]
    by_step = reference(deltas, steps, steps[-1] + horizon, None, scaling=1.0)
    assert_same_prediction(ours(deltas, steps, steps[-1] + every * horizon, None), by_step)
    with pytest.raises(AssertionError):
        assert_same_prediction(ours(deltas, steps, steps[-1] + horizon, None), by_step)


def test_uneven_steps_the_reference_fits_against_the_index():
    """With uneven snapshots the clocks are not affine: the reference's line is ours with the points placed at their
    index (1, 2, 3, ...), not at their steps, so the two lines through the same coefficients differ."""
    history = make_deltas(factored=False, points=6)["q_proj"]
    C, a, b = reference_line(history, 6)
    fitted = a * np.arange(6) + b
    by_index = our_fit(history, list(range(1, 7)), None)
    sign = float(np.sign(by_index.coefficients()[1:, 0].numpy() @ C))
    np.testing.assert_allclose(
        sign * (by_index.slope[0] * torch.arange(1, 7) + by_index.intercept[0]), fitted, rtol=RTOL
    )
    steps = [2, 3, 5, 8, 13, 21]
    by_step = our_fit(history, steps, None)
    sign = float(np.sign(by_step.coefficients()[1:, 0].numpy() @ C))
    ours_fitted = sign * (by_step.slope[0] * torch.tensor(steps) + by_step.intercept[0]).numpy()
    assert np.abs(ours_fitted - fitted).max() > 0.05 * np.abs(fitted).max()


def test_one_checkpoint_ours_uses_the_origin_the_reference_has_no_line():
    """With a single observed checkpoint our fit goes through the origin too (relex.py:103-104, documented on
    ``RelexConfig.through_origin``); the reference's line over one point divides 0 by 0 (:365, :373)."""
    deltas = make_deltas(factored=False, points=1)
    mine = ours(deltas, [10], 30, None)
    torch.testing.assert_close(mine["q_proj"], 3 * deltas["q_proj"][0], rtol=1e-12, atol=0)  # the line 0 -> D_1
    with np.errstate(invalid="ignore"):
        theirs = reference(deltas, [1], 3, None, scaling=1.0)
    assert np.isnan(theirs["q_proj"]).all()
