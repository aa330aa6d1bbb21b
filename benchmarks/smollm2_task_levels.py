"""Base SmolLM2-135M-Instruct on every math level's held-out set (the model before training): greedy accuracy
and the reward signal GRPO starts from.

    python benchmarks/smollm2_task_levels.py [--limit N] [--samples K]   # N held-out problems per level

Writes ``results/smollm2_task_levels.{json,md}``. Besides greedy accuracy, each problem is sampled K times at
temperature 1 (GRPO's sampling): the mean sampled accuracy is the expected reward at step 0, and the
informative fraction is the chance that a group of ``GROUP`` completions of one prompt holds both a right and a
wrong answer (estimated without bias from the K samples): GRPO's advantage is zero on every other group, so a
level with an informative fraction near zero gives GRPO nothing to learn from. How fast GRPO climbs on each
level is not measured here.
"""

from __future__ import annotations

import argparse
import json
import time
from math import comb
from typing import Any

import torch
from common import RESULTS, machine, write_results
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlvr_extrap.experiments.evaluation import evaluate_accuracy
from rlvr_extrap.experiments.math_task import LEVELS
from rlvr_extrap.experiments.models import SMOLLM2, load_model
from rlvr_extrap.experiments.tasks import MATH_PREFIX, Task, get_task
from rlvr_extrap.utils.generate import encode_prompts, left_pad

BATCH_SIZE = 64
GROUP = 4  # completions per prompt in the SmolLM2 recipe and benchmarks


def sampled_correct(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[tuple[Any, str]],
    samples: int,
    task: Task,
) -> list[int]:
    """How many of ``samples`` completions at temperature 1 are right, problem by problem."""
    counts, per_batch = [], max(1, BATCH_SIZE // samples)
    for start in range(0, len(problems), per_batch):
        prompts, answers = zip(*problems[start : start + per_batch], strict=True)
        input_ids, mask = left_pad(encode_prompts(tokenizer, prompts), tokenizer.pad_token_id)
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                num_return_sequences=samples,
                max_new_tokens=task.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        texts = tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)
        right = task.check(texts, [a for a in answers for _ in range(samples)])
        counts += [sum(right[i * samples : (i + 1) * samples]) for i in range(len(prompts))]
    return counts


def informative_fraction(counts: list[int], samples: int, group: int = GROUP) -> float:
    """Mean chance that ``group`` of a problem's completions are neither all right nor all wrong (unbiased)."""
    total = comb(samples, group)
    return sum(1 - (comb(c, group) + comb(samples - c, group)) / total for c in counts) / len(counts)


def measure(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, level: str, args: Any) -> dict[str, Any]:
    """Greedy and sampled accuracy of one level on its first ``args.limit`` held-out problems."""
    task = get_task(MATH_PREFIX + level)
    problems = task.heldout_problems()[: args.limit]
    start = time.perf_counter()
    accuracy = evaluate_accuracy(
        model, tokenizer, problems, BATCH_SIZE, max_new_tokens=task.max_new_tokens, check=task.check
    )
    seconds = time.perf_counter() - start
    counts = sampled_correct(model, tokenizer, problems, args.samples, task)
    return {
        "level": level,
        "description": LEVELS[level].description,
        "problems": len(problems),
        "base_accuracy": accuracy,
        "eval_seconds": seconds,
        "samples": args.samples,
        "sampled_accuracy": sum(counts) / (len(counts) * args.samples),
        "any_right": sum(c > 0 for c in counts) / len(counts),
        "informative_fraction": informative_fraction(counts, args.samples),
    }


def kept_rows(levels: list[str]) -> list[dict[str, Any]]:
    """Rows of the committed results for the levels not measured now, each with the command that measured it."""
    path = RESULTS / "smollm2_task_levels.json"
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    return [
        {"command": old["machine"]["command"], "commit": old["machine"]["commit"], **row}
        for row in old["levels"]
        if row["level"] not in levels and row["level"] in LEVELS and "informative_fraction" in row
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="first N held-out problems per level (default: all)")
    parser.add_argument("--samples", type=int, default=8, help=f"samples per problem at temperature 1 (>= {GROUP})")
    parser.add_argument(
        "--levels",
        nargs="+",
        choices=list(LEVELS),
        default=list(LEVELS),
        help="levels to measure (default: all); the committed rows of the others are kept",
    )
    args = parser.parse_args()
    if args.samples < GROUP:
        parser.error(f"--samples must be at least {GROUP} (one GRPO group); got {args.samples}")
    torch.manual_seed(0)
    model, tokenizer = load_model(SMOLLM2)
    info = machine()
    rows = kept_rows(args.levels)
    for level in args.levels:
        r = {"command": info["command"], "commit": info["commit"], **measure(model, tokenizer, level, args)}
        rows.append(r)
        print(
            f"{level:<6} greedy {r['base_accuracy']:.3f}, sampled {r['sampled_accuracy']:.3f}, "
            f"informative {r['informative_fraction']:.3f} ({r['problems']} problems, {r['eval_seconds']:.0f} s)",
            flush=True,
        )
    rows.sort(key=lambda r: list(LEVELS).index(r["level"]))
    commands = sorted({(r["command"], r["commit"]) for r in rows}, key=lambda c: c[1])
    lines = [
        "# SmolLM2-135M-Instruct: base accuracy and GRPO reward signal per math level",
        "",
        "; ".join(f"`{command}` at commit {commit}" for command, commit in commands)
        + f" (a row's commit says which). {info['cpu_count']} CPUs, torch {info['torch']}, "
        f"{info['torch_threads']} threads. The first N problems of each held-out set, greedy, batches of "
        f"{BATCH_SIZE}, the model dequantized from the wheel's Q4_1 GGUF. Sampled: K completions per problem at "
        f"temperature 1; informative: the chance that a group of {GROUP} (the benchmarks' completions per prompt) "
        "holds a right and a wrong answer, the groups GRPO learns from.",
        "",
        "| level | problems N | greedy accuracy | samples K | sampled accuracy | any of the K right | informative "
        "groups | greedy eval seconds | commit |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| `math-{r['level']}`: {r['description']} | {r['problems']} | {r['base_accuracy']:.3f} | "
            f"{r['samples']} | {r['sampled_accuracy']:.3f} | {r['any_right']:.3f} | "
            f"{r['informative_fraction']:.3f} | {r['eval_seconds']:.0f} | {r['commit']} |"
            for r in rows
        ),
        "",
        "Not measured here: how fast vanilla GRPO climbs on each level. Measured GRPO curves are in "
        "`steps_saved_smollm2.md` (`math-add`: saturates within 20-30 steps) and `steps_saved_smollm2_add2.md` "
        "(`math-add2`: climbs for 50-80 steps at the slow rate).",
    ]
    write_results("smollm2_task_levels", {"machine": info, "levels": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
