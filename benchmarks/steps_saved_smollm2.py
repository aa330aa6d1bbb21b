"""Steps saved on a real model, against vanilla GRPO at its best learning rate (issue 13).

    python benchmarks/steps_saved_smollm2.py run              # train what is missing (resumable), then analyze
    python benchmarks/steps_saved_smollm2.py run --seeds 0    # one seed first
    python benchmarks/steps_saved_smollm2.py analyze          # from the cache: steps_saved_smollm2.{md,json,png}
    python benchmarks/steps_saved_smollm2.py render --task math-add2   # only the md again, from the committed json
    python benchmarks/steps_saved_smollm2.py run --device cuda --prompts 32 --steps 200   # a GPU, larger
    python benchmarks/steps_saved_smollm2.py run --task math-add2 --steps 100 --jump 40   # another level: its own
    # results files (steps_saved_smollm2_add2.*) and cached runs
    python benchmarks/steps_saved_smollm2.py run --model toy   # the embedded toy where the regime map found skill:
    # 32 prompts x 8 = 256 completions per step, lr 2.5e-4 / 5e-4 / 1e-3, 200 steps, jump at 80 (steps_saved_toy_c256.*)
    python benchmarks/steps_saved_smollm2.py run --full --quick --lrs 1e-5   # full-parameter GRPO, no LoRA
    # (steps_saved_smollm2_full.*): lr 1e-5 / 2e-5 / 4e-5, three arms at 1x

SmolLM2-135M-Instruct, LoRA r=16 on every linear layer, a level of the math task (default ``math-add``: a + b,
256 held-out problems never trained on), constant learning rate, 8 prompts x 4 completions per step.

Vanilla: the regime map's (``benchmarks/forecast``) SmolLM2 runs on that level (one per learning rate x seed;
1x, 2x and 4x ``--base-lr``), which save a trainer checkpoint every 10 steps with their snapshots. The default base
rate, 5e-5, is a quarter of the recipe's 2e-4, at which ``math-add`` climbs from 0.37 to about 0.75 within 24 steps:
at 1x vanilla climbs for longer, and 4x (the recipe's rate) is the fast alternative a jump must beat.
``math-mul`` (``--task math-mul --base-lr 2e-4 --steps 100 --jump 40``) stayed flat on greedy held-out
accuracy at 1x-2x and collapsed at 4x (``results/smollm2_vanilla_partial.md``). Every jump arm **branches** from the
vanilla run's checkpoint at its jump step (same weights, optimizer, data position and RNG as vanilla
there), jumps, and trains ``--after`` more steps: the shared prefix is never retrained. Every arm therefore
sees the same prompts in the same order as vanilla, and is scored on the same held-out problems.

For an arm ending at ``S`` actual GRPO steps with held-out accuracy ``a``: vanilla at rate L needs
``n_L(a)`` steps to first reach ``a`` (linear interpolation between its evaluations, every 10 steps);
``steps ratio vs best = min_L n_L(a) / S`` (the best rate for that accuracy) and ``vs own rate =
n_own(a) / S``. Above 1: the jump saved steps. When vanilla never reaches ``a`` in its budget the ratio is a
lower bound (``>``). Per arm: mean over seeds, sd and the half-width of a 95% t-interval (the JSON); the md
writes the mean ± that half-width.

``--full``: full-parameter training (no LoRA adapter), the callback's full-parameter mode (the decoder layers' weights,
``extrap_full_modules``' default); base rate 1e-5, the regime map's full-parameter rate (``grids.FULL_LR``). Its vanilla
runs are the regime map's full-parameter runs (dense snapshots every 10 steps), with ``ExtrapolationCallback``
observing them (``RunSpec.observe_every``: bf16 points every 5 steps, no jump) so that the checkpoint at the jump step
holds the callback's origin and trajectory and a branch continues it. Checkpoints come every 20 steps (so ``--jump``
20 or 40); once a vanilla run is done, only the checkpoint at ``--jump`` and the points it names are kept (each
checkpoint is 2 GB), and a branch keeps only its result. The arms are the LoRA runs' (``--quick``: the same three),
in bf16 snapshots like vanilla's points (the optimizer arm reads AdamW's state of the dense weights from the
checkpoint). No logit extrapolation.

Output-space extrapolation (``rlvr_extrap.experiments.generation``) is scored at evaluation time: greedy decoding on
``z_b + alpha (z_b - z_a)`` between vanilla checkpoints ``a`` and ``b``, against checkpoint ``b`` alone.

Cost: a branch's wall time is compared with vanilla's own time for the same steps, both measured in this
run (ratios; the machine is shared); the jump's own cost (fit wait, guard, edit) is in its record.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, machine, write_results
from forecast import grids, recording
from stats import INTERVAL, mean_interval, ratio_of, with_interval

from rlvr_extrap.experiments.tasks import TOY_TASK, get_task
from rlvr_extrap.runtime.state import POINTS_DIR, STATE_FILE, load_state
from rlvr_extrap.utils.files import atomic_write_text, write_json

CACHE = Path(__file__).parent / "cache" / "steps_saved_smollm2"
NAME = "steps_saved_smollm2"
LR_MULTIPLES = (1, 4, 2)  # the two ends first


@dataclass(frozen=True)
class Setting:
    """A model's defaults for the command line (``--task``, ``--base-lr``, ...) and how the results name it."""

    label: str
    task: str
    base_lr: float
    steps: int
    prompts: int
    jump: int
    after: int
    logit_pairs: tuple[tuple[int, int], ...]
    """(checkpoint a, checkpoint b) of the logit extrapolation rows."""


SETTINGS = {
    # base rate: a quarter of recipes/smollm2_math.yaml's 2e-4 (see the docstring)
    "smollm2": Setting("SmolLM2-135M-Instruct", "math-add", 5e-5, 60, 8, 20, 20, ((20, 40), (30, 40))),
    # the toy regime map's predictable regime (256 completions per step), at rates where accuracy still moves
    "toy": Setting("the embedded toy (a+b)", TOY_TASK, 2.5e-4, 200, 32, 80, 40, ((40, 80), (70, 80))),
    # --full: the regime map's full-parameter rate (grids.FULL_LR), the LoRA setting's jump and length
    "smollm2-full": Setting("SmolLM2-135M-Instruct, full-parameter", "math-add", grids.FULL_LR, 60, 8, 20, 20, ()),
}

GATED = {"extrap_min_skill": 0.2, "extrap_horizon": "auto"}  # the package's defaults for the gate, auto horizon
SNAPSHOTS = {"extrap_snapshot_every": 5}  # as the vanilla runs recorded them
# arm -> extrap_* settings; "{J}" in a jump list is the jump step
ARMS: dict[str, dict[str, Any]] = {
    "gated relex keep-residual, auto horizon": {
        **SNAPSHOTS, **GATED, "extrap_method": "relex", "extrap_keep_residual": True, "extrap_jump_at": ["J"],
    },
    "gated drift (last 10 steps), auto horizon": {
        **SNAPSHOTS, **GATED, "extrap_method": "linear", "extrap_fit_window": 2, "extrap_jump_at": ["J"],
    },
    "auto jumps (re-grounding), gated": {
        **SNAPSHOTS, **GATED, "extrap_method": "relex", "extrap_keep_residual": True, "extrap_jump_at": "auto",
    },
    "auto jumps (re-grounding, drift), gated": {
        **SNAPSHOTS, **GATED, "extrap_method": "linear", "extrap_fit_window": 2, "extrap_jump_at": "auto",
    },
    "relex keep-residual, horizon J, ungated": {
        **SNAPSHOTS, "extrap_method": "relex", "extrap_keep_residual": True, "extrap_jump_at": ["J"],
        "extrap_horizon": "J", "extrap_min_skill": None, "extrap_guard": False,
    },
    "optimizer direction (coasting), horizon J, ungated": {
        **SNAPSHOTS, "extrap_method": "optimizer", "extrap_coast": True, "extrap_jump_at": ["J"],
        "extrap_horizon": "J", "extrap_min_skill": None, "extrap_guard": False,
    },
}  # fmt: skip
QUICK_ARMS = (
    "relex keep-residual, horizon J, ungated",
    "optimizer direction (coasting), horizon J, ungated",
    "gated relex keep-residual, auto horizon",
)
FULL_ARM = {"extrap_snapshot_dtype": "bfloat16"}  # as the vanilla runs' points (recording.OBSERVER)
OBSERVE_EVERY = 5  # as the arms snapshot (SNAPSHOTS)
# z_a + alpha (z_b - z_a): alpha 1 is b alone, so only alpha > 1 extrapolates (1.5 and 2 from 20 -> 40 aim at 50, 60)
LOGIT_ALPHAS = (1.5, 2.0)


def setting_key(model: str, full: bool) -> str:
    """The ``SETTINGS`` entry of a model, full-parameter or not."""
    return f"{model}-full" if full else model


def vanilla_spec(
    model: str, learning_rate: float, prompts: int, seed: int, steps: int, task: str, full: bool = False
) -> grids.RunSpec:
    """The forecast run that is vanilla GRPO at ``learning_rate`` (constant), with trainer checkpoints (every 10 steps;
    ``full``: every 20, observed by the callback)."""
    if full:
        spec = grids.smollm2_full_spec(learning_rate, prompts, seed, steps, task)
        return replace(spec, observe_every=OBSERVE_EVERY)
    if model == "toy":
        return grids.RunSpec(
            "toy", learning_rate, prompts, seed, steps=steps, snapshot_every=5, lr_schedule="constant",
            eval_every=10, save_every=10,
        )  # fmt: skip
    return grids.smollm2_spec(learning_rate, prompts, seed, steps, task)


def vanilla_specs(
    model: str, seeds: list[int], steps: int, prompts: int, task: str, base_lr: float, full: bool = False
) -> dict[tuple[float, int], grids.RunSpec]:
    """(learning rate, seed) -> the forecast run that is vanilla there, seed by seed, 1x and 4x first."""
    return {
        (base_lr * k, seed): vanilla_spec(model, base_lr * k, prompts, seed, steps, task, full)
        for seed in seeds
        for k in LR_MULTIPLES
    }


def arm_settings(arm: str, jump: int) -> dict[str, Any]:
    def fill(v: Any) -> Any:
        if v == "J":
            return jump
        return [fill(x) for x in v] if isinstance(v, list) else v

    return {k: fill(v) for k, v in ARMS[arm].items()}


def arm_id(arm: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in arm.lower()).strip("-")


def branch(spec: grids.RunSpec, arm: str, jump: int, after: int, train: bool) -> dict[str, Any] | None:
    """Resume ``spec``'s vanilla checkpoint at ``jump`` with ``arm``'s settings, train ``after`` steps (cached).

    None when it is not cached and ``train`` is off.
    """
    from rlvr_extrap.experiments.experiment import run_experiment

    out = CACHE / spec.run_id / f"{arm_id(arm)}_j{jump}_a{after}"
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    if not train:
        return None
    checkpoint = grids.run_dir(spec) / "trainer" / f"checkpoint-{jump}"
    if not (checkpoint / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"{checkpoint}: no vanilla checkpoint to branch from; run `python benchmarks/forecast collect` first"
        )
    full = spec.lora_rank is None
    if full and not load_state(checkpoint).point_files:
        raise FileNotFoundError(
            f"{checkpoint}: its state has no trajectory for a full-parameter branch (a regime-map run trained without "
            f"the callback observing it); delete {grids.run_dir(spec)} and run again to retrain it observed"
        )
    settings = arm_settings(arm, jump) | (FULL_ARM if full else {})
    run = recording.run_of(spec, name=arm, grpo_steps=jump + after, extrap=settings, save_every=None)
    start = time.perf_counter()
    result = run_experiment(run, out / "trainer", resume_from=checkpoint)
    result["wall_seconds"] = time.perf_counter() - start
    write_json(done, result)
    if full:  # its final state and points: 2 GB the analysis never reads
        shutil.rmtree(out / "trainer")
    return result


def prune_full(spec: grids.RunSpec, jump: int) -> None:
    """Of a finished full-parameter vanilla run's trainer folder, keep only what a branch at ``jump`` reads: that
    checkpoint and the trajectory points its state names (each checkpoint is 2 GB, each point 212 MB)."""
    trainer = grids.run_dir(spec) / "trainer"
    keep = trainer / f"checkpoint-{jump}"
    if not (keep / STATE_FILE).is_file():
        return  # branch() says what is missing
    named = {(keep / file).resolve() for file in load_state(keep).point_files or []}
    for checkpoint in trainer.glob("checkpoint-*"):
        if checkpoint != keep:
            shutil.rmtree(checkpoint)
    for point in (trainer / POINTS_DIR).glob("*.safetensors"):
        if point.resolve() not in named:
            point.unlink()
    (trainer / STATE_FILE).unlink(missing_ok=True)  # the final state, naming the points just deleted


def logit_accuracy(spec: grids.RunSpec, a: int, b: int, alpha: float, train: bool) -> float | None:
    """Greedy held-out accuracy decoding on extrapolated logits of vanilla checkpoints ``a`` and ``b`` (cached).

    None when it is not cached and ``train`` is off.
    """
    from peft import PeftModel

    from rlvr_extrap.experiments.generation import extrapolated_generate
    from rlvr_extrap.experiments.models import load_model
    from rlvr_extrap.utils.generate import encode_prompts, left_pad

    out = CACHE / spec.run_id / f"logit_{a}_{b}_alpha{alpha:g}.json"
    if out.is_file():
        return json.loads(out.read_text())["accuracy"]
    if not train:
        return None
    trainer = grids.run_dir(spec) / "trainer"
    models = []
    for step in (a, b):
        base, tokenizer = load_model(spec.model)
        models.append(PeftModel.from_pretrained(base, str(trainer / f"checkpoint-{step}")).eval())
    task = get_task(spec.task or TOY_TASK)
    problems = task.heldout_problems()
    correct = 0
    for start in range(0, len(problems), 64):
        prompts, answers = zip(*problems[start : start + 64], strict=True)
        input_ids, mask = left_pad(encode_prompts(tokenizer, prompts), tokenizer.pad_token_id)
        width = input_ids.shape[1]
        with torch.no_grad():
            generated = extrapolated_generate(
                models[0], models[1], input_ids, mask, alpha=alpha, max_new_tokens=task.max_new_tokens,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        texts = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
        correct += sum(task.check(texts, list(answers)))
    accuracy = correct / len(problems)
    write_json(out, {"accuracy": accuracy, "a": a, "b": b, "alpha": alpha})
    return accuracy


# ---------------------------------------------------------------- analysis


def vanilla_runs(specs: dict[tuple[float, int], grids.RunSpec]) -> dict[tuple[float, int], recording.CachedRun]:
    """The cached vanilla runs, read once: their accuracy curves and step times both come from here."""
    return {key: load_vanilla(spec) for key, spec in specs.items() if grids.is_cached(spec)}


def load_vanilla(spec: grids.RunSpec) -> recording.CachedRun:
    """A cached vanilla run's curve and times (not a full-parameter run's dense snapshots: 2 GB a run)."""
    return recording.load_run(grids.run_dir(spec), snapshots=False)


def curve_of(run: recording.CachedRun) -> list[tuple[int, float]]:
    """(step, held-out accuracy) at the steps the run evaluated."""
    return [(s, a) for s, a in zip(run.steps, run.accuracy, strict=True) if a is not None]


def step_seconds(run: recording.CachedRun) -> float:
    """Vanilla's wall seconds per step (evaluations included, as in a branch), over the steps its last process ran."""
    return run.train_seconds / (run.spec.steps - run.resumed_at)


def jump_seconds(result: dict[str, Any]) -> float:
    """What the training thread spent on the arm's jumps: waiting for the fit, the guard's probes, the edit."""
    keys = ("wait_seconds", "guard_seconds", "apply_seconds")
    return sum(j.get(k) or 0.0 for j in result["jumps"] for k in keys)


def curves_of_seed(curves: dict[tuple[float, int], list], seed: int) -> dict[float, list]:
    """Learning rate -> vanilla curve, for one seed."""
    return {lr: c for (lr, s), c in curves.items() if s == seed}


def analyze(results: list[dict[str, Any]], curves: dict, logits: list[dict[str, Any]], meta: dict) -> dict[str, Any]:
    # "vs best" only over the seeds with a vanilla run at every rate of the grid (a missing rate might have got there
    # first), also while a seed's last rate is still training
    grid = [meta["base_lr"] * k for k in LR_MULTIPLES]
    complete = {
        seed for _, seed in curves if all(any(math.isclose(lr, g) for lr in curves_of_seed(curves, seed)) for g in grid)
    }
    rows = []
    by_arm: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in results:
        by_arm.setdefault((r["arm"], r["learning_rate"]), []).append(r)
    for (arm, lr), rs in sorted(by_arm.items()):
        best_ratios, own_ratios, lower, accs, rates = [], [], False, [], []
        for r in rs:
            seed_curves = curves_of_seed(curves, r["seed"])
            own, own_bound, _ = ratio_of({lr: seed_curves[lr]}, r["accuracy"], r["steps"])
            own_ratios.append(own)
            lower |= own_bound
            if r["seed"] in complete:
                ratio, bound, rate = ratio_of(seed_curves, r["accuracy"], r["steps"])
                best_ratios.append(ratio)
                lower |= bound
                rates.append(rate)
            accs.append(r["accuracy"])
        rows.append(
            {
                "arm": arm, "learning_rate": lr, "seeds": len(rs), "accuracy": mean_interval(accs),
                "vanilla_same_steps": mean_interval([r["vanilla_same_steps"] for r in rs]),
                "ratio_vs_best": mean_interval(best_ratios), "seeds_vs_best": len(best_ratios),
                "ratio_vs_own": mean_interval(own_ratios), "lower_bound": lower, "best_rates": rates,
                "jumps": [[(j["step"], j.get("horizon"), j.get("skipped", "applied")) for j in r["jumps"]] for r in rs],
                "wall_ratio": mean_interval([r["wall_ratio"] for r in rs if r.get("wall_ratio")] or [math.nan]),
                "jump_seconds": mean_interval([jump_seconds(r) for r in rs]),
                "jump_share": mean_interval([jump_seconds(r) / r["wall_seconds"] for r in rs]),
            }
        )  # fmt: skip
    for row in logits:  # decoding uses checkpoints up to b: b actual steps
        seed_curves = curves_of_seed(curves, row["seed"])
        vanilla = dict(seed_curves.get(row["learning_rate"], []))
        row["aims_at"] = row["a"] + row["alpha"] * (row["b"] - row["a"])
        row["at_b"] = vanilla.get(row["b"], math.nan)
        row["vanilla_at_aim"] = vanilla.get(row["aims_at"], math.nan)
        row["ratio_vs_best"], row["lower_bound"], _ = (
            ratio_of(seed_curves, row["accuracy"], row["b"]) if row["seed"] in complete else (math.nan, False, None)
        )
    vanilla = {f"{k[0]:g}/seed{k[1]}": c for k, c in curves.items()}
    return {"meta": meta, "rows": rows, "vanilla": vanilla, "logits": logits}


TRIPLES = (
    "accuracy",
    "vanilla_same_steps",
    "ratio_vs_best",
    "ratio_vs_own",
    "wall_ratio",
    "jump_seconds",
    "jump_share",
)
"""An arm row's (mean, sd, 95% half-width) entries, as ``analyze`` writes them."""
LOGIT_NUMBERS = ("at_b", "vanilla_at_aim", "ratio_vs_best")


def load_results(path: Path) -> dict[str, Any]:
    """Committed results as ``render`` reads them: the JSON writes NaN as null, back to NaN in the arm rows'
    (mean, sd, half-width) and the logit rows' numbers."""
    data = json.loads(path.read_text())
    for row in data["rows"]:
        for key in TRIPLES:
            row[key] = [math.nan if x is None else x for x in row[key]]
    for row in data["logits"]:
        for key in LOGIT_NUMBERS:
            row[key] = math.nan if row[key] is None else row[key]
    return data


def render(data: dict[str, Any]) -> str:
    """The results' markdown: setup, vanilla's curves, the arms, the logit extrapolation, the note."""
    lines = [*_setup_section(data), *_arms_section(data), *_logit_section(data), "", data["meta"].get("note", "")]
    return "\n".join(lines) + "\n"


def _setup_section(data: dict[str, Any]) -> list[str]:
    """Title, command and machine, the setup, vanilla's held-out accuracy per rate and seed, what was carried."""
    m = data["meta"]
    base = m["base_lr"]
    label = SETTINGS[meta_setting(m)].label
    points = range(0, max(m["steps"], 100) + 1, 20 if m["steps"] <= 100 else 40)
    lines = [
        f"# Steps saved on {label} ({m['task']}), against vanilla GRPO at its best learning rate",
        "",
        f"Command: `{m['machine']['command']}` · commit {m['machine']['commit']} · {m['machine']['platform']}, "
        f"{m['machine']['cpu_count']} CPUs, torch {m['machine']['torch']}, device {m['device']}",
        "",
        f"Vanilla: learning rates {', '.join(f'{base * k:g}' for k in sorted(LR_MULTIPLES))} (1x, 2x, 4x), "
        f"seeds {m['seeds']}, {m['steps']} steps, {m.get('prompts', 8)} prompts x {m.get('generations', 4)} "
        f"completions per step, evaluated every 10 steps on {m.get('heldout', 256)} held-out problems. Arms branch "
        f"from vanilla's checkpoint at step {m['jump']} and train {m['after']} more steps "
        f"({m['jump'] + m['after']} actual GRPO steps).",
        "",
        "## Vanilla",
        "",
        f"| learning rate | seed | held-out accuracy at {' / '.join(map(str, points))} |",
        "|---|---|---|",
    ]
    for key, curve in data["vanilla"].items():
        acc = dict(curve)
        cells = " / ".join(f"{acc[s]:.3f}" if s in acc else "–" for s in points)
        lr, seed = key.split("/")
        lines.append(f"| {lr} | {seed.removeprefix('seed')} | {cells} |")
    carried = m.get("carried") or {}
    if carried.get("vanilla") or carried.get("rows"):
        by_source: dict[str, list[str]] = {}
        for key, source in carried.get("vanilla", {}).items():
            by_source.setdefault(source, []).append(key)
        where = "; ".join(f"{', '.join(keys)} from {source}" for source, keys in by_source.items())
        lines += [
            "",
            f"Carried from the committed results, their cache not being on this machine (every row keeps its "
            f"`source` in the JSON): vanilla {where or 'none'}; {carried.get('rows', 0)} arm and logit rows.",
        ]
    return lines


def meta_setting(meta: dict[str, Any]) -> str:
    """The ``SETTINGS`` entry results were made with (results from before the toy have no "model")."""
    return setting_key(meta.get("model", "smollm2"), meta.get("full", False))


def _interval(triple: list[float]) -> str:
    """An arm row's (mean, sd, 95% half-width) as ``mean ± half-width`` (the mean alone for one seed)."""
    mean, _, half = triple
    return with_interval(mean, half, 3)


def _arms_section(data: dict[str, Any]) -> list[str]:
    """One row per arm and rate: accuracy, vanilla's, the steps ratios, wall ratio and the jumps, ± 95% intervals."""
    lines = [
        "",
        "## Arms",
        "",
        f"Mean over seeds {INTERVAL} (Student's t; the mean alone for one seed). Steps ratio: vanilla steps to "
        "reach the arm's accuracy "
        "/ the arm's actual steps (> 1: steps saved); `vs best`: the learning rate that got there first, over the "
        "seeds with vanilla runs at every rate (their number in brackets where fewer than the arm's; '–' in the "
        "logit table: that seed lacks a rate). Wall ratio: "
        "the arm's wall time from the branch (loading the model and checkpoint, fit, backtest, guard, jump, and one "
        "more held-out evaluation than vanilla's: right after the jump) / vanilla's over as many steps. Jump s: what "
        "the training thread spent on the jump itself (waiting for the fit and backtest, the guard's probes, the "
        "edit of the weights), in seconds and as a share of the arm's wall time.",
        "",
        "| arm | lr | seeds | accuracy | vanilla, same lr, same steps | steps ratio vs best | vs own lr | wall ratio "
        "| jump s (share of wall) | jumps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        bound = ">" if r["lower_bound"] else ""
        jumps = "; ".join(", ".join(f"{s}+{h}: {w}" for s, h, w in js) or "none" for js in r["jumps"])
        n_best = r["seeds_vs_best"]
        best_cell = "–" if n_best == 0 else f"{bound}{_interval(r['ratio_vs_best'])}"
        best_cell += f" [{n_best} seed{'s' if n_best != 1 else ''}]" if 0 < n_best < r["seeds"] else ""
        lines.append(
            f"| {r['arm']} | {r['learning_rate']:g} | {r['seeds']} | {_interval(r['accuracy'])} | "
            f"{_interval(r['vanilla_same_steps'])} | {best_cell} | {bound}{_interval(r['ratio_vs_own'])} | "
            f"{_interval(r['wall_ratio'])} | {r['jump_seconds'][0]:.1f} ({r['jump_share'][0]:.1%}) | {jumps} |"
        )
    return lines


def _logit_section(data: dict[str, Any]) -> list[str]:
    """One row per logit extrapolation between vanilla checkpoints; none where there are none."""
    if not data["logits"]:
        return []
    lines = [
        "",
        "## Output-space (logit) extrapolation between vanilla checkpoints",
        "",
        "Greedy decoding on `z_a + alpha (z_b - z_a)`, no weight change; it aims at step a + alpha (b - a). "
        "Steps ratio: as for the arms, with b actual GRPO steps (decoding runs both models).",
        "",
        "| lr | seed | a -> b | alpha | aims at step | b alone | vanilla at that step | extrapolated "
        "| steps ratio vs best |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["logits"]:
        bound = ">" if row["lower_bound"] else ""
        ratio = "–" if math.isnan(row["ratio_vs_best"]) else f"{bound}{row['ratio_vs_best']:.2f}"
        lines.append(
            f"| {row['learning_rate']:g} | {row['seed']} | {row['a']} -> {row['b']} | {row['alpha']:g} | "
            f"{row['aims_at']:g} | {row['at_b']:.3f} | {row['vanilla_at_aim']:.3f} | {row['accuracy']:.3f} | "
            f"{ratio} |"
        )
    return lines


def plot(data: dict[str, Any], path: Path) -> None:
    """Vanilla per rate and each arm, averaged over the seeds they have (one colour each)."""
    from rlvr_extrap.experiments.plots import plot_accuracy_curves

    groups: dict[str, tuple[list[list], set[int]]] = {}  # name -> (curves, applied jump steps)
    for key, curve in data["vanilla"].items():
        groups.setdefault(f"vanilla lr {key.split('/')[0]}", ([], set()))[0].append(curve)
    for r in data["results"]:
        curves, jumps = groups.setdefault(f"{r['arm']} (lr {r['learning_rate']:g})", ([], set()))
        curves.append(r["history"])
        jumps.update(j["step"] for j in r["jumps"] if "skipped" not in j)
    series = []
    for name, (curves, jumps) in groups.items():
        steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
        means = [statistics.fmean(dict(c)[s] for c in curves) for s in steps]
        seeds = f"mean of {len(curves)} seeds" if len(curves) > 1 else "1 seed"
        series.append({"name": f"{name} ({seeds})", "steps": steps, "mean": means, "jumps": sorted(jumps)})
    title = f"{SETTINGS[meta_setting(data['meta'])].label}, {data['meta']['task']}: held-out accuracy against actual GRPO steps"
    plot_accuracy_curves(series, path, title=title)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "analyze", "render"), help="render: the md from the json only")
    parser.add_argument("--model", choices=("smollm2", "toy"), default="smollm2", help="the defaults below follow it")
    parser.add_argument("--full", action="store_true", help="full-parameter training, no LoRA (smollm2; base lr 1e-5)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--task", help="level of the math task (math-add, math-mul, ...; smollm2 only)")
    parser.add_argument("--base-lr", type=float, help="vanilla's 1x rate (also 2x and 4x; smollm2 5e-5, toy 2.5e-4)")
    parser.add_argument("--steps", type=int, help="vanilla run length (smollm2 60, toy 200)")
    parser.add_argument("--prompts", type=int, help="prompts per step (smollm2 8 x 4 completions, toy 32 x 8)")
    parser.add_argument("--jump", type=int, help="the jump step, a multiple of 10: a vanilla checkpoint (20, toy 80)")
    parser.add_argument("--after", type=int, help="GRPO steps after the jump (smollm2 20, toy 40)")
    parser.add_argument("--lrs", type=float, nargs="+", default=None, help="arms' rates (default: 1x and the best)")
    parser.add_argument("--quick", action="store_true", help="three arms only (QUICK_ARMS)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="where it trains (default: cuda when visible)")
    parser.add_argument("--note", default="")
    parser.add_argument(
        "--fresh", action="store_true", help="ignore the committed results (default: keep their rows the cache lacks)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    visible = "cuda" if torch.cuda.is_available() else "cpu"  # the runs train on a visible GPU (experiment.Run)
    if args.device == "cuda" and visible == "cpu":
        parser.error("--device cuda: no CUDA device is visible here; drop the flag to run on the CPU")
    if args.device == "cpu" and visible == "cuda":
        parser.error("--device cpu: the runs use a visible GPU; hide it (CUDA_VISIBLE_DEVICES=) to train on the CPU")
    args.device = visible
    if args.full and args.model == "toy":
        parser.error("--full: the toy trains LoRA only; drop --full or use --model smollm2")
    setting = SETTINGS[setting_key(args.model, args.full)]
    if args.model == "toy" and args.task not in (None, setting.task):
        parser.error(f"--task {args.task}: the toy has one task ({setting.task}); drop --task or use --model smollm2")
    for field in ("task", "base_lr", "steps", "prompts", "jump", "after"):
        if getattr(args, field) is None:
            setattr(args, field, getattr(setting, field))
    if args.jump % 10 or not 0 < args.jump < args.steps:
        parser.error(f"--jump {args.jump}: must be a multiple of 10 (a vanilla checkpoint) between 0 and --steps")
    if args.full and args.jump % 20:
        parser.error(f"--jump {args.jump}: full-parameter vanilla runs save a checkpoint every 20 steps; give 20 or 40")
    specs = vanilla_specs(args.model, args.seeds, args.steps, args.prompts, args.task, args.base_lr, args.full)
    first = next(iter(specs.values()))
    name = results_name(args.task, args.model, first.completions, args.full)
    if args.command == "render":
        atomic_write_text(args.out / f"{name}.md", render(load_results(args.out / f"{name}.json")))
        return
    train = args.command == "run"
    arms = QUICK_ARMS if args.quick else tuple(ARMS)
    if train:  # the arms' (default: 1x) rate for every seed first, each run's arms right after it; then the others

        def arm_rate(lr: float) -> bool:
            return any(math.isclose(lr, x) for x in args.lrs or [args.base_lr])

        for (lr, _seed), spec in sorted(specs.items(), key=lambda item: not arm_rate(item[0][0])):
            recording.collect([spec], workers=1)
            if args.full:
                prune_full(spec, args.jump)
            if arm_rate(lr):
                arm_and_logit_results(spec, arms, args, train)
    vanilla = vanilla_runs(specs)
    curves = {key: curve_of(run) for key, run in vanilla.items()}
    meta = {
        "machine": machine(), "device": args.device, "model": args.model, "task": args.task, "base_lr": args.base_lr,
        "seeds": args.seeds, "steps": args.steps, "prompts": args.prompts, "generations": first.generations,
        "heldout": len(get_task(args.task).heldout_problems()), "jump": args.jump, "after": args.after,
        "note": args.note, "full": args.full,
    }  # fmt: skip
    previous = None if args.fresh else read_previous(args.out / f"{name}.json", meta)
    carried_curves = carry_curves(previous, curves, args.seeds)
    lrs = args.lrs or sorted({args.base_lr, best_rate(curves, args.jump + args.after, args.base_lr)})
    results, logits = [], []
    for (lr, seed), spec in specs.items():
        if any(math.isclose(lr, x) for x in lrs) and (lr, seed) in vanilla:  # trained here, not carried
            rows, logit_rows = arm_and_logit_results(spec, arms, args, train)
            results += rows
            logits += logit_rows
    carried_rows = carry_rows(previous, results, logits, arms, lrs, args.seeds)
    meta |= {"arms_lrs": lrs, "carried": {"vanilla": carried_curves, "rows": carried_rows}}
    data = analyze(results, curves, logits, meta)
    data["results"] = results
    write_results(name, data, render(data), args.out)
    plot(data, args.out / f"{name}.png")
    print(render(data))


def results_name(task: str, model: str = "smollm2", completions: int = 32, full: bool = False) -> str:
    """The results files' stem: one set per task level (``steps_saved_smollm2_add2`` for ``math-add2``), for the
    toy per batch (``steps_saved_toy_c256``), ``_full`` for full-parameter training (``steps_saved_smollm2_full``)."""
    if model == "toy":
        return f"steps_saved_toy_c{completions}"
    stem = NAME if task == SETTINGS["smollm2"].task else f"{NAME}_{task.removeprefix('math-')}"
    return f"{stem}_full" if full else stem


def read_previous(path: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The committed results at ``path`` when they were made with the same task, rates, lengths and jump."""
    if not path.is_file():
        return None
    previous = json.loads(path.read_text())
    same = ("model", "full", "task", "base_lr", "steps", "jump", "after")
    before_toy = {"model": "smollm2", "full": False}  # results from before the toy had no "model", "full"
    was, now = before_toy | previous["meta"], before_toy | meta
    return previous if all(was.get(k) == now[k] for k in same) else None


def source_of(previous: dict[str, Any]) -> str:
    return f"commit {previous['meta']['machine']['commit']}"


def carry_curves(previous: dict[str, Any] | None, curves: dict, seeds: list[int]) -> dict[str, str]:
    """Add to ``curves`` the committed vanilla curves the cache lacks (a cache is not kept between machines, the
    committed results are); returns each carried curve's key and where it was measured."""
    carried: dict[str, str] = {}
    if previous is None:
        return carried
    sources = previous["meta"].get("carried", {}).get("vanilla", {})
    for key, curve in previous["vanilla"].items():
        lr, seed = float(key.split("/")[0]), int(key.split("/")[1].removeprefix("seed"))
        if seed in seeds and (lr, seed) not in curves:
            curves[(lr, seed)] = [tuple(point) for point in curve]
            carried[key] = sources.get(key, source_of(previous))
    return carried


def carry_rows(
    previous: dict[str, Any] | None, results: list, logits: list, arms: tuple[str, ...], lrs: list[float], seeds: list
) -> int:
    """Add to ``results`` and ``logits`` the committed rows the cache lacks, each marked with its ``source``; returns
    how many were carried."""
    if previous is None:
        return 0

    def wanted(row: dict[str, Any]) -> bool:
        return row["seed"] in seeds and any(math.isclose(row["learning_rate"], x) for x in lrs)

    have = {(r["arm"], r["learning_rate"], r["seed"]) for r in results}
    have_logits = {(r["learning_rate"], r["seed"], r["a"], r["b"], r["alpha"]) for r in logits}
    carried = 0
    for row in previous["results"]:
        if row["arm"] in arms and wanted(row) and (row["arm"], row["learning_rate"], row["seed"]) not in have:
            results.append({"source": source_of(previous), **row})
            carried += 1
    keep = ("learning_rate", "seed", "a", "b", "alpha", "accuracy")
    for row in previous["logits"]:
        if wanted(row) and tuple(row[k] for k in keep[:5]) not in have_logits:
            logits.append({"source": source_of(previous), **{k: row[k] for k in (*keep, "source") if k in row}})
            carried += 1
    return carried


def arm_and_logit_results(
    spec: grids.RunSpec, arms: tuple[str, ...], args: argparse.Namespace, train: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The arms branched from ``spec``'s vanilla run and its logit extrapolations."""
    vanilla = load_vanilla(spec)
    pairs = SETTINGS[setting_key(args.model, args.full)].logit_pairs
    return arm_results(spec, vanilla, arms, args, train), logit_results(spec, train, pairs)


def arm_results(
    spec: grids.RunSpec, vanilla: recording.CachedRun, arms: tuple[str, ...], args: argparse.Namespace, train: bool
) -> list[dict[str, Any]]:
    """One row per arm branched from this vanilla run (trained first when ``train``)."""
    rows = []
    total = args.jump + args.after
    for arm in arms:
        r = branch(spec, arm, args.jump, args.after, train)
        if r is None:
            continue
        rows.append(
            {
                "arm": arm, "learning_rate": spec.learning_rate, "seed": spec.seed, "steps": total,
                "accuracy": r["heldout_accuracy"], "history": r["history"], "jumps": r["jumps"],
                "vanilla_same_steps": dict(curve_of(vanilla)).get(total, math.nan), "wall_seconds": r["wall_seconds"],
                "wall_ratio": r["wall_seconds"] / (args.after * step_seconds(vanilla)),
            }
        )  # fmt: skip
    return rows


def logit_results(spec: grids.RunSpec, train: bool, pairs: tuple[tuple[int, int], ...]) -> list[dict[str, Any]]:
    rows = []
    for a, b in pairs:
        for alpha in LOGIT_ALPHAS:
            accuracy = logit_accuracy(spec, a, b, alpha, train)
            if accuracy is not None:
                rows.append(
                    {"learning_rate": spec.learning_rate, "seed": spec.seed, "a": a, "b": b, "alpha": alpha,
                     "accuracy": accuracy}
                )  # fmt: skip
    return rows


def best_rate(curves: dict[tuple[float, int], list], step: int, default: float) -> float:
    """The vanilla rate with the highest mean held-out accuracy at ``step`` over the seeds it has."""
    means = {}
    for lr in {k[0] for k in curves}:
        values = [dict(c).get(step) for k, c in curves.items() if k[0] == lr]
        values = [v for v in values if v is not None]
        if values:
            means[lr] = statistics.fmean(values)
    return max(means, key=means.get) if means else default


if __name__ == "__main__":
    sys.exit(main())
