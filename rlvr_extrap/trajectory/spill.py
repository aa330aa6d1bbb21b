"""Snapshots past a memory budget (``extrap_snapshot_memory``) move to memory-mapped safetensors files.

The trajectory keeps every point's factors (or, in full-parameter runs, dense deltas) (relex fits its direction on all of them, and each new Gram row needs
its inner products with all of them), so the budget does not drop snapshots: the oldest ones are written to disk
and their tensors re-pointed, in place, at a private memory map of that file (``safe_open``). Same values, same
objects (every ``Combination`` that references them keeps working); the pages are read from disk when a Gram row or a
jump needs them and the kernel can drop them again under memory pressure, so they no longer count as the process's
own memory.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from rlvr_extrap.linalg.lowrank import Delta, LowRank
from rlvr_extrap.utils.safetensors_io import read_tensors, write_streaming

__all__ = ["SnapshotSpill", "parse_memory"]

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SPILL_FIX = "the disk under output_dir failed or filled up: free space there, or raise extrap_snapshot_memory"


def parse_memory(value: int | float | str | None) -> int | None:
    """Bytes from ``4294967296``, ``"4GiB"``, ``"500MB"`` or ``"1.5e9"``; None stays None. Raises ValueError."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9.]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*", value.lower())
        if match is None or match.group(2) not in _UNITS:
            raise ValueError(f"{value!r} is not a size (use bytes, or a number with B, KB, MB, GB, KiB, MiB, GiB)")
        number, unit = float(match.group(1)), match.group(2)
    size = number * _UNITS[unit]
    if not math.isfinite(size) or size <= 0:
        raise ValueError(f"{value!r}: a memory budget must be a positive size")
    return int(size)


class SnapshotSpill:
    """Keeps the latest snapshots' factors in memory up to ``budget`` bytes; older ones are memory-mapped from disk.

    A caller that computes a snapshot itself (the full-parameter worker) makes room for it first (``make_room``), so
    the snapshots held never exceed the budget; ``add`` alone spills once the new snapshot is counted.
    """

    def __init__(self, directory: str | Path, budget: int) -> None:
        self.directory = Path(directory)
        self.budget = budget
        self._resident: list[tuple[str, dict[str, Delta]]] = []  # oldest first
        self._files: list[Path] = []
        self.spilled = 0  # snapshots written so far

    def make_room(self, nbytes: int) -> None:
        """Spill the oldest snapshots until one of ``nbytes`` more fits in the budget (before it is computed)."""
        while self._resident and self.resident_bytes() + nbytes > self.budget:
            self._write(*self._resident.pop(0))

    def add(self, tag: str, factors: dict[str, Delta]) -> None:
        """Count a new snapshot's factors (``tag`` names its file), then spill the oldest while over the budget."""
        self._resident.append((tag, factors))
        while len(self._resident) > 1 and self.resident_bytes() > self.budget:
            self._write(*self._resident.pop(0))

    def resident_bytes(self) -> int:
        return sum(delta_nbytes(f) for _, factors in self._resident for f in factors.values())

    def _write(self, tag: str, factors: dict[str, Delta]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{tag}-{self.spilled}.safetensors"
        tensors = {}
        for name, f in factors.items():
            if isinstance(f, LowRank):
                tensors[f"{name}.left"], tensors[f"{name}.right"] = f.left, f.right
            else:
                tensors[name] = f
        specs = [(key, t.dtype, tuple(t.shape)) for key, t in tensors.items()]
        write_streaming(path, specs, tensors.values())  # one tensor at a time: no copy of the whole snapshot
        mapped, _ = read_tensors(path, _SPILL_FIX)
        for name, f in factors.items():  # same values: re-point the frozen factors (dense tensors' storage), keeping
            if isinstance(f, LowRank):  # the objects
                object.__setattr__(f, "left", mapped[f"{name}.left"])
                object.__setattr__(f, "right", mapped[f"{name}.right"])
            else:
                f.set_(mapped[name])
        self._files.append(path)
        self.spilled += 1

    def clear(self) -> None:
        """Forget every snapshot (a new segment); their files are unlinked (maps still open stay readable)."""
        for path in self._files:
            path.unlink(missing_ok=True)
        self._files.clear()
        self._resident.clear()

    def close(self) -> None:
        """``clear``, then remove the directory when nothing else is in it."""
        self.clear()
        if self.directory.is_dir() and not any(self.directory.iterdir()):
            self.directory.rmdir()


def delta_nbytes(f: Delta) -> int:
    """Bytes a delta holds (both factors of a LowRank)."""
    if not isinstance(f, LowRank):
        return f.numel() * f.element_size()
    return f.left.numel() * f.left.element_size() + f.right.numel() * f.right.element_size()
