"""Multi-process (DDP) training: a real GRPOTrainer on 2 CPU processes (gloo), launched with torchrun.

Each test launches ``parallel_script.py`` via ``python -m torch.distributed.run --standalone --nproc_per_node 2`` in a
subprocess (about 12 s per run on 2 CPU cores). ``--standalone`` makes torchrun rendezvous on a free port it picks
itself, so concurrent runs never collide on a fixed master port. Deselect with ``-m "not distributed"``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed

from rlvr_extrap import get_extrapolator
from rlvr_extrap.runtime.state import STATE_FILE
from rlvr_extrap.trajectory.trajectory import Trajectory

SCRIPT = Path(__file__).with_name("parallel_script.py")
NPROC = 2
TIMEOUT = 300

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(
        not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
        reason="needs torch.distributed with the gloo backend",
    ),
]

# Launcher variables that must not leak in from an outer launcher (e.g. pytest itself run under torchrun).
_LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


def torchrun(outdir: Path, *script_args: str, tag: str = "rank") -> subprocess.CompletedProcess:
    """Run parallel_script.py on NPROC CPU processes (fails the test on a timeout)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(NPROC),
        str(SCRIPT),
        str(outdir),
        *script_args,
        "--tag",
        tag,
    ]
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_ENV and not k.startswith("TORCHELASTIC_")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1")
    # A new session, so that on timeout the whole group (torchrun and its workers) can be killed.
    proc = subprocess.Popen(
        cmd,
        cwd=SCRIPT.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} timed out after {TIMEOUT}s\n--- stderr tail ---\n{stderr[-5000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def launch(outdir: Path, *script_args: str, tag: str = "rank") -> dict[str, list]:
    """Run parallel_script.py on NPROC CPU processes; return per-rank results {"pt": [...], "json": [...]}."""
    done = torchrun(outdir, *script_args, tag=tag)
    assert done.returncode == 0, (
        f"{' '.join(done.args)} exited with {done.returncode}\n--- stdout tail ---\n{done.stdout[-2000:]}"
        f"\n--- stderr tail ---\n{done.stderr[-5000:]}"
    )
    return {
        "pt": [torch.load(outdir / f"{tag}{r}.pt") for r in range(NPROC)],
        "json": [json.loads((outdir / f"{tag}{r}.json").read_text()) for r in range(NPROC)],
        "outdir": outdir,
    }


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    return launch(tmp_path_factory.mktemp("ddp_plain"), "--no-extrap")


@pytest.fixture(scope="module")
def guard_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    return launch(tmp_path_factory.mktemp("ddp_guard"), "--guard")


@pytest.fixture(scope="module")
def extrap_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    return launch(tmp_path_factory.mktemp("ddp_extrap"))


def _assert_ranks_identical(run: dict[str, list]) -> None:
    reference, *others = run["pt"]
    for rank, other in enumerate(others, start=1):
        for kind in ("effective", "adapters") if "adapters" in reference else ("effective",):
            assert reference[kind].keys() == other[kind].keys()
            differing = [n for n in reference[kind] if not torch.equal(reference[kind][n], other[kind][n])]
            assert not differing, f"rank {rank} {kind} weights differ from rank 0 in {differing[:5]}"


def test_harness_runs_real_ddp_and_ranks_stay_identical(plain_run):
    """Callback disabled: the harness itself gives a real 2-process DDP run whose ranks end bit-identical."""
    for rank, report in enumerate(plain_run["json"]):
        assert report["rank"] == rank
        assert report["num_processes"] == NPROC
        assert report["backend"] == "gloo"
        assert report["distributed_type"] == "DistributedType.MULTI_CPU"
        assert report["wrapped_type"] == "DistributedDataParallel"
        assert report["callback_model_types"] == ["PeftModelForCausalLM"]  # callbacks get the unwrapped model
        assert report["global_step"] == 8
        assert report["jumps"] == [] and report["snapshot_steps"] == []
    # Each rank trained on its own completions, so identical weights mean the gradients were all-reduced.
    hashes = [report["completion_hashes"] for report in plain_run["json"]]
    assert len(hashes[0]) == 8 and all(a != b for a, b in zip(*hashes, strict=True))
    lora_b = [w for n, w in plain_run["pt"][0]["adapters"].items() if "lora_B" in n]
    assert lora_b and any(w.abs().sum() > 0 for w in lora_b)  # B starts at zero: training moved it
    _assert_ranks_identical(plain_run)


SHARDED = ["zero2", "zero3", "fsdp1", "fsdp2"]
NEEDS_DEEPSPEED = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed (pip install deepspeed)"
)
BACKENDS = ["ddp", *(pytest.param(b, marks=NEEDS_DEEPSPEED) if "zero" in b else b for b in SHARDED)]


@pytest.fixture(scope="module", params=BACKENDS)
def backend_run(request, extrap_run, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, list]]:
    if request.param == "ddp":
        return "ddp", extrap_run
    return request.param, launch(tmp_path_factory.mktemp(request.param), "--backend", request.param)


@pytest.fixture(scope="module", params=BACKENDS)
def full_backend_run(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, list]]:
    """Full-parameter GRPO (no LoRA adapter) under each backend."""
    return request.param, launch(tmp_path_factory.mktemp(f"full_{request.param}"), "--backend", request.param, "--full")


def test_jump_keeps_ranks_identical_and_equals_the_single_process_prediction(backend_run):
    """DDP, ZeRO-2/3, FSDP1/2 (linear, jump at 4): every rank jumps, stays whole-weight identical, and lands on the
    prediction a single-process extrapolator makes from the same trajectory; the jump is still there a step later
    (no master copy or shard undid it)."""
    _check_jump(*backend_run)


def test_full_parameter_jump_survives_the_optimizer_under_every_backend(full_backend_run):
    """The same in full-parameter runs, where the jump edits trainable weights: under ZeRO the optimizer's float32
    master partitions too (else the next step copies the old master back over the jump: the last check fails)."""
    backend, run = full_backend_run
    assert run["json"][0]["callback_module_names"][0].startswith("model.layers.0.")
    _check_jump(backend, run)


def _check_jump(backend: str, run: dict[str, list]) -> None:
    for report in run["json"]:
        assert report["num_processes"] == NPROC
        assert report["jumps"] == [4] and report["jumps_skipped"] == []
        assert report["snapshot_steps"] == [0, 2, 4, 6, 8]
        assert report["global_step"] == 8
        assert report["callback_module_names"] == run["json"][0]["callback_module_names"]
        assert not any("_fsdp_wrapped_module" in n for n in report["callback_module_names"])
    assert (
        run["json"][0]["distributed_type"]
        == {
            "ddp": "DistributedType.MULTI_CPU",
            "zero2": "DistributedType.DEEPSPEED",
            "zero3": "DistributedType.DEEPSPEED",
            "fsdp1": "DistributedType.FSDP",
            "fsdp2": "DistributedType.FSDP",
        }[backend]
    )
    _assert_ranks_identical(run)

    start, before = run["pt"][0]["start"], run["pt"][0]["before"]
    trajectory = Trajectory()
    for step in (0, 2, 4):
        weights = start if step == 0 else before[step]
        trajectory.append(step, {n: w - start[n] for n, w in weights.items()})
    extrapolator = get_extrapolator("linear")
    extrapolator.fit(trajectory)
    predicted = extrapolator.predict(8)
    for rank_run in run["pt"]:
        for name, delta in predicted.items():
            torch.testing.assert_close(rank_run["after"][4][name], start[name] + delta, rtol=1e-4, atol=1e-6)
    after4, next5 = run["pt"][0]["after"][4], run["pt"][0]["before"][5]
    moved_from_jump = sum(float((next5[n] - after4[n]).norm() ** 2) for n in after4) ** 0.5
    jump = sum(float((after4[n] - before[4][n]).norm() ** 2) for n in after4) ** 0.5
    assert moved_from_jump < 0.5 * jump  # one training step moves far less than the jump did


def test_jump_under_ddp_changes_the_weights(plain_run, extrap_run):
    """Same seeds with and without the callback: the jump (held in the base weights) makes the runs differ."""
    plain, jumped = plain_run["pt"][0]["effective"], extrap_run["pt"][0]["effective"]
    assert plain.keys() == jumped.keys()
    assert any(not torch.equal(plain[n], jumped[n]) for n in plain)


def test_a_plan_made_beside_training_lands_at_the_same_step_on_every_rank(tmp_path):
    """extrap_wait_for_fit=False under DDP: the main process says when the plan is ready, every rank lands it at that
    step end (before the snapshot at 6 at the latest), and the ranks stay identical."""
    run = launch(tmp_path, "--beside")
    records = [report["jump_records"] for report in run["json"]]
    assert all(r == records[0] for r in records)
    (record,) = records[0]
    assert record["step"] == 4 and "skipped" not in record and 5 <= record["landed_step"] <= 6
    assert run["json"][0]["snapshot_steps"] == [0, 2, 4, 6, 8]
    _assert_ranks_identical(run)
    landed, before = run["pt"][0]["after"][record["landed_step"]], run["pt"][0]["before"][record["landed_step"]]
    assert any(not torch.equal(landed[n], before[n]) for n in landed)


def test_guard_under_ddp_decides_the_same_on_every_rank(guard_run):
    """The probe is split across ranks and its rewards gathered: every rank sees the same scores and decision."""
    records = [report["jump_records"] for report in guard_run["json"]]
    assert len(records[0]) == 1 and "guard_score_pre" in records[0][0]
    assert records[0][0]["guard_prompts"] == 8
    assert records[0] == records[1]
    _assert_ranks_identical(guard_run)


@pytest.fixture(scope="module", params=BACKENDS)
def bf16_run(request, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    return launch(tmp_path_factory.mktemp(f"bf16_{request.param}"), "--backend", request.param, "--bf16-base")


def test_a_bf16_base_holds_the_same_offset_on_every_rank_under_every_backend(bf16_run):
    """A bfloat16 base: the jump is held as a float32 offset beside the LoRA path, bit-identical on every rank, and
    every forward pass after the jump adds it (DDP, ZeRO-2/3, FSDP1/2)."""
    for report in bf16_run["json"]:
        assert report["jumps"] == [4] and report["jumps_skipped"] == []
        (record,) = report["jump_records"]
        assert record["landed_fraction"] == pytest.approx(1.0, abs=1e-6) and record["landed_noise"] < 1e-4
        uses = report["offset_uses"]
        assert all(str(step) not in uses for step in range(1, 5)) and all(uses.get(str(s), 0) > 0 for s in (5, 8))
    _assert_ranks_identical(bf16_run)  # the effective weights include the offsets
    offsets = [rank_run["offsets"] for rank_run in bf16_run["pt"]]
    assert offsets[0] and offsets[0].keys() == offsets[1].keys()
    assert all(torch.equal(offsets[0][n], offsets[1][n]) for n in offsets[0])


def test_ddp_resume_restores_the_jump_on_every_rank(extrap_run):
    """Resume the jumped run from its step-6 checkpoint (after the jump): every rank gets the saved offsets back."""
    resumed = launch(extrap_run["outdir"], "--resume", "checkpoint-6", tag="resumed")
    for report in resumed["json"]:
        assert report["jumps"] == [4] and report["snapshot_steps"] == [0, 2, 4, 6, 8]
        assert report["global_step"] == 8
    _assert_ranks_identical(resumed)
    for name, weight in extrap_run["pt"][0]["effective"].items():
        torch.testing.assert_close(resumed["pt"][0]["effective"][name], weight, rtol=1e-5, atol=1e-6)


def test_ddp_resume_from_a_truncated_state_file_stops_every_rank_naming_it(extrap_run, tmp_path):
    """The main process reads the state: its one-line error must reach every rank (none trains on or waits)."""
    checkpoint = tmp_path / "out" / "checkpoint-6"
    shutil.copytree(extrap_run["outdir"] / "out" / "checkpoint-6", checkpoint)
    state = checkpoint / STATE_FILE
    state.write_bytes(state.read_bytes()[:-100])
    done = torchrun(tmp_path, "--resume", "checkpoint-6")
    assert done.returncode != 0 and not list(tmp_path.glob("rank*.json")), done.stderr[-5000:]
    errors = [line for line in done.stderr.splitlines() if "StateFileError: " in line]
    assert len(errors) >= NPROC, done.stderr[-5000:]  # raised on each rank
    assert all(f"{state}: unreadable" in line and "earlier checkpoint-N/" in line for line in errors), errors
