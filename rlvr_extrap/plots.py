"""Accuracy-against-steps figures for the demo and the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .io import save_figure  # noqa: E402

__all__ = ["plot_accuracy_curves"]


def plot_accuracy_curves(curves: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """One line per curve against actual GRPO steps, with an optional band and jump markers.

    Each curve: ``{"name", "steps", "mean"}`` and optionally ``"low"``/``"high"`` (a band, e.g. the
    spread over seeds) and ``"jumps"`` (steps where the run jumped). Written atomically as PNG.
    """
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for curve in curves:
        (line,) = ax.plot(curve["steps"], curve["mean"], marker="o", ms=3, label=curve["name"])
        if "low" in curve:
            ax.fill_between(curve["steps"], curve["low"], curve["high"], color=line.get_color(), alpha=0.18)
        for i, step in enumerate(curve.get("jumps", [])):
            ax.axvline(step, color=line.get_color(), ls=":", lw=1, label=f"{curve['name']} jump" if i == 0 else None)
    ax.set_xlabel("actual GRPO steps")
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
