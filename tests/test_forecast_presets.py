"""The regime map scores the anchors' presets: alpharl with the accuracy at T as its target (an oracle) and with our
label trend, each fitted on the labels up to H only, and NExt's reference config."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

from forecast import grids, recording, scoring  # noqa: E402

from rlvr_extrap.extrapolators import NextConfig, get_extrapolator  # noqa: E402
from rlvr_extrap.linalg.lowrank import LowRank  # noqa: E402

ORACLE = f"alpharl (reference: target = {scoring.ORACLE_TARGET})"
OURS = "alpharl (ours: label trend)"
STEPS = list(range(0, 160, 10))


class ConstantEvaluator:
    """Stands in for the held-out evaluation (which loads the model): every weight scores 0.5."""

    def __init__(self, spec: grids.RunSpec) -> None:
        self.spec = spec

    def __call__(self, deltas: dict, rest: dict | None = None) -> float:
        return 0.5


def synthetic_run(accuracy: list[float]) -> recording.CachedRun:
    """Two rank-1 LoRA modules drifting along one direction with noise, labelled with ``accuracy``."""
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(6, 1, generator=g), torch.randn(1, 5, generator=g)
    deltas: dict[str, list] = {}
    for name in ("a", "b"):
        deltas[name] = [
            LowRank(torch.cat([u * s / 100, 0.05 * torch.randn(6, 1, generator=g)], 1),
                    torch.cat([v, torch.randn(1, 5, generator=g)], 0))
            for s in STEPS
        ]  # fmt: skip
    spec = grids.RunSpec("toy", 1e-4, 4, 0, steps=STEPS[-1])
    lrs = [1e-4 * (1 - s / STEPS[-1]) for s in range(STEPS[-1])]
    return recording.CachedRun(spec, STEPS, deltas, accuracy, lrs, 0.0)


def labels(shift_after: int | None = None) -> list[float]:
    """A rising accuracy with a wobble; ``shift_after``: the labels after this step changed (the future)."""
    return [
        0.2 + 0.001 * s + 0.08 * (-1) ** (s // 10) + (0.3 if shift_after is not None and s > shift_after else 0.0)
        for s in STEPS
    ]


@pytest.fixture
def score(monkeypatch):
    monkeypatch.setattr(scoring, "HeldoutEvaluator", ConstantEvaluator)
    variants = {k: scoring.all_variants()[k] for k in (ORACLE, OURS)}

    def run(accuracy: list[float]) -> dict[tuple, dict]:
        records = scoring.score_run(synthetic_run(accuracy), variants, quick=False)
        return {(r["variant"], r["axis"], r["origin"], r["horizon"]): r for r in records}

    return run


def test_alpharl_rows_are_scored_at_the_accuracy_pairs_without_a_backtest(score):
    records = score(labels())
    pairs = {(h0, h) for h0, h in grids.MODELS["toy"].accuracy_pairs if h0 + h <= STEPS[-1]}
    assert {(o, h) for (v, a, o, h) in records if v == ORACLE} == pairs
    assert {a for (v, a, _, _) in records if v == ORACLE} == {"steps"}  # a given target: the lr axis changes nothing
    assert {a for (v, a, _, _) in records if v == OURS} == {"steps", "lr"}  # the label trend is on the fit's axis
    assert all(math.isnan(r["backtest"]) and math.isnan(r["backtest_headline"]) for r in records.values())
    assert all(r["accuracy_predicted"] == 0.5 for r in records.values())


def test_the_oracle_target_is_the_accuracy_measured_at_t(score):
    accuracy = labels()
    records = score(accuracy)
    run = synthetic_run(accuracy)
    trajectory = recording.trajectory_of(run)
    for origin, horizon in ((50, 50), (100, 50)):
        i, j = STEPS.index(origin), STEPS.index(origin + horizon)
        model = get_extrapolator("alpharl", add_to_last=True, target_score=accuracy[j])
        model.fit(trajectory.prefix(i + 1))
        expected = scoring.prediction_errors(trajectory, model.predict(origin + horizon), i, j)
        assert records[ORACLE, "steps", origin, horizon]["error"] == pytest.approx(expected[0], rel=1e-9)


def test_the_label_trend_reads_no_label_after_the_origin(score):
    now, changed = score(labels()), score(labels(shift_after=50))
    at_50 = [key for key in now if key[0] == OURS and key[2] == 50]
    assert {a for _, a, _, _ in at_50} == {"steps", "lr"}
    assert all(changed[key]["error"] == now[key]["error"] for key in at_50)
    assert changed[OURS, "steps", 100, 50]["error"] != now[OURS, "steps", 100, 50]["error"]  # later labels are read


def test_the_next_reference_row_is_the_reference_config():
    method, config = scoring.all_variants()["next (reference)"]
    assert get_extrapolator(method, **config).config == NextConfig.reference()
    assert "alpharl" not in scoring.all_variants()  # only as named: its default needs the labels' row names


def test_the_presets_are_scored_where_a_model_evaluates_only_some_variants(score, monkeypatch):
    """SmolLM2's maps evaluate the predictions of three variants only; the presets' rows exist only with accuracy."""
    support = grids.MODELS["toy"]
    monkeypatch.setitem(grids.MODELS, "toy", replace(support, accuracy_variants=("linear from origin",)))
    records = score(labels())
    assert {v for v, _, _, _ in records} == {ORACLE, OURS}
