"""The steps-saved statistics against hand-computed answers, and the committed headline ratios against their data."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import stats  # noqa: E402

CURVE = [(0, 0.2), (10, 0.4), (20, 0.8)]


def test_steps_to_reach_interpolates_between_evaluations():
    assert stats.steps_to_reach(CURVE, 0.6) == pytest.approx(15.0)  # 10 + 10 * (0.6 - 0.4) / (0.8 - 0.4)
    assert stats.steps_to_reach(CURVE, 0.8) == pytest.approx(20.0)  # reached at the last evaluation
    assert stats.steps_to_reach([(0, 0.2), (10, 0.7), (20, 0.5), (30, 0.9)], 0.6) == pytest.approx(8.0)  # first time


def test_steps_to_reach_at_the_first_point_and_never():
    assert stats.steps_to_reach(CURVE, 0.1) == 0.0 and isinstance(stats.steps_to_reach(CURVE, 0.2), float)
    assert stats.steps_to_reach(CURVE, 0.81) is None
    assert stats.steps_to_reach([(5, 0.7)], 0.6) == 5.0 and stats.steps_to_reach([(5, 0.7)], 0.8) is None
    assert stats.steps_to_reach([], 0.5) is None


def test_first_step_reaching_does_not_interpolate():
    assert stats.first_step_reaching(CURVE, 0.6) == 20  # steps_to_reach: 15.0
    assert stats.first_step_reaching(CURVE, 0.4 + 1e-12) == 10  # within 1e-9: reached
    assert stats.first_step_reaching(CURVE, 0.1) == 0
    assert stats.first_step_reaching(CURVE, 0.81) is None


def test_ratio_of_takes_the_rate_that_got_there_first():
    curves = {1e-4: CURVE, 2e-4: [(0, 0.2), (10, 0.7), (20, 0.9)]}
    ratio, bound, rate = stats.ratio_of(curves, 0.6, 10)
    assert (ratio, bound, rate) == (pytest.approx(0.8), False, 2e-4)  # 2e-4 reaches 0.6 at step 8; 8 / 10
    assert stats.ratio_of({1e-4: CURVE}, 0.6, 10) == (pytest.approx(1.5), False, 1e-4)  # 15 / 10: steps saved


def test_ratio_of_is_a_lower_bound_when_no_rate_gets_there():
    curves = {1e-4: CURVE, 2e-4: [(0, 0.2), (30, 0.5)]}
    assert stats.ratio_of(curves, 0.95, 20) == (1.5, True, None)  # the longest budget, 30 steps, / 20


def test_mean_interval_is_a_95_percent_t_interval():
    mean, sd, half = stats.mean_interval([1.0, 2.0, 3.0])
    assert (mean, sd) == (2.0, 1.0)
    assert half == pytest.approx(4.303 / math.sqrt(3), rel=1e-9)  # t(0.975, df=2) = 4.303
    mean, sd, half = stats.mean_interval([1.0, 3.0])
    assert (mean, sd, half) == (2.0, pytest.approx(math.sqrt(2)), pytest.approx(12.706, rel=1e-9))  # df=1
    values = [0.0, 1.0] * 3 + [0.5]  # n = 7: t(df=6) = 2.447, not a 2.0 fallback
    assert stats.mean_interval(values)[2] == pytest.approx(2.447 * stats.mean_interval(values)[1] / math.sqrt(7))


def test_mean_interval_of_fewer_than_two_values():
    assert stats.mean_interval([0.7])[0] == 0.7 and all(math.isnan(x) for x in stats.mean_interval([0.7])[1:])
    assert all(math.isnan(x) for x in stats.mean_interval([]))


@pytest.mark.parametrize(
    ("df", "t"), [(1, 12.706), (2, 4.303), (9, 2.262), (30, 2.042), (31, 2.040), (60, 2.000), (120, 1.980)]
)
def test_t_quantiles(df, t):
    assert stats.t95(df) == pytest.approx(t, abs=6e-4)


@pytest.mark.parametrize(
    "name", ["steps_saved_smollm2", "steps_saved_smollm2_add2", "steps_saved_toy_c256", "steps_saved_smollm2_full"]
)
def test_the_committed_headline_ratios_follow_from_their_data(name):
    """Each arm's steps ratios (vs best, vs own rate) and accuracies, recomputed from the committed vanilla curves and
    arm results: the means and standard deviations as committed; the 95% half-widths within 0.1% (the committed ones
    used t rounded to two decimals)."""
    import steps_saved_smollm2 as bench

    data = json.loads((BENCHMARKS / "results" / f"{name}.json").read_text())
    curves = {
        (float(key.split("/")[0]), int(key.split("/seed")[1])): [tuple(p) for p in curve]
        for key, curve in data["vanilla"].items()
    }
    measured = ("learning_rate", "seed", "a", "b", "alpha", "accuracy")
    logits = [{k: row[k] for k in measured} for row in data["logits"]]
    again = bench.analyze(data["results"], curves, logits, data["meta"])
    assert len(again["rows"]) == len(data["rows"])
    for new, old in zip(again["rows"], data["rows"], strict=True):
        same = ("arm", "learning_rate", "lower_bound", "best_rates", "seeds_vs_best")
        assert [new[k] for k in same] == [old[k] for k in same]
        for key in ("accuracy", "ratio_vs_best", "ratio_vs_own"):
            mean, sd, half = new[key]
            was = [math.nan if x is None else x for x in old[key]]  # null: NaN (one seed, or no seed vs best)
            assert (mean, sd) == tuple(pytest.approx(x, rel=1e-12, nan_ok=True) for x in was[:2]), key
            assert half == pytest.approx(was[2], rel=1e-3, nan_ok=True), key
    for new, old in zip(again["logits"], data["logits"], strict=True):
        committed = math.nan if old["ratio_vs_best"] is None else old["ratio_vs_best"]  # null: NaN
        assert new["ratio_vs_best"] == pytest.approx(committed, nan_ok=True)
        assert new["lower_bound"] == old["lower_bound"]


def test_with_interval_writes_the_95_percent_interval_or_the_value_alone():
    assert stats.mean_with_interval([1.0, 2.0, 3.0], 2) == "2.00 ± 2.48"  # 4.303 / sqrt(3); sd and half-range: 1.00
    assert stats.mean_with_interval([0.7], 3) == "0.700"  # one value: no interval
    assert stats.with_interval(math.nan, math.nan, 2) == "–"


def test_every_renderer_writes_a_labelled_95_percent_interval():
    """The ± cell of each results renderer for per-seed values 1, 2, 3: the 95% interval (2.48), not the sd or the
    half-range (both 1.00), and the label next to it."""
    import steps_saved
    import steps_saved_smollm2
    from forecast import rendering

    skill = {"learning_rate": 1e-4, "completions": 32, "variant": "linear from origin", "axis": "steps",
             "horizon": 10, "origins": "all", "per_seed": [1.0, 2.0, 3.0], "mean": 2.0}  # fmt: skip
    forecast_md = "\n".join(
        rendering._true_skill_section({"skill": [skill], "regimes": [(1e-4, 32)]}, [skill["variant"]])
    )
    assert "| linear from origin | 2.00 ± 2.48 / – | – / – |" in forecast_md

    machine = {"processor": "x", "cpu_count": 2, "torch": "2", "cuda": None, "commit": "abc", "command": "c",
               "platform": "p"}  # fmt: skip
    row = {"arm": "a", "learning_rate": 1e-3, "lora_rank": 8, "grpo_steps": 150, "effective_steps": 250,
           "accuracy": [1.0, 2.0, 3.0], "vanilla_accuracy_same_steps": [2.0], "steps_ratio": [1.0, 2.0, 3.0],
           "steps_ratio_lower_bound": False}  # fmt: skip
    toy_md = steps_saved.render_markdown({"machine": machine, "seeds": [0, 1, 2], "vanilla_steps": 300, "rows": [row]})
    assert "| 2.000 ± 2.484 | 2.000 | 2.000 ± 2.484 |" in toy_md

    interval, one = stats.mean_interval([1.0, 2.0, 3.0]), stats.mean_interval([2.0])
    arm = {"arm": "a", "learning_rate": 5e-5, "seeds": 3, "accuracy": interval, "vanilla_same_steps": one,
           "ratio_vs_best": interval, "seeds_vs_best": 3, "ratio_vs_own": interval, "lower_bound": False,
           "jumps": [], "wall_ratio": one, "jump_seconds": one, "jump_share": one}  # fmt: skip
    meta = {"machine": machine, "device": "cpu", "task": "math-add", "base_lr": 5e-5, "seeds": [0, 1, 2],
            "steps": 60, "jump": 20, "after": 20}  # fmt: skip
    smollm2_md = steps_saved_smollm2.render({"meta": meta, "vanilla": {}, "rows": [arm], "logits": []})
    assert "| 2.000 ± 2.484 | 2.000 | 2.000 ± 2.484 | 2.000 ± 2.484 | 2.000 |" in smollm2_md
    import presets_smollm2

    preset = {"arm": "a", "seeds": [0, 1, 2], "accuracy": interval, "minus_vanilla": interval, "ratio_vs_own": interval,
              "ratio_vs_best": interval, "seeds_vs_best": 3, "own_is_bound": False, "best_is_bound": False,
              "per_seed": {}, "jumps": {}}  # fmt: skip
    preset_meta = {"machine": machine, "seeds": [0, 1, 2], "targets": {}, "steps": 12, "jump": 8, "horizon": 4,
                   "m": 4, "n": 8, "eval_every": 4, "rates": [1.0]}  # fmt: skip
    presets_md = presets_smollm2.render([preset], preset_meta)
    assert "| a | 3 | 2.000 ± 2.484 | 2.000 ± 2.484 | 2.000 ± 2.484 | 2.000 ± 2.484 |" in presets_md
    for md in (forecast_md, toy_md, smollm2_md, presets_md):
        assert stats.INTERVAL in md and "sd" not in md.replace("seeds", "") and "half-range" not in md


@pytest.mark.parametrize(
    ("renderer", "name"),
    [("forecast", n) for n in ("forecast", "forecast_smollm2", "forecast_smollm2_add2", "forecast_smollm2_full")]
    + [("steps_saved", n) for n in ("steps_saved", "steps_saved_guard")]
    + [
        ("steps_saved_smollm2", n)
        for n in ("steps_saved_smollm2", "steps_saved_smollm2_add2", "steps_saved_toy_c256", "steps_saved_smollm2_full")
    ]
    + [("full_param_cost", "full_param_cost")]
    + [("presets_smollm2", n) for n in ("presets_smollm2", "presets_smollm2_next")],
)
def test_the_committed_markdown_is_its_json_rendered(renderer, name):
    """Each results md with ± cells is what its renderer makes of the committed JSON: no number edited by hand."""
    path = BENCHMARKS / "results" / f"{name}.json"
    if renderer == "forecast":
        from forecast import rendering

        markdown = rendering.render_markdown(rendering.load_results(path))
    elif renderer == "steps_saved":
        import steps_saved

        markdown = steps_saved.render_markdown(json.loads(path.read_text()))
    elif renderer == "full_param_cost":
        import full_param_cost

        markdown = full_param_cost.markdown(json.loads(path.read_text()))
    elif renderer == "presets_smollm2":
        import presets_smollm2

        data = json.loads(path.read_text())
        markdown = presets_smollm2.render(data["rows"], data["meta"])
    else:
        import steps_saved_smollm2

        markdown = steps_saved_smollm2.render(steps_saved_smollm2.load_results(path))
    assert markdown == path.with_suffix(".md").read_text()


def test_full_param_cost_shares_are_per_step_and_leave_out_the_warm_up():
    """A snapshot's share of a step: each step's mean read over that step's time, step 1 (warm-up) left out."""
    import full_param_cost

    rows = [{"step_seconds": 100.0, "read": [50.0]}, {"step_seconds": 10.0, "read": [0.1, 0.3]},
            {"step_seconds": 20.0, "read": [0.4, 0.8]}, {"step_seconds": 40.0, "read": 1.6}]  # fmt: skip
    mean, _, half = full_param_cost._share(rows, "read")
    assert mean == pytest.approx(0.03) and half == pytest.approx(stats.t95(2) * 0.01 / math.sqrt(3))
    assert full_param_cost._mean(rows, "step_seconds")[0] == pytest.approx(70 / 3)


@pytest.mark.parametrize("name", ["presets_smollm2", "presets_smollm2_next"])
def test_the_committed_preset_rows_follow_from_their_runs(name):
    """presets_smollm2: each arm's accuracy, its difference from vanilla and the steps ratios, recomputed from the
    committed runs (the curves and end accuracies each arm and vanilla rate reached), are the committed rows."""
    import presets_smollm2 as bench

    data = json.loads((BENCHMARKS / "results" / f"{name}.json").read_text())
    runs = {int(seed): seed_runs for seed, seed_runs in data["runs"].items()}
    again = bench.analyze(runs, data["meta"]["rates"])
    assert [r["arm"] for r in again] == [r["arm"] for r in data["rows"]]
    for new, old in zip(again, data["rows"], strict=True):
        assert new["seeds"] == old["seeds"] and new["seeds_vs_best"] == old["seeds_vs_best"]
        for key in ("accuracy", "minus_vanilla", "ratio_vs_own", "ratio_vs_best"):
            was = [math.nan if x is None else x for x in old[key]]  # null: NaN (one seed, or no seed vs best)
            assert list(new[key]) == [pytest.approx(x, rel=1e-12, nan_ok=True) for x in was], key


def test_preset_steps_ratios_by_hand():
    """An arm at 0.6 after 12 steps: vanilla at 1x reaches 0.6 at step 8 (ratio 8 / 12), at 2x at step 6 (half-way
    between 4 and 8: vs best 0.5); its difference from vanilla (0.7 at 12) is -0.1."""
    import presets_smollm2 as bench

    def run(accuracy, history, lr=2e-4):
        return {"heldout_accuracy": accuracy, "history": history, "learning_rate": lr, "grpo_steps": 12, "jumps": []}

    one = {
        bench.VANILLA: run(0.7, [[0, 0.3], [4, 0.4], [8, 0.6], [12, 0.7]]),
        "arm": run(0.6, [[0, 0.3], [12, 0.6]]),
        bench.vanilla_name(2.0): run(0.8, [[0, 0.3], [4, 0.5], [8, 0.7], [12, 0.8]], lr=4e-4),
    }
    rows = {r["arm"]: r for r in bench.analyze({0: one}, [1.0, 2.0])}
    assert rows["arm"]["ratio_vs_own"][0] == pytest.approx(8 / 12)
    assert rows["arm"]["ratio_vs_best"][0] == pytest.approx(6 / 12)
    assert rows["arm"]["minus_vanilla"][0] == pytest.approx(-0.1)
    assert rows[bench.VANILLA]["ratio_vs_own"][0] == pytest.approx(1.0)
    no_faster = {r["arm"]: r for r in bench.analyze({0: {k: v for k, v in one.items() if "x2" not in k}}, [1.0, 2.0])}
    assert math.isnan(no_faster["arm"]["ratio_vs_best"][0]) and no_faster["arm"]["seeds_vs_best"] == 0
