"""From scored records to the regime map's tables: skill per regime, the gate's calls at each bar, held-out
accuracy of predictions, run summaries, and the committed runs a cache lacks."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from forecast.grids import RunSpec
from forecast.recording import CachedRun, selected, trajectory_of
from forecast.scoring import AXES, HORIZONS, MIN_ORIGIN, VARIANTS
from rlvr_extrap.skill.forecast import drift_to_noise, skill

GATE_BARS = (0.0, 0.2)


SWEEP_BARS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
"""Bars at which the gate's calls are also counted over the whole map (is some bar better than the default?)."""


def _spread(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), (max(values) - min(values)) / 2


def pooled_skill(records: list[dict[str, Any]]) -> float:
    """``1 - sum error / sum persistence`` over the records (origins pooled, as the backtest pools)."""
    return skill(sum(r["error"] for r in records), sum(r["persistence"] for r in records))


def regime_of(spec: RunSpec) -> tuple[float, int]:
    return spec.learning_rate, spec.completions


def summarise(specs: dict[str, RunSpec], records: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    """True skill per regime x variant x axis x horizon (pooled over origins per run; per seed, their mean and
    half-range: the md writes the mean ± its 95% interval) and how often the backtest gate made the right call;
    ``specs``: run id -> its spec."""
    by_key: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
    for r in records:
        by_key.setdefault((r["run"], r["axis"], r["variant"], r["horizon"]), []).append(r)
    regimes = sorted({regime_of(spec) for spec in specs.values()}, key=lambda x: (x[1], -x[0]))
    skill_table = []
    for lr, completions in regimes:
        members = [run_id for run_id, spec in specs.items() if regime_of(spec) == (lr, completions)]
        for variant in variants:
            for axis in AXES:
                for horizon in HORIZONS:
                    for label, lo in (("all", MIN_ORIGIN), ("late", 100)):
                        per_seed = [
                            pooled_skill(rs)
                            for run_id in members
                            if (rs := [r for r in by_key.get((run_id, axis, variant, horizon), [])
                                       if r["origin"] >= lo])
                        ]  # fmt: skip
                        if per_seed:
                            mean, spread = _spread(per_seed)
                            skill_table.append(
                                {"learning_rate": lr, "completions": completions, "variant": variant, "axis": axis,
                                 "horizon": horizon, "origins": label, "per_seed": per_seed, "mean": mean,
                                 "spread": spread}
                            )  # fmt: skip
    run_regime = {run_id: regime_of(spec) for run_id, spec in specs.items()}
    gates = []
    for bar in sorted(set(GATE_BARS) | set(SWEEP_BARS)):
        for source in ("backtest_headline", "backtest"):
            for truth in ("weights", "weights+accuracy"):
                for group in [*regimes, None] if bar in GATE_BARS else [None]:
                    pool = [r for r in records if group is None or run_regime[r["run"]] == group]
                    if entry := gate_calls(pool, bar, source, truth):
                        regime = None if group is None else {"learning_rate": group[0], "completions": group[1]}
                        gates.append({**entry, "regime": regime, "variant": None})
                for variant in VARIANTS if bar in GATE_BARS else ():
                    if entry := gate_calls([r for r in records if r["variant"] == variant], bar, source, truth):
                        gates.append({**entry, "regime": None, "variant": variant})
    return {"skill": skill_table, "gates": gates, "regimes": regimes}


def gate_calls(records: list[dict[str, Any]], bar: float, source: str, truth: str) -> dict[str, Any] | None:
    """How often ``backtest (source) >= bar`` agreed with the true outcome over ``records`` (named variants)."""
    pool = [
        r for r in records
        if not math.isnan(r["skill"]) and (truth == "weights" or "accuracy_predicted" in r) and r["variant"] in VARIANTS
    ]  # fmt: skip
    if not pool:
        return None
    calls = [r[source] >= bar for r in pool]  # NaN (no backtest yet): no jump
    outcomes = [
        r["skill"] > 0 and (truth == "weights" or r["accuracy_predicted"] >= r["accuracy_origin"]) for r in pool
    ]
    agree = [c == o for c, o in zip(calls, outcomes, strict=True)]
    good_calls = [o for c, o in zip(calls, outcomes, strict=True) if c]
    return {
        "bar": bar,
        "source": source,
        "truth": truth,
        "cases": len(pool),
        "right": statistics.mean(agree),
        "jump_rate": statistics.mean(calls),
        "good_jump_rate": statistics.mean(outcomes),
        "precision": statistics.mean(good_calls) if good_calls else math.nan,
    }


def accuracy_summary(specs: dict[str, RunSpec], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Held-out accuracy at H, at T and of the prediction, per regime x variant x axis x (H, h), mean over seeds."""
    regime = {run_id: regime_of(spec) for run_id, spec in specs.items()}
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        if "accuracy_predicted" in r:
            key = (*regime[r["run"]], r["variant"], r["axis"], r["origin"], r["horizon"])
            groups.setdefault(key, []).append(r)
    return [
        {
            "learning_rate": lr, "completions": c, "variant": variant, "axis": axis, "origin": origin,
            "horizon": horizon, "seeds": len(rs),
            "at_origin": statistics.mean(r["accuracy_origin"] for r in rs),
            "at_target": statistics.mean(r["accuracy_target"] for r in rs),
            "predicted": statistics.mean(r["accuracy_predicted"] for r in rs),
            "predicted_per_seed": [r["accuracy_predicted"] for r in rs],
        }
        for (lr, c, variant, axis, origin, horizon), rs in groups.items()
    ]  # fmt: skip


def run_summary(run: CachedRun) -> dict[str, Any]:
    trajectory = trajectory_of(run)
    half = len(trajectory) // 2
    return {
        "run": run.spec.run_id,
        "spec": asdict(run.spec),
        "steps": run.steps,
        "accuracy": run.accuracy,
        "lr_first_last": [run.lrs[0], run.lrs[-1]],
        "train_seconds": run.train_seconds,
        "drift_to_noise": drift_to_noise(trajectory),
        "drift_to_noise_first_half": drift_to_noise(trajectory.prefix(half + 1)),
        "drift_to_noise_second_half": drift_to_noise(trajectory, window=len(trajectory) - half),
    }


def map_of(runs: list[CachedRun]) -> tuple[str, str]:
    """(model, grid) of a regime map's runs: one model, and LoRA or full-parameter runs, not both."""
    models = {run.spec.model for run in runs}
    if len(models) > 1:
        raise SystemExit(f"one model per regime map, got {sorted(models)}: pass --only <model>_ to pick one")
    model = models.pop()
    if len(full := {run.spec.lora_rank is None for run in runs}) > 1:
        raise SystemExit(
            "LoRA and full-parameter runs in one regime map: pass --only _full_ for the full-parameter ones, "
            "--only '<id part>*_r' for the LoRA ones"
        )
    return model, f"{model}-full" if full.pop() else model  # the grid's name in GRIDS: what collect trains


def variant_table(variants: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Variant -> its method and config, as the results JSON holds them."""
    return json.loads(json.dumps({k: {"method": m, "config": c} for k, (m, c) in variants.items()}))


ACCURACY_COLUMNS = ("accuracy_origin", "accuracy_target", "accuracy_predicted")


def record_of(columns: list[str], row: list[Any]) -> dict[str, Any]:
    """A record from a compact row of ``<name>_records.json`` (null: NaN, or no held-out accuracy measured)."""
    record = dict(zip(columns, row, strict=True))
    if record.get("accuracy_predicted") is None:
        record = {k: v for k, v in record.items() if k not in ACCURACY_COLUMNS}
    return {k: math.nan if v is None else v for k, v in record.items()}


def carry_runs(
    out: Path,
    name: str,
    model: str,
    quick: bool,
    variants: dict[str, tuple[str, dict[str, Any]]],
    only: tuple[str, ...],
    summaries: list[dict[str, Any]],
    records: list[dict[str, Any]],
) -> dict[str, str]:
    """Add to ``summaries`` and ``records`` the committed runs the cache lacks (a cache is not kept between machines,
    the results are): same model and ``quick``, their records of the variants whose method and config are unchanged
    and of the current axes, horizons and origins. Returns each carried run's id and where it was scored."""
    path = out / f"{name}.json"
    if not path.is_file():
        return {}
    previous = json.loads(path.read_text())
    # a map without "model" is the toy's, written before the SmolLM2 maps existed
    if previous.get("model", "toy") != model or previous["quick"] != quick:
        return {}
    have = {s["run"] for s in summaries}
    runs = [
        s for s in previous["runs"] if s["run"] not in have and selected(s["run"], only)
    ]  # fmt: skip
    if not runs:
        return {}
    current = variant_table(variants)
    same = {k for k, v in previous["variants"].items() if current.get(k) == v}
    table = json.loads((out / previous["records_file"]).read_text())
    ids = {s["run"] for s in runs}
    records += [
        r for r in (record_of(table["columns"], row) for row in table["rows"])
        if r["run"] in ids and r["variant"] in same and r["axis"] in AXES and r["horizon"] in HORIZONS
        and r["origin"] >= MIN_ORIGIN
    ]  # fmt: skip
    summaries += runs
    sources = previous.get("carried", {})
    return {run_id: sources.get(run_id, f"commit {previous['machine']['commit']}") for run_id in sorted(ids)}
