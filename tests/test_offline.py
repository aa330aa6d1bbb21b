"""Offline analyze / extrapolate over saved checkpoints in every supported layout (tiny Qwen2, CPU)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from grpo_utils import tiny_config
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2ForCausalLM

from rlvr_extrap.cli import main
from rlvr_extrap.linalg.lowrank import LowRank
from rlvr_extrap.offline import commands as offline
from rlvr_extrap.offline.checkpoints import CheckpointRun
from rlvr_extrap.skill.diagnostics import module_diagnostics
from rlvr_extrap.trajectory.trajectory import Trajectory

VOCAB, STEPS, TARGET = 20, (10, 20, 30), 100
SLOPE = 0.01


def coefficient(step: float, intercept: float) -> float:
    """The known trajectory: every delta is ``coefficient(t) * direction``."""
    return SLOPE * step + intercept


def save_tokenizer(directory: Path) -> None:
    vocab = {str(i): i for i in range(VOCAB - 1)} | {"<unk>": VOCAB - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(directory)


def snapshot_dir(run_dir: Path, layout: str, step: int, kind: str) -> Path:
    if layout == "hf":
        return run_dir / f"checkpoint-{step}"
    if layout == "verl":
        return run_dir / f"global_step_{step}" / "actor" / ("huggingface" if kind == "full" else "lora_adapter")
    return run_dir / f"step_{step}"


@dataclass
class Run:
    path: Path
    base: Path
    w0: dict[str, torch.Tensor]
    directions: dict[str, torch.Tensor]  # delta(t) = (SLOPE * t + intercept) * direction
    intercept: float = 0.0
    fit_window: int | None = None

    def expected(self, step: float) -> dict[str, torch.Tensor]:
        c = coefficient(step, self.intercept)
        return {k: w + c * self.directions[k] if k in self.directions else w for k, w in self.w0.items()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("offline")


def make_base(directory: Path, shard: str | None = None) -> Path:
    torch.manual_seed(0)
    Qwen2ForCausalLM(tiny_config(VOCAB)).save_pretrained(directory, max_shard_size=shard or "5GB")
    save_tokenizer(directory)
    return directory


def make_full_run(base: Path, run_dir: Path, layout: str, *, shard: str | None = None, intercept: float = 0.0) -> Run:
    """Full checkpoints with ``W_t = W0 + c(t) V``; every tensor, norms and biases included, moves."""
    model = Qwen2ForCausalLM.from_pretrained(base)
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    directions = {k: 0.01 * torch.randn(w.shape, generator=g) for k, w in w0.items()}
    for step in STEPS:
        c = coefficient(step, intercept)
        model.load_state_dict({k: w + c * directions[k] for k, w in w0.items()})
        directory = snapshot_dir(run_dir, layout, step, "full")
        model.save_pretrained(directory, max_shard_size=shard or "5GB")
        if layout == "hf":  # trainer state that must never reach the output
            (directory / "trainer_state.json").write_text("{}")
            torch.save({}, directory / "optimizer.pt")
    return Run(run_dir, base, w0, directions, intercept, fit_window=len(STEPS) if intercept else None)


def make_lora_run(base: Path, run_dir: Path, layout: str, *, r: int = 2, alpha: int = 4, rslora: bool = False) -> Run:
    """Real PEFT adapters with ``A`` fixed and ``B_t = c(t) B``: ``s B_t A`` is rank-1-linear in the step."""
    model = Qwen2ForCausalLM.from_pretrained(base)
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config = LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=["q_proj", "v_proj", "down_proj"])
    peft_model = get_peft_model(model, config)
    g = torch.Generator().manual_seed(2)
    layers = {n.removeprefix("base_model.model."): m for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    factors = {
        n: (torch.randn(m.out_features, r, generator=g), torch.randn(r, m.in_features, generator=g))
        for n, m in layers.items()
    }
    scale = alpha / math.sqrt(r) if rslora else alpha / r
    for step in STEPS:
        with torch.no_grad():
            for name, layer in layers.items():
                b, a = factors[name]
                layer.lora_A["default"].weight.copy_(a)
                layer.lora_B["default"].weight.copy_(coefficient(step, 0.0) * b)
        peft_model.save_pretrained(snapshot_dir(run_dir, layout, step, "lora"))
        if layout == "verl":  # verl also writes config and tokenizer (no weights) next to the adapter
            tiny_config(VOCAB).save_pretrained(snapshot_dir(run_dir, layout, step, "full"))
    directions = {f"{n}.weight": scale * b @ a for n, (b, a) in factors.items()}
    return Run(run_dir, base, w0, directions)


RUN_BUILDERS: dict[str, Callable[[Path], Run]] = {
    "hf-full": lambda w: make_full_run(w / "base", w / "hf-full", "hf"),
    "hf-full-sharded": lambda w: make_full_run(
        make_base(w / "base-sharded", shard="20KB"), w / "hf-full-sharded", "hf", shard="20KB"
    ),
    "verl-full": lambda w: make_full_run(w / "base", w / "verl-full", "verl"),
    "step-full-affine": lambda w: make_full_run(w / "base", w / "step-full-affine", "step", intercept=0.05),
    "hf-lora": lambda w: make_lora_run(w / "base", w / "hf-lora", "hf"),
    "verl-lora-rslora": lambda w: make_lora_run(w / "base", w / "verl-lora-rslora", "verl", r=4, alpha=3, rslora=True),
}


@pytest.fixture(scope="module")
def runs(workdir) -> Callable[[str], Run]:
    """Build each synthetic run once, on first use."""
    make_base(workdir / "base")
    cache: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in cache:
            cache[name] = RUN_BUILDERS[name](workdir)
        return cache[name]

    return get


def extrapolate_cli(run: Run, out: Path, method: str, *extra: str) -> int:
    args = ["extrapolate", str(run.path), "--base", str(run.base), "--method", method]
    args += ["--target-step", str(TARGET), "--out", str(out), *extra]
    if run.fit_window:
        args += ["--fit-window", str(run.fit_window)]
    return main(args)


def assert_state_close(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(state) == set(expected)
    for key, want in expected.items():
        torch.testing.assert_close(state[key], want, rtol=1e-4, atol=2e-5, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("method", ["relex", "linear"])
@pytest.mark.parametrize(
    "layout", ["hf-full", "hf-full-sharded", "verl-full", "step-full-affine", "hf-lora", "verl-lora-rslora"]
)
def test_extrapolate_round_trip(runs, tmp_path, layout, method):
    run = runs(layout)
    out = tmp_path / "out"
    assert extrapolate_cli(run, out, method) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert_state_close(model.state_dict(), run.expected(TARGET))
    base_files = sorted(p.name for p in run.base.iterdir() if p.name.startswith("model"))
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("model")) == base_files
    assert {"config.json", "tokenizer.json", "extrapolation.json"} <= {p.name for p in out.iterdir()}
    assert not {"optimizer.pt", "trainer_state.json"} & {p.name for p in out.iterdir()}
    report = json.loads((out / "extrapolation.json").read_text())
    assert report["steps"] == [0, *STEPS] and report["target_step"] == TARGET
    assert set(report["modules"]) == set(run.directions)
    assert not list(tmp_path.glob(".out.tmp-*"))


@pytest.mark.parametrize("method", ["relex", "linear"])
def test_extrapolate_lora_as_adapter(runs, tmp_path, method):
    run = runs("hf-lora")
    out = tmp_path / "adapter"
    assert extrapolate_cli(run, out, method, "--as-adapter") == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] <= 2 * len(STEPS)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run.base), out).merge_and_unload()
    assert_state_close(model.state_dict(), run.expected(TARGET))


def test_alpha_scales_the_update_from_the_last_checkpoint(runs, tmp_path):
    run = runs("hf-full")
    assert extrapolate_cli(run, tmp_path / "out", "linear", "--alpha", "0.5") == 0
    state = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    last, target = run.expected(STEPS[-1]), run.expected(TARGET)
    assert_state_close(state, {k: last[k] + 0.5 * (target[k] - last[k]) for k in last})


@pytest.mark.parametrize("layout", ["hf-full", "hf-lora"])
def test_analyze_writes_diagnostics_and_plots(runs, capsys, layout):
    run = runs(layout)
    assert main(["analyze", str(run.path), "--base", str(run.base), "--target-step", str(TARGET)]) == 0
    out = run.path / "extrap_analysis"
    data = json.loads((out / "diagnostics.json").read_text())
    assert set(data["modules"]) == set(run.directions) and data["steps"] == [0, *STEPS]
    for name, d in data["modules"].items():
        assert d["energy"] == pytest.approx(1.0, abs=1e-6)
        assert d["r2"] == pytest.approx(1.0, abs=1e-6) and d["r2_heldout"] == pytest.approx(1.0, abs=1e-6)
        norm = float(run.directions[name].norm())
        assert d["delta_norm"] == pytest.approx(coefficient(STEPS[-1], 0.0) * norm, rel=1e-4)
        assert d["update_norm"] == pytest.approx(SLOPE * (TARGET - STEPS[-1]) * norm, rel=1e-4)
        assert d["slope"] * TARGET + d["intercept"] == pytest.approx(coefficient(TARGET, 0.0) * norm, rel=1e-4)
    for png in ("coefficients.png", "layers.png", "skill.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert next(iter(run.directions)) in table and "energy" in table and "forecast skill (relex)" in table
    # every backtested horizon of the last 3 checkpoints, as string keys; a straight path is predicted exactly
    horizons = {b - a for i, b in enumerate(data["steps"]) for a in data["steps"][1:i] if i >= len(data["steps"]) - 3}
    assert set(data["skill"]) == {str(h) for h in horizons}
    assert min(data["skill"].values()) == pytest.approx(1.0, abs=1e-4)


def test_analyze_detects_a_bent_trajectory(workdir, tmp_path):
    """A module whose coefficient bends at the last points scores a poor held-out R^2 and a good in-sample one."""
    run_dir = tmp_path / "run"
    g = torch.Generator().manual_seed(0)
    w0, v = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    save_file({"w": w0}, str(make_dirs(tmp_path / "base") / "model.safetensors"))
    for step, c in [(10, 1.0), (20, 2.0), (30, 3.0), (40, 4.0), (50, 4.2), (60, 4.3)]:
        save_file({"w": w0 + c * v}, str(make_dirs(run_dir / f"step_{step}") / "model.safetensors"))
    (d,) = offline.analyze(run_dir, tmp_path / "base", tmp_path / "analysis", holdout=2, method="linear")
    assert d.energy == pytest.approx(1.0) and d.r2 > 0.9 and d.r2_heldout < 0.5
    skill = json.loads((tmp_path / "analysis" / "diagnostics.json").read_text())["skill"]
    # horizon 20, linear from the base, targets 40/50/60: predictions 4, 5, 6 against 4, 4.2, 4.3 (not moving: 2, 3, 4)
    assert skill["20"] == pytest.approx(1 - (0.0 + 0.8**2 + 1.7**2) / (2.0**2 + 1.2**2 + 0.3**2), rel=1e-4)


def test_module_diagnostics_of_a_factored_trajectory_with_a_given_update():
    """The callback's use: a live (factored) trajectory and the update its jump applies."""
    g = torch.Generator().manual_seed(0)
    b, a = torch.randn(7, 2, generator=g), torch.randn(2, 5, generator=g)
    trajectory = Trajectory()
    for step in (0, 10, 20, 30):
        trajectory.append(step, {"m": LowRank(coefficient(step, 0.0) * b, a)})
    d = module_diagnostics(trajectory, "m", TARGET, update=LowRank(b, a).scaled(0.3))
    assert d.update_norm == pytest.approx(0.3 * float((b @ a).norm()), rel=1e-5)
    assert d.energy == pytest.approx(1.0) and d.r2 == pytest.approx(1.0) and d.r2_heldout == pytest.approx(1.0)
    assert d.predicted_coefficient == pytest.approx(coefficient(TARGET, 0.0) * float((b @ a).norm()), rel=1e-5)


def test_fan_in_fan_out_and_alpha_pattern(tmp_path):
    """Conv1D-style adapters (base weight is (in, out)) are transposed both ways; alpha_pattern sets the scale."""
    g = torch.Generator().manual_seed(0)
    shapes = {"q": (6, 4), "k": (5, 3)}  # (in, out) of the base weight
    factors = {n: (torch.randn(o, 2, generator=g), torch.randn(2, i, generator=g)) for n, (i, o) in shapes.items()}
    base = {f"{n}.weight": torch.randn(shape, generator=g) for n, shape in shapes.items()}
    save_file(base, str(make_dirs(tmp_path / "base") / "model.safetensors"))
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "fan_in_fan_out": True, "alpha_pattern": {"q": 8}}
    for step in (10, 20):
        directory = make_dirs(tmp_path / "run" / f"checkpoint-{step}")
        (directory / "adapter_config.json").write_text(json.dumps(config))
        tensors = {}
        for n, (b, a) in factors.items():
            tensors[f"base_model.model.{n}.lora_A.weight"] = a
            tensors[f"base_model.model.{n}.lora_B.weight"] = coefficient(step, 0.0) * b
        save_file(tensors, str(directory / "adapter_model.safetensors"))
    scales = {"q": 4.0, "k": 2.0}
    run = CheckpointRun(tmp_path / "run", tmp_path / "base")
    for n, (b, a) in factors.items():
        delta = run.trajectory(f"{n}.weight").deltas[f"{n}.weight"][-1]
        torch.testing.assert_close(delta.dense(), scales[n] * coefficient(20, 0.0) * (b @ a).T)
    out = tmp_path / "out"
    offline.extrapolate(tmp_path / "run", tmp_path / "base", out, method="relex", target_step=TARGET, as_adapter=True)
    with safe_open(out / "adapter_model.safetensors", framework="pt") as f:
        for n, (b, a) in factors.items():
            prefix = f"base_model.model.{n}"
            written = f.get_tensor(f"{prefix}.lora_B.weight") @ f.get_tensor(f"{prefix}.lora_A.weight")
            torch.testing.assert_close(written, scales[n] * coefficient(TARGET, 0.0) * (b @ a), rtol=1e-4, atol=1e-5)


def make_dirs(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def corrupt(run: Path) -> None:
    file = run / "checkpoint-20" / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-100])


def other_vocab(run: Path) -> None:
    Qwen2ForCausalLM(tiny_config(VOCAB + 4)).save_pretrained(run / "checkpoint-20")


def verl_without_weights(run: Path) -> None:
    for checkpoint in list(run.glob("checkpoint-*")):
        target = run / checkpoint.name.replace("checkpoint-", "global_step_") / "actor" / "huggingface"
        target.parent.mkdir(parents=True)
        checkpoint.rename(target)
    (run / "global_step_20" / "actor" / "huggingface" / "model.safetensors").unlink()


ERROR_CASES = {
    "no checkpoints": (
        lambda run: [p.rename(run / f"old-{p.name}") for p in list(run.iterdir())],
        [],
        "no checkpoints in",
    ),
    "mixed layouts": (lambda run: (run / "checkpoint-10").rename(run / "step_10"), [], "mixes checkpoint layouts"),
    "missing step": (None, ["--steps", "10", "99"], "step(s) [99] not found"),
    "shape mismatch": (other_vocab, [], "has shape (24, 32) but the base"),
    "corrupt file": (corrupt, [], "corrupt or truncated"),
    "verl dir without weights": (verl_without_weights, [], "merge the FSDP shards first"),
    "missing base": (None, ["--base", "/nonexistent/base"], "is not a local model directory"),
    "full run as adapter": (None, ["--as-adapter"], "--as-adapter needs a LoRA run"),
    "target before last": (None, ["--target-step", "5"], "before the last checkpoint"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_are_one_line(runs, tmp_path, capsys, case):
    mutate, extra, message = ERROR_CASES[case]
    run = runs("hf-full")
    run_dir = tmp_path / "run"
    shutil.copytree(run.path, run_dir)
    if mutate:
        mutate(run_dir)
    capsys.readouterr()
    args = ["extrapolate", str(run_dir), "--base", str(run.base), "--method", "relex"]
    args += ["--target-step", str(TARGET), "--out", str(tmp_path / "out"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err
    assert not (tmp_path / "out").exists()


def test_cross_module_methods_are_refused(runs, tmp_path):
    run = runs("hf-full")
    with pytest.raises(ValueError, match="cannot stream tensor by tensor"):
        offline.extrapolate(run.path, run.base, tmp_path / "out", method="next", target_step=TARGET)


def test_existing_output_is_refused(runs, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert extrapolate_cli(runs("hf-full"), tmp_path / "out", "relex") == 2
    assert "already exists" in capsys.readouterr().err


def test_a_failure_leaves_no_output(runs, tmp_path, monkeypatch):
    calls = []

    def failing(*args):
        calls.append(args)
        if len(calls) == 5:
            raise RuntimeError("boom")
        return predict(*args)

    predict = offline._predict
    monkeypatch.setattr(offline, "_predict", failing)
    with pytest.raises(RuntimeError, match="boom"):
        extrapolate_cli(runs("hf-full"), tmp_path / "out", "relex")
    assert list(tmp_path.iterdir()) == []


MEMORY_SCRIPT = textwrap.dedent(
    """
    import re, sys
    from pathlib import Path
    from rlvr_extrap.offline import commands as offline

    def status(field):
        return int(re.search(field + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

    root = Path(sys.argv[1])
    offline.extrapolate(root / "small/run", root / "small/base", root / "warm-up", method="relex", target_step=100)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS
    before = status("VmRSS")
    offline.extrapolate(root / "big/run", root / "big/base", root / "model", method="relex", target_step=100)
    print("PEAK", status("VmHWM") - before)
    """
)


def write_streaming_run(root: Path, n_tensors: int, shape: tuple[int, int] = (512, 512)) -> int:
    """A base and ``step_N`` full checkpoints of ``n_tensors`` float32 matrices; returns the model's bytes."""
    g = torch.Generator().manual_seed(0)
    base = {f"layers.{i}.weight": torch.randn(shape, generator=g) for i in range(n_tensors)}
    save_file(base, str(make_dirs(root / "base") / "model.safetensors"))
    for step in STEPS:
        shifted = {k: w + 1e-3 * step for k, w in base.items()}
        save_file(shifted, str(make_dirs(root / f"run/step_{step}") / "model.safetensors"))
    return sum(w.numel() * w.element_size() for w in base.values())


def test_memory_is_bounded_by_a_few_tensors_per_snapshot(tmp_path):
    """Peak resident memory of extrapolate stays far below (model size x snapshots): tensors are streamed.

    A one-tensor run goes first in the same process, so first-call allocations are not counted.
    """
    n_tensors = 48  # 1 MiB each: a 48 MiB model
    write_streaming_run(tmp_path / "small", 1)
    model_bytes = write_streaming_run(tmp_path / "big", n_tensors)
    # A fixed mmap threshold makes glibc return every freed tensor to the OS, so RSS measures live tensors,
    # not blocks the allocator keeps in its heap (tensors of real models are above any threshold anyway).
    env = {**os.environ, "TQDM_DISABLE": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env, check=True
    )
    peak = int(result.stdout.split("PEAK")[-1])
    total = model_bytes * (len(STEPS) + 1)  # base + every snapshot
    tensor = model_bytes // n_tensors
    print(
        f"peak RSS increase {peak / 2**20:.1f} MiB = {peak / tensor:.1f} tensors; all snapshots {total / 2**20:.0f} MiB"
    )
    assert peak < 0.15 * total
    assert peak < 4 * (len(STEPS) + 2) * tensor
