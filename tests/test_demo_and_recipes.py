"""The demo command and the recipe script, end to end on the toy model and a local JSONL fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlvr_extrap import cli
from rlvr_extrap.experiments import demo

ROOT = Path(__file__).parents[1]


def test_demo_writes_report_and_plot(toy_model_path, tmp_path, monkeypatch, capsys):
    small = (20, {"extrap_method": "linear", "extrap_snapshot_every": 5, "extrap_jump_at": [10], "extrap_horizon": 10})
    small[1]["extrap_min_skill"] = None  # 3 snapshots cannot verify a 10-step horizon; the guard's path is tested
    monkeypatch.setitem(demo.DEMO_MODELS["toy"].settings, "quick", small)
    assert cli.main(["demo", "--quick", "--out", str(tmp_path)]) == 0

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["model"] == "toy"
    assert report["base_heldout_accuracy"] == report["runs"][0]["history"][0][1]
    runs = {r["name"]: r for r in report["runs"]}
    assert set(runs) == {"vanilla", "vanilla-long", "extrap-linear"}
    for r in runs.values():
        assert {"name", "method", "grpo_steps", "heldout_accuracy", "jumps"} <= r.keys()
        assert 0.0 <= r["heldout_accuracy"] <= 1.0
    assert runs["vanilla"]["grpo_steps"] == runs["extrap-linear"]["grpo_steps"] == 20
    assert runs["vanilla-long"]["grpo_steps"] == 30
    assert [(j["step"], j["horizon"]) for j in runs["extrap-linear"]["jumps"]] == [(10, 10)]
    before_jump = [h for h in runs["vanilla"]["history"] if h[0] < 10]  # the arm branched from vanilla's state
    assert runs["extrap-linear"]["history"][: len(before_jump)] == before_jump and before_jump[0][0] == 0
    jump = runs["extrap-linear"]["jumps"][0]
    assert "guard_score_pre" in jump  # the guard is on by default
    assert runs["extrap-linear"]["effective_steps"] == 20 + (10 if jump["guard_scale"] else 0)
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "extrap-linear" in out
    assert "jump at step 10 (horizon 10): guard " in out


def _recipe(args: list[str], tmp_path: Path, env_cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RLVR_EXTRAP_CACHE": str(env_cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "grpo.py"),
            *args,
            "--output_dir",
            str(tmp_path / "out"),
            "--use_cpu",
            "true",
            "--bf16",
            "false",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--disable_tqdm",
            "true",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )


@pytest.mark.parametrize("config", ["toy_arithmetic.yaml", "qwen2.5_1.5b_gsm8k.yaml", "smollm2_math.yaml"])
def test_recipe_runs_with_a_jump(toy_model_path, tmp_path, config, request):
    overrides = [
        "--max_steps",
        "4",
        "--extrap_snapshot_every",
        "2",
        "--extrap_jump_at",
        "2",
        "--extrap_horizon",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--num_generations",
        "4",
        "--max_completion_length",
        "6",
        "--logging_steps",
        "1",
        "--extrap_min_skill",
        "None",  # 4 steps leave nothing to backtest: the jump machinery is the subject here
    ]
    if config.startswith("qwen"):  # the real-model recipe, with local paths instead of hub ids
        overrides += [
            "--model_name_or_path",
            str(toy_model_path),
            "--dataset",
            str(ROOT / "tests" / "fixtures" / "gsm8k_tiny.jsonl"),
            "--max_train_rows",
            "8",
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
        ]
    if config.startswith("smollm2"):  # the real model, converted once per session into the same cache
        request.getfixturevalue("smollm2_path")
        overrides += [
            "--lora_target_modules",
            "q_proj,v_proj",
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
            "--max_steps",
            "3",
        ]
        overrides += ["--extrap_snapshot_every", "1", "--per_device_train_batch_size", "4", "--num_generations", "2"]
        overrides += ["--max_completion_length", "4", "--extrap_guard", "false"]  # the toy runs cover the guard
    done = _recipe(["--config", str(ROOT / "recipes" / config), *overrides], tmp_path, toy_model_path.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'extrap/step': 2" in done.stdout + done.stderr
    assert (tmp_path / "out" / "adapter_config.json").exists()


def test_recipe_names_a_missing_dataset_column(toy_model_path, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1", "solution": "2"}\n')
    done = _recipe(
        ["--model_name_or_path", str(toy_model_path), "--dataset", str(bad), "--max_steps", "1"],
        tmp_path,
        toy_model_path.parent,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("grpo.py: error: --dataset") and "--question_field" in line, line


@pytest.mark.parametrize(
    ("name", "kind"), [("ddp", "MULTI_GPU"), ("zero2", "DEEPSPEED"), ("zero3", "DEEPSPEED"), ("fsdp", "FSDP")]
)
def test_accelerate_configs_load_and_name_real_files(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    path = ROOT / "recipes" / "accelerate" / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert config.distributed_type.name == kind
    launch = next(line for line in path.read_text().splitlines() if "accelerate launch" in line)
    for word in launch.split():
        if word.endswith((".yaml", ".py")):
            assert (ROOT / word).is_file(), word
