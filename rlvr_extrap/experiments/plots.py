"""Accuracy-against-steps figures for the benchmarks, and the demo's jump-and-gate figure."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rlvr_extrap.utils.figures import save_figure

__all__ = ["plot_accuracy_curves", "plot_jump_and_gate"]

Series = tuple[Sequence[int], Sequence[float]]  # (steps, values)
CLIP_SKILL = -3.0  # the skill panel's floor: a forecast off by more says no more to the eye


def plot_accuracy_curves(curves: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """One line per curve against actual GRPO steps, with an optional band and jump markers.

    Each curve: ``{"name", "steps", "mean"}`` and optionally ``"low"``/``"high"`` (a band, e.g. the
    spread over seeds) and ``"jumps"`` (steps where the run jumped). Written atomically as PNG.
    """
    many = len(curves) > 4  # then the legend goes beside the axes, not over the lines
    fig, ax = plt.subplots(figsize=(11.5 if many else 7, 4.2))
    jump_label = "jump (dotted, in the curve's colour)"
    for curve in curves:
        (line,) = ax.plot(curve["steps"], curve["mean"], marker="o", ms=3, label=curve["name"])
        if "low" in curve:
            ax.fill_between(curve["steps"], curve["low"], curve["high"], color=line.get_color(), alpha=0.18)
        for step in curve.get("jumps", []):
            ax.axvline(step, color=line.get_color(), ls=":", lw=1, label=jump_label)
            jump_label = None
    ax.set_xlabel("actual GRPO steps")
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_title(title, loc="left", fontsize=10, wrap=True)  # from the axes' left edge: a long title stays on the page
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, **({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if many else {}))
    fig.tight_layout()
    return save_figure(fig, path)


def plot_jump_and_gate(
    vanilla: Series,
    gated: Series,
    ungated: Series,
    skill: dict[int, Series],
    *,
    jump_step: int,
    horizon: int,
    bar: float | None,
    gated_verdict: str,
    ungated_verdict: str,
    path: str | Path,
    title: str,
) -> Path:
    """The demo's figure: what a jump does, and what the skill gate read before letting it happen.

    Top: held-out accuracy against actual GRPO steps of vanilla GRPO, of the arm with the gate and of the same jump
    without it (the jump arms from ``jump_step`` on, where they branch from vanilla), the jump marked and each arm's
    verdict in the legend. Bottom: the forecast skill the run's backtests measured, per horizon in ``skill``
    (``horizon``, the jump's, drawn bold), with the gate's ``bar`` and the value the gate read at ``jump_step``.
    """
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(12, 7.5), sharex=True, layout="constrained", gridspec_kw={"height_ratios": [3, 2]}
    )
    end = max(vanilla[0])
    for ax in (top, bottom):
        ax.axvline(jump_step, color="grey", ls=":", lw=1.2)
        ax.grid(alpha=0.3)
    _accuracy_panel(top, vanilla, gated, ungated, jump_step, horizon, gated_verdict, ungated_verdict)
    top.set_title(title, pad=18)
    _skill_panel(bottom, skill, jump_step, horizon, bar)
    bottom.set_xlim(-end * 0.02, end * 1.02)
    return save_figure(fig, path)


_wrap = partial(textwrap.fill, width=38)
_LEGEND = {"fontsize": 8.5, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "labelspacing": 0.9}  # beside


def _accuracy_panel(
    ax: Any,
    vanilla: Series,
    gated: Series,
    ungated: Series,
    jump_step: int,
    horizon: int,
    gated_verdict: str,
    ungated_verdict: str,
) -> None:
    """Held-out accuracy of the three arms, the jump drawn as an arrow at its step."""
    end = max(vanilla[0])
    ax.plot(
        *vanilla, color="C0", marker="o", ms=4, label=_wrap(f"vanilla GRPO (on to step {end}: the steps a jump skips)")
    )
    ax.plot(
        *gated,
        color="C1",
        marker="s",
        ms=9,
        mfc="none",
        mew=1.6,
        ls="--",
        lw=2,
        label=_wrap(f"the jump with the skill gate (the default): {gated_verdict}"),
    )
    ax.plot(
        *ungated, color="C3", marker="^", ms=6, lw=2, label=_wrap(f"the same jump without the gate: {ungated_verdict}")
    )
    before = dict(zip(*vanilla, strict=True)).get(jump_step)
    after = dict(zip(*ungated, strict=True)).get(jump_step)
    if before is not None and after is not None and before != after:  # the jump itself, at its step
        ax.annotate(
            "", xy=(jump_step, after), xytext=(jump_step, before), arrowprops={"arrowstyle": "->", "color": "C3"}
        )
    ax.text(
        jump_step,
        1.01,
        f"jump at step {jump_step}, {horizon} steps ahead",
        transform=ax.get_xaxis_transform(),
        ha="center",
        va="bottom",
        fontsize=9,
        color="dimgrey",
    )
    ax.legend(**_LEGEND)
    ax.set_ylabel("held-out greedy accuracy")


def _skill_panel(ax: Any, skill: dict[int, Series], jump_step: int, horizon: int, bar: float | None) -> None:
    """Backtest skill per horizon over the run, the gate's bar, and the value the gate read at the jump."""
    for h, (steps, values) in sorted(skill.items()):
        main = h == horizon
        label = f"backtest skill {h} steps ahead" + (" (the jump's horizon)" if main else "")
        ax.plot(
            steps,
            values,
            color="C0" if main else "grey",
            lw=2 if main else 1,
            marker="o",
            ms=4 if main else 2,
            alpha=1 if main else 0.7,
            label=_wrap(label),
        )
    ax.axhline(0, color="black", lw=0.8, label=_wrap("0: a forecast no better than not moving"))
    if bar is not None:
        ax.axhline(
            bar,
            color="C3",
            ls="--",
            lw=1.5,
            label=_wrap(f"the gate's bar: a jump needs skill >= {bar:g} (extrap_min_skill)"),
        )
    read = dict(zip(*skill.get(horizon, ((), ())), strict=True)).get(jump_step)
    if read is not None:
        ax.plot([jump_step], [read], marker="*", ms=16, color="C3", zorder=5, ls="none")
        ax.annotate(
            f"the gate read {read:.2f}",
            xy=(jump_step, read),
            xytext=(12, 8),
            textcoords="offset points",
            fontsize=9,
            color="C3",
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85},
        )
    ax.legend(**_LEGEND)
    shown = [v for _, values in skill.values() for v in values if v >= CLIP_SKILL] + [0.0, bar or 0.0]
    ax.set_ylim(min(shown) - 0.15, max(shown) + 0.15)  # a skill below CLIP_SKILL is off the chart
    ax.set_ylabel("forecast skill (1 = perfect)")
    ax.set_xlabel("actual GRPO steps")
