"""Scoring a recorded run: every variant's forecasts, backtests and true skill at every origin and horizon, and the
held-out accuracy of predicted weights; cached next to the run."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch

from forecast.grids import MODELS, ModelSupport, RunSpec, run_dir
from forecast.recording import CachedRun, trajectory_of
from rlvr_extrap.experiments.tasks import TOY_TASK
from rlvr_extrap.extrapolators import EXTRAPOLATORS, Extrapolator, NextConfig, get_extrapolator
from rlvr_extrap.linalg.lowrank import Delta
from rlvr_extrap.runtime.lora import find_lora_modules
from rlvr_extrap.skill.forecast import (
    backtest_skill,
    forecast_errors,
    gram_distance,
    lr_clock,
    prediction_error,
    skill,
)
from rlvr_extrap.trajectory.trajectory import Trajectory
from rlvr_extrap.utils.files import atomic_write_text


class HeldoutEvaluator:
    """Held-out greedy accuracy of a base model plus merged deltas (module name -> delta).

    Loads the model once; each call restores the base weights, adds the deltas into them (LoRA B stays
    zero, so the effective weight is base + delta, as in the trained model) and evaluates.
    """

    def __init__(self, spec: RunSpec) -> None:
        from peft import LoraConfig, get_peft_model

        from rlvr_extrap.experiments.models import load_model
        from rlvr_extrap.experiments.tasks import get_task

        settings = MODELS[spec.model].run
        model, self.tokenizer = load_model(settings.get("model", spec.model))
        model.to("cuda" if torch.cuda.is_available() else "cpu")  # where experiment._run trains (use_cpu)
        self.dense = spec.lora_rank is None
        if self.dense:  # full-parameter runs: every parameter is restored, the linear modules take the deltas
            self.model = model
            self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
            self.base = {n: p.detach().clone() for n, p in self.params.items()}
        else:
            rank = spec.lora_rank
            config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", task_type="CAUSAL_LM")
            self.model = get_peft_model(model, config)
            self.modules = find_lora_modules(self.model)
            self.base = {name: m.base_weight.detach().clone() for name, m in self.modules.items()}
        self.task = get_task(spec.task or settings.get("task", TOY_TASK))
        self.batch_size = settings.get("eval_batch_size", 128)

    def __call__(self, deltas: dict[str, Delta], rest: dict[str, torch.Tensor] | None = None) -> float:
        """Accuracy of base + ``deltas`` (module name -> delta); ``rest``: deltas of the other parameters of a
        full-parameter run (parameter name -> delta; the base value where missing)."""
        from rlvr_extrap.experiments.evaluation import evaluate_accuracy
        from rlvr_extrap.linalg.lowrank import to_dense
        from rlvr_extrap.runtime.lora import add_to_bases

        with torch.no_grad():
            if self.dense:
                for name, param in self.params.items():
                    param.copy_(self.base[name])
                named = {f"{name}.weight": to_dense(d) for name, d in deltas.items()} | (rest or {})
                for name, delta in named.items():  # linear modules' weights, then the other parameters
                    self.params[name].add_(delta.to(self.params[name].device, self.params[name].dtype))
            else:
                for name, module in self.modules.items():
                    module.base_weight.copy_(self.base[name])
        if not self.dense:
            add_to_bases(self.modules, deltas)
        return evaluate_accuracy(
            self.model,
            self.tokenizer,
            self.task.heldout_problems(),
            self.batch_size,
            max_new_tokens=self.task.max_new_tokens,
            check=self.task.check,
        )


# Named configurations, by registry method; a method of EXTRAPOLATORS not named here runs with its defaults.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "linear from origin": ("linear", {}),
    "drift, last 10 steps": ("linear", {"fit_window": 2}),
    "drift, last 50 steps": ("linear", {"fit_window": 6}),
    "relex (paper)": ("relex", {}),
    "relex through origin": ("relex", {"through_origin": True}),
    "relex window 6": ("relex", {"fit_window": 6}),
    "relex keep residual": ("relex", {"keep_residual": True}),
    "relex rank 2": ("relex", {"rank": 2}),
}  # Holt's linear trend was in the first map (benchmarks/results/forecast.md) and removed: below 0 everywhere


ORACLE_TARGET = "actual accuracy at T"
"""alpharl's ``target_score`` in a variant's config: the held-out accuracy measured at the forecast's target step T,
given as the reference's input (an oracle: no run knows it at H)."""


def reference_next() -> dict[str, Any]:
    """``NextConfig.reference()``'s fields that differ from our defaults."""
    ours, reference = NextConfig(), NextConfig.reference()
    return {k: v for k, v in vars(reference).items() if getattr(ours, k) != v}


PRESET_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "next (reference)": ("next", reference_next()),
    f"alpharl (reference: target = {ORACLE_TARGET})": ("alpharl", {"add_to_last": True, "target_score": ORACLE_TARGET}),
    "alpharl (ours: label trend)": ("alpharl", {}),
}
"""The anchors' presets not among ``VARIANTS`` (``rlvr_extrap.presets``), and alpharl with our defaults; labels are
the held-out accuracy at each snapshot up to H. No backtest (their methods' ``can_backtest`` is off): scored only at
the accuracy pairs, and left out of the gate's tables, which pool ``VARIANTS``."""


HORIZONS = (10, 20, 30, 50, 70, 100)


MIN_ORIGIN = 20  # the paper's relex fit needs two observed snapshots after the origin


AXES = ("steps", "lr")


def all_variants() -> dict[str, tuple[str, dict[str, Any]]]:
    """``VARIANTS``, every other method with its defaults, then ``PRESET_VARIANTS`` (alpharl only as named there)."""
    named = {method for method, _ in VARIANTS.values()}
    defaults = {
        method: (method, {})
        for method, cls in EXTRAPOLATORS.items()
        if method not in named and not cls.needs_optimizer_state and not cls.needs_labels
    }  # no AdamW state: optimizer_direction.py scores that one from trainer checkpoints
    return VARIANTS | defaults | PRESET_VARIANTS


def reads_clock(method: str, config: dict[str, Any]) -> bool:
    """Whether a variant's forecast depends on the time axis: next counts snapshot intervals, and alpharl reads time
    only for its label trend (no ``target_score``)."""
    if method == "next":
        return False
    return method != "alpharl" or config.get("target_score") is None


def forecaster(method: str, config: dict[str, Any], accuracy_at_target: float | None) -> Extrapolator:
    """The variant's extrapolator for one forecast; ``ORACLE_TARGET`` becomes the accuracy measured at T."""
    if config.get("target_score") == ORACLE_TARGET:
        if accuracy_at_target is None:
            raise ValueError("no held-out accuracy recorded at the target step for the oracle target")
        config = config | {"target_score": accuracy_at_target}
    return get_extrapolator(method, **config)


def fitted_at(
    method: str, config: dict[str, Any], view: Trajectory, accuracy_at_target: float | None, fit: Extrapolator | None
) -> Extrapolator:
    """The variant fitted on ``view`` (the points up to H, and the labels up to H only: ``Trajectory.prefix``).
    ``fit``, the same variant's fit at H for another horizon, serves again unless its target is the accuracy at T."""
    if fit is not None and config.get("target_score") != ORACLE_TARGET:
        return fit
    model = forecaster(method, config, accuracy_at_target)
    model.fit(view)
    return model


def gets_accuracy(variant: str, evaluated: tuple[str, ...] | None) -> bool:
    """Whether a variant's predictions get a held-out evaluation: those of ``ModelSupport.accuracy_variants`` (None:
    all) and the presets' rows, which are scored only where the accuracy is measured (no backtest)."""
    return evaluated is None or variant in evaluated or variant in PRESET_VARIANTS


def on_axis(trajectory: Trajectory, axis: str, lrs: list[float]) -> Trajectory:
    """The same points and Gram matrices, fitted against steps or against the cumulative learning rate."""
    view = trajectory.prefix(len(trajectory))
    view.clock = lr_clock(lrs) if axis == "lr" else None
    return view


def gate_inputs(backtest: dict[int, float], horizon: int) -> tuple[float, float]:
    """Backtest skill at exactly ``horizon`` and at the longest backtested horizon up to it (NaN when none)."""
    verified = [h for h in backtest if h <= horizon]
    return backtest.get(horizon, math.nan), backtest[max(verified)] if verified else math.nan


RECORD_COLUMNS = (
    "run", "axis", "variant", "origin", "horizon", "error", "persistence", "skill", "backtest", "backtest_headline",
    "accuracy_origin", "accuracy_target", "accuracy_predicted",
)  # fmt: skip


def error_matrix(
    trajectory: Trajectory, extrapolator: Extrapolator, max_points: int
) -> dict[tuple[int, int], tuple[float, float]]:
    """``forecast_errors`` for every origin index i >= 1 and target j with 0 < j - i <= max_points.

    A forecast from i to j is the same whether the trajectory ends at j or later (the fit sees points
    0..i only), so these pairs give both the true skill and every backtest. For speed the model is fitted
    once per origin and all its targets are scored at once from the Gram matrices (``forecast_errors``
    refits per pair); a few pairs are checked against ``forecast_errors``.
    """
    n = len(trajectory)
    errors: dict[tuple[int, int], tuple[float, float]] = {}
    for i in range(1, n - 1):
        targets = list(range(i + 1, min(n, i + max_points + 1)))
        model = type(extrapolator)(extrapolator.config)
        model.fit(trajectory.prefix(i + 1))
        error = torch.zeros(len(targets), dtype=torch.float64)
        persistence = torch.zeros(len(targets), dtype=torch.float64)
        rows = torch.arange(len(targets))
        for name in trajectory.modules:
            gram = trajectory.gram(name)
            weights = torch.zeros(len(targets), n, dtype=torch.float64)
            weights[:, : i + 1] = torch.tensor([model.combination(name, trajectory.steps[j]) for j in targets])
            weights[rows, targets] -= 1.0
            error += torch.einsum("tn,nm,tm->t", weights, gram, weights).clamp_min(0.0)
            persist = torch.zeros(len(targets), n, dtype=torch.float64)
            persist[:, i] = 1.0
            persist[rows, targets] = -1.0
            persistence += torch.einsum("tn,nm,tm->t", persist, gram, persist).clamp_min(0.0)
        for k, j in enumerate(targets):
            errors[i, j] = (float(error[k]), float(persistence[k]))
    for i, j in list(errors)[:: max(1, len(errors) // 3)]:
        expected = forecast_errors(trajectory, extrapolator, i, j)
        if not all(
            math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-12) for a, b in zip(errors[i, j], expected, strict=True)
        ):
            raise AssertionError(f"error_matrix disagrees with forecast_errors at {(i, j)}: {errors[i, j]} {expected}")
    return errors


def backtest_from(
    errors: dict[tuple[int, int], tuple[float, float]], steps: list[int], last: int, origins: int = 3
) -> dict[int, float]:
    """``backtest_skill(trajectory.prefix(last + 1), ..., origins)`` from precomputed pairs (checked against it)."""
    pooled: dict[int, tuple[float, float]] = {}
    for j in range(max(2, last + 1 - origins), last + 1):
        for i in range(1, j):
            if (i, j) in errors:
                error, persistence = errors[i, j]
                before = pooled.get(steps[j] - steps[i], (0.0, 0.0))
                pooled[steps[j] - steps[i]] = (before[0] + error, before[1] + persistence)
    scores = {h: skill(e, p) for h, (e, p) in sorted(pooled.items())}
    return {h: v for h, v in scores.items() if not math.isnan(v)}


def score_run(run: CachedRun, variants: dict[str, tuple[str, dict[str, Any]]], quick: bool) -> list[dict[str, Any]]:
    """One record per (axis, variant, origin H, horizon h) with H + h observed."""
    evaluate = HeldoutEvaluator(run.spec)
    base = trajectory_of(run)
    steps = base.steps
    index = {step: i for i, step in enumerate(steps)}
    spacing = run.spec.snapshot_every
    reevaluated: dict[int, float] = {}

    def accuracy_at(step: int) -> float:  # through the same path as the predictions
        if step not in reevaluated:
            deltas = {name: history[index[step]] for name, history in run.deltas.items()}
            reevaluated[step] = evaluate(deltas, run.rest_at(step))
        return reevaluated[step]

    records = []
    origins = [s for s in steps if s >= MIN_ORIGIN and (not quick or s % 50 == 0)]
    evaluated, pairs = MODELS[run.spec.model].accuracy_variants, MODELS[run.spec.model].accuracy_pairs
    for axis in AXES if run.spec.lr_schedule != "constant" else ("steps",):  # constant: the lr axis is the same
        trajectory = on_axis(base, axis, run.lrs)
        for variant, (method, config) in variants.items():
            cheap = EXTRAPOLATORS[method].can_backtest
            if not cheap and axis != "steps" and not reads_clock(method, config):
                continue  # the lr axis would change nothing
            extrapolator = get_extrapolator(method, **config) if cheap else None
            errors = error_matrix(trajectory, extrapolator, max(HORIZONS) // spacing) if extrapolator else {}
            if cheap and not CHECKED_BACKTEST.get(method):
                last = len(steps) // 2
                expected = backtest_skill(trajectory.prefix(last + 1), extrapolator)
                got = backtest_from(errors, steps, last)
                if expected.keys() != got.keys() or any(
                    abs(expected[h] - got[h]) > 1e-4 * max(1.0, abs(expected[h])) for h in got
                ):
                    raise AssertionError(f"backtest_from disagrees with backtest_skill for {variant}: {got} {expected}")
                CHECKED_BACKTEST[method] = True
            for origin in origins:
                i = index[origin]
                backtest = backtest_from(errors, steps, i) if cheap else {}  # not from the few forecasts below
                model: Extrapolator | None = None  # a method without a backtest: its fit at H, for every horizon
                for horizon in HORIZONS:
                    with_accuracy = (origin, horizon) in pairs and gets_accuracy(variant, evaluated)
                    if origin + horizon not in index or not (cheap or with_accuracy):
                        continue  # a method without a cheap backtest (next) is scored only where accuracy is
                    j = index[origin + horizon]
                    prediction = None
                    if (i, j) not in errors:  # next, alpharl at an accuracy pair: one fit for error and accuracy
                        try:
                            model = fitted_at(method, config, trajectory.prefix(i + 1), run.accuracy[j], model)
                            prediction = model.predict(origin + horizon)
                        except ValueError as e:  # too few points or labels, a target label out of reach
                            print(f"  {run.spec.run_id}: {variant} ({axis}) H={origin} h={horizon} not scored: {e}")
                            continue
                        errors[i, j] = prediction_errors(trajectory, prediction, i, j)
                    error, persistence = errors[i, j]
                    record = {
                        "run": run.spec.run_id,
                        "axis": axis,
                        "variant": variant,
                        "origin": origin,
                        "horizon": horizon,
                        "error": error,
                        "persistence": persistence,
                        "skill": skill(error, persistence),
                        **dict(zip(("backtest", "backtest_headline"), gate_inputs(backtest, horizon), strict=True)),
                    }
                    if with_accuracy:
                        if prediction is None:
                            assert extrapolator is not None  # a method without a backtest has predicted above
                            model = type(extrapolator)(extrapolator.config)
                            model.fit(trajectory.prefix(i + 1))
                            prediction = model.predict(origin + horizon)
                        record["accuracy_origin"] = accuracy_at(origin)
                        record["accuracy_target"] = accuracy_at(origin + horizon)
                        record["accuracy_predicted"] = evaluate(prediction, run.rest_at(origin))
                    records.append(record)
    logged = {s: run.accuracy[index[s]] for s in reevaluated if run.accuracy[index[s]] is not None}
    mismatch = [s for s, a in logged.items() if abs(a - reevaluated[s]) > 1e-9]
    if mismatch:
        print(f"  note {run.spec.run_id}: re-evaluated accuracy differs from training's at steps {mismatch}")
    return records


CHECKED_BACKTEST: dict[str, bool] = {}


def prediction_errors(
    trajectory: Trajectory, prediction: dict[str, Delta], origin: int, target: int
) -> tuple[float, float]:
    """``(error, persistence)`` as ``forecast_errors`` returns them, for a prediction already made."""
    error = persistence = 0.0
    for name, predicted in prediction.items():
        error += prediction_error(trajectory, name, predicted, target)
        persistence += gram_distance(trajectory.gram(name), origin, target)
    return error, persistence


def score_key(variants: dict[str, tuple[str, dict[str, Any]]], quick: bool, model: ModelSupport) -> str:
    """Names the cached scores of a run: the variants and the analysis grid (not the extrapolators' code)."""
    settings = [sorted(variants.items()), HORIZONS, model.accuracy_pairs, MIN_ORIGIN, AXES, quick]
    if model.accuracy_variants is not None:
        settings.append(model.accuracy_variants)
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def cached_scores(
    run: CachedRun, variants: dict[str, tuple[str, dict[str, Any]]], quick: bool, cache: Path, rescore: bool
) -> list[dict[str, Any]]:
    """``score_run``, kept next to the run's snapshots so a re-analysis only scores new runs."""
    path = run_dir(run.spec, cache) / f"scores_{score_key(variants, quick, MODELS[run.spec.model])}.json"
    if path.is_file() and not rescore:
        return json.loads(path.read_text())
    records = score_run(run, variants, quick)
    atomic_write_text(path, json.dumps(records))
    return records
