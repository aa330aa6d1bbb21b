"""Base SmolLM2-135M-Instruct greedy accuracy on every math level's held-out set (the model before training).

    python benchmarks/smollm2_task_levels.py [--limit N]   # N: only the first N held-out problems per level

Writes ``results/smollm2_task_levels.{json,md}``. A level whose base accuracy is near zero gives GRPO
little reward signal; one near one leaves nothing to learn. How fast GRPO climbs on each level is not
measured here.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import machine, write_results

from rlvr_extrap.evaluation import evaluate_accuracy
from rlvr_extrap.math_task import LEVELS
from rlvr_extrap.models import SMOLLM2, load_model
from rlvr_extrap.tasks import MATH_PREFIX, get_task

BATCH_SIZE = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="first N held-out problems per level (default: all)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_model(SMOLLM2)
    rows = []
    for level in LEVELS.values():
        task = get_task(MATH_PREFIX + level.name)
        problems = task.heldout_problems()[: args.limit]
        start = time.perf_counter()
        accuracy = evaluate_accuracy(
            model, tokenizer, problems, BATCH_SIZE, max_new_tokens=task.max_new_tokens, check=task.check
        )
        seconds = time.perf_counter() - start
        rows.append(
            {
                "level": level.name,
                "description": level.description,
                "problems": len(problems),
                "base_accuracy": accuracy,
                "eval_seconds": seconds,
            }
        )
        print(f"{level.name:<6} {accuracy:.3f} ({len(problems)} problems, {seconds:.0f} s)", flush=True)
    info = machine()
    lines = [
        "# SmolLM2-135M-Instruct: base greedy accuracy per math level",
        "",
        f"`{info['command']}` at commit {info['commit']}; {info['cpu_count']} CPUs, torch {info['torch']}, "
        f"{info['torch_threads']} threads. The first {rows[0]['problems']} problems of each held-out set, greedy, "
        f"batches of {BATCH_SIZE}, the model dequantized from the wheel's Q4_1 GGUF.",
        "",
        "| level | problems | base accuracy | eval seconds |",
        "|---|---|---|---|",
        *(
            f"| `math-{r['level']}`: {r['description']} | {r['problems']} | {r['base_accuracy']:.3f} | "
            f"{r['eval_seconds']:.0f} |"
            for r in rows
        ),
    ]
    lines += [
        "",
        "Not measured here: how fast vanilla GRPO climbs on each level. Whether the harder levels climb for 100+ "
        "steps (what a study of jumps needs) is not yet verified; only `math-add` has measured GRPO curves "
        "(about 0.27 -> 0.7-0.8 within 32 steps in earlier exploratory runs; `rlvr-extrap demo --model smollm2`).",
    ]
    write_results("smollm2_task_levels", {"machine": info, "levels": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
