"""Stall at a jump, ingest and peak memory of the trajectory worker at 7B-r64 scale.

    python benchmarks/fit_scaling.py                 # the configurations below, up to all 32 layers
    python benchmarks/fit_scaling.py --quick         # 1 and 2 layers
    python benchmarks/fit_scaling.py --streamed      # the truncated plans at 8 and 32 layers, streamed stall too
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
- memory: peak RSS above the process's RSS before the first snapshot, over the snapshots' own bytes; with a
  spill budget (``--memory``) the anonymous part (``RssAnon``, sampled every 20 ms) is what the budget bounds,
  the memory-mapped snapshots being file pages the kernel can drop.
- ``--edit-rank P`` truncates every update to rank P (``extrap_edit_rank``): the edit's cost falls with the
  rank; the relative error of the applied update is reported. These factors are random (no structure across
  snapshots), the worst case for truncation; ``edit_truncation.py`` measures it on real GRPO trajectories.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import RESULTS, machine, write_results

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


def _rss_gib(field: str = "VmRSS") -> float:
    """Resident memory of this process now (GiB): all of it (VmRSS) or its anonymous part (RssAnon)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 2**20
    return 0.0


class _AnonPeak:
    """The largest ``RssAnon`` seen, sampled every 20 ms on a thread."""

    def __init__(self) -> None:
        self.peak, self._stop = _rss_gib("RssAnon"), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_gib("RssAnon"))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def measure(
    variants: list[tuple[str, int | None]],
    layers: int,
    snapshots: int,
    dtype_name: str,
    commit: bool,
    next_config: dict,
    memory: str | None = None,
) -> list[dict]:
    """One trajectory (ingested with the first variant's method), then a jump planned with each (method, edit rank)
    variant on it and its edit timed on one layer; in this process (called in a subprocess by ``main``)."""
    import torch

    from rlvr_extrap.config import SNAPSHOT_DTYPES
    from rlvr_extrap.linalg.lowrank import LowRank
    from rlvr_extrap.runtime.lora import add_update
    from rlvr_extrap.runtime.worker import TrajectoryWorker
    from rlvr_extrap.skill.forecast import measure_skill
    from rlvr_extrap.trajectory.spill import SnapshotSpill, parse_memory

    dtype = SNAPSHOT_DTYPES[dtype_name]
    g = torch.Generator().manual_seed(0)
    names = [f"layers.{i}.{m}" for i in range(layers) for m in SHAPES]
    method = variants[0][0]
    budget = parse_memory(memory)
    spill_dir = tempfile.mkdtemp(prefix="fit_scaling_spill_", dir=Path(__file__).parent)  # on disk, not tmpfs
    spill = None if budget is None else SnapshotSpill(spill_dir, budget)
    # every core for the fit, as a GPU-trained run with free cores would set extrap_worker_threads (no training
    # thread here shares them)
    worker = TrajectoryWorker(_extrapolator(method, next_config), spill=spill, threads=torch.get_num_threads())
    weights = {kind: torch.zeros(shape, dtype=torch.bfloat16) for kind, shape in SHAPES.items()}  # one layer's
    baseline, baseline_anon = _rss_gib(), _rss_gib("RssAnon")
    anon = _AnonPeak()
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
    first_layer = [n for n in names if n.startswith("layers.0.")]
    plans = []
    for variant, edit_rank in variants:
        worker.extrapolator, worker.edit_rank = _extrapolator(variant, next_config), edit_rank
        _, skill_seconds = _timed(lambda: measure_skill(worker.trajectory, worker.extrapolator))
        horizon = 20 if variant == "next" else 100
        plan, plan_seconds = _timed(lambda h=horizon: worker.plan_jump(step, h, 1.0).result())
        _, edit_one_layer = _timed(
            lambda p=plan: [add_update(weights[n.rsplit(".", 1)[1]], p.updates[n]) for n in first_layer]
        )
        streamed = None if edit_rank is None else _streamed_stall(worker, weights, step, horizon)
        plans.append((variant, edit_rank, plan, skill_seconds, plan_seconds, edit_one_layer, streamed))
    commit_seconds = _timed(lambda: worker.commit_jump(plans[-1][2]).result())[1] if commit else None
    spilled = 0 if spill is None else spill.spilled
    worker.close()
    if Path(spill_dir).is_dir():
        Path(spill_dir).rmdir()
    anon_peak = anon.stop()
    trainable = sum(RANK * sum(SHAPES[n.rsplit(".", 1)[1]]) for n in names)
    snapshot_gib = snapshots * trainable * torch.finfo(dtype).bits / 8 / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return [
        {
            "method": variant,
            "ingested_with": method,
            "layers": layers,
            "snapshots": snapshots,
            "dtype": dtype_name,
            "edit_rank": edit_rank,
            "memory": memory,
            "snapshots_spilled": spilled,
            "trainable": trainable,
            "ingest_mean_seconds": sum(ingest) / len(ingest),
            "ingest_last_seconds": ingest[-1],
            "ingest_seconds": sum(ingest),
            "skill_seconds": skill_seconds,
            "plan_seconds": plan_seconds,
            "fit_seconds": plan.fit_seconds,
            "reduce_seconds": plan.reduce_seconds,
            "applied_rank": plan.edit_rank,
            "edit_error": plan.edit_error,
            "next_train_seconds": max((d.get("train_seconds", 0.0) for d in plan.diagnostics.values()), default=0.0),
            "next_epochs_run": max((d.get("epochs_run", 0.0) for d in plan.diagnostics.values()), default=0.0),
            "edit_one_layer_seconds": edit_one_layer,
            "edit_seconds": edit_one_layer * layers,
            "stall_seconds": plan_seconds + edit_one_layer * layers,
            "streamed_stall_seconds": streamed,
            "commit_seconds": commit_seconds if i == len(plans) - 1 else None,
            "snapshot_gib": snapshot_gib,
            "baseline_rss_gib": baseline,
            "peak_rss_gib": peak,
            "peak_over_snapshots": (peak - baseline) / snapshot_gib,
            "anon_peak_over_snapshots": (anon_peak - baseline_anon) / snapshot_gib,
        }
        for i, (variant, edit_rank, plan, skill_seconds, plan_seconds, edit_one_layer, streamed) in enumerate(plans)
    ]


def _streamed_stall(worker, weights: dict, step: int, horizon: int) -> float:
    """Seconds for a streamed jump as the callback makes one (one process, no guard): the plan comes back before its
    reduction, and every module is edited as soon as it is reduced (by the worker, or by this thread when none is
    ready), each layer's modules into the one layer of weights held here (the same work as distinct layers). The
    worker runs on 1 thread beside the edit, as in training (``extrap_worker_threads``)."""
    import torch

    from rlvr_extrap.runtime.lora import add_update

    threads = torch.get_num_threads()
    worker.set_threads(1).result()  # this benchmark's worker: every core for the rows above
    start = time.perf_counter()
    plan = worker.plan_jump(step, horizon, 1.0, stream=True).result()
    for name, update in plan.reduced_updates().items():
        add_update(weights[name.rsplit(".", 1)[1]], update)
    plan.settled()
    seconds = time.perf_counter() - start
    worker.set_threads(threads).result()
    return seconds


def _extrapolator(method: str, next_config: dict):
    from rlvr_extrap.extrapolators import get_extrapolator

    return get_extrapolator(method, **(next_config if method == "next" else {}))


# (plans: "method" or "method:edit_rank", the first one's method ingests; layers, snapshots, snapshot dtype, time
# the commit after the last plan, extrap_snapshot_memory). Each trajectory is ingested once and every plan is made
# on it. The commit's compaction holds float32 offsets as large as the snapshots, so it is timed only where that
# fits here; the 32-layer run spills (this machine's other jobs leave it about 8 GiB).
Config = tuple[list[str], int, int, str, bool, str | None]
FULL: list[Config] = [
    (["relex", "relex:32"], 1, 15, "float32", True, None),
    (["linear"], 1, 15, "float32", True, None),
    (["relex", "relex:8"], 8, 15, "bfloat16", False, None),
    (["relex", "relex:8"], 8, 15, "bfloat16", False, "256MiB"),
    (["relex", "relex:32", "relex:8", "linear"], 32, 15, "bfloat16", False, "1GiB"),
]
QUICK: list[Config] = [
    (["relex", "relex:16", "linear"], 1, 10, "float32", True, None),
    (["relex:16"], 2, 10, "bfloat16", True, "100MiB"),
]
# the truncated plans at 8 and 32 layers again, for the streamed stall (the reduction overlapping the edit)
STREAMED: list[Config] = [
    (["relex:32", "relex:8"], 8, 15, "bfloat16", False, None),
    (["relex:32", "relex:8"], 32, 15, "bfloat16", False, "1GiB"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--streamed", action="store_true", help="the truncated rows only: fit_scaling_streamed.md")
    parser.add_argument("--one", nargs=3, metavar=("LAYERS", "SNAPSHOTS", "DTYPE"))
    parser.add_argument("--plans", nargs="+", default=["relex"], help="with --one: method or method:edit_rank each")
    parser.add_argument("--commit", action="store_true", help="with --one: also time the background commit")
    parser.add_argument("--memory", default=None, help="with --one: extrap_snapshot_memory (e.g. 1GiB)")
    parser.add_argument("--next-epochs", type=int, default=100, help="NExt's epochs (the paper: 1000)")
    parser.add_argument("--next-patience", type=int, default=None, help="NExt's early-stop patience")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.one:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        layers, snaps, dtype = args.one
        variants = [(p.split(":")[0], int(p.split(":")[1]) if ":" in p else None) for p in args.plans]
        next_config = {"epochs": args.next_epochs, "patience": args.next_patience}
        print(json.dumps(measure(variants, int(layers), int(snaps), dtype, args.commit, next_config, args.memory)))
        return
    rows = []
    flag = " --quick" if args.quick else " --streamed" if args.streamed else ""
    for plans, layers, snaps, dtype, commit, memory in QUICK if args.quick else STREAMED if args.streamed else FULL:
        command = [sys.executable, __file__, "--one", str(layers), str(snaps), dtype, "--plans", *plans]
        command += ["--commit"] if commit else []
        command += [] if memory is None else ["--memory", memory]
        load_before = _load()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows += [r | {"load": (load_before, _load())} for r in json.loads(done.stdout.strip().splitlines()[-1])]
        print(rows[-1], flush=True)
    m = machine()
    lines = [
        "# Stall at a jump, ingest and memory at 7B-r64 scale (7B-shaped modules, LoRA r=64)",
        "",
        f"Command: `python benchmarks/fit_scaling.py{flag}` · machine: {m['processor']}, "
        f"{m['cpu_count']} cores, torch {m['torch']}, no GPU · commit {m['commit']}",
        "",
        "Stall = plan + edit (what the training thread waits for); plan includes `reduce`, bringing each update to "
        "its true rank or to `extrap_edit_rank` from the cores of the worker's incremental bases. The edit is timed "
        "on one layer of bfloat16 weights on this CPU and scaled by the layers; on a GPU it is one matmul per "
        "module. Streamed: the stall measured whole (every module edited, into one layer's weights) as the "
        "callback jumps with one process and no guard: the worker (on 1 thread) reduces module by module from the "
        "front of the plan while the training thread edits the modules already reduced and, when none is ready, "
        "reduces one from the back itself (truncated rows only: an exact update needs no reduction). Rank: the "
        "largest rank of an applied update; error: ||applied - planned|| / ||planned|| over all modules (random "
        "factors: the worst case for truncation). Memory: peak RSS above the RSS before the first "
        "snapshot, over the snapshots' own bytes (1.0 = nothing but the snapshots); anon: the same for the "
        "anonymous memory alone (memory-mapped snapshots excluded). Load: the 1-minute load average of this shared "
        "2-core machine before and after the row.",
        "",
        "| method | layers | trainable | dtype | edit rank | spill budget | ingest s/snapshot (mean / last) | "
        "skill backtest s | plan s (of which reduce) | applied rank | error | edit s (CPU) | stall s | "
        "stall s, streamed | commit s (background) | snapshots GiB | peak / snapshots | anon peak / snapshots | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        commit = "" if r["commit_seconds"] is None else f"{r['commit_seconds']:.1f}"
        error = "exact" if r["edit_error"] is None else f"{r['edit_error']:.3f}"
        streamed = "" if r.get("streamed_stall_seconds") is None else f"{r['streamed_stall_seconds']:.1f}"
        spill = "" if r["memory"] is None else f"{r['memory']} ({r['snapshots_spilled']} spilled)"
        lines.append(
            f"| {r['method']} | {r['layers']} | {r['trainable'] / 1e6:.0f}M | {r['dtype']} | "
            f"{r['edit_rank'] or 'exact'} | {spill} | "
            f"{r['ingest_mean_seconds']:.2f} / {r['ingest_last_seconds']:.2f} | {r['skill_seconds']:.3f} | "
            f"{r['plan_seconds']:.2f} ({r['reduce_seconds']:.2f}) | {r['applied_rank']} | {error} | "
            f"{r['edit_seconds']:.1f} | {r['stall_seconds']:.1f} | {streamed} | {commit} | {r['snapshot_gib']:.2f} | "
            f"{r['peak_over_snapshots']:.2f} | {r['anon_peak_over_snapshots']:.2f} | "
            f"{r['load'][0]:.1f} / {r['load'][1]:.1f} |"
        )
    name = "fit_scaling" + flag.replace(" --", "_")
    previous = RESULTS / f"{name}_previous.md"  # an earlier run, kept below the new table
    if previous.is_file():
        lines += ["", previous.read_text()]
    write_results(name, {"machine": m, "rows": rows}, "\n".join(lines) + "\n")
    print("\n".join(lines))


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


if __name__ == "__main__":
    main()
