"""A regime map: when is a GRPO weight trajectory predictable? (issue 12, item 5; the toy part)

    python benchmarks/forecast.py collect --workers 2   # train the grid, caching every run (resumable)
    python benchmarks/forecast.py analyze               # minutes, from the cache: forecast.{md,json,png}

``collect`` trains one GRPO run per ``RunSpec`` (learning rate x completions per step x seed) and saves,
per run, the merged LoRA deltas ``s*B@A`` (factored) every ``snapshot_every`` steps including step 0,
the held-out greedy accuracy at every snapshot and the learning rate of every optimizer step, in
``benchmarks/cache/forecast/<run id>/extrap_state.safetensors`` (``rlvr_extrap.offsets`` format; the
settings, accuracies and learning rates are its metadata). The file is written once, atomically, when
the run ends: a run in the cache is complete and is skipped on the next ``collect``; an interrupted
run leaves nothing and restarts from step 0.

Schedule: TRL's default linear decay to 0 at the last step (what users get), not constant. The fit
then has two time axes: optimizer steps, and the cumulative learning rate tau(t) (``lr_clock``),
along which the decay is undone. The cost: a run's trajectory depends on its length, so runs of
different lengths are not prefixes of each other.

Models: only ``toy`` (the embedded a+b model) is implemented. A SmolLM2 grid (LoRA at two learning
rates and two batch sizes, and full-parameter training) is added by writing a collector and an
evaluator for it in ``MODELS`` and a grid in ``GRIDS``; the analysis reads any cached run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from rlvr_extrap.lora import find_lora_modules, snapshot_deltas
from rlvr_extrap.lowrank import LowRank
from rlvr_extrap.offsets import STATE_FILE, CallbackState, load_state, save_state

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
    """None: full-parameter training (no collector implements it yet)."""

    @property
    def completions(self) -> int:
        return self.prompts_per_step * self.generations

    @property
    def run_id(self) -> str:
        adapter = f"r{self.lora_rank}" if self.lora_rank else "full"
        return (
            f"{self.model}_lr{self.learning_rate:g}_c{self.completions}_{adapter}_{self.lr_schedule}"
            f"_s{self.steps}_seed{self.seed}"
        )


def toy_grid(steps: int) -> list[RunSpec]:
    """lr {1e-3, 2e-4, 5e-5} x completions {32, 512} x seeds {0, 1}; the fast 32-completion runs first."""
    return [
        RunSpec("toy", lr, prompts, seed, steps=steps)
        for prompts in (4, 64)
        for lr in (1e-3, 2e-4, 5e-5)
        for seed in (0, 1)
    ]


GRIDS: dict[str, Callable[[int], list[RunSpec]]] = {"toy": toy_grid}


class SnapshotRecorder(TrainerCallback):
    """Merged LoRA deltas at step 0 and every ``every`` optimizer steps, and the lr of every optimizer step.

    ``lrs[s]`` is the learning rate optimizer step ``s + 1`` used (what ``lr_clock`` expects).
    """

    def __init__(self, every: int, label: str = "") -> None:
        self.every = every
        self.label = label
        self.steps: list[int] = []
        self.deltas: dict[str, list[LowRank]] = {}
        self.lrs: list[float] = []
        self.start = time.perf_counter()

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

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._snapshot(state.global_step, model)


def collect_toy(spec: RunSpec, out: Path) -> None:
    """Train one toy run and write its snapshots, accuracies and lrs to ``out/extrap_state.safetensors``."""
    from rlvr_extrap.toy.experiment import NUM_GENERATIONS, ToyRun, run_toy

    if spec.generations != NUM_GENERATIONS or spec.lora_rank is None:
        raise ValueError(f"{spec.run_id}: the toy collector runs LoRA with {NUM_GENERATIONS} generations")
    recorder = SnapshotRecorder(spec.snapshot_every, spec.run_id)
    run = ToyRun(
        spec.run_id,
        spec.steps,
        learning_rate=spec.learning_rate,
        lora_rank=spec.lora_rank,
        seed=spec.seed,
        eval_every=spec.snapshot_every,
        progress=False,
        prompts_per_step=spec.prompts_per_step,
        lr_scheduler_type=spec.lr_schedule,
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = run_toy(run, tmp, callbacks=[recorder])
    accuracy = dict(result["history"])
    history = {
        "spec": asdict(spec),
        "lrs": recorder.lrs,
        "accuracy": [accuracy[s] for s in recorder.steps],
        "train_seconds": result["train_seconds"],
    }
    save_state(CallbackState({}, recorder.steps, recorder.deltas, history), out)


def evaluate_toy(deltas: dict[str, LowRank], lora_rank: int) -> float:
    """Held-out greedy accuracy of the toy base model plus ``deltas`` (module name -> merged delta)."""
    from peft import LoraConfig, get_peft_model

    from rlvr_extrap.lora import add_to_bases
    from rlvr_extrap.toy.model import load_toy_model
    from rlvr_extrap.toy.task import evaluate_accuracy, heldout_problems

    model, tokenizer = load_toy_model()
    # LoRA B starts at zero: the effective weight is base + the added delta, as in the trained model
    config = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    add_to_bases(find_lora_modules(model), deltas)
    return evaluate_accuracy(model, tokenizer, heldout_problems())


@dataclass(frozen=True)
class ModelSupport:
    """What the benchmark needs per model: train-and-cache one run, and score predicted weights."""

    collect: Callable[[RunSpec, Path], None]
    evaluate: Callable[[dict[str, LowRank], int], float]


MODELS: dict[str, ModelSupport] = {"toy": ModelSupport(collect_toy, evaluate_toy)}


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
    MODELS[spec.model].collect(spec, run_dir(spec, cache))
    seconds = time.perf_counter() - start
    print(f"done {spec.run_id} in {seconds:.0f} s", flush=True)
    return spec.run_id, seconds


def collect(specs: list[RunSpec], workers: int, cache: Path = CACHE) -> None:
    todo = [s for s in specs if not is_cached(s, cache)]
    print(f"{len(specs)} runs in the grid, {len(specs) - len(todo)} cached, {len(todo)} to train on {workers} workers")
    if not todo:
        return
    if "toy" in {s.model for s in todo}:
        import rlvr_extrap.toy.experiment  # noqa: F401 (imported before the workers fork: later edits do not leak in)
        from rlvr_extrap.toy.model import load_toy_model

        load_toy_model()  # build the warm-started toy once, before the workers race to
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        for run_id, seconds in pool.map(_collect_one, [(s, cache) for s in todo]):
            print(f"[{time.perf_counter() - start:.0f} s] cached {run_id} ({seconds:.0f} s)", flush=True)


@dataclass
class CachedRun:
    spec: RunSpec
    steps: list[int]
    deltas: dict[str, list[LowRank]]
    accuracy: list[float]
    lrs: list[float]
    train_seconds: float


def load_run(path: Path) -> CachedRun:
    state = load_state(path)
    h = state.history
    return CachedRun(RunSpec(**h["spec"]), state.steps, state.deltas, h["accuracy"], h["lrs"], h["train_seconds"])


def load_cache(cache: Path = CACHE) -> list[CachedRun]:
    return [load_run(p) for p in sorted(cache.glob(f"*/{STATE_FILE}"))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="train the grid's missing runs into the cache")
    c.add_argument("--model", choices=sorted(GRIDS), default="toy")
    c.add_argument("--steps", type=int, default=200)
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--cache", type=Path, default=CACHE)
    a = sub.add_parser("analyze", help="the regime map from the cache")
    a.add_argument("--cache", type=Path, default=CACHE)
    a.add_argument("--quick", action="store_true", help="fewer variants and origins (a smoke test)")
    args = parser.parse_args(argv)
    if args.command == "collect":
        collect(GRIDS[args.model](args.steps), args.workers, args.cache)
    else:
        analyze(load_cache(args.cache), quick=args.quick)


def analyze(runs: list[CachedRun], quick: bool = False) -> None:
    raise NotImplementedError("the analysis lands with the skill API (rlvr_extrap.skill)")


if __name__ == "__main__":
    sys.exit(main())
