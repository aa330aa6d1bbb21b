"""The benchmarks keep the committed rows their cache lacks, and never over fresh ones or other settings."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import steps_saved_smollm2 as bench  # noqa: E402
from forecast import grids, recording, rendering, scoring, summaries  # noqa: E402

META = {"task": "math-add", "base_lr": 5e-5, "steps": 60, "jump": 20, "after": 20, "machine": {"commit": "abc1234"}}
ARM = "relex keep-residual, horizon J, ungated"


def committed(tmp_path: Path, **meta) -> Path:
    row = {"arm": ARM, "learning_rate": 5e-5, "steps": 40, "accuracy": 0.7, "history": [], "jumps": []}
    logit = {"learning_rate": 5e-5, "seed": 0, "a": 20, "b": 40, "alpha": 2.0, "accuracy": 0.72, "aims_at": 60}
    data = {
        "meta": {**META, **meta},
        "vanilla": {"5e-05/seed0": [[0, 0.4], [20, 0.6]], "5e-05/seed1": [[0, 0.4], [20, 0.5]]},
        "results": [{**row, "seed": 0}, {**row, "seed": 1}, {**row, "arm": "gone", "seed": 0}],
        "logits": [logit],
    }
    path = tmp_path / "steps_saved_smollm2.json"
    path.write_text(json.dumps(data))
    return path


def test_the_cache_lacks_rows_and_the_committed_ones_fill_them_in(tmp_path):
    previous = bench.read_previous(committed(tmp_path), META)
    curves = {(5e-5, 0): [(0, 0.4), (20, 0.65)]}  # measured here: it wins
    assert bench.carry_curves(previous, curves, [0, 1]) == {"5e-05/seed1": "commit abc1234"}
    assert curves[(5e-5, 0)] == [(0, 0.4), (20, 0.65)] and curves[(5e-5, 1)] == [(0, 0.4), (20, 0.5)]

    fresh = {"arm": ARM, "learning_rate": 5e-5, "seed": 0, "accuracy": 0.8}
    results, logits = [fresh], []
    assert bench.carry_rows(previous, results, logits, (ARM,), [5e-5], [0, 1]) == 2
    assert results[0] is fresh and [(r["seed"], r["source"]) for r in results[1:]] == [(1, "commit abc1234")]
    assert logits == [
        {"source": "commit abc1234", "learning_rate": 5e-5, "seed": 0, "a": 20, "b": 40, "alpha": 2.0, "accuracy": 0.72}
    ]  # only what was measured: analyze derives the rest again


def test_results_made_with_other_settings_are_not_carried(tmp_path):
    assert bench.read_previous(committed(tmp_path, jump=30), META) is None
    assert bench.read_previous(committed(tmp_path), {**META, "model": "toy"}) is None  # no "model": smollm2
    assert bench.results_name("math-add") == "steps_saved_smollm2" != bench.results_name("math-add2")
    assert bench.results_name("toy-arithmetic", "toy", 256) == "steps_saved_toy_c256"
    assert bench.results_name("math-add", full=True) == "steps_saved_smollm2_full"
    assert bench.read_previous(committed(tmp_path), {**META, "full": True}) is None  # LoRA rows: not full-parameter
    assert bench.read_previous(tmp_path / "missing.json", META) is None


def forecast_committed(tmp_path: Path, quick: bool = False) -> None:
    """A regime map of two runs, one of them (seed 1) since lost from the cache."""
    variants = summaries.variant_table({"linear": ("linear", {}), "relex": ("relex", {"fit_window": 3})})
    runs = [{"run": f"r_seed{s}", "spec": {"model": "toy", "seed": s}} for s in (0, 1)]
    columns = list(scoring.RECORD_COLUMNS)
    base = {"axis": "steps", "origin": 20, "horizon": 10, "error": 1.0, "persistence": 2.0, "skill": 0.75,
            "backtest": None, "backtest_headline": 0.5}  # fmt: skip
    rows = [
        {**base, "run": "r_seed0", "variant": "linear"},  # in the cache: scored again, not carried
        {**base, "run": "r_seed1", "variant": "linear", "accuracy_origin": 0.3, "accuracy_target": 0.4,
         "accuracy_predicted": 0.5},
        {**base, "run": "r_seed1", "variant": "relex"},  # its config changed since
        {**base, "run": "r_seed1", "variant": "linear", "horizon": 15},  # a horizon no longer analysed
    ]  # fmt: skip
    data = {"model": "toy", "quick": quick, "variants": variants, "runs": runs, "records_file": "f_records.json",
            "machine": {"commit": "abc1234"}}  # fmt: skip
    (tmp_path / "f.json").write_text(json.dumps(data))
    table = {"columns": columns, "rows": [[r.get(c) for c in columns] for r in rows]}
    (tmp_path / "f_records.json").write_text(json.dumps(table))


def test_the_regime_map_keeps_the_committed_runs_its_cache_lacks(tmp_path):
    forecast_committed(tmp_path)
    variants = {"linear": ("linear", {}), "relex": ("relex", {"fit_window": 4})}
    runs = [{"run": "r_seed0", "spec": {"model": "toy", "seed": 0}}]
    records: list[dict] = []
    carried = summaries.carry_runs(tmp_path, "f", "toy", False, variants, (), runs, records)
    assert carried == {"r_seed1": "commit abc1234"}
    assert [s["run"] for s in runs] == ["r_seed0", "r_seed1"]
    assert len(records) == 1 and records[0]["variant"] == "linear" and records[0]["horizon"] == 10
    assert math.isnan(records[0]["backtest"]) and records[0]["accuracy_predicted"] == 0.5  # null: NaN

    for args in (("toy", True, variants, ()), ("smollm2", False, variants, ()), ("toy", False, variants, ("x",))):
        assert summaries.carry_runs(tmp_path, "f", *args, [], []) == {}  # other settings, or not asked for


def test_a_map_written_before_the_model_key_is_the_toys(tmp_path):
    forecast_committed(tmp_path)
    path = tmp_path / "f.json"
    data = json.loads(path.read_text())
    del data["model"]
    path.write_text(json.dumps(data))
    variants = {"linear": ("linear", {})}
    assert summaries.carry_runs(tmp_path, "f", "toy", False, variants, (), [], []) == {
        "r_seed0": "commit abc1234",
        "r_seed1": "commit abc1234",
    }
    assert summaries.carry_runs(tmp_path, "f", "smollm2", False, variants, (), [], []) == {}


def test_the_gate_is_counted_at_every_sweep_bar_with_known_answers():
    spec = grids.RunSpec("toy", 1e-4, 4, 0)
    backtests, skills = [0.05, 0.15, 0.25, 0.45], [0.3, -0.2, 0.1, 0.5]  # good jumps: 1st, 3rd, 4th
    records = [
        {"run": spec.run_id, "axis": "steps", "variant": "linear from origin", "origin": 20, "horizon": 10,
         "error": 1.0, "persistence": 1.0, "skill": s, "backtest": b, "backtest_headline": b}
        for b, s in zip(backtests, skills, strict=True)
    ]  # fmt: skip
    gates = summaries.summarise({spec.run_id: spec}, records, ["linear from origin"])["gates"]
    overall = {
        g["bar"]: g
        for g in gates
        if g["source"] == "backtest" and g["truth"] == "weights" and not g["regime"] and not g["variant"]
    }
    assert sorted(overall) == sorted(summaries.SWEEP_BARS)
    # bar 0.1: jumps on 2nd-4th (one of them bad), misses the 1st: right 2 of 4, precision 2/3
    assert overall[0.1]["right"] == 0.5 and math.isclose(overall[0.1]["precision"], 2 / 3)
    assert overall[0.0]["right"] == 0.75 and overall[0.5]["jump_rate"] == 0.0 and overall[0.5]["right"] == 0.25


def test_a_regime_map_holds_one_model_and_one_kind_of_training():
    def run(model: str, lora_rank: int | None) -> recording.CachedRun:
        return recording.CachedRun(grids.RunSpec(model, 1e-5, 8, 0, lora_rank=lora_rank), [], {}, [], [], 0.0)

    assert summaries.map_of([run("smollm2", 16), run("smollm2", 16)]) == ("smollm2", "smollm2")
    assert summaries.map_of([run("smollm2", None)]) == ("smollm2", "smollm2-full")
    assert set(grids.GRIDS) >= {"smollm2", "smollm2-full"}  # what the md's collect command names
    with pytest.raises(SystemExit, match="--only _full_"):
        rendering.analyze([run("smollm2", 16), run("smollm2", None)])  # before any scoring
    with pytest.raises(SystemExit, match="one model"):
        summaries.map_of([run("toy", 8), run("smollm2", 16)])


def test_runs_are_selected_by_id_part_or_wildcard():
    lora, full = (
        "smollm2-math-add_lr0.0001_c32_r16_constant_s60_seed0",
        "smollm2-math-add_lr1e-05_c32_full_constant_s60_seed0",
    )
    add2 = "smollm2-math-add2_lr0.0001_c32_r16_constant_s100_seed0"
    pick = ("smollm2-math-add_lr*_r16",)
    assert [recording.selected(r, pick) for r in (lora, full, add2)] == [True, False, False]
    assert recording.selected(full, ("_full_",)) and not recording.selected(lora, ("_full_",))
    assert all(recording.selected(r, ()) for r in (lora, full, add2))
