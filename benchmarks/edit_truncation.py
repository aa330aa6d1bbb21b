"""How much of a jump's update a rank-p truncation (``extrap_edit_rank``) keeps, on recorded GRPO trajectories.

    python benchmarks/edit_truncation.py

Reads the trajectories the regime map (``benchmarks/forecast``) recorded
(``benchmarks/cache/forecast/<run>/extrap_state.safetensors``: the toy's runs, LoRA r=8, 20 snapshots), plans the
jump the worker would make at step 140 predicting 240 (relex, relex with the residual kept, linear) and reduces every
module's update to rank p with the trajectory's bases.
Reported: the update's numerical rank (the largest over modules) against the columns of its terms, and
``||applied - planned|| / ||planned||`` pooled over the modules for each p, as the worker logs it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import machine, write_results
from forecast.grids import CACHE

from rlvr_extrap.extrapolators import get_extrapolator
from rlvr_extrap.runtime.state import load_state
from rlvr_extrap.runtime.worker import TrajectoryWorker
from rlvr_extrap.trajectory.trajectory import Trajectory

RANKS = (1, 2, 4, 8, 16)
METHODS = {"relex": {}, "relex, residual kept": {"keep_residual": True}, "linear": {}}


def truncation_errors(path: Path, jump_step: int, horizon: int) -> list[dict]:
    """One row per method: true rank, term columns and the relative error at each truncation rank."""
    state = load_state(path)
    count = state.steps.index(jump_step) + 1
    trajectory = Trajectory()
    for i, step in enumerate(state.steps[:count]):
        trajectory.append(step, {name: points[i] for name, points in state.deltas.items()})
    rows = []
    for label, config in METHODS.items():
        worker = TrajectoryWorker(get_extrapolator(label.split(",")[0], **config))
        worker.trajectory = trajectory
        plan = worker.plan_jump(jump_step, horizon, 1.0).result()
        true_rank = max(_true_rank(u) for u in plan.updates.values())
        errors = {}
        for rank in RANKS:
            worker.edit_rank = rank
            errors[rank] = worker.plan_jump(jump_step, horizon, 1.0).result().edit_error
        worker.close()
        columns = max(u.rank for u in plan.updates.values())
        rows.append(
            {"run": path.parent.name, "method": label, "true_rank": true_rank, "columns": columns} | {"errors": errors}
        )
    return rows


def _true_rank(update) -> int:
    """The update's numerical rank, from its dense matrix (the toy's modules are small)."""
    dense = update.dense().double()
    return int(torch.linalg.matrix_rank(dense, rtol=1e-6)) if dense.abs().max() > 0 else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jump", type=int, default=140)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--cache", type=Path, default=CACHE, help="the regime map's cache of recorded trajectories")
    args = parser.parse_args()
    rows = []
    for path in sorted(args.cache.glob("toy_*_s200_seed0/extrap_state.safetensors")):
        rows += truncation_errors(path, args.jump, args.horizon)
        print(rows[-1], flush=True)
    m = machine()
    lines = [
        "# A rank-p edit against the exact one, on recorded GRPO trajectories (toy, LoRA r=8)",
        "",
        f"Command: `{m['command']}` · commit {m['commit']}",
        "",
        f"Jump at step {args.jump} predicting step {args.jump + args.horizon}, from the trajectory's snapshots "
        "every 10 steps up to the jump. True rank: the largest numerical rank of a module's update (singular values "
        "above 1e-6 of the largest), against "
        "the columns of its terms (what the exact edit multiplies). Error: ||applied - planned|| / ||planned|| over "
        "all modules, as `extrap/edit_error` logs it.",
        "",
        "| run | method | true rank / columns | " + " | ".join(f"error at rank {p}" for p in RANKS) + " |",
        "|---|---|---|" + "---|" * len(RANKS),
    ]
    for r in rows:
        errors = " | ".join(f"{r['errors'][p]:.3f}" for p in RANKS)
        lines.append(f"| {r['run']} | {r['method']} | {r['true_rank']} / {r['columns']} | {errors} |")
    write_results("edit_truncation", {"machine": m, "rows": rows}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
