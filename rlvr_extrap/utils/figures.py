"""Saving matplotlib figures atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlvr_extrap.utils.files import atomic_path

__all__ = ["save_figure"]


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)
