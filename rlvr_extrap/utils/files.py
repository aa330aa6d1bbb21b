"""Atomic file writes: every result file is written under a temporary name, then renamed into place."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_text", "check_output_dir", "make_output_dir", "write_json"]


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


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON, atomically; NaN and infinities become null."""
    return atomic_write_text(path, json.dumps(_finite(data), indent=2) + "\n")


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
