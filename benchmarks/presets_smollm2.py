"""Each anchor's preset on the real model: do the references' schedules run and jump on SmolLM2 (issue 35)?

    python benchmarks/presets_smollm2.py --seeds 0 1 2   # trains what is missing (resumable), writes presets_smollm2.{md,json}
    python benchmarks/presets_smollm2.py --seeds 0 --rates 1   # one seed, no faster vanilla: no 'vs best'
    python benchmarks/presets_smollm2.py --next --steps 70 --jump 60 --eval-every 10   # the NExt preset apart

SmolLM2-135M-Instruct with the demo's settings (LoRA r=16, math-add, lr 2e-4 constant, 8 prompts x 4 completions,
256 held-out problems), ``--steps`` GRPO steps per arm, the trainer logging every step (the reward the ``alpharl``
labels are made of). Per seed, all arms from the same start and data order:

- vanilla GRPO at the demo's rate, evaluated every ``--eval-every`` steps (its curve gives the steps ratios), and at
  the ``--rates`` multiples of it (the best rate: "vs best");
- ``extrap_preset="relex"``, ``"alpharl"``, and our ``alpharl`` default (label trend, no target; guard on, no gate:
  alpharl has no cheap backtest): snapshots every 2 steps, one jump at ``--jump``, ``--horizon`` steps ahead,
  labels = the mean training reward logged since the previous snapshot. The ``alpharl`` preset needs the target the
  reference takes as input: here vanilla's mean logged reward over the ``--horizon`` steps after ``--jump`` (an
  oracle from the vanilla arm of the same seed, as a user would give a reward they expect to reach);
- ``extrap_preset="rl-extra"`` with (m, n) = (``--m``, ``--n``): a jump after every m steps, n steps ahead;
- ``extrap_preset="next"`` runs apart (``--next``, results ``presets_smollm2_next``): its fixed 10-step snapshot
  interval and 5-snapshot target need 7 snapshots (``--jump`` >= 60) before a jump. So vanilla at the demo's rate is
  observed by the preset (snapshots, no jump) and saved at ``--jump``, and the arm branches from that checkpoint: the
  same weights, snapshots, optimizer and data position, then the jump and ``--steps - --jump`` more steps. Its
  horizon is the 75 steps the reference's jump stands for (1.5 x 5 snapshot intervals).

Every seed trains vanilla and the arms at the demo's rate before any seed's faster vanilla runs, so an interrupted
run leaves whole seeds. Steps ratio: vanilla steps to reach the arm's held-out accuracy / the arm's steps
(``stats.ratio_of``; > 1: steps saved), against vanilla at the same rate ("vs own") and at whichever rate got there
first ("vs best", over the seeds with every rate).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from common import RESULTS, machine, write_results
from stats import INTERVAL, mean_interval, ratio_of, with_interval
from transformers import TrainerCallback

from rlvr_extrap.extrapolators.next import NextConfig
from rlvr_extrap.presets import PRESETS

NAME = "presets_smollm2"
SNAPSHOT_EVERY = 2
VANILLA = "vanilla"
NEXT = "preset next"
NEXT_EVERY: int = PRESETS["next"].fixed["extrap_snapshot_every"]
NEXT_REFERENCE = NextConfig.reference()
NEXT_TARGET = NEXT_REFERENCE.target_snapshots  # the reference fixes it (5)
NEXT_HORIZON = round(NEXT_REFERENCE.extend * NEXT_TARGET * NEXT_EVERY)  # the step the reference's jump stands for
NEXT_MIN_JUMP = (NEXT_TARGET + 1) * NEXT_EVERY  # its fit needs target + 2 snapshots, the base's included
NEXT_OBSERVED = {"extrap_preset": "next"}  # no extrap_jump_at: vanilla observed (snapshots only), unchanged


class LoggedRewards(TrainerCallback):
    """The mean reward of each step the trainer logged (``logging_steps=1``)."""

    def __init__(self) -> None:
        self.rewards: dict[int, float] = {}

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs and "reward" in logs:
            self.rewards[state.global_step] = float(logs["reward"])


def arms(args: argparse.Namespace, target: float) -> dict[str, dict[str, Any]]:
    """Arm name -> its ``extrap_*`` settings (vanilla's own rows apart)."""
    one_jump = {"extrap_snapshot_every": SNAPSHOT_EVERY, "extrap_jump_at": [args.jump], "extrap_horizon": args.horizon}
    alpharl = {"extrap_preset": "alpharl", "extrap_target_score": target, **one_jump}
    return {
        "preset relex": {"extrap_preset": "relex", **one_jump},
        "preset rl-extra": {"extrap_preset": "rl-extra", "extrap_snapshot_every": args.m, "extrap_horizon": args.n},
        "alpharl (ours: label trend)": {"extrap_method": "alpharl", "extrap_min_skill": None, **one_jump},
        # extrap_label_reach (not the reference's: it has no limit) refuses far targets; 3 allows
        "preset alpharl (target: vanilla's reward)": alpharl,
        "preset alpharl (target: vanilla's reward), extrap_label_reach=3": alpharl | {"extrap_label_reach": 3.0},
    }


def vanilla_name(multiple: float) -> str:
    return VANILLA if multiple == 1 else f"{VANILLA} lr x{multiple:g}"


def arm_dir(cache: Path, seed: int, name: str) -> Path:
    return cache / f"seed{seed}" / "".join(c if c.isalnum() else "-" for c in name)


def run_dir(cache: Path, seed: int, name: str) -> Path:
    """Where the arm's trainer writes (its checkpoints: ``checkpoint-<step>``)."""
    return arm_dir(cache, seed, name) / "run"


def train_arm(
    name: str,
    extrap: dict[str, Any],
    args: argparse.Namespace,
    cache: Path,
    seed: int,
    multiple: float = 1.0,
    save_every: int | None = None,
    resume_from: Path | None = None,
) -> dict[str, Any] | None:
    """One arm (cached as ``<cache>/seed<seed>/<arm>/result.json``; with ``--analyze`` None where it is not);
    vanilla is evaluated every ``--eval-every``; ``resume_from``: a vanilla checkpoint the arm branches from."""
    from rlvr_extrap.experiments.demo import DEMO_MODELS
    from rlvr_extrap.experiments.experiment import Run, run_experiment

    done = arm_dir(cache, seed, name) / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    if args.analyze:
        return None
    rewards = LoggedRewards()
    settings = dict(DEMO_MODELS["smollm2"].run)
    settings["learning_rate"] *= multiple
    eval_every = args.eval_every if name.startswith(VANILLA) else args.steps
    run = Run(name, args.steps, extrap=extrap, eval_every=eval_every, logging_steps=1, progress=False, seed=seed,
              save_every=save_every, **settings)  # fmt: skip
    row = run_experiment(run, run_dir(cache, seed, name), [rewards], resume_from=resume_from)
    row |= {"rewards": rewards.rewards, "seed": seed, "learning_rate": settings["learning_rate"]}
    done.write_text(json.dumps(row, default=str))
    print(f"  seed {seed}: {name}: {row['heldout_accuracy']:.3f} ({row['train_seconds']:.0f} s)", flush=True)
    return row


def vanilla_target(vanilla: dict[str, Any], jump: int, horizon: int) -> float:
    """Vanilla's mean logged reward over the ``horizon`` steps after ``jump``."""
    rewards = {int(k): v for k, v in vanilla["rewards"].items()}
    return statistics.mean(rewards[s] for s in range(jump + 1, jump + horizon + 1))


def analyze(runs: dict[int, dict[str, dict[str, Any]]], rates: list[float]) -> list[dict[str, Any]]:
    """One row per arm: end accuracy, its difference from vanilla and the steps ratios, each over the seeds."""
    curves = {
        seed: {row["learning_rate"]: row["history"] for name, row in seed_runs.items() if name.startswith(VANILLA)}
        for seed, seed_runs in runs.items()
    }
    complete = {seed for seed, c in curves.items() if len(c) == len(rates)}
    names = list(dict.fromkeys(name for seed_runs in runs.values() for name in seed_runs))
    rows = []
    for name in names:
        per_seed = {seed: seed_runs[name] for seed, seed_runs in runs.items() if name in seed_runs}
        accs = [r["heldout_accuracy"] for r in per_seed.values()]
        diffs = [r["heldout_accuracy"] - runs[s][VANILLA]["heldout_accuracy"] for s, r in per_seed.items()]
        own = [ratio_of({r["learning_rate"]: curves[s][r["learning_rate"]]}, r["heldout_accuracy"], r["grpo_steps"])
               for s, r in per_seed.items()]  # fmt: skip
        best = [
            ratio_of(curves[s], r["heldout_accuracy"], r["grpo_steps"]) for s, r in per_seed.items() if s in complete
        ]
        rows.append(
            {
                "arm": name, "seeds": sorted(per_seed), "accuracy": mean_interval(accs), "minus_vanilla": mean_interval(diffs),
                "ratio_vs_own": mean_interval([r[0] for r in own]), "ratio_vs_best": mean_interval([r[0] for r in best]),
                "seeds_vs_best": len(best), "own_is_bound": any(r[1] for r in own), "best_is_bound": any(r[1] for r in best),
                "per_seed": {s: r["heldout_accuracy"] for s, r in per_seed.items()},
                "vanilla_per_seed": {s: runs[s][VANILLA]["heldout_accuracy"] for s in per_seed},
                "jumps": {s: [f"{j['step']}+{j['horizon']}: {j.get('skipped') or 'applied'}" for j in r["jumps"]]
                          for s, r in per_seed.items()},
            }
        )  # fmt: skip
    return rows


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    info = meta["machine"]
    seeds = meta["seeds"]
    lines = [
        f"# {_title(meta)} on SmolLM2-135M-Instruct (math-add, LoRA, {len(seeds)} seed{'s' * (len(seeds) > 1)})",
        "",
        f"Command: `{info['command']}` · commit {info['commit']} · {info['platform']}, {info['cpu_count']} CPUs, "
        f"torch {info['torch']}",
        "",
        f"{meta['steps']} GRPO steps per arm, per seed from the same start and data order, demo settings (lr 2e-4, 8 "
        f"prompts x 4 completions); {_schedule(meta)} Held-out accuracy on 256 problems at the end (1 problem = 0.004); "
        f"vanilla evaluated every {meta['eval_every']} steps at {', '.join(f'{r:g}x' for r in meta['rates'])} the "
        f"rate. Mean over seeds {INTERVAL} (Student's t; the mean alone for one seed). Steps ratio: vanilla steps to "
        "reach the arm's accuracy / the arm's steps (> 1: steps saved; '≥': no vanilla curve reached it, a lower "
        "bound); 'vs best' over the seeds with every rate (their number in brackets). Wall times: `train_seconds` in the "
        "JSON. What each preset fixes: docs/methods.md.",
        "",
        "| arm | seeds | held-out accuracy at end | minus vanilla (same seed) | steps ratio vs own rate | vs best |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        acc, diff, own, best = (  # a committed JSON holds NaN as null
            with_interval(*(math.nan if row[k][i] is None else row[k][i] for i in (0, 2)), 3)
            for k in ("accuracy", "minus_vanilla", "ratio_vs_own", "ratio_vs_best")
        )
        own = "≥ " * row["own_is_bound"] + own
        best = "≥ " * row["best_is_bound"] + best
        if row["seeds_vs_best"] and row["seeds_vs_best"] < len(row["seeds"]):
            best += f" [{row['seeds_vs_best']}]"
        lines.append(f"| {row['arm']} | {len(row['seeds'])} | {acc} | {diff} | {own} | {best} |")
    lines += ["", f"![each preset minus vanilla, per seed]({_stem(meta)}.png)"]
    lines += ["", "Per seed: held-out accuracy at the end, and the jumps (step+horizon: outcome).", ""]
    lines += ["| arm | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for row in rows:
        cells = []
        for s in seeds:
            acc = row["per_seed"].get(s, row["per_seed"].get(str(s)))
            jumps = "; ".join(row["jumps"].get(s, row["jumps"].get(str(s))) or [])
            cells.append("–" if acc is None else f"{acc:.3f}" + (f" ({jumps})" if jumps else ""))
        lines.append(f"| {row['arm']} | " + " | ".join(cells) + " |")
    if meta.get("note"):
        lines += ["", meta["note"]]
    return "\n".join(lines) + "\n"


def _stem(meta: dict[str, Any]) -> str:
    """The results files' name: ``--next`` writes its own."""
    return f"{NAME}_next" if meta.get("next") else NAME


def _title(meta: dict[str, Any]) -> str:
    return "The NExt preset" if meta.get("next") else "The anchors' presets"


def _schedule(meta: dict[str, Any]) -> str:
    """The setup sentence on the arms' jumps."""
    if meta.get("next"):
        return (
            f"vanilla at the demo's rate observed by the NExt preset (snapshots every {NEXT_EVERY} steps, no jump) and "
            f"saved at step {meta['jump']}; the preset's arm branches from there (same weights, snapshots, optimizer "
            f"and data position), jumps once (the reference's {NEXT_REFERENCE.extend:g} x its {NEXT_TARGET}-snapshot "
            f"prediction: {meta['horizon']} steps) and trains to step {meta['steps']}."
        )
    targets = ", ".join(f"{t:.3f} (seed {s})" for s, t in meta["targets"].items())
    return (
        f"single jumps at step {meta['jump']}, {meta['horizon']} steps ahead, snapshots every {SNAPSHOT_EVERY}; "
        f"rl-extra (m, n) = ({meta['m']}, {meta['n']}). The alpharl preset's target: vanilla's mean logged reward over "
        f"steps {meta['jump'] + 1}-{meta['jump'] + meta['horizon']} of the same seed (an oracle input): {targets}."
    )


def plot(rows: list[dict[str, Any]], path: Path, meta: dict[str, Any]) -> None:
    """Each arm's held-out accuracy minus vanilla's of the same seed: one dot per seed, the mean and its 95% interval."""
    import matplotlib.pyplot as plt

    from rlvr_extrap.utils.figures import save_figure

    rows = [r for r in rows if not r["arm"].startswith(VANILLA)]  # the arms (vanilla at faster rates: the md)
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.8))
    for i, row in enumerate(rows):
        diffs = [row["per_seed"][s] - row["vanilla_per_seed"][s] for s in row["per_seed"]]
        ax.scatter(diffs, [i] * len(diffs), color="tab:gray", s=14, zorder=2)
        mean, _, half = row["minus_vanilla"]
        ax.errorbar(mean, i, xerr=None if half != half else half, fmt="o", color="tab:blue", capsize=4, zorder=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [r["arm"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(
        "held-out accuracy at the end minus vanilla's, same seed\n(blue: mean ± 95% interval; gray: one dot per seed)",
        fontsize=9,
    )
    ax.set_title(f"{_title(meta)} on SmolLM2-135M-Instruct (LoRA, math-add)", fontsize=10, loc="left")
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--jump", type=int, default=8)
    parser.add_argument("--horizon", type=int, help=f"the single jumps' horizon (default 4; --next: {NEXT_HORIZON})")
    parser.add_argument("--m", type=int, default=4, help="rl-extra: steps per segment")
    parser.add_argument("--n", type=int, default=8, help="rl-extra: steps extrapolated ahead per segment")
    parser.add_argument("--next", action="store_true", help="the NExt preset alone, branching from vanilla at --jump")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 2.0, 4.0],
                        help="vanilla's learning rates, as multiples of the demo's 2e-4 (must include 1)")  # fmt: skip
    parser.add_argument("--eval-every", type=int, default=4, help="vanilla's evaluation interval, in steps")
    parser.add_argument("--note", default="", help="a reading paragraph for the md, written from the numbers")
    parser.add_argument("--analyze", action="store_true", help="train nothing: the results of the cached runs only")
    args = parser.parse_args()
    if args.next:
        if args.horizon not in (None, NEXT_HORIZON):
            parser.error(f"--horizon {args.horizon}: the NExt preset's jump stands for {NEXT_HORIZON} steps; drop it")
        args.horizon = NEXT_HORIZON
        if args.jump % NEXT_EVERY or not NEXT_MIN_JUMP <= args.jump < args.steps:
            parser.error(
                f"--jump {args.jump}: --next needs a multiple of {NEXT_EVERY}, at least {NEXT_MIN_JUMP} "
                f"({NEXT_TARGET + 2} snapshots), below --steps"
            )
    else:
        args.horizon = args.horizon or 4
        if args.jump % SNAPSHOT_EVERY or not 0 < args.jump <= args.steps or args.jump + args.horizon > args.steps:
            parser.error(f"--jump {args.jump}: a multiple of {SNAPSHOT_EVERY}, with --jump + --horizon <= --steps")
    if 1.0 not in args.rates:
        parser.error(f"--rates {args.rates}: must include 1 (the arms' rate)")
    if args.steps % args.eval_every:
        parser.error(f"--eval-every {args.eval_every}: must divide --steps {args.steps}")
    folder = (
        f"next_s{args.steps}_j{args.jump}"
        if args.next
        else f"s{args.steps}_j{args.jump}_h{args.horizon}_m{args.m}_n{args.n}"
    )
    cache = Path(__file__).parent / "cache" / NAME / folder
    runs: dict[int, dict[str, dict[str, Any]]] = {}
    targets: dict[int, float] = {}
    for seed in args.seeds:  # the arms' rate for every seed first
        # --next: vanilla observed by the preset and saved at the jump, the arm's branch point
        observed, save_every = (NEXT_OBSERVED, args.jump) if args.next else ({}, None)
        vanilla = train_arm(VANILLA, observed, args, cache, seed, save_every=save_every)
        if vanilla is None:  # --analyze: a seed without vanilla has nothing to compare
            continue
        runs[seed] = {VANILLA: vanilla}
        if args.next:
            branch_point = run_dir(cache, seed, VANILLA) / f"checkpoint-{args.jump}"
            extrap = NEXT_OBSERVED | {"extrap_jump_at": [args.jump], "extrap_horizon": args.horizon}
            runs[seed][NEXT] = train_arm(NEXT, extrap, args, cache, seed, resume_from=branch_point)
            continue
        targets[seed] = vanilla_target(vanilla, args.jump, args.horizon)
        for arm, extrap in arms(args, targets[seed]).items():
            runs[seed][arm] = train_arm(arm, extrap, args, cache, seed)
    for seed in runs:
        for multiple in (r for r in args.rates if r != 1.0):
            runs[seed][vanilla_name(multiple)] = train_arm(vanilla_name(multiple), {}, args, cache, seed, multiple)
    runs = {seed: {name: row for name, row in seed_runs.items() if row is not None} for seed, seed_runs in runs.items()}
    if not runs:
        parser.error("--analyze: no seed has a cached vanilla run")
    args.seeds = sorted(runs)
    meta = {"machine": machine(), "targets": targets, "rates": args.rates,
            **{k: getattr(args, k) for k in ("steps", "jump", "horizon", "m", "n", "seeds", "eval_every", "note", "next")}}  # fmt: skip
    rows = analyze(runs, args.rates)
    write_results(_stem(meta), {"meta": meta, "rows": rows, "runs": runs}, render(rows, meta))
    plot(rows, RESULTS / f"{_stem(meta)}.png", meta)
    print(render(rows, meta))


if __name__ == "__main__":
    main()
