"""Stall at a jump, ingest and peak memory of the trajectory worker at 7B-r64 scale.

    python benchmarks/fit_scaling.py                 # the configurations below, up to all 32 layers
    python benchmarks/fit_scaling.py --quick         # 1 and 2 layers
    python benchmarks/fit_scaling.py --one relex 8 15 float32   # one configuration

Synthetic LoRA factors shaped like a 7B Llama (hidden 4096, MLP 11008, q/k/v/o/gate/up/down, r=64:
about 5M trainable numbers per layer, 160M for all 32 layers). Each configuration runs in a fresh
subprocess: it feeds T snapshots to a ``TrajectoryWorker`` (the code the callback runs: Gram rows and
the forecast-skill backtest as snapshots arrive), then plans one jump and edits base weights with it.

- ingest: the worker's background seconds per snapshot (mean, and the last one, the dearest);
  ``skill`` is the backtest's share at the last snapshot.
- stall: what the training thread waits for at a jump = plan (fit, prediction, diagnostics) + edit.
  The edit (one matmul of the update's factors per module, on the weight's device) is timed on one
  layer's bfloat16 weights on this CPU and scaled by the number of layers (the whole model's weights do
  not fit here); on a GPU it is a matmul per module.
- commit: the worker's background compaction of the jump into the offsets after the jump (not a stall).
- memory: peak RSS above the process's RSS before the first snapshot, over the snapshots' own bytes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import machine, write_results

HIDDEN, MLP, RANK = 4096, 11008, 64
SHAPES = {
    "q": (HIDDEN, HIDDEN),
    "k": (HIDDEN, HIDDEN),
    "v": (HIDDEN, HIDDEN),
    "o": (HIDDEN, HIDDEN),
    "gate": (MLP, HIDDEN),
    "up": (MLP, HIDDEN),
    "down": (HIDDEN, MLP),
}


def _rss_gib() -> float:
    """Resident memory of this process now (GiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def measure(method: str, layers: int, snapshots: int, dtype_name: str, commit: bool, next_config: dict) -> dict:
    """One configuration, in this process (called in a subprocess by ``main``)."""
    import torch

    from rlvr_extrap.config import SNAPSHOT_DTYPES
    from rlvr_extrap.extrapolators import get_extrapolator
    from rlvr_extrap.lora import add_update
    from rlvr_extrap.lowrank import LowRank
    from rlvr_extrap.skill import measure_skill
    from rlvr_extrap.worker import TrajectoryWorker

    dtype = SNAPSHOT_DTYPES[dtype_name]
    g = torch.Generator().manual_seed(0)
    names = [f"layers.{i}.{m}" for i in range(layers) for m in SHAPES]
    config = next_config if method == "next" else {}
    worker = TrajectoryWorker(get_extrapolator(method, **config))
    weights = {kind: torch.zeros(shape, dtype=torch.bfloat16) for kind, shape in SHAPES.items()}  # one layer's
    baseline = _rss_gib()
    ingest = []
    for t in range(snapshots):
        deltas = {}
        for name in names:
            out_dim, in_dim = SHAPES[name.rsplit(".", 1)[1]]
            left = torch.randn(out_dim, RANK, generator=g) * (t + 1) * 1e-3
            deltas[name] = LowRank(left.to(dtype), torch.randn(RANK, in_dim, generator=g).to(dtype))
        start = time.perf_counter()
        worker.add_snapshot(10 * t, deltas).result()
        ingest.append(time.perf_counter() - start)
    step = 10 * (snapshots - 1)
    _, skill_seconds = _timed(lambda: measure_skill(worker.trajectory, worker.extrapolator))
    horizon = 20 if method == "next" else 100
    plan, plan_seconds = _timed(lambda: worker.plan_jump(step, horizon, 1.0).result())
    first_layer = [n for n in names if n.startswith("layers.0.")]
    _, edit_one_layer = _timed(lambda: [add_update(weights[n.rsplit(".", 1)[1]], plan.updates[n]) for n in first_layer])
    commit_seconds = _timed(lambda: worker.commit_jump(plan).result())[1] if commit else None
    worker.close()
    trainable = sum(RANK * sum(SHAPES[n.rsplit(".", 1)[1]]) for n in names)
    snapshot_gib = snapshots * trainable * torch.finfo(dtype).bits / 8 / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "method": method,
        "layers": layers,
        "snapshots": snapshots,
        "dtype": dtype_name,
        "trainable": trainable,
        "ingest_mean_seconds": sum(ingest) / len(ingest),
        "ingest_last_seconds": ingest[-1],
        "ingest_seconds": sum(ingest),
        "skill_seconds": skill_seconds,
        "plan_seconds": plan_seconds,
        "fit_seconds": plan.fit_seconds,
        "next_train_seconds": max((d.get("train_seconds", 0.0) for d in plan.diagnostics.values()), default=0.0),
        "next_epochs_run": max((d.get("epochs_run", 0.0) for d in plan.diagnostics.values()), default=0.0),
        "edit_one_layer_seconds": edit_one_layer,
        "edit_seconds": edit_one_layer * layers,
        "stall_seconds": plan_seconds + edit_one_layer * layers,
        "commit_seconds": commit_seconds,
        "snapshot_gib": snapshot_gib,
        "baseline_rss_gib": baseline,
        "peak_rss_gib": peak,
        "peak_over_snapshots": (peak - baseline) / snapshot_gib,
    }


# (method, layers, snapshots, snapshot dtype, time the commit); the commit's compaction holds float32
# offsets as large as the snapshots, so it is timed only where that fits this machine's memory
FULL = [
    ("relex", 1, 15, "float32", True),
    ("linear", 1, 15, "float32", True),
    ("next", 1, 15, "float32", False),
    ("relex", 8, 15, "float32", False),
    ("linear", 8, 15, "float32", False),
    ("relex", 16, 15, "float32", False),
    ("relex", 32, 15, "bfloat16", False),
    ("linear", 32, 15, "bfloat16", False),
]
QUICK = [("relex", 1, 10, "float32", True), ("linear", 2, 10, "bfloat16", True), ("next", 1, 10, "float32", False)]
BEFORE = Path(__file__).parent / "results" / "fit_scaling_before.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--one", nargs=4, metavar=("METHOD", "LAYERS", "SNAPSHOTS", "DTYPE"))
    parser.add_argument("--commit", action="store_true", help="with --one: also time the background commit")
    parser.add_argument("--next-epochs", type=int, default=100, help="NExt's epochs (the paper: 1000)")
    parser.add_argument("--next-patience", type=int, default=None, help="NExt's early-stop patience")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.one:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        method, layers, snaps, dtype = args.one
        next_config = {"epochs": args.next_epochs, "patience": args.next_patience}
        print(json.dumps(measure(method, int(layers), int(snaps), dtype, args.commit, next_config)))
        return
    rows = []
    for method, layers, snaps, dtype, commit in QUICK if args.quick else FULL:
        command = [sys.executable, __file__, "--one", method, str(layers), str(snaps), dtype]
        done = subprocess.run(command + (["--commit"] if commit else []), capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]) | {"load": _load()})
        print(rows[-1], flush=True)
    m = machine()
    lines = [
        "# Stall at a jump, ingest and memory at 7B-r64 scale (7B-shaped modules, LoRA r=64)",
        "",
        f"Command: `python benchmarks/fit_scaling.py{' --quick' if args.quick else ''}` · machine: {m['processor']}, "
        f"{m['cpu_count']} cores, torch {m['torch']}, no GPU · commit {m['commit']}",
        "",
        "Stall = plan + edit (what the training thread waits for). The edit is timed on one layer of bfloat16 "
        "weights on this CPU and scaled by the layers; on a GPU it is one matmul per module. Memory: peak RSS "
        "above the RSS before the first snapshot, over the snapshots' own bytes (1.0 = nothing but the snapshots). "
        "Load: the 1-minute load average of this shared 2-core machine after the run.",
        "",
        "| method | layers | trainable | snapshots | dtype | ingest s/snapshot (mean / last) | skill backtest s | "
        "plan s | edit s (CPU) | stall s | commit s (background) | snapshots GiB | peak / snapshots | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        commit = "" if r["commit_seconds"] is None else f"{r['commit_seconds']:.1f}"
        lines.append(
            f"| {r['method']} | {r['layers']} | {r['trainable'] / 1e6:.0f}M | {r['snapshots']} | {r['dtype']} | "
            f"{r['ingest_mean_seconds']:.2f} / {r['ingest_last_seconds']:.2f} | {r['skill_seconds']:.3f} | "
            f"{r['plan_seconds']:.2f} | {r['edit_seconds']:.1f} | {r['stall_seconds']:.1f} | {commit} | "
            f"{r['snapshot_gib']:.2f} | {r['peak_over_snapshots']:.2f} | {r['load']:.1f} |"
        )
    if BEFORE.is_file():
        lines += ["", "## Before (eager concatenation at the jump), kept for comparison", "", BEFORE.read_text()]
    write_results(
        "fit_scaling" + ("_quick" if args.quick else ""), {"machine": m, "rows": rows}, "\n".join(lines) + "\n"
    )
    print("\n".join(lines))


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


if __name__ == "__main__":
    main()
