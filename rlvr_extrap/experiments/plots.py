"""Accuracy-against-steps figures for the demo and the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rlvr_extrap.utils.figures import save_figure

__all__ = ["plot_accuracy_curves"]


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
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, **({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if many else {}))
    fig.tight_layout()
    return save_figure(fig, path)
