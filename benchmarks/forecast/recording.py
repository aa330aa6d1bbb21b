"""Training runs that record their weight trajectories into the cache (``collect``), and reading them back."""

from __future__ import annotations

import ctypes
import fnmatch
import json
import multiprocessing
import signal
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from forecast.grids import CACHE, MODELS, RunSpec, is_cached, run_dir
from rlvr_extrap.linalg.lowrank import Delta, LowRank
from rlvr_extrap.runtime.lora import find_lora_modules, snapshot_deltas
from rlvr_extrap.runtime.state import STATE_FILE, CallbackState, load_state, save_state
from rlvr_extrap.trajectory.trajectory import Trajectory


class SnapshotRecorder(TrainerCallback):
    """Merged LoRA deltas at step 0 and every ``every`` optimizer steps, and the lr of every optimizer step.

    ``lrs[s]`` is the learning rate optimizer step ``s + 1`` used (what ``lr_clock`` expects). With trainer
    checkpoints on, it saves itself into each checkpoint in the extrapolation callback's resume format (no
    offsets, no jumps), so ``restore`` continues an interrupted run and a jump arm can branch from any checkpoint.
    """

    def __init__(self, every: int, label: str = "") -> None:
        self.every = every
        self.label = label
        self.steps: list[int] = []
        self.deltas: dict[str, list[LowRank]] = {}
        self.lrs: list[float] = []
        self.start = time.perf_counter()

    def restore(self, checkpoint: Path) -> None:
        state = load_state(checkpoint)
        self.steps, self.deltas, self.lrs = state.steps, state.deltas, state.history["lrs"]

    def _snapshot(self, step: int, model: Any) -> None:
        if self.steps and self.steps[-1] == step:
            return
        for name, delta in snapshot_deltas(find_lora_modules(model), model).items():
            self.deltas.setdefault(name, []).append(delta)
        self.steps.append(step)
        print(f"  {self.label}: step {step} ({time.perf_counter() - self.start:.0f} s)", flush=True)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._snapshot(state.global_step, model)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))  # before the scheduler steps

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step % self.every == 0:
            self._snapshot(state.global_step, model)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        history = {"snapshot_steps": self.steps, "jumps": [], "skill": [], "lrs": self.lrs}
        save_state(CallbackState({}, self.steps, self.deltas, history), checkpoint)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._snapshot(state.global_step, model)


SNAPSHOT_DIR = "snapshots"
OBSERVED_STEPS = "recorder_steps"
"""The recorder's snapshot steps, in the history of the callback's state where the callback observes the run."""
OBSERVER = {
    "extrap_method": "linear",
    "extrap_fit_window": 2,
    "extrap_jump_at": [],
    "extrap_snapshot_dtype": "bfloat16",
}
"""``ExtrapolationCallback`` observing a full-parameter run (``RunSpec.observe_every``): snapshots and backtests, no
jump; bf16 points (as the recorder's snapshots), 212 MB each for SmolLM2's decoder layers."""


def linear_modules(model: torch.nn.Module) -> list[str]:
    """The modules LoRA's ``target_modules="all-linear"`` adapts: every ``nn.Linear`` but the output layer."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not output]


class DenseSnapshotRecorder(SnapshotRecorder):
    """Full-parameter runs: ``W_t - W_0`` of every trainable parameter, one bf16 file per snapshot.

    The file ``<out>/snapshots/step-<N>.safetensors`` holds each parameter's delta by name; the linear
    modules' weights (``linear_modules``: the LoRA runs' modules) are the trajectory, the rest (embeddings,
    norms) only serve to evaluate predicted weights. Nothing but the float32 ``W_0`` stays in memory, so a long
    run's memory is bounded. bf16 keeps a delta's magnitude at any scale with 3 significant digits, far below
    the step-to-step noise the analysis measures; inner products are taken in float32 (``lowrank.inner``).
    ``W_0`` is read at ``on_init_end``, before a resume loads a checkpoint's weights.
    """

    def __init__(self, every: int, out: Path, label: str = "") -> None:
        super().__init__(every, label)
        self.out = out
        self.base: dict[str, torch.Tensor] = {}
        self.linear: list[str] = []

    def on_init_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.linear = linear_modules(model)
        self.base = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    def restore(self, checkpoint: Path) -> None:
        state = load_state(checkpoint)
        self.steps, self.lrs = state.history.get(OBSERVED_STEPS, state.steps), state.history["lrs"]

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Where ``ExtrapolationCallback`` observes the run (``RunSpec.observe_every``) it has written its state into
        the checkpoint (it runs first): the recorder's steps and lrs go into that state's history; else its own."""
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        saved = load_state(checkpoint) if (checkpoint / STATE_FILE).is_file() else None
        if saved is None or saved.origin is None:
            super().on_save(args, state, control, **kwargs)
            return
        saved.history |= {OBSERVED_STEPS: self.steps, "lrs": self.lrs}
        save_state(saved, checkpoint)

    def _snapshot(self, step: int, model: Any) -> None:
        from safetensors.torch import save_file

        from rlvr_extrap.utils.files import atomic_path

        if self.steps and self.steps[-1] == step:
            return
        if not self.base:
            raise RuntimeError("DenseSnapshotRecorder: W_0 was not captured (on_init_end did not run)")
        with torch.no_grad():
            deltas = {
                n: (p.detach().float() - self.base[n]).to("cpu", torch.bfloat16).contiguous()
                for n, p in model.named_parameters()
                if n in self.base
            }
        path = self.out / SNAPSHOT_DIR / f"step-{step}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(deltas, str(tmp), metadata={"step": str(step), "linear_modules": json.dumps(self.linear)})
        self.steps.append(step)
        print(f"  {self.label}: step {step} ({time.perf_counter() - self.start:.0f} s)", flush=True)


def load_dense_snapshots(
    path: Path, steps: list[int]
) -> tuple[dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]]]:
    """(linear module -> its weight deltas, other parameter -> its deltas) over ``steps``, bf16, from the files."""
    from safetensors import safe_open

    deltas: dict[str, list[torch.Tensor]] = {}
    rest: dict[str, list[torch.Tensor]] = {}
    for step in steps:
        with safe_open(str(path / SNAPSHOT_DIR / f"step-{step}.safetensors"), "pt") as f:
            linear = {f"{m}.weight": m for m in json.loads(f.metadata()["linear_modules"])}
            for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                if key in linear:
                    deltas.setdefault(linear[key], []).append(f.get_tensor(key))
                else:
                    rest.setdefault(key, []).append(f.get_tensor(key))
    return deltas, rest


def latest_checkpoint(trainer_dir: Path) -> Path | None:
    """The newest checkpoint the recorder finished saving into (a crash between the two leaves an older one)."""
    done = [c for c in trainer_dir.glob("checkpoint-*") if (c / STATE_FILE).is_file()]
    return max(done, key=lambda c: int(c.name.rsplit("-", 1)[1]), default=None)


def run_of(spec: RunSpec, **changes: Any) -> Any:
    """The ``experiment.Run`` that trains ``spec`` (``changes``: fields to override, e.g. for a branch of it)."""
    from rlvr_extrap.experiments.experiment import Run

    settings = MODELS[spec.model].run | ({"task": spec.task} if spec.task else {})
    run = Run(
        spec.run_id,
        spec.steps,
        **settings,
        learning_rate=spec.learning_rate,
        lora_rank=spec.lora_rank,
        seed=spec.seed,
        eval_every=spec.eval_every or spec.snapshot_every,
        progress=False,
        prompts_per_step=spec.prompts_per_step,
        num_generations=spec.generations,
        lr_scheduler_type=spec.lr_schedule,
        save_every=spec.save_every,
        # full-parameter checkpoints are 1.6 GB each; an observed run keeps every one, for branches
        save_total_limit=2 if spec.lora_rank is None and spec.observe_every is None else None,
        extrap=OBSERVER | {"extrap_snapshot_every": spec.observe_every} if spec.observe_every else {},
    )
    return replace(run, **changes)


def collect_run(spec: RunSpec, out: Path) -> None:
    """Train one run and write its snapshots, accuracies and lrs to ``out/extrap_state.safetensors``.

    With ``spec.save_every``, trainer checkpoints go to ``out/trainer`` and an interrupted run resumes there.
    """
    from rlvr_extrap.experiments.experiment import run_experiment

    if spec.lora_rank is None:
        recorder: SnapshotRecorder = DenseSnapshotRecorder(spec.snapshot_every, out, spec.run_id)
    else:
        recorder = SnapshotRecorder(spec.snapshot_every, spec.run_id)
    run = run_of(spec)
    with tempfile.TemporaryDirectory() as tmp:
        trainer_dir = out / "trainer" if spec.save_every else Path(tmp)
        resume = latest_checkpoint(trainer_dir)
        if resume is not None:
            recorder.restore(resume)
            print(f"  {spec.run_id}: resuming from {resume.name}", flush=True)
        result = run_experiment(run, trainer_dir, callbacks=[recorder], resume_from=resume)
    accuracy = dict(result["history"])
    history = {
        "spec": asdict(spec),
        "lrs": recorder.lrs,
        "accuracy": [accuracy.get(s) for s in recorder.steps],  # None: not evaluated at that snapshot
        "train_seconds": result["train_seconds"],
        "resumed_at": int(resume.name.rsplit("-", 1)[1]) if resume else 0,  # train_seconds covers the steps after
    }
    if spec.lora_rank is None:  # the snapshots are the files under out/snapshots; the state file marks the run done
        history |= {"snapshot_dir": SNAPSHOT_DIR, "snapshot_dtype": "bfloat16"}
    save_state(CallbackState({}, recorder.steps, recorder.deltas, history), out)


def _collect_one(job: tuple[RunSpec, Path]) -> tuple[str, float]:
    import torch

    torch.set_num_threads(1)
    spec, cache = job
    start = time.perf_counter()
    print(f"start {spec.run_id}", flush=True)
    collect_run(spec, run_dir(spec, cache))
    seconds = time.perf_counter() - start
    print(f"done {spec.run_id} in {seconds:.0f} s", flush=True)
    return spec.run_id, seconds


def collect(specs: list[RunSpec], workers: int, cache: Path = CACHE) -> None:
    todo = [s for s in specs if not is_cached(s, cache)]
    print(f"{len(specs)} runs in the grid, {len(specs) - len(todo)} cached, {len(todo)} to train on {workers} workers")
    if not todo:
        return
    if "toy" in {s.model for s in todo}:
        from rlvr_extrap.experiments.toy.model import load_toy_model

        load_toy_model()  # build the warm-started toy once, before the workers race to
    start = time.perf_counter()
    # spawned, not forked: a child forked from a process whose torch has run an OpenMP team (a branch trained
    # before this collect, in steps_saved_smollm2) hangs in its first parallel region, as libgomp is not fork-safe
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=spawn, initializer=_die_with_parent) as pool:
        for run_id, seconds in pool.map(_collect_one, [(s, cache) for s in todo]):
            print(f"[{time.perf_counter() - start:.0f} s] cached {run_id} ({seconds:.0f} s)", flush=True)


def _die_with_parent() -> None:
    """Linux: a worker is killed when the collecting process dies (a killed ``collect`` left its workers training
    into the cache, where a restarted one raced them on the same run)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class CachedRun:
    spec: RunSpec
    steps: list[int]
    deltas: dict[str, list[Delta]]
    accuracy: list[float | None]
    lrs: list[float]
    train_seconds: float
    rest: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    """Full-parameter runs: deltas of the parameters outside the trajectory (embeddings, norms), per snapshot."""
    resumed_at: int = 0
    """The step the run's last process resumed from: ``train_seconds`` covers the steps after it."""

    def rest_at(self, step: int) -> dict[str, torch.Tensor]:
        i = self.steps.index(step)
        return {name: deltas[i] for name, deltas in self.rest.items()}


def load_run(path: Path, snapshots: bool = True) -> CachedRun:
    """A finished run; a full-parameter run's dense bf16 snapshots are read from its files (all in memory: about
    270 MB per snapshot for SmolLM2), unless ``snapshots`` is off (then it has none: its accuracy and times only)."""
    state = load_state(path)
    h = state.history
    spec = RunSpec(**h["spec"])
    deltas, rest = state.deltas, {}
    if spec.lora_rank is None and snapshots:
        deltas, rest = load_dense_snapshots(path.parent if path.is_file() else path, state.steps)
    return CachedRun(
        spec, state.steps, deltas, h["accuracy"], h["lrs"], h["train_seconds"], rest, h.get("resumed_at", 0)
    )


def trajectory_of(run: CachedRun) -> Trajectory:
    """The run's snapshots, labelled with the held-out accuracy where it was measured (alpharl regresses on it)."""
    trajectory = Trajectory()
    for i, step in enumerate(run.steps):
        trajectory.append(step, {name: deltas[i] for name, deltas in run.deltas.items()})
    trajectory.labels = {s: a for s, a in zip(run.steps, run.accuracy, strict=True) if a is not None}
    return trajectory


def selected(run_id: str, only: tuple[str, ...]) -> bool:
    """Whether ``run_id`` contains one of ``only`` (shell wildcards allowed: ``smollm2-math-add_lr*_r16``); all
    runs without ``only``."""
    return not only or any(fnmatch.fnmatchcase(run_id, f"*{o}*") for o in only)


def load_cache(cache: Path = CACHE, only: tuple[str, ...] = ()) -> list[CachedRun]:
    """The finished runs in ``cache`` that ``only`` selects (the folder name is the run id)."""
    return [load_run(p) for p in sorted(cache.glob(f"*/{STATE_FILE}")) if selected(p.parent.name, only)]
