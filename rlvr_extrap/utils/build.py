"""Cache builds: one builder process at a time (a file lock), in a fresh child process, published only when complete."""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["BuildError", "atomic_directory", "build_in_child", "build_once", "cache_root"]


def cache_root() -> Path:
    """Return the package cache: `$RLVR_EXTRAP_CACHE`, else `~/.cache/rlvr_extrap`."""
    cache = os.environ.get("RLVR_EXTRAP_CACHE")
    return Path(cache) if cache else Path.home() / ".cache" / "rlvr_extrap"


class BuildError(RuntimeError):
    """A cache build that failed or wrote an incomplete folder; nothing was published. The message names the fix."""


@contextmanager
def atomic_directory(path: str | Path, is_complete: Callable[[Path], bool]) -> Iterator[Path]:
    """A temporary directory beside ``path`` to fill: renamed onto ``path`` once complete, removed in any case.

    The filled directory is published only if ``is_complete`` accepts it (else `BuildError`, and ``path`` is
    left as it was). Safe when several processes build the same ``path``: the first rename wins and a later
    one, finding ``path`` complete, keeps it. An incomplete ``path`` (an interrupted build) is moved aside
    and replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if not is_complete(tmp):
            written = sorted(p.name for p in tmp.iterdir())
            raise BuildError(
                f"{path}: the build wrote an incomplete folder ({', '.join(written) or 'no files'}); "
                "nothing was published; run again"
            )
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


def build_once(path: str | Path, is_complete: Callable[[Path], bool], build: Callable[[Path], None]) -> Path:
    """Return ``path`` complete, calling ``build(tmp)`` to fill it only if no process has.

    One builder at a time: the build runs under an exclusive lock on ``<path>.lock`` beside ``path`` (a
    ``flock``, released by the kernel if the holder dies), and a process that waited for the lock finds
    ``path`` complete and returns it. The build fills a temporary folder that `atomic_directory` publishes
    only when complete, so a reader never sees a half-written ``path``; the temporary folders of builders
    that were killed (only a lock holder builds, so any found under the lock are theirs) are removed.
    """
    path = Path(path)
    if is_complete(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_name(f"{path.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not is_complete(path):
                for leftover in path.parent.glob(f".{path.name}.tmp-*"):  # a builder killed before it cleaned up
                    shutil.rmtree(leftover, ignore_errors=True)
                with atomic_directory(path, is_complete) as tmp:
                    build(tmp)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


# What makes a process a rank of a torchrun/accelerate job; a builder process must be none.
_RANK_ENV = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)
_CHILD = (
    "import importlib, json, sys; module, name = sys.argv[1].rsplit(':', 1); "
    "getattr(importlib.import_module(module), name)(sys.argv[2], **json.loads(sys.argv[3]))"
)


def build_in_child(function: str, directory: Path, what: str, *, echo: bool = False, **kwargs: Any) -> None:
    """Run ``function`` (``"module:name"``) as ``name(str(directory), **kwargs)`` in a fresh Python process.

    The builder writes the files itself and is no rank of a process group: transformers' ``save_pretrained``
    writes nothing (no config, no weights) on a rank other than 0 of an initialised group, so a rank-1
    process could not build a model folder in-process. ``kwargs`` must be JSON; ``echo`` copies the
    builder's stderr (its progress bars) to ours as it comes. A failure raises `BuildError` naming ``what``
    (the model and its folder) and the builder's last error line.
    """
    env = {k: v for k, v in os.environ.items() if k not in _RANK_ENV and not k.startswith("TORCHELASTIC_")}
    package_root = str(Path(__file__).resolve().parents[2])  # the child imports this very copy of the package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-c", _CHILD, function, str(directory), json.dumps(kwargs)]
    stderr, decoder = bytearray(), codecs.getincrementaldecoder("utf-8")(errors="replace")
    with subprocess.Popen(
        command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as child:
        assert child.stderr is not None
        while chunk := child.stderr.read1(65536):
            stderr += chunk
            del stderr[:-65536]  # the tail is all an error report needs
            if echo:
                sys.stderr.write(decoder.decode(chunk))
                sys.stderr.flush()
    if child.returncode < 0:
        cause = f"killed by signal {-child.returncode}"
    else:
        lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
        cause = lines[-1] if lines else f"exit status {child.returncode}"
    if child.returncode != 0:
        raise BuildError(f"{what}: the build failed ({cause}); nothing was published; run again")
