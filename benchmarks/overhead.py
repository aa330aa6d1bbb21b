"""Callback overhead, measured with interleaved repeats: vanilla GRPO and GRPO with the callback alternate.

    python benchmarks/overhead.py                                           # toy: 5 repeats x 40 steps
    python benchmarks/overhead.py --model smollm2 --repeats 3 --steps 6 --snapshot-every 2
    python benchmarks/overhead.py --model smollm2 --steps 4 --snapshot-every 2 --worker-threads 2 1   # before/after

Each repeat runs every arm once (vanilla, then the callback snapshotting every N steps with one jump at
the last step) with the same seed, in an order rotated by one arm per repeat (with two arms: vanilla
first, then the callback first, ...), all in this process, so the load of other jobs on the machine hits
every arm alike. Per run:

* train time: the sum of the optimizer steps' wall times (``on_step_begin`` to ``on_step_end``, the
  callback's hooks included; model loading and the evaluations at train begin and end excluded);
* hook time: wall time the training thread spent inside ``ExtrapolationCallback``'s hooks, split into the
  step hooks (snapshots, the jump) and the one-off train begin/end (worker start, final state save);
* worker CPU: CPU seconds of the background thread (``time.thread_time`` inside it), which competes with
  training for the cores; main-thread and whole-process CPU seconds over the run;
* the load average (1 minute) at the start and end of the run.

Results go into ``results/overhead.{json,md}`` under ``--label`` (default: the model), next to the other
labels already there. ``--worker-threads`` gives the callback arms' ``extrap_worker_threads`` (several values:
one arm each, e.g. 2 as before the worker was limited to one thread, against the default 1).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from common import RESULTS, machine, write_results
from transformers import TrainerCallback

from rlvr_extrap.experiments.demo import DEMO_MODELS, GATED_RELEX
from rlvr_extrap.experiments.experiment import Run, run_experiment
from rlvr_extrap.experiments.models import load_model
from rlvr_extrap.runtime.callback import ExtrapolationCallback

HOOK_SECONDS: dict[str, float] = defaultdict(float)  # ExtrapolationCallback hook name -> wall seconds, this run


def _timed(name: str, hook: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(hook)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return hook(*args, **kwargs)
        finally:
            HOOK_SECONDS[name] += time.perf_counter() - start

    return timed


for _name, _hook in list(vars(ExtrapolationCallback).items()):
    if _name.startswith("on_") and callable(_hook):
        setattr(ExtrapolationCallback, _name, _timed(_name, _hook))


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step; listed after the extrapolation callback, so its hooks are inside."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def measure(run: Run, out: str) -> dict[str, Any]:
    """One run, with its step times, hook times, CPU times and load."""
    HOOK_SECONDS.clear()
    timer = StepTimer()
    load_start = os.getloadavg()[0]
    cpu_main, cpu_process = time.thread_time(), time.process_time()
    r = run_experiment(run, out, callbacks=[timer])
    cpu_main, cpu_process = time.thread_time() - cpu_main, time.process_time() - cpu_process
    jumps = [j for j in r["jumps"] if "skipped" not in j]
    return {
        "arm": run.name,
        "train_seconds": sum(timer.seconds),
        "median_step_seconds": statistics.median(timer.seconds),
        "step_seconds": timer.seconds,
        "hook_seconds": dict(HOOK_SECONDS),
        "step_hook_seconds": HOOK_SECONDS.get("on_step_end", 0.0),
        "snapshot_seconds": r["snapshot_seconds"],
        "jumps": len(jumps),
        "jump_stall_seconds": sum(j["wait_seconds"] + j["apply_seconds"] for j in jumps),
        "skipped_jumps": [j["skipped"] for j in r["jumps"] if "skipped" in j],
        "worker_cpu_seconds": r["worker_cpu_seconds"],
        "main_thread_cpu_seconds": cpu_main,
        "process_cpu_seconds": cpu_process,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(runs: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    """Per callback arm: the per-repeat ratios to vanilla of the same repeat, and the cost decomposition."""
    by_arm: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        by_arm[r["arm"]].append(r)
    vanilla = by_arm[arms[0]]
    summary = {}
    for arm in arms[1:]:
        rows = by_arm[arm]
        summary[arm] = {
            "train_time_ratio": spread(
                [c["train_seconds"] / v["train_seconds"] for c, v in zip(rows, vanilla, strict=True)]
            ),
            "median_step_ratio": spread(
                [c["median_step_seconds"] / v["median_step_seconds"] for c, v in zip(rows, vanilla, strict=True)]
            ),
            "step_hooks_fraction_of_train": spread([c["step_hook_seconds"] / c["train_seconds"] for c in rows]),
            "jump_stall_steps": spread([c["jump_stall_seconds"] / c["median_step_seconds"] for c in rows]),
            "worker_cpu_seconds": spread([c["worker_cpu_seconds"] for c in rows]),
            "worker_cpu_fraction_of_train": spread([c["worker_cpu_seconds"] / c["train_seconds"] for c in rows]),
            "train_begin_end_seconds": spread(
                [
                    c["hook_seconds"].get("on_train_begin", 0.0) + c["hook_seconds"].get("on_train_end", 0.0)
                    for c in rows
                ]
            ),
        }
    return summary


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Callback overhead, interleaved repeats", ""]
    for label, entry in results.items():
        m, s = entry["machine"], entry["settings"]
        loads = [x for r in entry["runs"] for x in (r["load_start"], r["load_end"])]
        lines += [
            f"## {label}",
            "",
            f"- command: `{m['command']}`; commit {m['commit']}; {entry['finished']}",
            f"- machine: {m['processor']}, {m['cpu_count']} cores, torch {m['torch']}, no GPU; torch threads in the "
            f"run: {s['threads'] or 'default'}; load average (1 min) during the runs {min(loads):.1f}-{max(loads):.1f}",
            f"- {entry['repeats']} repeats x {len(entry['arms'])} arms ({', '.join(entry['arms'])}), "
            f"{s['grpo_steps']} GRPO steps each, seed {s['seed']}, order rotated per repeat; the callback arms: "
            f"`{json.dumps(entry['extrap'])}` plus the snapshot interval (and worker threads, where the arm says)",
            "",
            "| arm | train time / vanilla: median (min-max) | median step / vanilla | step hooks / train time "
            "| jump stall (steps) | worker CPU s (/ train time) | train begin+end hooks (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for arm, x in entry["summary"].items():
            t, st, h = x["train_time_ratio"], x["median_step_ratio"], x["step_hooks_fraction_of_train"]
            w, wf = x["worker_cpu_seconds"], x["worker_cpu_fraction_of_train"]
            lines.append(
                f"| {arm} | {t['median']:.3f} ({t['min']:.3f}-{t['max']:.3f}) | {st['median']:.3f} "
                f"({st['min']:.3f}-{st['max']:.3f}) | {100 * h['median']:.3f}% (max {100 * h['max']:.3f}%) | "
                f"{x['jump_stall_steps']['median']:.2f} (max {x['jump_stall_steps']['max']:.2f}) | "
                f"{w['median']:.2f} ({100 * wf['median']:.2f}%, max {100 * wf['max']:.2f}%) | "
                f"{x['train_begin_end_seconds']['median']:.2f} |"
            )
        lines += ["", "Runs in the order they ran:", "", "| repeat | arm | train s | median step s | load start/end |"]
        lines.append("|---|---|---|---|---|")
        for r in entry["runs"]:
            lines.append(
                f"| {r['repeat']} | {r['arm']} | {r['train_seconds']:.1f} | {r['median_step_seconds']:.3f} | "
                f"{r['load_start']:.1f}/{r['load_end']:.1f} |"
            )
        lines.append("")
    lines += [
        "Train time is the sum of the optimizer steps' wall times, the callback's step hooks included. Step "
        "hooks are the training thread's own cost (snapshot copies, the jump's wait and edit); the jump stall "
        "is the wait for the fit plus applying it, in median steps. Worker CPU is the background thread's CPU "
        "time, which competes with training for the cores. Ratios are per repeat (a callback run against the "
        "vanilla run of the same repeat), then the median and range over repeats.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(DEMO_MODELS), default="toy")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--snapshot-every", type=int, nargs="+", default=[10, 1])
    parser.add_argument("--worker-threads", type=int, nargs="+", default=[1], help="extrap_worker_threads per arm")
    parser.add_argument("--label", help="the results entry to write (default: the model)")
    args = parser.parse_args()
    label = args.label or args.model
    base = {**DEMO_MODELS[args.model].run, "eval_every": 10**9, "heldout_size": 8, "progress": False}
    extrap = {**GATED_RELEX, "extrap_min_skill": None, "extrap_guard": False}  # the jump's stall whatever the skill
    # The jump at the last step: every step before it does the same work in every arm (the same seed, and the
    # callback only reads the weights), so the arms' times compare like for like; the stall is still measured.
    extrap |= {"extrap_jump_at": [args.steps], "extrap_horizon": args.steps // 2}
    arms = {"vanilla": {}} | {
        f"snapshot every {n}" + (f", worker threads {w}" if len(args.worker_threads) > 1 else ""): {
            **extrap,
            "extrap_snapshot_every": n,
            "extrap_worker_threads": w,
        }
        for n in args.snapshot_every
        for w in args.worker_threads
    }
    names = list(arms)
    load_model(base.get("model", "toy"))  # build or convert the model before any timing
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                run = Run(name, args.steps, arms[name], **base)
                runs.append({"repeat": repeat, **measure(run, os.path.join(tmp, f"{repeat}-{len(runs)}"))})
                r = runs[-1]
                print(f"repeat {repeat} {name}: {r['train_seconds']:.1f} s, worker CPU {r['worker_cpu_seconds']:.2f} s")
    settings = Run("settings", args.steps, **base)
    path = RESULTS / "overhead.json"
    results = json.loads(path.read_text())["results"] if path.exists() else {}
    results[label] = {
        "machine": machine(),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "settings": {"grpo_steps": settings.grpo_steps, "seed": settings.seed, "threads": settings.threads},
        "extrap": extrap,
        "repeats": args.repeats,
        "arms": names,
        "summary": summarise(runs, names),
        "runs": runs,
    }
    write_results("overhead", {"results": results}, markdown(results))
    print(markdown({label: results[label]}))


if __name__ == "__main__":
    main()
