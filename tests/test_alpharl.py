"""AlphaRL: known answers, the reference's own functions (ported) on one trajectory, bad labels, the offline command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from grpo_utils import WeightProbe, make_trainer
from test_offline import coefficient, make_base, make_lora_run
from transformers import AutoModelForCausalLM

from rlvr_extrap import ExtrapolationArguments, ExtrapolationCallback, ExtrapolationConfigError
from rlvr_extrap.cli import main
from rlvr_extrap.extrapolators import alpharl, get_extrapolator
from rlvr_extrap.extrapolators.alpharl import fit_pls1
from rlvr_extrap.linalg.lowrank import LowRank, to_dense
from rlvr_extrap.offline.checkpoints import read_labels
from rlvr_extrap.runtime.guard import JumpGuard
from rlvr_extrap.skill.forecast import schedule_clock
from rlvr_extrap.trajectory.trajectory import Trajectory

STEPS = (0, 10, 20, 35, 50, 80)
LABELS = {10: 0.21, 20: 0.33, 35: 0.38, 50: 0.47, 80: 0.52}  # irregular in the step: only the label is linear


def sigma_of(label: float) -> float:
    """The known trajectory's rank-1 coefficient: linear in the label, not through the origin."""
    return 4.0 * label - 0.3


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]


def known_trajectory(factored: bool) -> tuple[Trajectory, dict[str, object]]:
    """``D_t = sigma(y_t) u v^T + R`` per module, ``R = 0.1 u2 v2^T`` fixed (u2 _|_ u, v2 _|_ v); origin zero."""
    traj, truth = Trajectory(), {}
    parts = {}
    for name, (m, n), seed in (("q", (12, 9), 0), ("down", (7, 15), 1)):
        us, vs = orthonormal(m, 2, seed), orthonormal(n, 2, seed + 10)
        parts[name] = (us[:, :1], vs[:, :1].T, 0.1 * us[:, 1:] @ vs[:, 1:].T)
        truth[name] = lambda y, p=parts[name]: sigma_of(y) * p[0] @ p[1] + p[2]
    for step in STEPS:
        deltas = {}
        for name, (_, _, residual) in parts.items():
            dense = torch.zeros_like(residual) if step == 0 else truth[name](LABELS[step])
            deltas[name] = LowRank(dense, torch.eye(dense.shape[1], dtype=torch.float64)) if factored else dense
        traj.append(step, deltas)
    traj.labels = dict(LABELS)
    return traj, truth


@pytest.mark.parametrize("factored", [True, False])
def test_prediction_at_a_target_label_is_the_known_delta(factored):
    traj, truth = known_trajectory(factored)
    for target in (0.6, 0.3):  # ahead of the labels, and between them
        ex = get_extrapolator("alpharl", target_score=target)
        report = ex.fit(traj)
        assert all(r["r2"] == pytest.approx(1.0) for r in report.values())
        for name, pred in ex.predict(200).items():
            assert isinstance(pred, LowRank) == factored
            torch.testing.assert_close(to_dense(pred), truth[name](target), rtol=0, atol=1e-12)


def test_default_target_is_the_labels_trend_at_the_step():
    traj, truth = known_trajectory(factored=True)
    t = torch.tensor(list(LABELS), dtype=torch.float64)
    y = torch.tensor(list(LABELS.values()), dtype=torch.float64)
    slope, intercept = torch.linalg.lstsq(torch.stack([t, torch.ones_like(t)], 1), y[:, None]).solution[:, 0]
    ex = get_extrapolator("alpharl")
    ex.fit(traj)
    target = float(slope * 100 + intercept)
    assert ex.target_label(100) == pytest.approx(target, abs=1e-12)
    torch.testing.assert_close(to_dense(ex.predict_module("q", 100)), truth["q"](target), rtol=0, atol=1e-12)


def test_add_to_last_adds_the_prediction_onto_the_last_delta():
    traj, truth = known_trajectory(factored=False)
    ex = get_extrapolator("alpharl", target_score=0.6, add_to_last=True)
    ex.fit(traj)
    rank1 = truth["q"](0.6) - truth["q"](0.075)  # sigma(0.075) = 0: the residual R cancels, sigma(0.6) u v^T is left
    expected = traj.deltas["q"][-1] + rank1
    torch.testing.assert_close(ex.predict_module("q", 200), expected, rtol=0, atol=1e-12)


def test_a_module_that_does_not_move_stays_put():
    traj = Trajectory()
    for step in STEPS:
        traj.append(step, {"frozen": torch.zeros(3, 4, dtype=torch.float64)})
    traj.labels = dict(LABELS)
    ex = get_extrapolator("alpharl", target_score=0.5)
    assert math.isnan(ex.fit(traj)["frozen"]["r2"])
    assert not ex.predict_module("frozen", 100).any()


def test_signs_are_anchored_at_the_last_snapshot(monkeypatch):
    """The last ``sigma u`` keeps the sign its ``v`` pairs with; earlier ones turn to agree with the next one."""
    u = torch.tensor([1.0, 0.0], dtype=torch.float64)
    v = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    raw = {0: (1.0, u, v), 1: (2.0, -u, -v), 2: (0.0, 0 * u, 0 * v), 3: (3.0, -u, -v)}  # returned signs
    monkeypatch.setattr(alpharl, "rank1_svd", lambda d: raw[int(d)])
    rows, last = alpharl.aligned_rank1([torch.tensor(i) for i in range(4)])
    torch.testing.assert_close(rows, torch.stack([-u, -2 * u, 0 * u, -3 * u]))
    assert last == raw[3]


def test_pls_matches_its_definition():
    """One NIPALS component on standardised columns: the weights are ``Xs^T ys`` normalised."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    pls = fit_pls1(x, y)
    assert pls is not None
    xs = (x - x.mean(0)) / x.std(0)
    w = xs.T @ (y - y.mean())
    scores = xs @ (w / w.norm())
    torch.testing.assert_close(pls.loadings, xs.T @ scores / (scores @ scores))
    # the line goes through the labels' mean at score 0 and back: the mean vector predicts the mean label
    torch.testing.assert_close(pls.label_vector(float(y.mean())), x.mean(0))


# --- The reference's functions, ported (caiyuchen-ustc/AlphaRL @ e8b8d26, eval/analysis/), numpy/torch only -------
# extract_rank1_au.py:6-33 (U[:, 0] * S[0] of each checkpoint's SVD, eval/svd.py:49-59 making the SVD of W_i - W0),
# :36-62 (flip when the cosine with the later checkpoint is negative) and :91-100 (walked from `end` back to `start`);
# AlphaPredVector.py:89-126 (PLSRegression(n_components=1) fit_transform, LinearRegression on the scores, the target
# through the line and inverse_transform), with sklearn 0.24's PLSRegression (sklearn/cross_decomposition/_pls.py:
# _center_scale_xy, the power method for one target, _svd_flip_1d, x_rotations_, inverse_transform) written out since
# sklearn is not a dependency; AlphaRLBuildPerdictModel.py:40-53 (W_k + pred^T Vt[:1], negated when k was flipped).


def svd_components(deltas: list[np.ndarray], negated: set[int]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """eval/svd.py's input to the reference: an SVD of each delta, the first pair's signs made to agree with the last
    delta's and then negated at ``negated`` (still an SVD of the same matrix), so flips happen whatever LAPACK returns."""
    components = [np.linalg.svd(d, full_matrices=False) for d in deltas]
    anchor = components[-1][0][:, 0]
    for i, (u, _, vt) in enumerate(components):
        if (u[:, 0] @ anchor < 0) != (i in negated):
            u[:, 0], vt[0] = -u[:, 0], -vt[0]
    return components


def reference_extract(
    components: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[list[np.ndarray], list[bool]]:
    """``first_au`` and ``flipped`` per checkpoint."""
    first_au, flipped = [None] * len(components), [False] * len(components)
    last = None
    for i in range(len(components) - 1, -1, -1):
        u, s, _ = components[i]
        vec = u[:, 0] * s[0]
        if last is not None:
            cosine = vec @ last / (np.linalg.norm(vec) * np.linalg.norm(last))
            if cosine < 0:
                vec, flipped[i] = -vec, True
        first_au[i], last = vec, vec
    return first_au, flipped


def reference_pls_predict(vectors: np.ndarray, y: np.ndarray, y_predict: float) -> np.ndarray:
    """PLSRegression(n_components=1).fit_transform, LinearRegression, then inverse_transform at ``y_predict``."""
    x, yy = vectors.copy(), y.reshape(-1, 1).copy()
    x_mean, y_mean = x.mean(0), yy.mean(0)
    x, yy = x - x_mean, yy - y_mean
    x_std, y_std = x.std(0, ddof=1), yy.std(0, ddof=1)
    x_std[x_std == 0.0], y_std[y_std == 0.0] = 1.0, 1.0
    x, yy = x / x_std, yy / y_std
    eps = np.finfo(x.dtype).eps
    y_score = yy[:, 0]
    x_weights = x.T @ y_score / (y_score @ y_score)
    x_weights /= np.sqrt(x_weights @ x_weights) + eps
    x_weights *= np.sign(x_weights[np.argmax(np.abs(x_weights))])
    x_scores = x @ x_weights
    x_loadings = x_scores @ x / (x_scores @ x_scores)
    rotations = x_weights / (x_loadings @ x_weights)
    projected = x @ rotations  # fit_transform's scores
    design = np.stack([projected, np.ones_like(projected)], 1)
    coef, intercept = np.linalg.lstsq(design, y, rcond=None)[0]
    predicted_projected = (y_predict - intercept) / coef
    return predicted_projected * x_loadings * x_std + x_mean


def drifting_trajectory(n_points: int) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """A base and deltas whose top direction turns and grows, plus noise; noisy labels."""
    rng = np.random.default_rng(7)
    u0, u1, v0 = rng.normal(size=(3, 10)), rng.normal(size=10), rng.normal(size=8)
    w0 = rng.normal(size=(10, 8))
    deltas = []
    for i in range(1, n_points + 1):
        u = u0[0] + 0.15 * i * u1
        deltas.append(0.3 * i * np.outer(u, v0 + 0.05 * i * u0[1, :8]) + 0.05 * rng.normal(size=(10, 8)))
    labels = 0.2 + 0.05 * np.arange(1, n_points + 1) + 0.01 * rng.normal(size=n_points)
    return w0, deltas, labels


@pytest.mark.parametrize(("extracted_beyond_the_fit", "negated"), [(0, {1, 2}), (2, {0, 3, 4})])
def test_prediction_matches_the_reference_functions(extracted_beyond_the_fit, negated):
    """Same model as the reference builds, to 1e-9 relative (both in float64: only round-off differs).

    As in the reference's scripts (extract 1..27, predict from 1..9), the signs may be extracted over checkpoints
    beyond the fitted ones; the flip of the checkpoint built on undoes it, so the prediction cannot depend on it.
    """
    fitted = 5
    w0, deltas, labels = drifting_trajectory(fitted + extracted_beyond_the_fit)
    components = svd_components(deltas, negated)
    first_au, flipped = reference_extract(components)
    assert any(flipped[:fitted])  # the sign alignment is exercised (and the built-on checkpoint's flip in case 2)
    y_predict = 0.6
    predicted = reference_pls_predict(np.stack(first_au[:fitted]), labels[:fitted], y_predict)
    update = np.outer(predicted, components[fitted - 1][2][0])
    reference_model = w0 + deltas[fitted - 1] + (-update if flipped[fitted - 1] else update)

    traj = Trajectory()
    traj.append(0, {"w": torch.zeros(10, 8, dtype=torch.float64)})
    for i in range(fitted):
        traj.append(i + 1, {"w": torch.from_numpy(deltas[i])})
        traj.labels[i + 1] = float(labels[i])
    ex = get_extrapolator("alpharl", target_score=y_predict, add_to_last=True)
    ex.fit(traj)
    ours = w0 + ex.predict_module("w", fitted + 1).numpy()
    scale = np.abs(reference_model - w0).max()
    np.testing.assert_allclose(ours, reference_model, rtol=0, atol=1e-9 * scale)
    assert not np.allclose(update, 0)  # the prediction moved the weights


# --- Bad labels: one line naming the cause ----------------------------------------------------------------------


def labelled(labels: dict[int, float]) -> Trajectory:
    traj, _ = known_trajectory(factored=True)
    traj.labels = labels
    return traj


BAD_LABELS = {
    "too few": ({50: 0.4, 80: 0.5}, {}, "3 or more snapshots"),
    "constant": (dict.fromkeys(LABELS, 0.4), {}, "labels are constant"),
    "nan": ({**LABELS, 35: math.nan}, {}, "label at step 35 is nan"),
    "none at the last snapshot": ({k: v for k, v in LABELS.items() if k != 80}, {}, "label at the last snapshot"),
    "given target far out": (LABELS, {"target_score": 1.0}, "label ranges outside the fitted labels"),
    "trend far out": (LABELS, {}, "label ranges outside the fitted labels"),
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_bad_labels_raise_one_line(case):
    labels, config, message = BAD_LABELS[case]
    ex = get_extrapolator("alpharl", **config)
    with pytest.raises(ValueError, match=message) as err:
        ex.fit(labelled(labels))
        ex.predict(1000)  # the trend at step 1000 lies far past the labels
    assert "\n" not in str(err.value)


def test_the_reach_is_in_label_ranges():
    """Labels span [0.21, 0.52]: a target 0.31 (1.0 range) above passes, 0.32 above does not."""
    for target, ok in ((0.52 + 0.31 - 1e-9, True), (0.52 + 0.32, False), (0.21 - 0.3, True), (0.21 - 0.32, False)):
        ex = get_extrapolator("alpharl", target_score=target)
        ex.fit(labelled(dict(LABELS)))
        if ok:
            ex.predict_module("q", 100)
        else:
            with pytest.raises(ValueError, match="outside"):
                ex.predict_module("q", 100)


def test_prefix_keeps_no_labels_from_the_future():
    traj = labelled(dict(LABELS))
    assert traj.prefix(3).labels == {10: 0.21, 20: 0.33}


@pytest.mark.parametrize("config", [{"target_score": math.nan}, {"label_reach": -1.0}])
def test_bad_config_is_refused(config):
    with pytest.raises(ValueError, match="extrap_"):
        get_extrapolator("alpharl", **config)


# --- Offline: rlvr-extrap extrapolate --method alpharl --labels FILE ------------------------------------------


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("alpharl")
    return make_lora_run(make_base(work / "base"), work / "run", "hf")


def offline_labels(step: int) -> float:
    return 0.1 + coefficient(step, 0.0)  # linear in the step, so in the LoRA run's coefficient


@pytest.mark.parametrize("given", [[], ["--target-score", "0.5"]])  # 0.5: the labels' trend at step 40
def test_extrapolate_alpharl_with_a_labels_file(lora_run, tmp_path, given):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({str(s): offline_labels(s) for s in (10, 20, 30)}))
    out, target_step = tmp_path / "out", 40
    args = ["extrapolate", str(lora_run.path), "--base", str(lora_run.base), "--method", "alpharl"]
    args += ["--labels", str(labels), "--target-step", str(target_step), "--out", str(out), *given]
    assert main(args) == 0
    state = AutoModelForCausalLM.from_pretrained(out).state_dict()
    c_last, c_target = coefficient(30, 0.0), coefficient(target_step, 0.0)
    for key, w0 in lora_run.w0.items():
        if key not in lora_run.directions:
            torch.testing.assert_close(state[key], w0)
            continue
        direction = lora_run.directions[key]
        u, s, vh = torch.linalg.svd(direction.double())
        rank1 = (s[0] * torch.outer(u[:, 0], vh[0])).float()
        # the last delta with its rank-1 part moved to the coefficient the target label maps to
        expected = w0 + c_last * direction + (c_target - c_last) * rank1
        torch.testing.assert_close(state[key], expected, rtol=1e-4, atol=2e-5, msg=lambda m, k=key: f"{k}: {m}")
    assert json.loads((out / "extrapolation.json").read_text())["method"] == "alpharl"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "needs --labels FILE"),
        (["--labels", "LABELS", "--target-step", "100"], "label ranges outside"),
        (["--labels", "LABELS", "--target-score", "0.9"], "label ranges outside"),
        (["--labels", "LABELS", "--method", "relex"], "read only by methods that regress"),
        (["--target-score", "0.5", "--method", "relex"], "--target-score is read only by --method alpharl"),
    ],
)
def test_extrapolate_alpharl_errors_are_one_line(lora_run, tmp_path, capsys, extra, message):
    labels = tmp_path / "labels.csv"
    labels.write_text("step,accuracy\n10,0.2\n20,0.3\n30,0.4\n")
    extra = [str(labels) if a == "LABELS" else a for a in extra]
    args = ["extrapolate", str(lora_run.path), "--base", str(lora_run.base), "--method", "alpharl"]
    args += ["--out", str(tmp_path / "out"), *(extra if "--target-step" in extra else [*extra, "--target-step", "40"])]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err
    assert not (tmp_path / "out").exists()


def test_read_labels_json_and_csv(tmp_path):
    (tmp_path / "a.json").write_text('{"10": 0.5, "20": 0.75}')
    (tmp_path / "b.csv").write_text("step,acc\n10, 0.5\n20,0.75\n")
    (tmp_path / "c.csv").write_text("10,0.5\n20\n")
    assert read_labels(tmp_path / "a.json") == read_labels(tmp_path / "b.csv") == {10: 0.5, 20: 0.75}
    with pytest.raises(ValueError, match="step,score"):
        read_labels(tmp_path / "c.csv")


# --- In the callback: labels from the rewards GRPOTrainer logs --------------------------------------------------

# logging_steps=2, snapshots every 4 steps: a snapshot's label is the mean logged reward from the previous snapshot's
# step (its log comes after the snapshot) to before its own; after the jump at 16, step 16's log (the weights before
# the jump) does not count toward step 20.
WINDOWS = {4: [2], 8: [4, 6], 12: [8, 10], 16: [12, 14], 20: [18]}
GRPO_RUN = {"extrap_method": "alpharl", "extrap_snapshot_every": 4, "extrap_horizon": 8, "logging_steps": 2}


def logged_rewards(trainer) -> dict[int, float]:
    return {h["step"]: h["reward"] for h in trainer.state.log_history if "reward" in h}


def train_alpharl(tmp_path, jump_at, **kwargs):
    """A real GRPOTrainer (tiny model, CPU) with the alpharl callback between two weight probes; the labels of
    every trajectory the worker fitted are recorded."""
    before, callback, after = WeightProbe(), ExtrapolationCallback(), WeightProbe()
    settings = {"max_steps": 20, **GRPO_RUN, **kwargs}
    trainer = make_trainer(tmp_path, [before, callback, after], extrap_jump_at=jump_at, **settings)
    trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    return trainer, callback, before, after


def test_alpharl_jumps_in_grpo_from_the_logged_rewards(tmp_path, monkeypatch):
    fitted = []
    fit = alpharl.AlphaRLExtrapolator.fit
    monkeypatch.setattr(
        alpharl.AlphaRLExtrapolator, "fit", lambda self, traj: fitted.append(dict(traj.labels)) or fit(self, traj)
    )
    trainer, callback, before, after = train_alpharl(tmp_path / "straight", [16])
    rewards = logged_rewards(trainer)
    expected = {step: sum(rewards[k] for k in logs) / len(logs) for step, logs in WINDOWS.items()}
    assert callback.labels == pytest.approx(expected, rel=1e-12)
    assert len(set(callback.labels.values())) > 1  # the toy's reward moves: there is something to regress on
    assert fitted == [{s: callback.labels[s] for s in (4, 8, 12, 16)}]  # the worker's trajectory holds them
    [jump] = callback.jumps
    assert jump.applied and (jump.step, jump.target_step) == (16, 24), jump.skipped

    # Independently: AlphaRL on the dense deltas W_t - W0 at the snapshots, with these labels, against the
    # schedule's cumulative learning rate (the default time axis, which the labels' trend is read against).
    traj = Trajectory(schedule_clock(trainer.lr_scheduler))
    traj.append(0, {n: torch.zeros_like(w) for n, w in before.start.items()})
    for step in (4, 8, 12, 16):
        traj.append(step, {n: w - before.start[n] for n, w in before.at[step].items()})
    traj.labels = {s: callback.labels[s] for s in (4, 8, 12, 16)}
    ex = get_extrapolator("alpharl")
    ex.fit(traj)
    predicted = ex.predict(24)
    moved = False
    for name, w in after.at[16].items():
        torch.testing.assert_close(w, before.start[name] + predicted[name], rtol=1e-4, atol=1e-5)
        moved = moved or not torch.allclose(w, before.at[16][name])
    assert moved

    # The labels survive a resume: an observing run saved at step 16, branched there with a jump at 16, jumps as
    # the straight run did (its fit needs the labels of steps 4-12, which only the state file holds).
    observed, observer, *_ = train_alpharl(tmp_path / "vanilla", [], save_strategy="steps", save_steps=16)
    unjumped = logged_rewards(observed)  # no jump at 16: step 16's log counts toward step 20
    assert observer.jumps == [] and len(fitted) == 2  # no fit while observing (the 2nd is the check's above)
    assert observer.labels == pytest.approx({**expected, 20: (unjumped[16] + unjumped[18]) / 2}, rel=1e-6)
    checkpoint = tmp_path / "vanilla" / "out" / "checkpoint-16"
    _, branch, _, branch_after = train_alpharl(tmp_path / "branch", [16], resume_from_checkpoint=str(checkpoint))
    [branched] = branch.jumps
    assert branched.applied
    assert len(fitted) == 3 and fitted[2] == pytest.approx(fitted[0], rel=1e-6)
    assert branched.figures.update_norm == pytest.approx(jump.figures.update_norm, rel=1e-5)
    for name, w in after.at[20].items():  # the branch jumped at its start, before its first step: compare the end
        torch.testing.assert_close(branch_after.at[20][name], w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("case", "settings", "reason"),
    [
        ("constant", {"reward_funcs": lambda completions, **kw: [1.0] * len(completions)}, "labels are constant"),
        ("too few", {"logging_steps": 8}, "needs labels at 3 or more snapshots"),  # logs at 8 only: step 12's label
    ],
)
def test_alpharl_skips_the_jump_on_bad_labels(tmp_path, case, settings, reason):
    trainer, callback, before, after = train_alpharl(tmp_path, [12], max_steps=14, **settings)
    if case == "too few":
        assert callback.labels == {12: logged_rewards(trainer)[8]}  # the snapshots without a log have no label
    [jump] = callback.jumps
    assert not jump.applied and jump.skipped.startswith("ValueError: AlphaRL") and reason in jump.skipped
    assert "\n" not in jump.skipped
    for name, w in before.at[12].items():
        assert torch.equal(after.at[12][name], w)  # nothing applied, not even in part
    assert [h["extrap/step"] for h in trainer.state.log_history if "extrap/jump_skipped" in h] == [12]


def test_alpharl_labels_each_snapshot_with_the_probe_score_there(tmp_path, monkeypatch):
    """extrap_label_source='probe': each snapshot (step 0 included) gets the probe's score of the weights at that
    snapshot, scored before the jump at the jump step; the jump is made with the guard off."""
    scores = []
    score = JumpGuard.score
    monkeypatch.setattr(JumpGuard, "score", lambda self: scores.append(score(self)) or scores[-1])
    trainer, callback, before, after = train_alpharl(
        tmp_path, [16], max_steps=16, extrap_label_source="probe", extrap_guard_prompts=4
    )
    assert callback.labels == dict(zip([0, 4, 8, 12, 16], scores, strict=True))  # one probe per snapshot, no more
    assert len(set(scores)) > 1  # the greedy completions' rewards moved
    [jump] = callback.jumps
    assert jump.applied and jump.guard is None, jump.skipped
    assert any(not torch.equal(after.at[16][n], w) for n, w in before.at[16].items())


def test_probe_labels_are_refused_under_deepspeed_and_fsdp(monkeypatch):
    from rlvr_extrap.runtime import distributed

    monkeypatch.setattr(distributed, "sharded_backend", lambda: "FSDP")
    args = ExtrapolationArguments(extrap_method="alpharl", extrap_min_skill=None, extrap_label_source="probe")
    with pytest.raises(ExtrapolationConfigError, match="extrap_label_source='probe' is not supported under FSDP"):
        distributed.check_distributed_support(args)


def test_the_callback_takes_alpharl_and_refuses_unknown_labels():
    ExtrapolationArguments(
        extrap_method="alpharl", extrap_min_skill=None, extrap_target_score=0.5
    ).validate_extrapolation()
    for source, message in (("accuracy", "choose one of"),):
        args = ExtrapolationArguments(extrap_method="alpharl", extrap_min_skill=None, extrap_label_source=source)
        with pytest.raises(ExtrapolationConfigError, match=message) as err:
            args.validate_extrapolation()
        assert "\n" not in str(err.value)
    with pytest.raises(ExtrapolationConfigError, match="extrap_label_reach"):
        ExtrapolationArguments(
            extrap_method="alpharl", extrap_min_skill=None, extrap_label_reach=-1.0
        ).validate_extrapolation()
    built = ExtrapolationArguments(extrap_method="alpharl", extrap_target_score=0.5, extrap_add_to_last=True)
    assert (built.build_extrapolator().config.target_score, built.build_extrapolator().config.add_to_last) == (
        0.5,
        True,
    )
