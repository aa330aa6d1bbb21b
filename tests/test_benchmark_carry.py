"""steps_saved_smollm2 keeps the committed rows its cache lacks, and never over fresh ones or other settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import steps_saved_smollm2 as bench  # noqa: E402

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
    assert bench.read_previous(tmp_path / "missing.json", META) is None
