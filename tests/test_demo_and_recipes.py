"""The demo command and the recipe script, end to end on the toy model and a local JSONL fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlvr_extrap.experiments import demo

ROOT = Path(__file__).parents[1]


DEMO = """
import sys
from rlvr_extrap import cli
from rlvr_extrap.experiments import demo
small = {"extrap_method": "linear", "extrap_snapshot_every": 5, "extrap_jump_at": [10], "extrap_horizon": 5}
demo.DEMO_MODELS["toy"].settings["quick"] = (20, small)
sys.exit(cli.main(["demo", "--quick", "--out", sys.argv[1]]))
"""


def test_demo_tells_its_story_quietly(toy_model_path, tmp_path):
    """Three arms from one vanilla prefix, a figure, a trainer log per arm, and a console of bars and a summary."""
    env = {**os.environ, "RLVR_EXTRAP_CACHE": str(toy_model_path.parent), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", DEMO, str(tmp_path)]  # a process of its own: warnings print as a user sees them
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["model"] == "toy"
    assert report["base_heldout_accuracy"] == report["runs"][0]["history"][0][1]
    runs = {r["name"]: r for r in report["runs"]}
    assert list(runs) == ["vanilla", "vanilla-long", "extrap-linear", "extrap-linear-ungated"]
    assert [runs[n]["grpo_steps"] for n in runs] == [20, 25, 20, 20]
    before_jump = [h for h in runs["vanilla"]["history"] if h[0] < 10]  # the arms branched from vanilla's state
    for name in ("extrap-linear", "extrap-linear-ungated"):
        assert runs[name]["history"][: len(before_jump)] == before_jump and before_jump[0][0] == 0
        assert [(j["step"], j["horizon"]) for j in runs[name]["jumps"]] == [(10, 5)]
        assert runs[name]["outcome"] == demo.jump_outcome(
            runs[name]["jumps"][0], report["gate"]["skill"], None if name.endswith("ungated") else 0.2
        )
    assert report["gate"] == {"step": 10, "horizon": 5, "min_skill": 0.2, "skill": report["gate"]["skill"]}
    gated, ungated = runs["extrap-linear"]["jumps"][0], runs["extrap-linear-ungated"]["jumps"][0]
    assert ("skipped" in gated) == (report["gate"]["skill"] is None or report["gate"]["skill"] < 0.2)
    assert "guard_score_pre" in ungated  # no gate: the plan is made and the guard (on by default) probes it
    assert runs["extrap-linear-ungated"]["effective_steps"] == 20 + (5 if "skipped" not in ungated else 0)
    assert (tmp_path / demo.FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    evaluated = {"vanilla": [0, 5, 10, 15, 20, 25], "extrap": [10, 15, 20], "extrap-ungated": [10, 15, 20]}
    for arm, evaluations in evaluated.items():  # every step's log dict, and every evaluation, in the arm's file
        entries = [json.loads(line) for line in (tmp_path / arm / "trainer_log.jsonl").read_text().splitlines()]
        assert [e["step"] for e in entries if "loss" in e] == list(range(evaluations[0] + 1, evaluations[-1] + 1))
        assert [e["step"] for e in entries if "heldout_accuracy" in e] == evaluations
        messages = [e["message"] for e in entries if "message" in e]  # this package's log, off the console
        assert arm == "vanilla" or any(m.startswith("extrapolation: resumed from") for m in messages), messages
        if arm == "extrap" and "skipped" in gated:
            assert any(m.startswith("extrapolation jump at step 10 not taken") for m in messages), messages

    out_lines = done.stdout.splitlines()
    assert len(out_lines) <= 12, done.stdout
    assert out_lines[-1] == f"wrote {tmp_path / 'report.json'} and {tmp_path / demo.FIGURE}"
    for name, r in runs.items():  # the summary: a row per arm, with what its jump did
        assert any(line.startswith(f"{name} ") and line.endswith(r.get("outcome", "")) for line in out_lines), name
    # bitsandbytes (a test extra, for tests/test_qlora.py), imported by peft where it is installed, looks for a CPU
    # kernel on the hub on CPUs with AVX512-BF16, and offline says so twice at import: nothing of this package's
    stderr = "\n".join(line for line in done.stderr.splitlines() if "kernels-community/" not in line)
    console = done.stdout + stderr
    assert "{'" not in console  # no per-step dicts
    for noise in ("Warning", "warn", "do not match", "Loading weights"):
        assert noise not in console, noise
    bars = [s.strip() for s in stderr.replace("\r", "\n").splitlines() if s.strip()]
    assert bars and all(s.split(":")[0] in runs for s in bars), bars  # stderr holds only the arms' progress bars


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


@pytest.mark.parametrize(
    "config",
    [
        "toy_arithmetic.yaml",
        "qwen2.5_1.5b_gsm8k.yaml",
        "qwen2.5_1.5b_gsm8k_full.yaml",
        "smollm2_math.yaml",
    ],
)
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
    saved = "model.safetensors" if config.endswith("_full.yaml") else "adapter_config.json"
    assert (tmp_path / "out" / saved).exists()


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


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")))
def test_every_recipe_parses_into_the_recipe_settings(config):
    """Every recipe's keys are settings and its values parse (smollm2_math_full.yaml is too slow to train in CI:
    its full-parameter path runs in qwen2.5_1.5b_gsm8k_full.yaml on the toy model)."""
    sys.path.insert(0, str(ROOT / "recipes"))
    try:
        import grpo
    finally:
        sys.path.pop(0)
    script, args = grpo.parse_arguments(
        ["--config", str(ROOT / "recipes" / config), "--use_cpu", "true", "--bf16", "false"]
    )
    assert args.extrap_method is not None and script.full_parameter == config.endswith("_full.yaml")
