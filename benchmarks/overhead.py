"""Training-thread cost of the callback on the embedded toy: snapshot and jump stalls against step time.

    python benchmarks/overhead.py            # 200 steps per arm
    python benchmarks/overhead.py --quick    # 60 steps per arm

Arms run back to back in one process on the same machine: vanilla GRPO, then GRPO with the callback
snapshotting every 10 steps and every step (the worst case), each with one jump. Reported as ratios.
"""

from __future__ import annotations

import argparse
import tempfile

from common import machine, write_results

from rlvr_extrap.experiment import Run, run_experiment
from rlvr_extrap.toy.model import load_toy_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps = 60 if args.quick else 200
    jump = steps // 2
    load_toy_model()
    arms = {"vanilla": {}}
    for every in (10, 1):
        arms[f"snapshot every {every}"] = {
            "extrap_method": "linear",
            "extrap_snapshot_every": every,
            "extrap_jump_at": [jump],
            "extrap_horizon": 10,
            "extrap_fit_window": None,
            "extrap_guard": False,  # the guard's probe cost is measured in steps_saved.py --guard
            "extrap_min_skill": None,  # the jump stall is measured whatever the run's skill
        }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, extrap in arms.items():
            r = run_experiment(Run(name, steps, extrap=extrap, eval_every=10**9, progress=False), tmp)
            step_time = r["train_seconds"] / steps
            jumps = [j for j in r["jumps"] if "skipped" not in j]
            stall = sum(j["wait_seconds"] + j["apply_seconds"] for j in jumps)
            snapshots = len(range(0, jump + 1, extrap["extrap_snapshot_every"])) if extrap else 0
            rows.append(
                {
                    "arm": name,
                    "steps": steps,
                    "train_seconds": r["train_seconds"],
                    "mean_step_seconds": step_time,
                    "snapshots": snapshots,
                    "snapshot_seconds_total": r["snapshot_seconds"],
                    "snapshot_fraction_of_train": r["snapshot_seconds"] / r["train_seconds"],
                    "snapshot_seconds_each": r["snapshot_seconds"] / snapshots if snapshots else 0.0,
                    "jump_stall_seconds": stall,
                    "jump_stall_in_steps": stall / step_time,
                }
            )
            print(rows[-1])
    base = rows[0]["train_seconds"]
    lines = [
        "# Callback overhead on the embedded toy",
        "",
        f"Command: `python benchmarks/overhead.py{' --quick' if args.quick else ''}`; machine: "
        f"{machine()['processor']}, {machine()['cpu_count']} cores, torch {machine()['torch']}, no GPU.",
        "",
        "| arm | train time / vanilla | snapshots | snapshot time / train time | per snapshot (ms) | jump stall (steps) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['train_seconds'] / base:.3f} | {r['snapshots']} | "
            f"{100 * r['snapshot_fraction_of_train']:.3f}% | {1000 * r['snapshot_seconds_each']:.2f} | "
            f"{r['jump_stall_in_steps']:.2f} |"
        )
    lines += [
        "",
        "Snapshot time is the training thread's own cost (detached CPU copies of the LoRA factors); the fit "
        "runs on the background thread. The jump stall is the wait for the fit plus applying the update, "
        "once per jump, in units of mean step time. Whole-run time ratios include machine noise.",
    ]
    write_results(
        "overhead" + ("_quick" if args.quick else ""), {"machine": machine(), "rows": rows}, "\n".join(lines) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
