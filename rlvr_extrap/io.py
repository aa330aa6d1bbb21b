"""Atomic file writes: every result file is written under a temporary name, then renamed into place."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_directory",
    "atomic_path",
    "atomic_write_text",
    "cache_root",
    "check_output_dir",
    "make_output_dir",
    "save_figure",
    "write_json",
]


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary name beside ``path`` to write to: renamed onto ``path`` on success, removed on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cache_root() -> Path:
    """Return the package cache: `$RLVR_EXTRAP_CACHE`, else `~/.cache/rlvr_extrap`."""
    cache = os.environ.get("RLVR_EXTRAP_CACHE")
    return Path(cache) if cache else Path.home() / ".cache" / "rlvr_extrap"


@contextmanager
def atomic_directory(path: str | Path, is_complete: Callable[[Path], bool]) -> Iterator[Path]:
    """A temporary directory beside ``path`` to fill: renamed onto ``path`` on success, removed in any case.

    Safe when several processes build the same ``path``: the first rename wins and a later one, finding
    ``path`` complete, keeps it. An incomplete ``path`` (an interrupted build) is moved aside and replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists() and not is_complete(path):
            trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.stale-", dir=path.parent))
            with contextlib.suppress(FileNotFoundError):  # another process moved it first
                os.replace(path, trash / path.name)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, path)
        except OSError:
            if not is_complete(path):  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON, atomically; NaN and infinities become null."""
    return atomic_write_text(path, json.dumps(_finite(data), indent=2) + "\n")


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def check_output_dir(out: Path) -> None:
    """An ``--out`` that exists must be a directory (checked before any work)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a directory (it is created if missing)")


def make_output_dir(directory: Path, out: Path) -> None:
    """``mkdir -p directory``; a failure (a file in the way, no permission) is a one-line error naming ``--out``."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"--out {out}: cannot create {directory} ({err.strerror or err}); choose a path in a writable directory"
        ) from None
