"""The optimizer's own denoised direction as a predictor (issue 12, item 4), measured offline on SmolLM2 LoRA runs.

    python benchmarks/optimizer_direction.py verify --checkpoint RUN/trainer/checkpoint-10   # one real Adam step
    python benchmarks/optimizer_direction.py measure                                       # every cached smollm2 run

At a trainer checkpoint ``H`` (adapter weights + ``optimizer.pt``), AdamW's next update of each LoRA factor is
``lr * u`` with ``u = m_hat / (sqrt(v_hat) + eps) + wd * p`` (bias-corrected moments). Continuing that update for
``h`` steps, each factor moves linearly, so the merged delta is predicted exactly in factored form:
``P = s (B - h lr u_B)(A - h lr u_A)``: rank 16, never an ``m x n`` matrix.

``measure`` scores it at every checkpoint ``H`` and horizon ``h`` in {5, 10, 20, 30, 50} whose snapshot ``H + h``
the run's trajectory has (the finished run's ``extrap_state.safetensors``, or while it runs the latest
checkpoint's, which holds every snapshot so far), with the regime map's weight-space skill against persistence,
``1 - sum_modules ||P - D_T||^2 / sum_modules ||D_H - D_T||^2``, next to the same (H, h) of the regime map's
variants. It also reports the cosine between the predicted move ``P - D_H`` and the actual one ``D_T - D_H``:
the skill of the best multiple of a predicted move is ``cos^2`` (an oracle bound: the step length is not known
in advance), so a predictor with the right direction but the wrong length shows a positive cosine.

The parameter <-> optimizer-state mapping: ``optimizer.pt`` indexes its state by position in the Trainer's param
groups (``create_optimizer``: the weight-decay group, then the rest, each in ``named_parameters`` order of the
PEFT model); the adapter file names its tensors alphabetically (``layers.10`` before ``layers.2``), so the order
is rebuilt from the PEFT model (on the meta device, no weights) and checked by shape. ``verify`` checks it
end to end: it resumes the run from a checkpoint for one GRPO step in a temporary folder and checks that the
step's change of every factor equals ``-lr * u`` computed from the *saved* state of the step after.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, machine, write_results
from forecast.grids import CACHE, GRIDS, RunSpec
from forecast.recording import latest_checkpoint, load_run, run_of, trajectory_of
from forecast.scoring import VARIANTS
from safetensors.torch import load_file

from rlvr_extrap.extrapolators import get_extrapolator
from rlvr_extrap.linalg.lowrank import LowRank, inner
from rlvr_extrap.runtime.state import STATE_FILE, load_state
from rlvr_extrap.skill.forecast import forecast_errors, gram_distance, prediction_error, skill
from rlvr_extrap.trajectory.trajectory import FactorVelocity, Trajectory

HORIZONS = (5, 10, 20, 30, 50)
COMPARED: dict[str, tuple[str, dict[str, Any]]] = {
    "drift, fit_window 2 (last 5 steps)": VARIANTS["drift, last 10 steps"],
    "drift, fit_window 3 (last 10 steps)": ("linear", {"fit_window": 3}),
    "drift, fit_window 6 (last 25 steps)": VARIANTS["drift, last 50 steps"],
    "relex keep residual": VARIANTS["relex keep residual"],
    "relex (paper)": VARIANTS["relex (paper)"],
}
"""the regime map's variants scored at the same (H, h). Its names count steps at the toy's 10-step snapshots; on the
SmolLM2 grid (snapshots every 5 steps) its "drift, last 10 steps" (fit_window 2) spans the last 5 steps."""
OPTIMIZER = "optimizer direction"
COASTING = "optimizer direction, momentum coasting"
"""The same direction, each future step scaled by ``beta1^k``: AdamW's own moves if no new gradient came (the
momentum decays, the second moment barely moves at beta2 = 0.999), ``c(h) = sum_{k=1..h} beta1^k`` steps in all
(at most 9 for beta1 = 0.9): the prediction when the future gradients average to zero."""


# ---------------------------------------------------------------- the optimizer's direction


def trainer_param_order(checkpoint: Path) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter in ``optimizer.pt``'s index order, as ``Trainer.create_optimizer`` builds it.

    The PEFT model is rebuilt on the meta device from the base model's config and the checkpoint's adapter config.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, Trainer

    lora = LoraConfig.from_pretrained(str(checkpoint))
    lora.inference_mode = False  # saved adapters say True: every LoRA parameter would be frozen
    config = AutoConfig.from_pretrained(lora.base_model_name_or_path)
    with torch.device("meta"):
        model = get_peft_model(AutoModelForCausalLM.from_config(config), lora)
    decay = set(Trainer.get_decay_parameter_names(None, model))  # the method does not use self
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [[x for x in named if x[0] in decay], [x for x in named if x[0] not in decay]]
    return [(n, tuple(p.shape)) for group in groups for n, p in group]


@dataclass
class AdamState:
    """One parameter's AdamW state and hyperparameters, read from ``optimizer.pt``."""

    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    step: int
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float

    def direction(self, param: torch.Tensor) -> torch.Tensor:
        """``u`` with AdamW's next update ``p <- p - lr * u`` if the moments stayed as they are (torch's formula)."""
        b1, b2 = self.betas
        m_hat = self.exp_avg.double() / (1 - b1**self.step)
        denom = self.exp_avg_sq.double().sqrt() / math.sqrt(1 - b2**self.step) + self.eps
        return (m_hat / denom + self.weight_decay * param.double()).float()


def adam_states(checkpoint: Path, order: list[tuple[str, tuple[int, ...]]] | None = None) -> dict[str, AdamState]:
    """Parameter name (as in the PEFT model) -> its AdamW state, with every index and shape checked."""
    order = order or trainer_param_order(checkpoint)
    saved = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)
    states: dict[str, AdamState] = {}
    for group in saved["param_groups"]:
        for index in group["params"]:
            name, shape = order[index]
            s = saved["state"][index]
            if tuple(s["exp_avg"].shape) != shape or tuple(s["exp_avg_sq"].shape) != shape:
                raise ValueError(f"{checkpoint}: state {index} has shape {tuple(s['exp_avg'].shape)}, {name} {shape}")
            states[name] = AdamState(
                s["exp_avg"], s["exp_avg_sq"], int(s["step"]), float(group["lr"]), tuple(group["betas"]),
                float(group["eps"]), float(group["weight_decay"]),
            )  # fmt: skip
    if len(states) != len(order):
        raise ValueError(f"{checkpoint}: {len(states)} optimizer states for {len(order)} trainable parameters")
    return states


def _adapter_key(name: str) -> str:
    """The PEFT model's parameter name as ``adapter_model.safetensors`` writes it (adapter name dropped)."""
    return name.replace(".default.", ".")


@dataclass
class Factors:
    """One LoRA module at a checkpoint: ``A``, ``B``, their Adam directions and lr, and the scale ``s``."""

    a: torch.Tensor
    b: torch.Tensor
    u_a: torch.Tensor
    u_b: torch.Tensor
    lr_a: float
    lr_b: float
    scale: float
    beta1: float = 0.9

    def delta(self) -> LowRank:
        return LowRank(self.b * self.scale, self.a)

    def velocity(self) -> FactorVelocity:
        """The same state as the package's ``optimizer`` extrapolator receives it from the callback."""
        return FactorVelocity(
            self.b * self.scale, self.a, -self.lr_b * self.scale * self.u_b, -self.lr_a * self.u_a, self.beta1
        )

    def predict(self, h: float) -> LowRank:
        """``s (B - h lr u_B)(A - h lr u_A)``: the merged delta after ``h`` more steps along the current direction."""
        return LowRank((self.b - h * self.lr_b * self.u_b) * self.scale, self.a - h * self.lr_a * self.u_a)


def checkpoint_factors(checkpoint: Path, order: list[tuple[str, tuple[int, ...]]] | None = None) -> dict[str, Factors]:
    """Module name (as in the trajectory) -> its factors and Adam directions at ``checkpoint``."""
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    weights = load_file(str(checkpoint / "adapter_model.safetensors"))
    states = adam_states(checkpoint, order)
    out: dict[str, Factors] = {}
    for name, state in states.items():
        if ".lora_A." not in name:
            continue
        module = name.split(".lora_A.")[0]
        name_b = name.replace(".lora_A.", ".lora_B.")
        a, b = weights[_adapter_key(name)].float(), weights[_adapter_key(name_b)].float()
        out[module] = Factors(
            a, b, state.direction(a), states[name_b].direction(b), state.lr, states[name_b].lr, scale,
            state.betas[0],
        )  # fmt: skip
    return out


# ---------------------------------------------------------------- scoring


def move_scores(
    gram: torch.Tensor, i: int, j: int, pp: float, ph: float, pt: float
) -> tuple[float, float, float, float]:
    """``(||P - D_j||^2, ||D_i - D_j||^2, <P - D_i, D_j - D_i>, ||P - D_i||^2)`` from ``<P, P>``, ``<P, D_i>``,
    ``<P, D_j>`` and the points' Gram matrix."""
    error = max(pp - 2 * pt + float(gram[j, j]), 0.0)
    persistence = gram_distance(gram, i, j)
    dot = pt - ph - float(gram[i, j]) + float(gram[i, i])
    move = max(pp - 2 * ph + float(gram[i, i]), 0.0)
    return error, persistence, dot, move


def coasting_steps(h: int, beta1: float) -> float:
    """``sum_{k=1..h} beta1^k``: how many steps of the current update the decaying momentum still adds."""
    return beta1 * (1 - beta1**h) / (1 - beta1)


def score_optimizer(
    trajectory: Trajectory, factors: dict[str, Factors], i: int, j: int, coast: bool = False
) -> dict[str, float]:
    """Summed over modules: error, persistence, <predicted move, actual move>, ||predicted move||^2."""
    h = trajectory.steps[j] - trajectory.steps[i]
    if coast:
        h = coasting_steps(h, next(iter(factors.values())).beta1)
    total = dict.fromkeys(("error", "persistence", "dot", "move"), 0.0)
    for name in trajectory.modules:
        p = factors[name].predict(h)
        gram = trajectory.gram(name)
        pp, ph, pt = inner(p, p), inner(p, trajectory.deltas[name][i]), inner(p, trajectory.deltas[name][j])
        for key, value in zip(total, move_scores(gram, i, j, pp, ph, pt), strict=True):
            total[key] += value
        if name == trajectory.modules[0]:  # the shared helper agrees on one module
            assert math.isclose(prediction_error(trajectory, name, p, j), move_scores(gram, i, j, pp, ph, pt)[0],
                                rel_tol=1e-6, abs_tol=1e-15)  # fmt: skip
    return total


def score_variant(trajectory: Trajectory, method: str, config: dict[str, Any], i: int, j: int) -> dict[str, float]:
    """The same sums for a regime-map variant fitted on points ``0..i`` (a combination of the points)."""
    model = get_extrapolator(method, **config)
    model.fit(trajectory.prefix(i + 1))
    total = dict.fromkeys(("error", "persistence", "dot", "move"), 0.0)
    for name in trajectory.modules:
        gram = trajectory.gram(name)
        w = torch.zeros(len(trajectory), dtype=torch.float64)
        w[: i + 1] = torch.tensor(model.combination(name, trajectory.steps[j]), dtype=torch.float64)
        gw = gram @ w
        for key, value in zip(total, move_scores(gram, i, j, float(w @ gw), float(gw[i]), float(gw[j])), strict=True):
            total[key] += value
    return total


def step_consistency(trajectory: Trajectory, factors: dict[str, Factors], i: int, j: int) -> dict[str, float]:
    """Cosine, in parameter space, between ``-u`` at point ``i`` and the factors' actual change to point ``j``.

    The factors at the points come from the snapshots (``left = s B``, ``right = A``). A control pairs each
    module's direction with the change of the module ``shift`` places further (a wrong mapping): near 0.
    """
    names = trajectory.modules

    def change(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        d_i, d_j = trajectory.deltas[name][i], trajectory.deltas[name][j]
        f = factors[name]
        return (d_j.right - d_i.right).flatten(), ((d_j.left - d_i.left) / f.scale).flatten()

    def cosine(pairs: list[tuple[str, str]]) -> float:
        dot = nu = nd = 0.0
        for own, other in pairs:
            f = factors[own]
            for u, d in zip((f.u_a.flatten(), f.u_b.flatten()), change(other), strict=True):
                if u.shape != d.shape:
                    return math.nan
                dot -= float(u.double() @ d.double())
                nu += float(u.double() @ u.double())
                nd += float(d.double() @ d.double())
        return dot / math.sqrt(nu * nd) if nu > 0 and nd > 0 else math.nan

    shift = 7  # one decoder layer further (7 adapted modules per layer): same shapes, another layer
    return {
        "cosine": cosine([(n, n) for n in names]),
        "cosine_wrong_layer": cosine([(n, names[(k + shift) % len(names)]) for k, n in enumerate(names)]),
    }


def check_package(trajectory: Trajectory, factors: dict[str, Factors], i: int, j: int) -> None:
    """The package's ``optimizer`` extrapolator, fed the same state, makes the same forecast as this script."""
    view = trajectory.prefix(len(trajectory))
    view.velocities[i] = {name: f.velocity() for name, f in factors.items()}
    for coast in (False, True):
        error, persistence = forecast_errors(view, get_extrapolator("optimizer", coast=coast), i, j)
        mine = score_optimizer(trajectory, factors, i, j, coast=coast)
        if not math.isclose(error, mine["error"], rel_tol=1e-4) or not math.isclose(persistence, mine["persistence"]):
            raise AssertionError(f"package and script disagree (coast={coast}): {error} vs {mine['error']}")


def check_snapshot(trajectory: Trajectory, factors: dict[str, Factors], i: int) -> float:
    """Largest |difference| between the checkpoint's factors and the trajectory's snapshot at the same step."""
    worst = 0.0
    for name in trajectory.modules:
        d, f = trajectory.deltas[name][i], factors[name]
        worst = max(worst, float((d.right - f.a).abs().max()), float((d.left - f.b * f.scale).abs().max()))
    return worst


def load_trajectory(run: Path) -> tuple[RunSpec | None, Trajectory, str]:
    """The run's trajectory: the finished run's state file, else the latest trainer checkpoint's (run still going)."""
    if (run / STATE_FILE).is_file():
        cached = load_run(run)
        return cached.spec, trajectory_of(cached), "final"
    checkpoint = latest_checkpoint(run / "trainer")
    if checkpoint is None:
        raise FileNotFoundError(f"{run}: no state file and no finished trainer checkpoint yet")
    state = load_state(checkpoint)
    trajectory = Trajectory()
    for k, step in enumerate(state.steps):
        trajectory.append(step, {name: deltas[k] for name, deltas in state.deltas.items()})
    return None, trajectory, checkpoint.name


def measure_run(run: Path) -> dict[str, Any]:
    spec, trajectory, source = load_trajectory(run)
    index = {s: k for k, s in enumerate(trajectory.steps)}
    checkpoints = sorted(
        (c for c in (run / "trainer").glob("checkpoint-*") if (c / "optimizer.pt").is_file()),
        key=lambda c: int(c.name.rsplit("-", 1)[1]),
    )
    variants = COMPARED
    order = None
    records, checks = [], []
    for checkpoint in checkpoints:
        origin = int(checkpoint.name.rsplit("-", 1)[1])
        if origin not in index or not any(origin + h in index for h in HORIZONS):
            continue
        start = time.perf_counter()
        order = order or trainer_param_order(checkpoint)
        factors = checkpoint_factors(checkpoint, order)
        i = index[origin]
        check = {"origin": origin, "snapshot_max_abs_diff": check_snapshot(trajectory, factors, i)}
        if origin + 5 in index:
            check |= step_consistency(trajectory, factors, i, index[origin + 5])
        checks.append(check)
        for h in HORIZONS:
            if origin + h not in index:
                continue
            j = index[origin + h]
            if h == HORIZONS[0]:
                check_package(trajectory, factors, i, j)
            scored = {
                OPTIMIZER: score_optimizer(trajectory, factors, i, j),
                COASTING: score_optimizer(trajectory, factors, i, j, coast=True),
            }
            for variant, (method, config) in variants.items():
                try:
                    scored[variant] = score_variant(trajectory, method, config, i, j)
                except ValueError:  # too few points for this variant
                    continue
            for variant, s in scored.items():
                records.append({
                    "origin": origin, "horizon": h, "variant": variant, **s,
                    "skill": skill(s["error"], s["persistence"]),
                    "cosine": s["dot"] / math.sqrt(s["move"] * s["persistence"]) if s["move"] * s["persistence"] > 0
                    else math.nan,
                })  # fmt: skip
        print(f"  {run.name} H={origin}: {time.perf_counter() - start:.0f} s, {check}", flush=True)
    return {
        "run": run.name,
        "spec": None if spec is None else spec.__dict__,
        "trajectory_source": source,
        "snapshot_steps": trajectory.steps,
        "checks": checks,
        "records": records,
    }


def pooled(records: list[dict[str, Any]]) -> dict[str, float]:
    """Skill pooled over origins (sum of errors / sum of persistence), and the pooled cosine of the moves."""
    e, p = sum(r["error"] for r in records), sum(r["persistence"] for r in records)
    dot, move = sum(r["dot"] for r in records), sum(r["move"] for r in records)
    positive = sum(r["skill"] > 0 for r in records)
    return {
        "skill": skill(e, p),
        "cosine": dot / math.sqrt(move * p) if move * p > 0 else math.nan,
        "origins": len(records),
        "origins_skill_above_0": positive,
        "median_skill": statistics.median(r["skill"] for r in records),
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        variants = list(dict.fromkeys(r["variant"] for r in run["records"]))
        for variant in variants:
            for h in HORIZONS:
                here = [r for r in run["records"] if r["variant"] == variant and r["horizon"] == h]
                if here:
                    rows.append({"run": run["run"], "variant": variant, "horizon": h, **pooled(here)})
    return rows


def _fmt(x: float, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        "# The optimizer's own direction as a predictor (issue 12, item 4)",
        "",
        f"Command: `{data['command']}` · machine: {m['processor']}, {m['cpu_count']} cores (shared with the SmolLM2 "
        f"collection), torch {m['torch']} · commit {m['commit']} · {data['seconds'] / 60:.1f} min",
        "",
        "At each trainer checkpoint H of a SmolLM2 LoRA run (`benchmarks/forecast`'s grid: math-mul, LoRA r16, "
        "constant lr, 8 prompts x 4 completions, snapshots every 5 steps), AdamW's next update per factor, "
        "`u = m_hat / (sqrt(v_hat) + eps) + wd p` from `optimizer.pt`, continued for h steps: "
        "`P = s (B - h lr u_B)(A - h lr u_A)` (exact in the merged space, rank 16). Skill against persistence "
        "(`1 - sum ||P - D_T||^2 / sum ||D_H - D_T||^2`, 1 perfect, 0 = not moving, < 0 worse) pooled over the "
        "origins H, next to the regime map's variants at the same (H, h). `cos` = cosine between the predicted move "
        "`P - D_H` and the actual `D_T - D_H` (pooled); the best multiple of a predicted move would reach "
        "skill `cos^2` (an oracle: the length is not known in advance).",
        "",
    ]
    if data.get("note"):
        lines += [data["note"], ""]
    for run in data["runs"]:
        lines += [
            f"## {run['run']}",
            "",
            f"Trajectory: {run['trajectory_source']} (snapshots {run['snapshot_steps'][0]}..{run['snapshot_steps'][-1]}); "
            f"origins H: {[c['origin'] for c in run['checks']]}.",
            "",
            "| variant | " + " | ".join(f"h={h}: skill / cos (n)" for h in HORIZONS) + " |",
            "|---" * (len(HORIZONS) + 1) + "|",
        ]
        rows = {(r["variant"], r["horizon"]): r for r in data["summary"] if r["run"] == run["run"]}
        for variant in dict.fromkeys(r["variant"] for r in run["records"]):
            cells = []
            for h in HORIZONS:
                r = rows.get((variant, h))
                cells.append(f"{_fmt(r['skill'])} / {_fmt(r['cosine'])} ({r['origins']})" if r else "–")
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Per origin: skill at h = 5 / 10 / 20 of the optimizer direction (constant; momentum coasting), the "
            "parameter-space cosine of `-u` at H with the factors' actual change H -> H+5, and the same with each "
            "module's direction paired with the module one layer further (a wrong mapping: near 0):",
            "",
            "| H | constant h=5 / 10 / 20 | coasting h=5 / 10 / 20 | cos(-u, dp) | wrong-layer control | snapshot vs "
            "checkpoint max abs diff |",
            "|---|---|---|---|---|---|",
        ]
        for c in run["checks"]:
            cells = []
            for variant in (OPTIMIZER, COASTING):
                per = {(r["origin"], r["horizon"]): r for r in run["records"] if r["variant"] == variant}
                cells.append(" / ".join(_fmt(per[c["origin"], h]["skill"]) if (c["origin"], h) in per else "–"
                                        for h in (5, 10, 20)))  # fmt: skip
            lines.append(
                f"| {c['origin']} | {cells[0]} | {cells[1]} | {_fmt(c.get('cosine', math.nan), 3)} | "
                f"{_fmt(c.get('cosine_wrong_layer', math.nan), 3)} | {c['snapshot_max_abs_diff']:.2g} |"
            )
        lines.append("")
    if data.get("verify"):
        v = data["verify"]
        lines += [
            "## Mapping check: one real Adam step",
            "",
            f"`{v['command']}`: resumed {v['from']} for one GRPO step; the change of every LoRA factor over that "
            f"step against `-lr u` from the saved state after it: largest relative error "
            f"{v['max_rel_error']:.2g} over {v['params']} parameters (exact up to float32 round-off), and "
            f"{v['wrong_max_rel_error']:.2g} with the states of the next layer's parameters (a wrong mapping). "
            f"The direction saved at {v['from']} (before the step) predicts that step with cosine "
            f"{v['cosine_before']:.3f} (parameter space, all factors).",
            "",
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- one real Adam step


def verify_step(checkpoint: Path, out: Path | None = None) -> dict[str, Any]:
    """Resume the run for one step from ``checkpoint``; check ``p_{H+1} - p_H == -lr u_{H+1}`` factor by factor.

    ``u_{H+1}`` is read back from the new checkpoint's ``optimizer.pt`` with this module's mapping, ``p`` from the
    adapter files by name: a wrong index <-> name mapping cannot pass. The run's folder is only read.
    """
    import rlvr_extrap.experiments.evaluation as evaluation
    from rlvr_extrap.experiments.experiment import run_experiment

    run = checkpoint.parent.parent
    spec = load_spec(checkpoint)
    step = int(checkpoint.name.rsplit("-", 1)[1])
    # held-out evaluations are not needed here: record a NaN instead of 2 x 256 generations
    evaluation.HeldoutAccuracyCallback._evaluate = lambda self, state, *a: self.history.append(
        (state.global_step, math.nan)
    )
    work = Path(out or tempfile.mkdtemp()) / f"{run.name}-step{step + 1}"
    after = work / f"checkpoint-{step + 1}"
    if not (after / "optimizer.pt").is_file():  # kept: a rerun of the check does not retrain
        run_experiment(run_of(spec, grpo_steps=step + 1, save_every=1), work, resume_from=checkpoint)
    order = trainer_param_order(checkpoint)
    states = adam_states(after, order)
    before_w = load_file(str(checkpoint / "adapter_model.safetensors"))
    after_w = load_file(str(after / "adapter_model.safetensors"))
    before_states = adam_states(checkpoint, order)
    names = [n for n, _ in order]
    worst = wrong = 0.0
    dot = nu = nd = 0.0
    for k, name in enumerate(names):
        p0, p1 = before_w[_adapter_key(name)].double(), after_w[_adapter_key(name)].double()
        change = p1 - p0
        scale = float(change.abs().max()) or 1.0
        predicted = -states[name].lr * states[name].direction(p0.float()).double()
        worst = max(worst, float((change - predicted).abs().max()) / scale)
        other = names[(k + 14) % len(names)]  # the same parameter one decoder layer further
        if states[other].exp_avg.shape == change.shape:
            wrong_pred = -states[other].lr * states[other].direction(p0.float()).double()
            wrong = max(wrong, float((change - wrong_pred).abs().max()) / scale)
        u0 = before_states[name].direction(p0.float()).double()
        dot -= float(u0.flatten() @ change.flatten())
        nu += float(u0.flatten() @ u0.flatten())
        nd += float(change.flatten() @ change.flatten())
    return {
        "command": f"python benchmarks/optimizer_direction.py verify --checkpoint {checkpoint}",
        "run": run.name,
        "from": checkpoint.name,
        "params": len(names),
        "max_rel_error": worst,
        "wrong_max_rel_error": wrong,
        "cosine_before": dot / math.sqrt(nu * nd),
    }


def load_spec(checkpoint: Path) -> RunSpec:
    """The ``RunSpec`` of the run a checkpoint belongs to, from its folder name (the run id) and the grids."""
    run_id = checkpoint.parent.parent.name
    for grid in GRIDS.values():
        for spec in grid():
            if spec.run_id == run_id:
                return spec
    raise ValueError(f"{run_id}: not a run of the regime map's default grids")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="one real Adam step from a checkpoint: the mapping check")
    v.add_argument("--checkpoint", type=Path, required=True)
    v.add_argument(
        "--out", type=Path, default=RESULTS, help="the check's JSON goes to OUT/optimizer_direction_verify.json"
    )
    v.add_argument("--work", type=Path, default=None, help="where the one-step run goes (kept; default: a temp dir)")
    m = sub.add_parser("measure", help="score the optimizer direction on every cached smollm2 run")
    m.add_argument("--cache", type=Path, default=CACHE)
    m.add_argument("--only", action="append", default=[], help="only runs whose id contains this (repeatable)")
    m.add_argument("--out", type=Path, default=RESULTS)
    m.add_argument("--note", default="")
    m.add_argument("--name", default="optimizer_direction", help="results file stem")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.command == "verify":
        result = verify_step(args.checkpoint, args.work)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "optimizer_direction_verify.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
        return
    start = time.perf_counter()
    runs = []
    for run in sorted(args.cache.glob("smollm2*")):
        if args.only and not any(o in run.name for o in args.only):
            continue
        try:
            runs.append(measure_run(run))
        except FileNotFoundError as err:
            print(f"skip: {err}")
    verify = args.out / "optimizer_direction_verify.json"
    data = {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "seconds": time.perf_counter() - start,
        "note": args.note,
        "horizons": HORIZONS,
        "verify": json.loads(verify.read_text()) if verify.is_file() else None,
        "runs": runs,
        "summary": summarise(runs),
    }
    markdown = render(data)
    write_results(args.name, data, markdown, args.out)
    print(markdown)


if __name__ == "__main__":
    sys.exit(main())
