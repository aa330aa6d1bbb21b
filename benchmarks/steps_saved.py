"""Does jumping save GRPO steps? Vanilla GRPO against every method with jumps, side by side, on the embedded toy.

    python benchmarks/steps_saved.py            # the full sweep (3 seeds), about 30 minutes on 2 CPU cores
    python benchmarks/steps_saved.py --quick    # a few arms, 2 seeds
    python benchmarks/steps_saved.py --guard    # with and without the probe-guarded jump (extrap_guard), 3 seeds
    python benchmarks/steps_saved.py --guard --render   # only steps_saved_guard.md again, from its committed json

Every arm uses the same seeds, the same prompt order (a fixed dataset, constant learning rate) and the
same held-out problems (never trained on). Vanilla runs once per (learning rate, LoRA rank) to the
longest budget; with a constant learning rate, reading it at step S is the same as stopping there.

For an arm that ends at ``S`` actual GRPO steps with held-out accuracy ``a``, per seed:
``steps ratio = (first vanilla step whose accuracy >= a) / S``; above 1 means jumping saved steps.
If vanilla never reaches ``a`` within its budget the ratio is a lower bound (reported with ``>``).
Per arm: the mean over seeds ± its 95% t-interval.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from common import RESULTS, machine, write_results
from stats import INTERVAL, first_step_reaching, mean_with_interval

from rlvr_extrap.experiments.experiment import Run, run_experiment
from rlvr_extrap.experiments.plots import plot_accuracy_curves
from rlvr_extrap.experiments.toy.model import load_toy_model
from rlvr_extrap.utils.files import atomic_write_text

BASE = {
    "extrap_snapshot_every": 10,
    "extrap_jump_at": [100],
    "extrap_horizon": 100,
    "extrap_guard": False,
    "extrap_min_skill": None,  # these arms measure the jumps themselves, ungated
}
LOCAL = {**BASE, "extrap_method": "linear", "extrap_fit_window": 6}  # W_t + 2 (W_t - W_{t-50})
LR = 1e-3
EVAL_EVERY = 25  # divides every arm's length and the vanilla budget, so vanilla is read at the arm's exact step

# name -> (extrap settings, learning rate, LoRA rank, actual GRPO steps)
FULL_ARMS: dict[str, tuple[dict[str, Any], float, int, int]] = {
    "linear local (w=6)": (LOCAL, LR, 8, 150),
    "linear from base": ({**BASE, "extrap_method": "linear"}, LR, 8, 150),
    "relex from base": ({**BASE, "extrap_method": "relex"}, LR, 8, 150),
    "relex window 6": ({**BASE, "extrap_method": "relex", "extrap_fit_window": 6}, LR, 8, 150),
    "next": ({**BASE, "extrap_method": "next"}, LR, 8, 150),
    "re-grounding m=n=50": (
        {**BASE, "extrap_method": "linear", "extrap_jump_at": [50, 100], "extrap_horizon": 50},
        LR,
        8,
        150,
    ),
    "linear local, horizon 50": ({**LOCAL, "extrap_horizon": 50}, LR, 8, 150),
    "linear local, reset momentum": ({**LOCAL, "extrap_optimizer_policy": "reset_momentum"}, LR, 8, 150),
    "relex from base, alpha 0.5": ({**BASE, "extrap_method": "relex", "extrap_alpha": 0.5}, LR, 8, 150),
    "linear local, lr 2e-4": (LOCAL, 2e-4, 8, 150),
    "relex from base, lr 2e-4": ({**BASE, "extrap_method": "relex"}, 2e-4, 8, 150),
}
PLOTTED = ["linear local (w=6)", "linear from base", "relex from base", "relex window 6", "next", "re-grounding m=n=50"]
QUICK_ARMS = {k: FULL_ARMS[k] for k in ("linear local (w=6)", "relex from base", "re-grounding m=n=50")}
GUARD_ARMS = {
    **{k: FULL_ARMS[k] for k in ("relex from base", "linear local (w=6)")},
    "relex from base + guard": ({**BASE, "extrap_method": "relex", "extrap_guard": True}, LR, 8, 150),
    "linear local (w=6) + guard": ({**LOCAL, "extrap_guard": True}, LR, 8, 150),
}


def _run(job: tuple[str, dict[str, Any], float, int, int, int]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # two single-threaded runs side by side use the 2 cores best
    name, extrap, lr, rank, steps, seed = job
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(
            name,
            steps,
            extrap=extrap,
            learning_rate=lr,
            lora_rank=rank,
            seed=seed,
            eval_every=EVAL_EVERY,
            progress=False,
        )
        result = run_experiment(run, tmp)
    print(f"  done: {name} seed {seed}: acc {result['heldout_accuracy']:.3f}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--guard", action="store_true", help="the probe-guarded jump against the same arms without it")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--from-runs", type=Path, help="summarise a saved *_runs.json instead of training")
    parser.add_argument("--render", action="store_true", help="only write the md again from the committed json")
    args = parser.parse_args()
    arms = GUARD_ARMS if args.guard else QUICK_ARMS if args.quick else FULL_ARMS
    seeds = list(range(args.seeds or (2 if args.quick else 3)))
    vanilla_steps = 300
    variant = "--guard" if args.guard else "--quick" if args.quick else ""
    out_name = "steps_saved" + variant.replace("--", "_")
    if args.render:
        data = json.loads((RESULTS / f"{out_name}.json").read_text())
        atomic_write_text(RESULTS / f"{out_name}.md", render_markdown(data))
        return
    if args.from_runs:  # re-summarise saved runs without training again
        results = json.loads(args.from_runs.read_text())["runs"]
    else:
        load_toy_model()
        baselines = sorted({(lr, rank) for _, lr, rank, _ in arms.values()})
        jobs = [(f"vanilla lr={lr} r={rank}", {}, lr, rank, vanilla_steps, s) for lr, rank in baselines for s in seeds]
        jobs += [(name, extrap, lr, rank, steps, s) for name, (extrap, lr, rank, steps) in arms.items() for s in seeds]
        print(f"{len(jobs)} runs on {args.workers} workers")
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(_run, jobs))
        write_results(f"{out_name}_runs", {"machine": machine(), "runs": results}, "raw runs; see the table file\n")
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_arm.setdefault(r["name"], []).append(r)

    rows = []
    for name, (extrap, lr, rank, steps) in arms.items():
        vanilla = by_arm[f"vanilla lr={lr} r={rank}"]
        ratios, bounded, accs, vanilla_accs = [], False, [], []
        for run, base in zip(by_arm[name], vanilla, strict=True):
            acc = run["heldout_accuracy"]
            reached = first_step_reaching(base["history"], acc)
            bounded |= reached is None
            ratios.append((vanilla_steps if reached is None else reached) / steps)
            accs.append(acc)
            vanilla_accs.append(dict(base["history"])[steps])
        rows.append(
            {
                "arm": name,
                "method": extrap["extrap_method"],
                "settings": extrap,
                "learning_rate": lr,
                "lora_rank": rank,
                "grpo_steps": steps,
                "effective_steps": statistics.mean(run["effective_steps"] for run in by_arm[name]),  # jumps taken
                "accuracy": accs,
                "vanilla_accuracy_same_steps": vanilla_accs,
                "steps_ratio": ratios,
                "steps_ratio_lower_bound": bounded,
                "guard": [guard_summary(run) for run in by_arm[name]] if extrap.get("extrap_guard") else None,
            }
        )
    data = {
        "machine": machine(),
        "variant": variant,
        "seeds": seeds,
        "vanilla_steps": vanilla_steps,
        "rows": rows,
        "runs": [
            {k: r[k] for k in ("name", "method", "grpo_steps", "heldout_accuracy", "history", "jumps", "settings")}
            for r in results
        ],
    }
    write_results(out_name, data, render_markdown(data))
    plot(by_arm, arms, RESULTS / f"{out_name}.png")
    print(render_markdown(data))


def guard_summary(run: dict[str, Any]) -> dict[str, Any]:
    """What the guard chose at each jump and what it cost, in seconds and in training steps of this run."""
    jumps = [j for j in run["jumps"] if "guard_seconds" in j]
    guard_seconds = sum(j["guard_seconds"] for j in jumps)
    step_seconds = (run["train_seconds"] - guard_seconds) / run["grpo_steps"]
    return {
        "scales": [j["guard_scale"] for j in jumps],
        "score_gain": [
            max(v for k, v in j.items() if k.startswith("guard_score_x")) - j["guard_score_pre"] for j in jumps
        ],
        "guard_seconds": guard_seconds,
        "cost_in_steps": guard_seconds / step_seconds,
        "cost_fraction": guard_seconds / run["train_seconds"],
    }


def _cell(values: list[float]) -> str:
    return mean_with_interval(values, 3)


def render_markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    command = f"python benchmarks/steps_saved.py {data.get('variant', '')}".rstrip()
    lines = [
        "# Steps saved by jumping, embedded toy (a+b, tiny Qwen2, LoRA, GRPO)",
        "",
        f"Command: `{command}` · machine: {m['processor']}, "
        f"{m['cpu_count']} cores, torch {m['torch']}, {'GPU ' + m['cuda'] if m['cuda'] else 'no GPU'} · "
        f"seeds {data['seeds']} · vanilla budget {data['vanilla_steps']} steps · commit {m['commit']}",
        "",
        "Accuracy: held-out greedy accuracy (80 problems never trained on); it and the steps ratio are the mean "
        f"over seeds {INTERVAL} (Student's t; the value alone for one seed). "
        "Steps ratio: vanilla steps to reach the arm's final accuracy / the arm's actual GRPO steps "
        "(> 1: jumping saved steps; `>` marks a lower bound, vanilla never got there).",
        "",
        "| arm | lr | r | actual steps | effective steps | accuracy | vanilla at same steps | steps ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        bound = ">" if r["steps_ratio_lower_bound"] else ""
        lines.append(
            f"| {r['arm']} | {r['learning_rate']:g} | {r['lora_rank']} | {r['grpo_steps']} | {r['effective_steps']:g} | "
            f"{_cell(r['accuracy'])} | {_cell(r['vanilla_accuracy_same_steps'])} | {bound}{_cell(r['steps_ratio'])} |"
        )
    guarded = [r for r in data["rows"] if r.get("guard")]
    if guarded:
        lines += [
            "",
            "Guard: step size kept per seed (0 = rolled back), best candidate's probe reward minus the pre-jump one, "
            "and the probe's cost (5 greedy passes over 32 train prompts) in training steps of the same run "
            f"(step time includes the periodic held-out evaluation) and as a fraction of the run; {INTERVAL} over the "
            "seeds' jumps.",
            "",
            "| arm | scale kept | probe gain | cost (steps) | cost (fraction of run) |",
            "|---|---|---|---|---|",
        ]
        for r in guarded:
            g = r["guard"]
            lines.append(
                f"| {r['arm']} | {[s for x in g for s in x['scales']]} | "
                f"{_cell([v for x in g for v in x['score_gain']])} | "
                f"{_cell([x['cost_in_steps'] for x in g])} | {_cell([x['cost_fraction'] for x in g])} |"
            )
    return "\n".join(lines) + "\n"


def plot(by_arm, arms, path) -> None:
    """Accuracy against actual steps at the base lr/rank: vanilla and the main arms, with min-max seed bands."""
    lr0, rank0 = LR, 8
    names = [f"vanilla lr={lr0} r={rank0}"] + [n for n in PLOTTED if n in arms]
    curves = []
    for name in names:
        runs = by_arm[name]
        steps = [s for s, _ in runs[0]["history"]]
        per_step = [[dict(r["history"])[s] for r in runs] for s in steps]
        curves.append(
            {
                "name": name,
                "steps": steps,
                "mean": [statistics.mean(v) for v in per_step],
                "low": [min(v) for v in per_step],
                "high": [max(v) for v in per_step],
                "jumps": arms[name][0]["extrap_jump_at"] if name in arms else [],
            }
        )
    plot_accuracy_curves(curves, path, title=f"held-out accuracy, lr {lr0}, LoRA r={rank0} (band: min-max over seeds)")


if __name__ == "__main__":
    main()
