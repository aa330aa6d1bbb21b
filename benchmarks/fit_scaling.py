"""Fit time and peak memory of the trajectory worker against LoRA size and number of snapshots.

    python benchmarks/fit_scaling.py            # layers 1..8 of a 7B-shaped model, LoRA r=64, T up to 15
    python benchmarks/fit_scaling.py --quick

Synthetic LoRA factors shaped like a 7B Llama (hidden 4096, MLP 11008, q/k/v/o/gate/up/down, r=64:
about 5M trainable numbers per layer, 160M for all 32 layers). Each configuration runs in a fresh
subprocess: it feeds T snapshots to a ``TrajectoryWorker`` (the same code the callback runs: Gram
rows as snapshots arrive), then plans one jump (fit, predict, compact the update). Peak memory is the
subprocess's max RSS, which includes the snapshots themselves (T x trainable numbers x 4 bytes).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

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


def measure(method: str, layers: int, snapshots: int) -> dict:
    """One configuration, in this process (called in a subprocess by ``main``)."""
    import torch

    from rlvr_extrap.extrapolators import get_extrapolator
    from rlvr_extrap.lowrank import LowRank
    from rlvr_extrap.worker import TrajectoryWorker

    g = torch.Generator().manual_seed(0)
    names = [f"layers.{i}.{m}" for i in range(layers) for m in SHAPES]
    worker = TrajectoryWorker(get_extrapolator(method))
    ingest = 0.0
    for t in range(snapshots):
        deltas = {}
        for name in names:
            out_dim, in_dim = SHAPES[name.rsplit(".", 1)[1]]
            deltas[name] = LowRank(
                torch.randn(out_dim, RANK, generator=g) * (t + 1) * 1e-3, torch.randn(RANK, in_dim, generator=g)
            )
        start = time.perf_counter()
        worker.add_snapshot(10 * t, deltas).result()  # the worker's share: one Gram row per module
        ingest += time.perf_counter() - start
    plan = worker.plan_jump(10 * (snapshots - 1), 10 * (snapshots - 1) + 100, 1.0).result()
    worker.close()
    trainable = sum(RANK * sum(SHAPES[n.rsplit(".", 1)[1]]) for n in names)
    return {
        "method": method,
        "layers": layers,
        "snapshots": snapshots,
        "trainable": trainable,
        "ingest_seconds": ingest,
        "fit_seconds": plan.fit_seconds,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "LAYERS", "SNAPSHOTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), int(args.one[2]))))
        return
    layer_counts, snapshot_counts = ([1, 2], [5, 10]) if args.quick else ([1, 2, 4, 8], [5, 10, 15])
    configs = [(m, 1, t) for m in ("relex", "linear") for t in snapshot_counts]
    configs += [(m, n, snapshot_counts[-1]) for m in ("relex", "linear") for n in layer_counts[1:]]
    rows = []
    for method, layers, snaps in configs:
        done = subprocess.run(
            [sys.executable, __file__, "--one", method, str(layers), str(snaps)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    m = machine()
    lines = [
        "# Fit time and memory against LoRA size and snapshots (7B-shaped modules, LoRA r=64)",
        "",
        f"Command: `python benchmarks/fit_scaling.py{' --quick' if args.quick else ''}` · machine: {m['processor']}, "
        f"{m['cpu_count']} cores, torch {m['torch']}, no GPU · commit {m['commit']}",
        "",
        "| method | layers | trainable numbers | snapshots | ingest s (Gram rows) | jump fit s | peak RSS GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['layers']} | {r['trainable'] / 1e6:.1f}M | {r['snapshots']} | "
            f"{r['ingest_seconds']:.2f} | {r['fit_seconds']:.2f} | {r['peak_rss_gib']:.2f} |"
        )
    write_results(
        "fit_scaling" + ("_quick" if args.quick else ""), {"machine": m, "rows": rows}, "\n".join(lines) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
