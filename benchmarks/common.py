"""Helpers shared by the benchmark scripts: machine description and atomic result writing."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from rlvr_extrap.utils.files import atomic_write_text, write_json

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "commit": commit(),
    }


def commit() -> str:
    """The checkout's short commit; where there is no git repository (a copy of the tree sent to a GPU machine),
    ``$RLVR_EXTRAP_COMMIT``, else "unknown"."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:  # no git installed
        head = ""
    return head or os.environ.get("RLVR_EXTRAP_COMMIT", "unknown")


def write_results(name: str, data: dict[str, Any], markdown: str, out: Path = RESULTS) -> None:
    """``<name>.json`` and ``<name>.md`` under ``out``, each written to a temp name then renamed."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", data)
    atomic_write_text(out / f"{name}.md", markdown)
