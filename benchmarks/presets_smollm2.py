"""Each anchor's preset on the real model: do the references' schedules run and jump on SmolLM2 (issue 35)?

    python benchmarks/presets_smollm2.py            # trains what is missing (resumable), writes presets_smollm2.{md,json}
    python benchmarks/presets_smollm2.py --steps 16 --jump 8

SmolLM2-135M-Instruct with the demo's settings (LoRA r=16, math-add, lr 2e-4 constant, 8 prompts x 4 completions,
256 held-out problems), one seed, ``--steps`` GRPO steps per arm, the trainer logging every step (the reward the
``alpharl`` labels are made of). Arms, all from the same start and data order:

- vanilla GRPO;
- ``extrap_preset="relex"``, ``"alpharl"``, and our ``alpharl`` default (label trend, no target; guard on, no gate:
  alpharl has no cheap backtest): snapshots every 2 steps, one jump at ``--jump``, ``--horizon`` steps ahead,
  labels = the mean training reward logged since the previous snapshot. The ``alpharl`` preset needs the target the
  reference takes as input: here vanilla's mean logged reward over the ``--horizon`` steps after ``--jump`` (an
  oracle from the vanilla arm of this run, as a user would give a reward they expect to reach);
- ``extrap_preset="rl-extra"`` with (m, n) = (``--m``, ``--n``): a jump after every m steps, n steps ahead;
- ``extrap_preset="next"`` is not run: its fixed 10-step snapshot interval and 5-snapshot target need 7 snapshots
  (60 steps) before a jump, 30+ min per arm on these cores; the toy runs its schedule (tests/test_presets.py) and
  the regime map scores its forecasts.

This is a check that each preset runs its schedule on a real model and what the held-out accuracy does right after,
with one seed: not a steps-saved claim (``steps_saved_smollm2.py`` makes those, over seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from common import machine, write_results
from transformers import TrainerCallback

NAME = "presets_smollm2"
SNAPSHOT_EVERY = 2


class LoggedRewards(TrainerCallback):
    """The mean reward of each step the trainer logged (``logging_steps=1``)."""

    def __init__(self) -> None:
        self.rewards: dict[int, float] = {}

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs and "reward" in logs:
            self.rewards[state.global_step] = float(logs["reward"])


def arms(args: argparse.Namespace, target: float | None) -> dict[str, dict[str, Any]]:
    """Arm name -> its ``extrap_*`` settings; the alpharl preset only once vanilla's rewards give its target."""
    one_jump = {"extrap_snapshot_every": SNAPSHOT_EVERY, "extrap_jump_at": [args.jump], "extrap_horizon": args.horizon}
    out: dict[str, dict[str, Any]] = {
        "vanilla": {},
        "preset relex": {"extrap_preset": "relex", **one_jump},
        "preset rl-extra": {"extrap_preset": "rl-extra", "extrap_snapshot_every": args.m, "extrap_horizon": args.n},
        "alpharl (ours: label trend)": {"extrap_method": "alpharl", "extrap_min_skill": None, **one_jump},
    }
    if target is not None:  # extrap_label_reach (not the reference's: it has no limit) refuses far targets; 3 allows
        alpharl = {"extrap_preset": "alpharl", "extrap_target_score": target, **one_jump}
        out["preset alpharl (target: vanilla's reward)"] = alpharl
        out["preset alpharl (target: vanilla's reward), extrap_label_reach=3"] = alpharl | {"extrap_label_reach": 3.0}
    return out


def train_arm(name: str, extrap: dict[str, Any], args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    """One arm (cached as ``<cache>/<arm>/result.json``)."""
    from rlvr_extrap.experiments.demo import DEMO_MODELS
    from rlvr_extrap.experiments.experiment import Run, run_experiment

    out = cache / "".join(c if c.isalnum() else "-" for c in name)
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    rewards = LoggedRewards()
    settings = DEMO_MODELS["smollm2"].run
    run = Run(name, args.steps, extrap=extrap, eval_every=args.steps, logging_steps=1, progress=False, **settings)
    row = run_experiment(run, out / "run", [rewards])
    row["rewards"] = rewards.rewards
    done.write_text(json.dumps(row, default=str))
    return row


def vanilla_target(vanilla: dict[str, Any], jump: int, horizon: int) -> float:
    """Vanilla's mean logged reward over the ``horizon`` steps after ``jump``."""
    rewards = {int(k): v for k, v in vanilla["rewards"].items()}
    return statistics.mean(rewards[s] for s in range(jump + 1, jump + horizon + 1))


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    info = meta["machine"]
    lines = [
        "# The anchors' presets on SmolLM2-135M-Instruct (math-add, LoRA, one seed)",
        "",
        f"Command: `{info['command']}` · commit {info['commit']} · {info['platform']}, {info['cpu_count']} CPUs, "
        f"torch {info['torch']}",
        "",
        f"{meta['steps']} GRPO steps per arm from the same start and data order, demo settings (lr 2e-4, 8 prompts x 4 "
        f"completions); single jumps at step {meta['jump']}, {meta['horizon']} steps ahead, snapshots every "
        f"{SNAPSHOT_EVERY}; rl-extra (m, n) = ({meta['m']}, {meta['n']}). The alpharl preset's target: "
        f"{meta['target']:.3f}, vanilla's mean logged reward over steps {meta['jump'] + 1}-{meta['jump'] + meta['horizon']} "
        "(an oracle input). Held-out accuracy on 256 problems at step 0 and at the end; one seed, so a difference of a "
        "few problems (1 problem = 0.004) is noise. Wall times: `train_seconds` in the JSON. What each preset fixes: "
        "docs/methods.md.",
        "",
        "| arm | held-out accuracy at 0 / end | vanilla at end | jumps (step+horizon: outcome) |",
        "|---|---|---|---|",
    ]
    vanilla_end = rows[0]["heldout_accuracy"]
    for row in rows:
        history = row["history"]
        jumps = "; ".join(f"{j['step']}+{j['horizon']}: {j.get('skipped') or 'applied'}" for j in row["jumps"])
        lines.append(
            f"| {row['name']} | {history[0][1]:.3f} / {history[-1][1]:.3f} | {vanilla_end:.3f} | {jumps or '–'} |"
        )
    if meta.get("note"):
        lines += ["", meta["note"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--jump", type=int, default=8)
    parser.add_argument("--horizon", type=int, default=4)
    parser.add_argument("--m", type=int, default=4, help="rl-extra: steps per segment")
    parser.add_argument("--n", type=int, default=8, help="rl-extra: steps extrapolated ahead per segment")
    parser.add_argument("--note", default="", help="a reading paragraph for the md, written from the numbers")
    args = parser.parse_args()
    if args.jump % SNAPSHOT_EVERY or not 0 < args.jump <= args.steps or args.jump + args.horizon > args.steps:
        parser.error(f"--jump {args.jump}: a multiple of {SNAPSHOT_EVERY}, with --jump + --horizon <= --steps")
    cache = Path(__file__).parent / "cache" / NAME / f"s{args.steps}_j{args.jump}_h{args.horizon}_m{args.m}_n{args.n}"
    cache.mkdir(parents=True, exist_ok=True)
    vanilla = train_arm("vanilla", {}, args, cache)
    target = vanilla_target(vanilla, args.jump, args.horizon)
    rows = [train_arm(name, extrap, args, cache) for name, extrap in arms(args, target).items()]
    meta = {"machine": machine(), **{k: getattr(args, k) for k in ("steps", "jump", "horizon", "m", "n", "note")}}
    meta["target"] = target
    write_results(NAME, {"meta": meta, "rows": rows}, render(rows, meta))
    print(render(rows, meta))


if __name__ == "__main__":
    main()
