"""Kill a real training process mid-run, resume from its checkpoint, and compare with an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlvr_extrap.runtime.state import STATE_FILE

SCRIPT = Path(__file__).with_name("resume_script.py")


def _run(workdir: Path, mode: str, kind: str = "lora") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(workdir), mode, kind],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=SCRIPT.parent,
    )


@pytest.mark.parametrize("kind", ["lora", "full-parameter"])
def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path, kind):
    full, broken = tmp_path / "full", tmp_path / "broken"
    done = _run(full, "full", kind)
    assert done.returncode == 0, done.stderr[-3000:]

    crashed = _run(broken, "crash", kind)
    assert crashed.returncode == -signal.SIGKILL  # a real kill, after checkpoint-6 and the first jump (step 4)
    assert (broken / "out" / "checkpoint-6" / "extrap_state.safetensors").exists()
    assert not (broken / "final.pt").exists()
    if kind == "full-parameter":  # the state holds the origin and names the points: it does not grow with them
        state = (broken / "out" / "checkpoint-6" / STATE_FILE).stat().st_size
        model = (broken / "out" / "checkpoint-6" / "model.safetensors").stat().st_size
        points = sorted(p.name for p in (broken / "out" / "extrap" / "points").iterdir())
        assert points == ["segment-4-step-4.safetensors", "segment-4-step-6.safetensors"]
        assert state < model, (state, model)

    resumed = _run(broken, "resume", kind)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "trajectory starts afresh" not in resumed.stderr

    history_full = json.loads((full / "history.json").read_text())
    history_resumed = json.loads((broken / "history.json").read_text())
    assert history_full == history_resumed
    assert history_full["jumps"] == [4, 10] and history_full["snapshots"] == [0, 2, 4, 6, 8, 10, 12]
    expected, got = torch.load(full / "final.pt"), torch.load(broken / "final.pt")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)


def test_a_kill_while_the_state_is_written_leaves_no_half_file_and_resume_names_the_fix(tmp_path):
    """SIGKILL half-way through the first extrap_state.safetensors (checkpoint-6, after the jump at step 4)."""
    killed = _run(tmp_path, "kill-in-save")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoint = tmp_path / "out" / "checkpoint-6"
    assert (checkpoint / "adapter_model.safetensors").is_file()  # the trainer's files come before the callback's
    (partial,) = checkpoint.glob(f".{STATE_FILE}.tmp-*")  # the half-written file, under its temporary name only
    assert partial.stat().st_size > 0 and not (checkpoint / STATE_FILE).exists()

    refused = _run(tmp_path, "resume")  # the jump at step 4 is only in the missing file: resuming would lose it
    line = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode != 0 and not (tmp_path / "final.pt").exists(), refused.stderr[-3000:]
    for text in (f"{checkpoint / STATE_FILE} is missing", "step(s) [4]", "Resume from an earlier checkpoint-N/"):
        assert text in line, f"{text!r} not in {line!r}"

    partial.rename(checkpoint / STATE_FILE)  # what a write that is not atomic would have left
    refused = _run(tmp_path, "resume")
    line = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode != 0 and not (tmp_path / "final.pt").exists(), refused.stderr[-3000:]
    for text in (f"{checkpoint / STATE_FILE}: unreadable", "corrupt or truncated", "earlier checkpoint-N/"):
        assert text in line, f"{text!r} not in {line!r}"


@pytest.mark.parametrize(
    "method, extra",
    [
        ("linear", {}),
        ("optimizer", {"extrap_min_skill": None}),
        ("optimizer", {"extrap_min_skill": None, "lora": False}),  # full-parameter: AdamW's state of dense weights
    ],
)
def test_a_jump_arm_branched_from_a_vanilla_checkpoint_equals_the_unbranched_jump_run(tmp_path, method, extra):
    """Vanilla with the callback observing (snapshots, no jump) saves checkpoint-4; an arm resumed from it with
    ``extrap_jump_at=[4]`` jumps at its first step and ends where a run that jumped at 4 from the start ends.

    The ``optimizer`` method continues AdamW's direction, which the saved trajectory does not hold: the branch
    reads it from the optimizer state the Trainer restored from the checkpoint."""
    from grpo_utils import WeightProbe, make_trainer

    from rlvr_extrap import ExtrapolationCallback

    common = {"max_steps": 6, "extrap_method": method, "extrap_snapshot_every": 2, "extrap_horizon": 2, **extra}

    def train(name: str, jump_at: list[int], **kwargs) -> tuple[ExtrapolationCallback, WeightProbe]:
        callback, probe = ExtrapolationCallback(), WeightProbe()
        trainer = make_trainer(tmp_path / name, [callback, probe], extrap_jump_at=jump_at, **common, **kwargs)
        trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
        return callback, probe

    observer, _ = train("vanilla", [], save_strategy="steps", save_steps=4)
    assert observer.jumps == [] and observer.snapshot_steps == [0, 2, 4, 6]  # observing: every snapshot, no jump
    checkpoint = tmp_path / "vanilla" / "out" / "checkpoint-4"
    assert (checkpoint / STATE_FILE).is_file()

    straight, straight_probe = train("straight", [4])
    branch, branch_probe = train("branch", [4], resume_from_checkpoint=str(checkpoint))
    assert [j.step for j in straight.jumps] == [j.step for j in branch.jumps] == [4]
    assert branch.jumps[0].applied
    assert branch.jumps[0].figures.update_norm == pytest.approx(straight.jumps[0].figures.update_norm, rel=1e-5)
    for step in (5, 6):
        for name, weight in straight_probe.at[step].items():
            torch.testing.assert_close(branch_probe.at[step][name], weight, rtol=1e-5, atol=1e-6)


def _jump_dicts(data: object) -> list[dict]:
    """Every jump record (a dict with step, horizon and target_step) anywhere in a results file."""
    if isinstance(data, dict):
        if {"step", "horizon", "target_step"} <= data.keys():
            return [data]
        data = list(data.values())
    return [j for item in data for j in _jump_dicts(item)] if isinstance(data, list) else []


def test_jump_records_read_back_as_the_results_files_hold_them():
    """Committed results load as JumpRecords; records in today's format come back byte for byte (a resumed run
    restores its records from the state file's history the same way)."""
    from rlvr_extrap.runtime.record import JumpRecord

    results = Path(__file__).parent.parent / "benchmarks" / "results"
    records = [
        j for path in sorted(results.glob("steps_saved*.json")) for j in _jump_dicts(json.loads(path.read_text()))
    ]
    exact = 0
    for data in records:
        record = JumpRecord.from_dict(data)
        assert record.applied == ("skipped" not in data)
        back = record.to_dict()
        assert {k: back[k] for k in data} == data  # files from before a figure existed read it as None
        exact += json.dumps(back) == json.dumps(data)
    assert len(records) > 100 and exact > 50
    assert any(JumpRecord.from_dict(j).guard for j in records)  # guarded jumps among them
