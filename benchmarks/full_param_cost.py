"""What the full-parameter mode of ``ExtrapolationCallback`` costs at real sizes (issue 33, item 3).

    python benchmarks/full_param_cost.py [--steps 5] [--reads 3] [--snapshots 10] [--layers 4] [--jump-snapshots 15] [--repeats 3]
    python benchmarks/full_param_cost.py --render     # the md again from the json

Three parts, each in a fresh process (its result cached under ``benchmarks/cache/full_param_cost/``: a rerun skips
the parts already done; delete the folder, or one part's json in it, to measure again). Each part records the code it
measured (commit, and whether ``rlvr_extrap`` had uncommitted changes); the parts a run re-measures keep their results
from the json it replaces under ``previous``, and the md shows them beside the new ones (parts 1-2; part 3 measures
its own comparison):

1. ``snapshot``: the training thread's cost per snapshot on SmolLM2-135M-Instruct (``rlvr_extrap.experiments.models``,
   float32; also a bfloat16 copy), ``read_weights(find_dense_modules(model, ["*.layers.*"]))`` as the callback's
   ``_snapshot`` calls it, timed ``--reads`` times after every step of a real full-parameter GRPO run (the
   ``smollm2-full`` grid's first run: math-add, 8 prompts x 4 completions, lr 1e-5; held-out evaluation cut to 8
   problems, no checkpoints), against that step's wall time. Also the worker's side of a snapshot, timed on the
   same thread between steps: the subtraction ``(W - origin)`` cast to the snapshot dtype (the expression of
   ``TrajectoryWorker._add_weights``), and a real ``TrajectoryWorker.add_weights`` (subtraction, Gram row, backtest).
2. ``memory``: peak memory of a ``TrajectoryWorker`` with a ``SnapshotSpill`` budget of 3 snapshots, fed
   ``--snapshots`` snapshots of SmolLM2's decoder weights random-walked in place (``read_weights`` as the callback
   hands them over, one at a time), per snapshot dtype and allocator setting (``MALLOC``); the resident (``VmRSS``) and anonymous (``RssAnon``) memory
   sampled every 5 ms, against the budget, one snapshot and one module.
3. ``jump``: the stall at a jump with Qwen2.5-1.5B's decoder-layer shapes (random-walk weights), ``--layers`` of its
   28 layers, ``--jump-snapshots`` bfloat16 snapshots of float32 weights: the training thread's read, the worker's
   ingest of the jump step's snapshot, the plan (fit and prediction; streamed, as with one process and no guard) and
   the edit (``DenseTarget.apply``) on float32 and on bfloat16 weights; relex and linear on the same trajectory, each
   with the worker's thread alone and with the training thread's idle core lent (as the callback does at a jump),
   ``--repeats`` times in turn; then with the plan made beside training (``extrap_wait_for_fit=False``), training
   stood in for by 1-thread matmul steps: the stall (read, hand-over, edit) and how much slower those steps ran.
   ``jump-shared``: the same, with another process running 2-thread matmuls throughout (a machine other jobs share).

Torch runs on 1 thread in the training thread and in the worker (``extrap_worker_threads`` default) everywhere
(part 3's lent rows: 2 threads for the jump step's ingest and plan).
Writes ``results/full_param_cost.{json,md}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import RESULTS, commit, machine, write_results
from stats import INTERVAL, mean_interval, with_interval

CACHE = Path(__file__).parent / "cache" / "full_param_cost"
PATTERNS = ["*.layers.*"]
SNAPSHOT_EVERY = 10  # extrap_snapshot_every's default
SPILL_SNAPSHOTS = 3  # the spill budget, in snapshots
PARTS = ("snapshot", "memory", "jump", "jump_shared")
LENT_THREADS = 2  # both cores
GOALS = {"snapshot_share": 0.01, "stall_seconds": 30.0}
QWEN_LAYERS = 28
QWEN_SHAPES = {  # Qwen2.5-1.5B: hidden 1536, intermediate 8960, 12 query heads and 2 key/value heads of 128
    "self_attn.q_proj": (1536, 1536),
    "self_attn.k_proj": (256, 1536),
    "self_attn.v_proj": (256, 1536),
    "self_attn.o_proj": (1536, 1536),
    "mlp.gate_proj": (8960, 1536),
    "mlp.up_proj": (8960, 1536),
    "mlp.down_proj": (1536, 8960),
}
JUMP_METHODS = ("relex", "linear")
MALLOC = {
    "default": {},
    "fixed": {"MALLOC_MMAP_THRESHOLD_": str(2**20)},
    "small": {"MALLOC_MMAP_THRESHOLD_": str(2**16)},
}
"""glibc's default raises its mmap threshold (up to 32 MiB) after a large block is freed, so later tensors come from
its heap and their pages stay with the process once freed; a fixed threshold returns every block of at least that
size to the kernel when it is freed: 1 MiB leaves SmolLM2's smaller weights in bfloat16 (attention projections) in the
heap, 64 KiB none of its weights, so that what is counted is the tensors alive."""
JUMP_HORIZON = 50


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and the seconds it took."""
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def _ingest(worker: Any, step: int, weights: dict, dtype: Any) -> None:
    """Hand a full-parameter snapshot to the worker and wait until it is ingested."""
    worker.add_weights(step, weights, dtype).result()


def _status_kib(field: str) -> int:
    """A field of ``/proc/self/status`` in KiB (VmRSS, RssAnon, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


class PeakSampler:
    """The largest ``VmRSS`` and ``RssAnon`` seen, sampled every 5 ms on a thread."""

    def __init__(self) -> None:
        self.peak = {"VmRSS": _status_kib("VmRSS"), "RssAnon": _status_kib("RssAnon")}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            for field in self.peak:
                self.peak[field] = max(self.peak[field], _status_kib(field))

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return {field: kib * 1024 for field, kib in self.peak.items()}


def _subtract(weights: dict, origin: dict, dtype: Any) -> dict:
    """The worker's measurement of a full-parameter snapshot (``TrajectoryWorker._add_weights``)."""
    return {name: (w.float() - origin[name].float()).to(dtype) for name, w in weights.items()}


def _nbytes(tensors: dict) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


# ---- part 1: the training thread's snapshot against a GRPO step -------------------------------------------------


def snapshot_part(steps: int, reads: int) -> dict[str, Any]:
    """A real full-parameter GRPO run of ``steps`` steps, the snapshot timings after every step (in this process)."""
    import torch
    from forecast.grids import smollm2_full_grid
    from forecast.recording import run_of
    from transformers import TrainerCallback

    from rlvr_extrap.config import SNAPSHOT_DTYPES
    from rlvr_extrap.experiments.experiment import run_experiment
    from rlvr_extrap.experiments.models import load_model
    from rlvr_extrap.extrapolators import get_extrapolator
    from rlvr_extrap.runtime.dense import find_dense_modules, read_weights
    from rlvr_extrap.runtime.worker import TrajectoryWorker

    torch.set_num_threads(1)
    half, _ = load_model("smollm2", torch.bfloat16)
    half_modules = find_dense_modules(half, PATTERNS)
    worker = TrajectoryWorker(get_extrapolator("linear"))

    class Probe(TrainerCallback):
        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []
            self.modules: dict | None = None
            self.origin: dict | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            self.modules = find_dense_modules(model, PATTERNS)
            self.origin = read_weights(self.modules)
            worker.add_weights(0, self.origin, torch.bfloat16).result()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            row: dict[str, Any] = {"step": state.global_step, "step_seconds": time.perf_counter() - self.start}
            for key in ("read_float32", "read_bfloat16", "subtract_to_float32", "subtract_to_bfloat16"):
                row[key] = []
            for _ in range(reads):
                weights, seconds = _timed(lambda: read_weights(self.modules))
                row["read_float32"].append(seconds)
                row["read_bfloat16"].append(_timed(lambda: read_weights(half_modules))[1])
                for name in ("float32", "bfloat16"):
                    dtype = SNAPSHOT_DTYPES[name]
                    row[f"subtract_to_{name}"].append(_timed(_subtract, weights, self.origin, dtype)[1])
            row["worker_ingest"] = _timed(_ingest, worker, state.global_step, weights, torch.bfloat16)[1]
            self.rows.append(row)

    probe = Probe()
    spec = smollm2_full_grid(steps=steps)[0]
    run = run_of(spec, eval_every=10**9, heldout_size=8, save_every=None, save_total_limit=None, threads=1)
    with tempfile.TemporaryDirectory() as out:
        run_experiment(run, out, [probe])
    worker.close()
    modules = probe.modules or {}
    return {
        "run_id": spec.run_id,
        "prompts": spec.prompts_per_step,
        "generations": spec.generations,
        "learning_rate": spec.learning_rate,
        "task": spec.task,
        "max_completion_length": run.max_completion_length,
        "modules": len(modules),
        "trainable": sum(m.weight.numel() for m in modules.values()),
        "bytes_float32": _nbytes(probe.origin or {}),
        "bytes_bfloat16": sum(m.nbytes(torch.bfloat16) for m in modules.values()),
        "torch_threads": torch.get_num_threads(),
        "rows": probe.rows,
    }


# ---- part 2: peak memory against the spill budget --------------------------------------------------------------


def memory_part(snapshots: int, dtype_name: str) -> dict[str, Any]:
    """``snapshots`` random-walk snapshots of SmolLM2's decoder weights into a worker with a spill budget."""
    import torch

    from rlvr_extrap.config import SNAPSHOT_DTYPES
    from rlvr_extrap.experiments.models import load_model
    from rlvr_extrap.extrapolators import get_extrapolator
    from rlvr_extrap.runtime.dense import find_dense_modules, read_weights
    from rlvr_extrap.runtime.worker import TrajectoryWorker
    from rlvr_extrap.trajectory.spill import SnapshotSpill

    torch.set_num_threads(1)
    dtype = SNAPSHOT_DTYPES[dtype_name]
    model, _ = load_model("smollm2")
    modules = find_dense_modules(model, PATTERNS)
    snapshot = sum(m.nbytes(dtype) for m in modules.values())
    module = max(m.nbytes(dtype) for m in modules.values())
    origin = sum(m.nbytes(torch.float32) for m in modules.values())
    budget = SPILL_SNAPSHOTS * snapshot
    CACHE.mkdir(parents=True, exist_ok=True)
    spill_dir = Path(tempfile.mkdtemp(prefix="spill-", dir=CACHE))  # on disk, as <output_dir>/extrap/spill
    worker = TrajectoryWorker(get_extrapolator("linear"), spill=SnapshotSpill(spill_dir / "spill", budget))
    generator = torch.Generator().manual_seed(0)
    _noise(modules, generator)  # the first write copies the memory-mapped weights loaded from disk: before the baseline
    gc.collect()
    baseline = {"VmRSS": _status_kib("VmRSS") * 1024, "RssAnon": _status_kib("RssAnon") * 1024}
    sampler = PeakSampler()
    after = []
    for t in range(snapshots):
        _noise(modules, generator)
        weights = read_weights(modules)
        worker.add_weights(SNAPSHOT_EVERY * t, weights, dtype).result()
        del weights
        after.append(_status_kib("RssAnon") * 1024 - baseline["RssAnon"])
    peak = sampler.stop()
    spilled = worker.spill.spilled
    worker.close()
    shutil.rmtree(spill_dir, ignore_errors=True)
    return {
        "dtype": dtype_name,
        "snapshots": snapshots,
        "modules": len(modules),
        "snapshot_bytes": snapshot,
        "module_bytes": module,
        "origin_bytes": origin,
        "budget_bytes": budget,
        "spilled": spilled,
        "baseline": baseline,
        "peak_growth": {field: peak[field] - baseline[field] for field in peak},
        "anon_after_each": after,
        "torch_threads": torch.get_num_threads(),
    }


def _noise(modules: dict, generator: Any) -> None:
    """One random-walk step: fresh noise of 1e-4 per number added to every weight."""
    import torch

    with torch.no_grad():
        for m in modules.values():
            m.weight.add_(torch.randn(m.weight.shape, generator=generator), alpha=1e-4)


# ---- part 3: the jump stall at Qwen2.5-1.5B's layer shapes ------------------------------------------------------


def _qwen_layers(layers: int, dtype: Any) -> Any:
    """A module tree named like a decoder (``model.layers.<i>.<kind>``) holding bias-free linear weights."""
    import torch
    from torch import nn

    model = nn.Module()
    model.model = nn.Module()
    model.model.layers = nn.ModuleList()
    for _ in range(layers):
        layer = nn.Module()
        layer.self_attn, layer.mlp = nn.Module(), nn.Module()
        for kind, (out_dim, in_dim) in QWEN_SHAPES.items():
            group, name = kind.split(".")
            linear = nn.Linear(in_dim, out_dim, bias=False, device="meta", dtype=dtype)
            linear.weight = nn.Parameter(torch.empty(out_dim, in_dim, dtype=dtype))
            setattr(getattr(layer, group), name, linear)
        model.model.layers.append(layer)
    return model


def jump_part(layers: int, snapshots: int, repeats: int, load_threads: int = 0) -> dict[str, Any]:
    """``snapshots`` bfloat16 snapshots of ``layers`` Qwen-shaped float32 layers, then ``repeats`` jumps per method
    and thread count, each from the same trajectory; ``load_threads``: beside another job, a process running
    matmuls on that many threads throughout."""
    import torch

    from rlvr_extrap.extrapolators import get_extrapolator
    from rlvr_extrap.runtime.dense import DenseTarget, find_dense_modules, read_weights
    from rlvr_extrap.runtime.worker import TrajectoryWorker, idle_threads

    torch.set_num_threads(1)
    load = None
    if load_threads:
        job = f"import torch; torch.set_num_threads({load_threads}); x = torch.randn(1024, 1024)\nwhile True: x @ x"
        load = subprocess.Popen([sys.executable, "-c", job])
    generator = torch.Generator().manual_seed(0)
    full, half = _qwen_layers(layers, torch.float32), _qwen_layers(layers, torch.bfloat16)
    modules, half_modules = find_dense_modules(full, PATTERNS), find_dense_modules(half, PATTERNS)
    drift = {}
    with torch.no_grad():
        for name, m in modules.items():
            m.weight.normal_(0.0, 0.02, generator=generator)
            half_modules[name].weight.copy_(m.weight)
            drift[name] = torch.randn(m.weight.shape, generator=generator)
    worker = TrajectoryWorker(get_extrapolator(JUMP_METHODS[0]))  # 1 thread: extrap_worker_threads' default
    rows: dict[str, Any] = {"ingest_seconds": [], "walk_seconds": []}
    sampler = PeakSampler()
    for t in range(snapshots):
        _, walk = _timed(lambda: _walk(modules, drift, generator))
        rows["walk_seconds"].append(walk)
        if t == snapshots - 1:
            break
        weights = read_weights(modules)
        rows["ingest_seconds"].append(_timed(_ingest, worker, SNAPSHOT_EVERY * t, weights, torch.bfloat16)[1])
        del weights
    step = SNAPSHOT_EVERY * (snapshots - 1)
    # the jump step, as the callback takes it: read, hand over, wait for the plan queued behind the ingest, edit;
    # per method, on the worker's thread alone and with the training thread's core lent (the callback's way)
    weights, read = _timed(lambda: read_weights(modules))
    before = worker.trajectory
    target, half_target = DenseTarget(modules), DenseTarget(half_modules)
    lent = LENT_THREADS  # the rows' lent threads; what the callback would lend here, from the load, is recorded
    callback_lends, load_then = idle_threads(1), os.getloadavg()[0]
    jumps: dict[str, dict[str, list[float]]] = {}
    plan = None
    for _ in range(repeats):  # alternating, so a slower spell of the machine falls on every row alike
        for method in JUMP_METHODS:
            for threads in (None, lent):
                del plan
                worker.extrapolator, worker.trajectory = get_extrapolator(method), before.fork()
                start = time.perf_counter()
                if threads is not None:
                    worker.lend_threads(threads)
                worker.add_weights(step, weights, torch.bfloat16)
                plan = worker.plan_jump(step, JUMP_HORIZON, 1.0, stream=True).result()
                wait = time.perf_counter() - start
                edit = _timed(lambda p=plan: target.apply(p.reduced_updates()))[1]
                plan.settled()
                row = jumps.setdefault(method if threads is None else f"{method}, {threads} threads lent", {})
                row.setdefault("wait_seconds", []).append(wait)
                row.setdefault("fit_seconds", []).append(plan.fit_seconds)
                row.setdefault("edit_float32_seconds", []).append(edit)
                row.setdefault("edit_bfloat16_seconds", []).append(
                    _timed(lambda p=plan: half_target.apply(p.updates))[1]
                )
    # extrap_wait_for_fit=False: the training thread hands the weights over and trains on (a stand-in step: 1-thread
    # matmuls, compute-bound), asking after each step whether the plan is ready, then edits
    work = torch.randn(768, 768, generator=generator)

    def stand_in_step() -> float:
        return _timed(lambda: [work @ work for _ in range(20)])[1]

    beside: dict[str, dict[str, list]] = {}
    for _ in range(repeats):
        for method in JUMP_METHODS:
            del plan
            alone = [stand_in_step() for _ in range(3)]
            worker.extrapolator, worker.trajectory = get_extrapolator(method), before.fork()
            start = time.perf_counter()
            worker.add_weights(step, weights, torch.bfloat16)
            future = worker.plan_jump(step, JUMP_HORIZON, 1.0)
            handover = time.perf_counter() - start
            steps = [stand_in_step()]  # at least one: the plan lands at a later step end
            while not future.done():
                steps.append(stand_in_step())
            plan = future.result()
            row = beside.setdefault(method, {})
            row.setdefault("handover_seconds", []).append(handover)
            row.setdefault("edit_float32_seconds", []).append(_timed(lambda p=plan: target.apply(p.updates))[1])
            row.setdefault("step_alone_seconds", []).append(statistics.fmean(alone))
            row.setdefault("steps_while_fitting_seconds", []).append(steps)
    del weights
    commit = _timed(lambda: worker.commit_jump(plan).result())[1]
    peak = sampler.stop()
    worker.close()
    if load is not None:
        load.kill()
    return {
        "load_threads": load_threads,
        "layers": layers,
        "snapshots": snapshots,
        "horizon": JUMP_HORIZON,
        "repeats": repeats,
        "trainable": sum(m.weight.numel() for m in modules.values()),
        "snapshot_bytes": sum(m.nbytes(torch.bfloat16) for m in modules.values()),
        "read_seconds": read,
        "ingest_seconds": rows["ingest_seconds"],
        "walk_seconds": rows["walk_seconds"],
        "commit_seconds": commit,
        "jumps": jumps,
        "beside": beside,
        "callback_lends": callback_lends,
        "load_at_jump": load_then,
        "peak_rss_bytes": peak["VmRSS"],
        "torch_threads": torch.get_num_threads(),
    }


def _walk(modules: dict, drift: dict, generator: Any) -> None:
    """One random-walk step of every weight: a fixed drift plus fresh noise, 1e-4 each."""
    import torch

    with torch.no_grad():
        for name, m in modules.items():
            m.weight.add_(drift[name] + torch.randn(m.weight.shape, generator=generator), alpha=1e-4)


# ---- driver and rendering --------------------------------------------------------------------------------------


def _part(name: str, args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """One part's result: cached, else measured in a fresh process (``env``: variables added to its environment)."""
    path = CACHE / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    command = [sys.executable, __file__, "--part", name, *args]
    load_start, start = os.getloadavg(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"part {name} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_average"] = {"start": load_start, "end": os.getloadavg()}
    result["wall_seconds"] = time.perf_counter() - start
    result["malloc_env"] = env or {}
    result["code"] = _code()
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def _code() -> str:
    """The commit measured, and whether ``rlvr_extrap`` differed from it (a change measured before it is committed)."""
    package = Path(__file__).parent.parent / "rlvr_extrap"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", str(package)], capture_output=True, text=True).stdout
    return commit() + (" with uncommitted changes to rlvr_extrap" if dirty.strip() else "")


def _previous(old: dict[str, Any] | None, data: dict[str, Any]) -> dict[str, Any]:
    """Per part, the results the last re-measurement of it replaced, with their code (``codes``): the replaced
    json's own ``previous``, and for the parts this run re-measured, the replaced json's results."""
    if old is None:
        return {}
    prior = old.get("previous", {})
    codes = prior.get("codes", {})
    changed = [key for key in PARTS if key in old and _numbers(old[key]) != _numbers(data[key])]
    return {
        **{key: prior[key] for key in codes},
        **{key: old[key] for key in changed},
        "codes": codes | {key: old["machine"]["commit"] for key in changed},
    }


def _numbers(part: Any) -> Any:
    """A part's results without the code they measured (to tell a re-measured part from a cached one)."""
    if isinstance(part, list):
        return [_numbers(p) for p in part]
    return {k: v for k, v in part.items() if k != "code"} if isinstance(part, dict) else part


def _share(rows: list[dict[str, Any]], key: str) -> tuple[float, float, float]:
    """Per step (the first, with its warm-up, left out): the mean of ``key``'s times over that step's time."""
    return mean_interval([_value(r[key]) / r["step_seconds"] for r in rows[1:]])


def _mean(rows: list[dict[str, Any]], key: str) -> tuple[float, float, float]:
    return mean_interval([_value(r[key]) for r in rows[1:]])


def _value(seconds: float | list[float]) -> float:
    """A step's time: the mean of its repeats where there are several."""
    return statistics.fmean(seconds) if isinstance(seconds, list) else seconds


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def snapshot_section(part: dict[str, Any]) -> list[str]:
    rows = part["rows"]
    step = _mean(rows, "step_seconds")
    lines = [
        "## 1. The training thread's snapshot against a GRPO step (SmolLM2-135M-Instruct)",
        "",
        f"A real full-parameter GRPO run (`{part['run_id']}`: {part['task']}, {part['prompts']} prompts x "
        f"{part['generations']} completions, {part['max_completion_length']} new tokens, lr {part['learning_rate']:g}, "
        f"float32 weights, {part['torch_threads']} torch thread), {len(rows)} steps; after every step "
        f"{len(rows[0]['read_float32'])} snapshot reads of its {part['modules']} decoder-layer weights "
        f"({part['trainable'] / 1e6:.0f}M numbers, {_mib(part['bytes_float32'])} in float32), each followed by a read "
        f"of a bfloat16 copy of the model ({_mib(part['bytes_bfloat16'])}) and the worker's subtraction; then one "
        "real `TrajectoryWorker.add_weights` (bfloat16 snapshots, linear method). Step 1 (warm-up) is left out of "
        f"the means; each mean is over steps 2-{len(rows)} ({INTERVAL}, t).",
        "",
        "| what | thread | seconds | share of the step |",
        "|---|---|---|---|",
        f"| GRPO step (generation, loss, backward, AdamW) | training | {with_interval(*step[::2], 2)} | 1 |",
    ]
    for key, what, thread in (
        ("read_float32", "snapshot read, float32 weights (`read_weights`)", "training"),
        ("read_bfloat16", "snapshot read, bfloat16 weights", "training"),
        ("subtract_to_float32", "subtraction W - origin, float32 snapshot", "worker"),
        ("subtract_to_bfloat16", "subtraction W - origin, cast to bfloat16", "worker"),
        ("worker_ingest", "whole ingest (subtraction, Gram row, backtest), bfloat16", "worker"),
    ):
        seconds, share = _mean(rows, key), _share(rows, key)
        lines.append(
            f"| {what} | {thread} | {with_interval(seconds[0], seconds[2], 3)} | "
            f"{with_interval(share[0] * 100, share[2] * 100, 3)}% |"
        )
    share = _share(rows, "read_float32")
    goal = GOALS["snapshot_share"]
    lines += [
        "",
        "All steps (s): " + ", ".join(f"{r['step_seconds']:.1f}" for r in rows) + ".",
        "",
        f"Goal: a snapshot under {goal:.0%} of a step on the training thread. Float32 read: "
        f"{share[0] * 100:.3f}% of a step (upper 95% bound {(share[0] + share[2]) * 100:.3f}%): "
        f"{_met(share[0] + share[2] < goal)}. Snapshots are taken every `extrap_snapshot_every` = {SNAPSHOT_EVERY} "
        f"steps by default, so amortized over the steps the read costs {share[0] * 100 / SNAPSHOT_EVERY:.4f}% per "
        "step. The worker's subtraction and ingest run on its own thread (1 torch thread) while training goes on; on "
        "2 cores they take the second core, and are timed here between steps, not overlapped.",
    ]
    return lines


def _allocator(part: dict[str, Any]) -> str:
    """How the part's process allocated: glibc's default, or a fixed mmap threshold (``MALLOC``)."""
    threshold = (part.get("malloc_env") or {}).get("MALLOC_MMAP_THRESHOLD_")
    if threshold is None:
        return "glibc default"
    size = int(threshold)
    return f"mmap threshold {size // 2**20} MiB" if size >= 2**20 else f"mmap threshold {size // 2**10} KiB"


def _before(previous: dict[str, Any], key: str) -> tuple[Any, str]:
    """The ``previous`` results of part ``key`` (None if this run did not re-measure it) and their row label."""
    return previous.get(key), f"before (commit {previous.get('codes', {}).get(key)})"


def _memory_row(p: dict[str, Any], label: str) -> tuple[str, bool]:
    """One table row of part 2 and whether it meets the goal."""
    anon, rss = p["peak_growth"]["RssAnon"], p["peak_growth"]["VmRSS"]
    rest = anon - 2 * p["origin_bytes"]
    bound = p["budget_bytes"] + p["module_bytes"]
    row = (
        f"| {p['dtype']} | {_allocator(p)} | {label} | {p['snapshots']} ({p['spilled']}) | "
        f"{_mib(p['snapshot_bytes'])} | {_mib(p['module_bytes'])} | {_mib(p['budget_bytes'])} | "
        f"{_mib(p['origin_bytes'])} | {_mib(anon)} | {_mib(rss)} | {_mib(rest)} | {_mib(rest - bound)} "
        f"({(rest - bound) / p['snapshot_bytes']:.2f} snapshots) |"
    )
    return row, rest <= bound


def memory_section(parts: list[dict[str, Any]], previous: dict[str, Any]) -> list[str]:
    before, label = _before(previous, "memory")
    lines = [
        "## 2. Peak memory against the spill budget (SmolLM2-135M decoder weights, random walk)",
        "",
        f"A `TrajectoryWorker` (linear method, 1 thread) with a `SnapshotSpill` budget of {SPILL_SNAPSHOTS} snapshots "
        "(spill files on disk under `benchmarks/cache/`), fed snapshots of SmolLM2-135M-Instruct's float32 decoder "
        "weights, random-walked in place between snapshots (fresh noise of 1e-4 per number: random-walk weights, not "
        "a training run), each read with `read_weights` and handed over as the callback does; the next snapshot waits "
        "for the previous ingest. Growth = peak above the process's memory before the first snapshot (model "
        "loaded and its weights written once), sampled every 5 ms; `RssAnon` is the process's own memory, `VmRSS` "
        "adds the file pages of the memory-mapped spilled snapshots (the kernel can drop those). Always held beside "
        "the budget: the worker's origin copy (float32, the first weights handed in); in flight while a snapshot is "
        "ingested: the weights the training thread read (float32, as large as the origin). Allocator: glibc's "
        "default keeps freed pages of blocks under its (rising) mmap threshold, so its growth includes memory freed "
        "but not returned; with "
        "`MALLOC_MMAP_THRESHOLD_` fixed, every block of at least that size goes back to the kernel when freed: "
        "at 1 MiB SmolLM2's smaller weights in bfloat16 (the attention projections) still come from the heap and "
        "their freed pages stay, at 64 KiB none of its weights do, so the growth is the tensors alive."
        + (
            f" Rows '{label}': the results this run replaced, measured before the worker made room for a snapshot "
            "before computing it (it counted a snapshot only once whole, then spilled the oldest) and before the spill "
            "wrote one tensor at a time (`safetensors`' `save_file` builds the whole file in memory first)."
            if before
            else ""
        ),
        "",
        "| snapshot dtype | allocator | measured | snapshots (spilled) | one snapshot | one module | budget | "
        "origin (held) | RssAnon growth | VmRSS growth | RssAnon growth - origin - in-flight read | "
        "excess over budget + one module |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    earlier = {(p["dtype"], _allocator(p)): p for p in before or []}
    met_by_dtype: dict[str, set[str]] = {}
    for p in parts:
        row, met = _memory_row(p, "this run")
        lines.append(row)
        if (p["dtype"], _allocator(p)) in earlier:
            lines.append(_memory_row(earlier[p["dtype"], _allocator(p)], label)[0])
        verdicts.append(f"{p['dtype']}, {_allocator(p)}: {_met(met)}")
        met_by_dtype.setdefault(p["dtype"], set()).update([_allocator(p)] if met else [])
    allocators = {_allocator(p) for p in parts}
    met_everywhere = set.intersection(*met_by_dtype.values()) if met_by_dtype else set()
    allocator_only = bool(met_everywhere) and all(met == met_everywhere for met in met_by_dtype.values())
    lines += [
        "",
        "Goal: the worker's memory under the budget + one module, the origin copy counted separately (and here the "
        f"in-flight read too): {'; '.join(verdicts)}. `TrajectoryWorker.add_weights` makes room in the budget for "
        "the new snapshot before computing it (`SnapshotSpill.make_room` spills the oldest snapshots first), so the "
        "snapshots resident never exceed the budget; beyond it, the subtraction of one module is in flight."
        + (
            f" In each dtype the goal is met with {' and '.join(sorted(met_everywhere))} and missed with "
            f"{' and '.join(sorted(allocators - met_everywhere))}: the same code, another allocator setting, so what "
            "those rows count beyond the bound is memory freed and kept by glibc, not tensors alive."
            if allocator_only and allocators - met_everywhere
            else ""
        ),
        "",
        "Anonymous memory after each ingest (growth, MiB): "
        + "; ".join(
            f"{p['dtype']}, {_allocator(p)}: {', '.join(f'{a / 2**20:.0f}' for a in p['anon_after_each'])}"
            for p in parts
        )
        + ".",
    ]
    return lines


def _jump_rows(part: dict[str, Any]) -> tuple[list[str], dict[str, float]]:
    """Part 3's table rows (means over the repeats ± 95% interval) and each row's mean stall at 28 layers (the
    larger of float32 and bfloat16 weights)."""
    scale, read = QWEN_LAYERS / part["layers"], part["read_seconds"]
    rows, stalls = [], {}
    for method, j in part["jumps"].items():
        cells = [
            mean_interval([read + w + e for w, e in zip(j["wait_seconds"], j[edit], strict=True)])
            for edit in ("edit_float32_seconds", "edit_bfloat16_seconds")
        ]
        wait, fit = mean_interval(j["wait_seconds"]), mean_interval(j["fit_seconds"])
        rows.append(
            f"| {method} | {read:.2f} | {with_interval(wait[0], wait[2], 2)} (plan {fit[0]:.2f}) | "
            f"{statistics.fmean(j['edit_float32_seconds']):.2f} | {statistics.fmean(j['edit_bfloat16_seconds']):.2f} | "
            + " / ".join(with_interval(c[0], c[2], 1) for c in cells)
            + " | "
            + " / ".join(with_interval(c[0] * scale, c[2] * scale, 0) for c in cells)
            + " |"
        )
        stalls[method] = max(c[0] for c in cells) * scale
    return rows, stalls


def _ingests(part: dict[str, Any]) -> str:
    return ", ".join(f"{s:.2f}" for s in part["ingest_seconds"])


def jump_section(part: dict[str, Any], shared: dict[str, Any]) -> list[str]:
    k = part["layers"]
    scale = QWEN_LAYERS / k
    lines = [
        "## 3. The stall at a jump with Qwen2.5-1.5B's layer shapes",
        "",
        f"{k} of Qwen2.5-1.5B's {QWEN_LAYERS} decoder layers (q 1536x1536, k/v 256x1536, o 1536x1536, gate/up "
        f"8960x1536, down 1536x8960; {part['trainable'] / 1e6:.0f}M numbers), float32 weights random-walked "
        f"(drift + noise), {part['snapshots']} bfloat16 snapshots ({_gib(part['snapshot_bytes'])} each) every "
        f"{SNAPSHOT_EVERY} steps, all in memory, a jump over {part['horizon']} steps at the last one (ungated). "
        "Worker on 1 thread (`extrap_worker_threads` default), training thread on 1 thread: 2 cores. Stall = "
        "read (training thread) + wait (the jump step's snapshot ingested by the worker, then the plan queued "
        "behind it: fit and prediction, streamed) + edit (`DenseTarget.apply` into the weights, which also measures "
        "what landed: the weight before and after each block, and the float64 sums of their products with the "
        "update). Every row hands the same jump-step weights to the same 14-point trajectory (a copy of it) and "
        "plans with its method (the ingest's backtest is the method's own), "
        f"{part['repeats']} times per row, the rows taken in turn (means ± 95% interval over the repeats). Rows 'N threads lent' are the "
        "callback's way (`extrap_lend_threads`, on by default): the training thread waits for the plan, so it lends "
        "its idle core (`TrajectoryWorker.lend_threads`) and the jump step's ingest and plan run on N threads (here "
        "lent whatever the load; the callback lends only the cores the load average leaves free, `idle_threads`), "
        "in a thread of their own that ends with them (its OpenMP team too: a team left beside the training "
        "thread's slows every later step, see `extrap_worker_threads`); the other rows are the worker's thread "
        f"alone. Peak RSS of the process: {_gib(part['peak_rss_bytes'])}.",
    ]
    table, verdicts = _jump_measurements(part)
    ingest_last = part["ingest_seconds"][-1] if part["ingest_seconds"] else 0.0
    shared_table, shared_verdicts = _jump_measurements(shared)
    lines += [
        *table,
        "",
        f"Worker ingest per snapshot (background, s): {_ingests(part)} (the jump step's: within the wait; "
        f"{ingest_last:.2f} s for the one before)"
        + f". Commit after the jump (background): {part['commit_seconds']:.2f} s.",
        "",
        f"Goal: a stall under {GOALS['stall_seconds']:.0f} s on 2 cores at all {QWEN_LAYERS} layers, judged on the "
        f"mean's linear extrapolation from {k} layers above (every part of the stall is a pass over each layer's "
        f"weights or snapshots, so it scales with the layers): {'; '.join(verdicts)}. Memory at {QWEN_LAYERS} layers, "
        f"by the same scaling: {part['snapshots']} bfloat16 snapshots are "
        f"{_gib(part['snapshot_bytes'] * part['snapshots'] * scale)} (spill to disk past the budget), plus the "
        f"float32 origin {_gib(part['snapshot_bytes'] * 2 * scale)}.",
        "",
        "### 3b. The same on a machine shared with another job",
        "",
        f"Part 3 again in a fresh process, with another process running {shared['load_threads']}-thread matmuls "
        "throughout (another job on the same 2 cores). Goal as above: "
        f"{'; '.join(shared_verdicts)}. Peak RSS of the process: {_gib(shared['peak_rss_bytes'])}.",
        *shared_table,
        "",
        "What a GPU would change (reasoning, not measured): the edit (a float32 update added into each weight) and "
        "the prediction's dense combination of the snapshots are memory-bandwidth bound. The edit runs where the "
        "weights live, so on a GPU its additions would take milliseconds and its cost would be the copy of the "
        "float32 update from the worker's CPU memory (one PCIe transfer of the update per jump); the worker, its "
        "snapshots, the ingest and the prediction stay on the CPU, so the wait above changes only with the CPU's "
        "memory bandwidth and the worker's threads (`extrap_worker_threads`, and at a jump the training thread's "
        "idle cores, `extrap_lend_threads`: with training on a GPU, every core the training process has).",
    ]
    return lines


def _jump_measurements(part: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Part 3's table, the lent/alone ratios and the plan made beside training; the goal's verdicts."""
    k = part["layers"]
    scale = QWEN_LAYERS / k
    rows, stalls = _jump_rows(part)
    lines = [
        "",
        f"| method | read s | wait s (jump step's ingest + plan) | edit s, float32 | edit s, bfloat16 | stall s, {k} layers "
        f"(float32 / bfloat16 weights) | **extrapolated to {QWEN_LAYERS} layers** (x{scale:g}) |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    ratios = []
    for method in JUMP_METHODS:
        lent = next(j for name, j in part["jumps"].items() if name.startswith(f"{method}, "))
        paired = [a / b for a, b in zip(lent["wait_seconds"], part["jumps"][method]["wait_seconds"], strict=True)]
        mean, _, half = mean_interval(paired)
        ratios.append(f"{method} {', '.join(f'{r:.2f}' for r in paired)} ({with_interval(mean, half, 2)})")
    lines += [
        "",
        "Wait with the core lent over the wait of the worker alone, repeat by repeat (the same repeat's pair: the "
        f"machine's slow spells cancel): {'; '.join(ratios)}. What the callback lends by itself here "
        f"(`idle_threads`, from the 1-minute load average, {part['load_at_jump']:.1f} at the jump step): "
        f"{part['callback_lends']} thread(s) in all.",
    ]
    verdicts = [f"{method} {_met(stall < GOALS['stall_seconds'])}" for method, stall in stalls.items()]
    beside = []  # extrap_wait_for_fit=False: the training thread reads, hands over and edits; the plan runs beside it
    for method, j in part["beside"].items():
        stall = mean_interval(
            [
                part["read_seconds"] + h + e
                for h, e in zip(j["handover_seconds"], j["edit_float32_seconds"], strict=True)
            ]
        )
        slowdown = mean_interval(
            [
                statistics.fmean(s) / a
                for s, a in zip(j["steps_while_fitting_seconds"], j["step_alone_seconds"], strict=True)
            ]
        )
        fitting = mean_interval([sum(s) for s in j["steps_while_fitting_seconds"]])
        beside.append(
            f"{method}: stall {with_interval(stall[0], stall[2], 2)} s at {k} layers, "
            f"{with_interval(stall[0] * scale, stall[2] * scale, 0)} s at {QWEN_LAYERS}; the plan was ready after "
            f"{with_interval(fitting[0], fitting[2], 1)} s of stand-in steps, each "
            f"{with_interval(slowdown[0], slowdown[2], 2)} times as long as alone"
        )
        verdicts.append(f"{method} beside training {_met(stall[0] * scale < GOALS['stall_seconds'])}")
    lines += [
        "",
        "With `extrap_wait_for_fit=False` the training thread does not wait for the plan: it reads the weights at the "
        "jump step, hands them over, trains on and edits at the first step end after the plan is ready. Measured after "
        f"the rows above in the same process ({part['repeats']} repeats, means ± 95% interval; float32 edit), training stood in "
        "for by steps of 1-thread matmuls (compute-bound; a real step also moves memory, which the worker competes "
        "for), the plan asked after each: stall = read + hand-over + edit. "
        f"{'; '.join(beside)}. The jump then lands that much training later, the planned update added to the "
        "weights of that step.",
    ]
    return lines, verdicts


def markdown(data: dict[str, Any]) -> str:
    """The results file's text."""
    info = data["machine"]
    where = info["cuda"] or f"CPU only, {info['cpu_count']} cores ({info['processor']})"
    loads = ", ".join(
        f"{name} {load['start'][0]:.1f} -> {load['end'][0]:.1f}" for name, load in data["load_by_part"].items()
    )
    busiest = max(max(load["start"][0], load["end"][0]) for load in data["load_by_part"].values())
    shared = (
        "other jobs shared the cores, so the times are upper bounds for free cores"
        if busiest > info["cpu_count"] + 0.5
        else "no other heavy job shared the cores"
    )
    previous = data.get("previous", {})
    codes = {"1": data["snapshot"].get("code"), "2": data["memory"][0].get("code"), "3": data["jump"].get("code")}
    elsewhere = {part: code for part, code in codes.items() if code not in (None, info["commit"])}
    lines = [
        "# Full-parameter extrapolation: memory and time at real sizes (issue 33)",
        "",
        f"`{info['command']}` at commit {info['commit']}"
        + "".join(f" (part {part} kept from a run at commit {code})" for part, code in elsewhere.items())
        + f"; {where}, torch {info['torch']}; torch on 1 thread in the "
        "training thread and 1 in the worker in every part; each part in a fresh process. 1-minute load average "
        f"before -> after each part: {loads} ({shared}). Wall time of the parts {data['wall_seconds']:.0f} s.",
        "",
        *snapshot_section(data["snapshot"]),
        "",
        *memory_section(data["memory"], previous),
        "",
        *jump_section(data["jump"], data["jump_shared"]),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="GRPO steps of part 1")
    parser.add_argument("--reads", type=int, default=3, help="snapshot reads after each step")
    parser.add_argument("--snapshots", type=int, default=10, help="snapshots fed to the spilling worker (part 2)")
    parser.add_argument("--layers", type=int, default=4, help="Qwen-shaped layers of part 3")
    parser.add_argument("--jump-snapshots", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3, help="jumps per method and thread count (part 3)")
    parser.add_argument("--render", action="store_true", help="rewrite the md from results/full_param_cost.json")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # one part, in this process
    parser.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    parser.add_argument("--load-threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.render:
        path = RESULTS / "full_param_cost.json"
        (path.with_suffix(".md")).write_text(markdown(json.loads(path.read_text())))
        return
    if args.part:
        parts = {
            "snapshot": lambda: snapshot_part(args.steps, args.reads),
            "memory": lambda: memory_part(args.snapshots, args.dtype),
            "jump": lambda: jump_part(args.layers, args.jump_snapshots, args.repeats, args.load_threads),
        }
        print(json.dumps(parts[args.part.split("-")[0]]()))
        return
    jump_args = [
        "--layers",
        str(args.layers),
        "--jump-snapshots",
        str(args.jump_snapshots),
        "--repeats",
        str(args.repeats),
    ]
    data: dict[str, Any] = {
        "snapshot": _part("snapshot", ["--steps", str(args.steps), "--reads", str(args.reads)]),
        "memory": [
            _part(f"memory-{d}-{m}", ["--snapshots", str(args.snapshots), "--dtype", d], MALLOC[m])
            for d in ("bfloat16", "float32")
            for m in MALLOC
        ],
        "jump": _part("jump", jump_args),
        "jump_shared": _part("jump-shared", [*jump_args, "--load-threads", "2"]),
    }
    path = RESULTS / "full_param_cost.json"
    old = json.loads(path.read_text()) if path.is_file() else None
    for key in PARTS:  # parts cached before parts recorded their code: the replaced json's
        for result in data[key] if isinstance(data[key], list) else [data[key]]:
            result.setdefault("code", old["machine"]["commit"] if old else "unknown")
    data["machine"] = {**machine(), "commit": _code()}
    data["previous"] = _previous(old, data)
    data["settings"] = vars(args)
    data["load_by_part"] = {
        "snapshot": data["snapshot"]["load_average"],
        **{f"memory ({p['dtype']}, {_allocator(p)})": p["load_average"] for p in data["memory"]},
        "jump": data["jump"]["load_average"],
        "jump beside another job": data["jump_shared"]["load_average"],
    }
    data["wall_seconds"] = sum(
        p["wall_seconds"] for p in [data["snapshot"], *data["memory"], data["jump"], data["jump_shared"]]
    )
    text = markdown(data)
    write_results("full_param_cost", data, text)
    print(text)


if __name__ == "__main__":
    main()
