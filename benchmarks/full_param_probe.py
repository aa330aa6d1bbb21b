"""A short full-parameter SmolLM2 probe through the regime map's collector (``benchmarks/forecast``): how far does
one step move the weights?

    nice -n 10 python benchmarks/full_param_probe.py --lr 1e-5 --steps 2

Trains ``steps`` GRPO steps of the ``smollm2-full`` grid's settings (math-mul, 8 prompts x 4 completions, constant
lr) with a snapshot after every step, into ``--work`` (not the cache), and writes
``benchmarks/results/forecast_full_probe.{md,json}``: the movement of the linear modules per step (the norm of
``W_t - W_{t-1}`` over all of them), ``lr sqrt(numel)`` (AdamW's first step moves every weight by about lr),
held-out accuracy at the start and the end, time and peak memory. It is the end-to-end check of the
full-parameter collector too (``DenseSnapshotRecorder``, ``load_run``, the Gram matrices of bf16 deltas).
"""

from __future__ import annotations

import argparse
import math
import resource
import shutil
import sys
import time
from pathlib import Path

import torch
from common import RESULTS, machine, write_results
from forecast.grids import RunSpec
from forecast.recording import collect_run, load_run, trajectory_of

from rlvr_extrap.skill.forecast import gram_distance


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/full_param_probe"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    spec = RunSpec(
        "smollm2", args.lr, 8, 0, steps=args.steps, generations=4, snapshot_every=1, lr_schedule="constant",
        lora_rank=None, task="math-mul", eval_every=args.steps,
    )  # fmt: skip
    out = args.work / spec.run_id
    shutil.rmtree(out, ignore_errors=True)
    torch.set_num_threads(2)
    start = time.perf_counter()
    collect_run(spec, out)
    seconds = time.perf_counter() - start
    run = load_run(out)
    trajectory = trajectory_of(run)
    moves = [
        math.sqrt(sum(gram_distance(trajectory.gram(n), i, i + 1) for n in trajectory.modules))
        for i in range(len(trajectory) - 1)
    ]
    numel = sum(d[0].numel() for d in run.deltas.values())
    data = {
        "machine": machine(),
        "run": spec.run_id,
        "note": args.note,
        "seconds": seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "steps": run.steps,
        "accuracy": run.accuracy,
        "linear_numel": numel,
        "move_per_step": moves,
        "lr_sqrt_numel": args.lr * math.sqrt(numel),
        "snapshot_mb": sum(p.stat().st_size for p in (out / "snapshots").iterdir()) / len(run.steps) / 2**20,
    }
    m = data["machine"]
    accuracy = [a for a in run.accuracy if a is not None]
    markdown = "\n".join(
        [
            "# Full-parameter SmolLM2: a short probe for the learning rate",
            "",
            f"Command: `{m['command']}` · {m['processor']}, {m['cpu_count']} cores (shared) · torch {m['torch']} · "
            f"commit {m['commit']} · {seconds / 60:.1f} min · peak RSS {data['peak_rss_gb']:.1f} GB",
            "",
            *([args.note, ""] if args.note else []),
            f"`{spec.run_id}`: movement of the linear modules (norm of `W_t - W_(t-1)` over all "
            f"{numel / 1e6:.0f}M weights) per step: "
            + ", ".join(f"{x:.3f}" for x in moves)
            + f"; `lr sqrt(numel)` = {data['lr_sqrt_numel']:.3f} (AdamW's first step moves every weight by about lr). "
            f"Held-out accuracy {accuracy[0]:.3f} at step 0, {accuracy[-1]:.3f} at step {run.steps[-1]}. "
            f"A dense bf16 snapshot: {data['snapshot_mb']:.0f} MB.",
            "",
        ]
    )
    write_results("forecast_full_probe", data, markdown, args.out)
    print(markdown)


if __name__ == "__main__":
    sys.exit(main())
