"""Kill a real training process mid-run, resume from its checkpoint, and compare with an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).with_name("resume_script.py")


def _run(workdir: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(workdir), mode],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=SCRIPT.parent,
    )


def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path):
    full, broken = tmp_path / "full", tmp_path / "broken"
    done = _run(full, "full")
    assert done.returncode == 0, done.stderr[-3000:]

    crashed = _run(broken, "crash")
    assert crashed.returncode == -signal.SIGKILL  # a real kill, after checkpoint-6 and the first jump (step 4)
    assert (broken / "out" / "checkpoint-6" / "extrap_state.safetensors").exists()
    assert not (broken / "final.pt").exists()

    resumed = _run(broken, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "trajectory starts afresh" not in resumed.stderr

    history_full = json.loads((full / "history.json").read_text())
    history_resumed = json.loads((broken / "history.json").read_text())
    assert history_full == history_resumed == {"jumps": [4, 10], "snapshots": [0, 2, 4, 6, 8, 10]}
    expected, got = torch.load(full / "final.pt"), torch.load(broken / "final.pt")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)
