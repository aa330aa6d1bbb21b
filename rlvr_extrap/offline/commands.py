"""``rlvr-extrap analyze`` and ``rlvr-extrap extrapolate``: the methods over saved checkpoints of any trainer.

Checkpoints are found by ``checkpoints.find_snapshots`` (HF Trainer ``checkpoint-N/``, verl
``global_step_N/actor/...``, ``step_N/``; full models or PEFT LoRA adapters) and read tensor by tensor:
each module's trajectory is loaded, fitted, predicted and written before the next one is read, so memory
holds one module's tensor per snapshot, never a whole model. The base model is the step-0 point.

Outputs:

- full runs, and LoRA runs by default: an HF model dir at ``W0 + D_out`` that ``from_pretrained`` loads.
  Its safetensors files mirror the base's (same shards, keys, dtypes; the sum is done in float32); config,
  tokenizer and other non-weight files are copied from the base. Rounding to a bfloat16 / float16 base's dtype
  loses part of the update from the last checkpoint: what it kept is reported (``rounding`` in extrapolation.json
  and the last line printed), and ``--dtype float32`` writes every floating tensor in float32 instead. 1-D tensors (norms, biases) of full runs are
  extrapolated by the same method as (1, n) matrices; non-floating tensors are copied from the base.
- LoRA runs with ``--as-adapter``: a PEFT adapter dir. The prediction is a combination of the observed
  deltas ``sum_t w_t s B_t A_t``, so it is one LoRA with concatenated factors of rank at most
  ``r * (number of trajectory points)`` (``+ r`` when ``--alpha`` is not 1); every module is zero-padded to
  the largest such rank, with ``lora_alpha = r`` (scale 1). It is held in memory until written.

``D_out = D_last + alpha * (D_hat(target) - D_last)``, as the callback's jump. Output goes to a temporary
sibling dir renamed to ``--out`` at the end, so a crash never leaves a half-written ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from rlvr_extrap.extrapolators import EXTRAPOLATORS, Extrapolator, ExtrapolatorConfig, get_extrapolator
from rlvr_extrap.linalg.landed import Landed
from rlvr_extrap.linalg.lowrank import Delta, LowRank, frobenius_norm, lincomb, to_dense
from rlvr_extrap.offline.checkpoints import CheckpointRun, read_labels
from rlvr_extrap.skill.diagnostics import (
    ModuleDiagnostics,
    module_diagnostics,
    plot_coefficients,
    plot_layers,
    plot_skill,
    write_json,
)
from rlvr_extrap.skill.forecast import backtest_errors, skill
from rlvr_extrap.utils.files import check_output_dir, make_output_dir
from rlvr_extrap.utils.safetensors_io import write_streaming

__all__ = ["BACKTEST_METHODS", "STREAMABLE_METHODS", "add_parser", "analyze", "extrapolate"]

STREAMABLE_METHODS = tuple(sorted(name for name, cls in EXTRAPOLATORS.items() if cls.can_stream))
"""Methods that fit each tensor on its own, so they can stream tensor by tensor (``Extrapolator.can_stream``)."""
BACKTEST_METHODS = tuple(name for name in STREAMABLE_METHODS if EXTRAPOLATORS[name].can_backtest)
"""Streamable methods whose forecast skill ``analyze`` can backtest (``Extrapolator.can_backtest``)."""

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".index.json")
_NOT_COPIED = {"adapter_config.json", "trainer_state.json"}

OUTPUT_DTYPES = ("base", "float32")


class Prediction(NamedTuple):
    """One module's output delta ``D_out``, the last checkpoint's ``D_last``, and the fit's diagnostics."""

    delta: Delta
    last: Delta
    report: dict[str, float]


Predict = Callable[[str], Prediction]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``analyze`` and ``extrapolate`` subcommands."""
    analyze_parser = subparsers.add_parser(
        "analyze",
        help="per-module trajectory diagnostics over saved checkpoints",
        description="Prints, per module, the rank-1 energy of the time stack, the in-sample and held-out R^2 of "
        "the line through the rank-1 coefficient, and the norms of the RELEX update and of the last delta; "
        "writes diagnostics.json, coefficients.png and layers.png.",
    )
    _add_run_arguments(analyze_parser)
    analyze_parser.add_argument("--out", type=Path, help="output dir (default: RUN_DIR/extrap_analysis)")
    analyze_parser.add_argument(
        "--target-step", type=int, help="step the update is predicted for (default: 2x the last step)"
    )
    analyze_parser.add_argument(
        "--holdout", type=int, default=2, help="points held out for the held-out R^2 (default: 2)"
    )
    analyze_parser.add_argument(
        "--method",
        default="relex",
        choices=BACKTEST_METHODS,
        help="extrapolator whose forecast skill is backtested (default: relex); the skill per horizon goes into "
        "diagnostics.json ('skill') and skill.png",
    )
    analyze_parser.set_defaults(run=_run_analyze)

    extrapolate_parser = subparsers.add_parser(
        "extrapolate",
        help="write the model predicted at a later step from saved checkpoints",
        description="Fits METHOD per tensor and writes W0 + D_last + alpha (D_hat(TARGET) - D_last) as an HF model "
        "dir (full runs; LoRA runs merged) or, with --as-adapter, a PEFT adapter. In full runs 1-D tensors "
        "(norms, biases) are extrapolated by the same method as (1, n) matrices and non-floating tensors are "
        "copied from the base.",
    )
    _add_run_arguments(extrapolate_parser)
    extrapolate_parser.add_argument(
        "--method",
        required=True,
        choices=STREAMABLE_METHODS,
        help="extrapolation method, one that fits each tensor on its own (next shares one predictor across modules, "
        "optimizer needs the optimizer's state)",
    )
    extrapolate_parser.add_argument(
        "--labels",
        type=Path,
        help='a score per checkpoint step (e.g. accuracy), as a JSON object {"step": score} or CSV rows '
        "'step,score': needed by --method alpharl, which predicts the weights at the score's linear trend at "
        "--target-step",
    )
    extrapolate_parser.add_argument(
        "--target-score",
        type=float,
        help="alpharl: the score to predict the weights at (default: the labels' linear trend at --target-step)",
    )
    extrapolate_parser.add_argument("--target-step", type=int, required=True, help="step to predict (>= the last step)")
    extrapolate_parser.add_argument("--out", type=Path, required=True, help="output dir (must not exist)")
    extrapolate_parser.add_argument(
        "--alpha", type=float, default=1.0, help="scale of the update from the last checkpoint (default: 1)"
    )
    extrapolate_parser.add_argument(
        "--as-adapter",
        action="store_true",
        help="LoRA runs: write a PEFT adapter (rank <= r x points, factors concatenated) instead of merged weights",
    )
    extrapolate_parser.add_argument(
        "--dtype",
        choices=OUTPUT_DTYPES,
        default="base",
        help="dtype of the written model's floating tensors. 'base' (default): the base's own, so the output is a "
        "drop-in replacement of the same size, and a model served at that dtype rounds the same way when loaded; "
        "on a bfloat16 / float16 base the rounding loses part of a small update, and the fraction kept is printed "
        "and written to extrapolation.json ('rounding'). 'float32': every floating tensor (and config.json's "
        "dtype) in float32, the update kept exactly, at twice a bfloat16 base's size. Adapters (--as-adapter) are "
        "written in the adapter's dtype either way",
    )
    extrapolate_parser.set_defaults(run=_run_extrapolate)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="dir holding checkpoint-N/, global_step_N/ or step_N/"
    )
    parser.add_argument("--base", type=Path, required=True, help="local HF model dir the run started from")
    parser.add_argument("--steps", type=int, nargs="+", help="checkpoint steps to use (default: all)")
    parser.add_argument(
        "--fit-window", type=int, help="fit on the last W trajectory points, the base at step 0 counting (default: all)"
    )


def _run_analyze(args: argparse.Namespace) -> int:
    analyze(
        args.run_dir,
        args.base,
        args.out,
        steps=args.steps,
        target_step=args.target_step,
        fit_window=args.fit_window,
        holdout=args.holdout,
        method=args.method,
    )
    return 0


def _run_extrapolate(args: argparse.Namespace) -> int:
    extrapolate(
        args.run_dir,
        args.base,
        args.out,
        method=args.method,
        target_step=args.target_step,
        steps=args.steps,
        fit_window=args.fit_window,
        alpha=args.alpha,
        as_adapter=args.as_adapter,
        dtype=args.dtype,
        labels=read_labels(args.labels) if args.labels is not None else None,
        target_score=args.target_score,
    )
    return 0


def analyze(
    run_dir: Path,
    base: Path,
    out: Path | None = None,
    *,
    steps: Sequence[int] | None = None,
    target_step: int | None = None,
    fit_window: int | None = None,
    holdout: int = 2,
    method: str = "relex",
) -> list[ModuleDiagnostics]:
    """Diagnose every module of the run, print a table, write diagnostics.json and the plots into ``out``.

    Also backtests ``method`` at the last checkpoint (the skill per horizon, pooled over modules).
    """
    _check_fit_window(fit_window)
    if method not in BACKTEST_METHODS:
        raise ValueError(
            f"--method {method}: the backtest streams module by module and needs a cheap refit; use one of "
            f"{list(BACKTEST_METHODS)}"
        )
    extrapolator = get_extrapolator(method, fit_window=fit_window)
    if holdout < 0:
        raise ValueError(f"--holdout {holdout}: must be >= 0 (0 skips the held-out R^2)")
    out = run_dir / "extrap_analysis" if out is None else out
    check_output_dir(out)
    _check_creatable(out)
    run = CheckpointRun(run_dir, base, steps)
    target = 2 * run.steps[-1] if target_step is None else target_step
    _check_target(target, run)
    diagnostics, pooled = [], {}
    with tqdm(run.modules, desc="analyze", unit="module") as modules:  # closed (a newline) before any error line
        for name in modules:
            trajectory = run.trajectory(name)
            diagnostics.append(module_diagnostics(trajectory, name, target, fit_window=fit_window, holdout=holdout))
            for horizon, (error, persistence) in backtest_errors(trajectory, extrapolator).items():
                before = pooled.get(horizon, (0.0, 0.0))
                pooled[horizon] = (before[0] + error, before[1] + persistence)
    scores = {h: skill(e, p) for h, (e, p) in sorted(pooled.items()) if p > 0}
    make_output_dir(out, out)
    settings = {"run_dir": str(run_dir), "base": str(base), "kind": run.kind, "steps": run.steps}
    settings |= {"target_step": target, "fit_window": fit_window, "holdout": holdout, "method": method}
    report = {**settings, "skill": {str(h): v for h, v in scores.items()}}
    write_json(out / "diagnostics.json", {**report, "modules": {d.name: d.to_dict() for d in diagnostics}})
    plot_coefficients(diagnostics, out / "coefficients.png")
    plot_layers(diagnostics, out / "layers.png")
    written = [out / "diagnostics.json", out / "coefficients.png", out / "layers.png"]
    if scores:
        written.append(plot_skill(scores, out / "skill.png", title=f"{method}: backtest at step {run.steps[-1]}"))
    print(format_table(diagnostics))
    print(format_skill(scores, method))
    print(f"wrote {', '.join(map(str, written))}")
    return diagnostics


def _check_fit_window(fit_window: int | None) -> None:
    try:
        ExtrapolatorConfig(fit_window=fit_window).validate()
    except ValueError:
        raise ValueError(
            f"--fit-window {fit_window}: a fit needs at least 2 points; use 2 or more, or leave it out to fit all points"
        ) from None


def _check_target(target_step: int, run: CheckpointRun) -> None:
    if target_step < run.steps[-1]:
        raise ValueError(
            f"--target-step {target_step} is before the last checkpoint (step {run.steps[-1]}); predict ahead of it"
        )


def _check_creatable(out: Path) -> None:
    """Fail before any work if ``out`` cannot be created: its nearest existing ancestor is a file or read-only."""
    ancestor = out.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if ancestor == out.absolute():
        return
    if not ancestor.is_dir():
        raise ValueError(f"--out {out}: {ancestor} is a file, so {out} cannot be created; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {ancestor} is not writable; choose a path in a writable directory")


def format_table(diagnostics: Sequence[ModuleDiagnostics]) -> str:
    """One row of scalar diagnostics per module."""
    width = max([len("module")] + [len(d.name) for d in diagnostics])
    rows = [f"{'module':<{width}}  {'energy':>7}  {'R2':>7}  {'R2 held':>7}  {'|update|':>10}  {'|delta|':>10}"]
    for d in diagnostics:
        heldout = "-" if d.r2_heldout is None else f"{d.r2_heldout:7.3f}"
        rows.append(
            f"{d.name:<{width}}  {d.energy:7.3f}  {d.r2:7.3f}  {heldout:>7}  {d.update_norm:10.4g}  {d.delta_norm:10.4g}"
        )
    return "\n".join(rows)


def format_skill(scores: dict[int, float], method: str) -> str:
    """The backtest's skill per horizon on one line (1: perfect, 0: no better than not moving)."""
    if not scores:
        return f"forecast skill ({method}): not enough checkpoints to backtest (needs 3 points, the base counting)"
    return f"forecast skill ({method}) by horizon in steps: " + ", ".join(f"{h}: {v:.3f}" for h, v in scores.items())


def extrapolate(
    run_dir: Path,
    base: Path,
    out: Path,
    *,
    method: str,
    target_step: int,
    steps: Sequence[int] | None = None,
    fit_window: int | None = None,
    alpha: float = 1.0,
    as_adapter: bool = False,
    dtype: str = "base",
    labels: dict[int, float] | None = None,
    target_score: float | None = None,
) -> Path:
    """Write the model (or adapter) predicted at ``target_step`` into ``out``; returns ``out``.

    ``dtype``: 'base' writes the model's tensors in the base's dtypes, 'float32' every floating tensor in float32.
    ``labels``: step -> score, for methods that regress on one (``Extrapolator.needs_labels``), and ``target_score``
    the score predicted for (default: the labels' trend at ``target_step``).
    """
    _check_fit_window(fit_window)
    if target_score is not None and method != "alpharl":
        raise ValueError(f"--target-score is read only by --method alpharl, not --method {method}")
    options = {} if target_score is None else {"target_score": target_score}
    extrapolator = get_extrapolator(method, fit_window=fit_window, **options)
    if method not in STREAMABLE_METHODS:
        raise ValueError(
            f"--method {method} cannot stream tensor by tensor (it fits across modules or needs the optimizer's "
            f"state); use one of {list(STREAMABLE_METHODS)}"
        )
    if extrapolator.needs_labels and labels is None:
        raise ValueError(f"--method {method} needs --labels FILE: a score per checkpoint step (JSON or CSV)")
    if labels is not None and not extrapolator.needs_labels:
        raise ValueError(f"--labels is read only by methods that regress on a score (alpharl), not --method {method}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"--alpha {alpha}: must be a finite number > 0")
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"--dtype {dtype}: choose one of {list(OUTPUT_DTYPES)}")
    if out.exists():
        raise ValueError(f"--out {out} already exists; choose a new path or remove it")
    _check_creatable(out)
    run = CheckpointRun(run_dir, base, steps, labels)
    _check_target(target_step, run)
    if as_adapter and run.kind != "lora":
        raise ValueError(f"--as-adapter needs a LoRA run, but {run_dir} holds full checkpoints; drop --as-adapter")

    def predict(name: str) -> Prediction:
        return _predict(run, extrapolator, name, target_step, alpha)

    if extrapolator.needs_labels:  # bad labels or target fail in one line before any output (or progress bar)
        predict(run.modules[0])

    make_output_dir(out.parent, out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    try:
        rounding = None
        if as_adapter:
            report = _write_adapter(run, predict, tmp)
        else:
            report, rounding = _write_model(run, predict, tmp, float32=dtype == "float32")
        settings = {"run_dir": str(run_dir), "base": str(base), "kind": run.kind, "steps": run.steps, "method": method}
        settings |= {"target_step": target_step, "fit_window": fit_window, "alpha": alpha, "as_adapter": as_adapter}
        settings |= {"dtype": dtype}
        if rounding is not None:
            settings["rounding"] = {"kept_fraction": rounding.fraction, "noise": rounding.noise}
        write_json(tmp / "extrapolation.json", {**settings, "modules": report})
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {out} (step {run.steps[-1]} -> {target_step}, {method}, {len(run.modules)} tensors extrapolated)")
    if rounding is not None:
        print(
            f"the written weights keep {rounding.fraction:.4f} of the update from step {run.steps[-1]} along its "
            f"direction, with off-direction rounding noise {rounding.noise:.4f} of it"
            + (" (--dtype float32 keeps all of it)" if dtype == "base" and rounding.fraction < 0.99 else "")
        )
    return out


def _predict(run: CheckpointRun, extrapolator: Extrapolator, name: str, target: int, alpha: float) -> Prediction:
    """Load, fit and predict one module: ``D_last + alpha (D_hat - D_last)`` and the fit's diagnostics."""
    trajectory = run.trajectory(name)
    diagnostics = extrapolator.fit(trajectory)[name]
    last = trajectory.deltas[name][-1]
    delta = lincomb([alpha, 1.0 - alpha], [extrapolator.predict_module(name, target), last])
    return Prediction(delta, last, {**diagnostics, "update_norm": frobenius_norm(delta - last)})


def _write_model(
    run: CheckpointRun, predict: Predict, directory: Path, float32: bool = False
) -> tuple[dict[str, dict[str, float]], Landed]:
    """Stream ``W0 + D_out`` into safetensors files mirroring the base's (floating tensors in float32 when
    ``float32``); copy the base's other files. Returns the report and what the written weights kept of the update
    from the last checkpoint (``W0 + D_last``) after rounding to the written dtype."""
    report: dict[str, dict[str, float]] = {}
    moving = set(run.modules)
    kept: list[Landed] = []

    def dtype(key: str) -> torch.dtype:
        base = run.base.dtype(key)
        return torch.float32 if float32 and base.is_floating_point else base

    def tensor(key: str, progress: tqdm) -> torch.Tensor:
        w0 = run.base.get(key)
        if key not in moving:
            return w0.to(dtype(key))
        delta, last, report[key] = predict(key)
        progress.update()
        exact = w0.float() + to_dense(delta).reshape(w0.shape)
        written = exact.to(dtype(key))
        previous = w0.float() + to_dense(last).reshape(w0.shape)
        kept.append(Landed.of_dense(written.float() - previous, exact - previous))
        return written

    with tqdm(total=len(moving), desc="extrapolate", unit="module") as progress:
        for file in run.base.files:
            keys = run.base.keys_in(file)
            specs = [(key, dtype(key), run.base.shape(key)) for key in keys]
            write_streaming(directory / file.name, specs, (tensor(key, progress) for key in keys))
    if run.base.index is not None:
        shutil.copy2(run.base.index, directory / run.base.index.name)
    _copy_other_files(run.base_dir, directory)
    if float32:
        _set_config_dtype(directory / "config.json", "float32")
    return report, Landed.total(kept)


def _set_config_dtype(config: Path, dtype: str) -> None:
    """Make ``from_pretrained(dtype="auto")`` load the written dtype: set the dtype keys config.json has."""
    if not config.is_file():
        return
    data = json.loads(config.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in data:
            data[key] = dtype
    write_json(config, data)


def _write_adapter(run: CheckpointRun, predict: Predict, directory: Path) -> dict[str, dict[str, float]]:
    """Write ``D_out`` of every module as one PEFT LoRA adapter (scale 1, zero-padded to a common rank)."""
    adapter = run.adapters[-1]
    report: dict[str, dict[str, float]] = {}
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with tqdm(run.modules, desc="extrapolate", unit="module") as modules:
        for name in modules:
            delta, _, report[name] = predict(name)
            if not isinstance(delta, LowRank):
                raise ValueError(
                    f"{name}: the prediction is not factored, so it cannot be written as an adapter; drop --as-adapter"
                )
            factors[name] = adapter.factors_for(delta)
    rank = max([1, *(b.shape[1] for b, _ in factors.values())])
    tensors = {}
    for name, (b, a) in factors.items():
        prefix, pad = f"base_model.model.{name.removesuffix('.weight')}", rank - b.shape[1]
        tensors[f"{prefix}.lora_A.weight"] = F.pad(a, (0, 0, 0, pad)).contiguous()
        tensors[f"{prefix}.lora_B.weight"] = F.pad(b, (0, pad)).contiguous()
    save_file(tensors, directory / "adapter_model.safetensors", metadata={"format": "pt"})
    config: dict[str, Any] = {**adapter.config, "r": rank, "lora_alpha": rank, "use_rslora": False}
    config |= {"rank_pattern": {}, "alpha_pattern": {}, "base_model_name_or_path": str(run.base_dir)}
    write_json(directory / "adapter_config.json", config)
    _copy_other_files(adapter.directory, directory)
    return report


def _copy_other_files(source: Path, directory: Path) -> None:
    """Copy ``source``'s top-level files that are not weights, optimizer/trainer state or an adapter config."""
    for file in source.iterdir():
        if file.is_file() and not file.name.endswith(_WEIGHT_SUFFIXES) and file.name not in _NOT_COPIED:
            shutil.copy2(file, directory / file.name)
