"""The observed weight trajectory of one training segment: step-numbered deltas per module."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from .lowrank import Delta, gram_row

__all__ = ["Clock", "Trajectory"]

Clock = Callable[[int], float]
"""Maps an optimizer step to the time axis the fits use (e.g. the cumulative learning rate)."""


class Trajectory:
    """Per-module global deltas ``D_t = W_t - W0`` at increasing steps, with a cached Gram matrix.

    The first point is the segment's origin (step 0, or the step of the last jump). Each appended
    point adds one row to every module's Gram matrix ``G[i, j] = <D_i, D_j>``, so the cost of the
    fit is paid snapshot by snapshot, not at the jump.

    ``clock`` sets the time axis the extrapolators fit and predict against (``time(step)``); without
    one it is the step number itself.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock
        self.steps: list[int] = []
        self.deltas: dict[str, list[Delta]] = {}
        self._gram: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def modules(self) -> list[str]:
        return list(self.deltas)

    def time(self, step: int) -> float:
        """The fit's time coordinate of ``step``."""
        return float(step) if self.clock is None else float(self.clock(step))

    def times(self) -> list[float]:
        return [self.time(s) for s in self.steps]

    def append(self, step: int, deltas: Mapping[str, Delta]) -> None:
        if self.steps and step <= self.steps[-1]:
            raise ValueError(f"trajectory steps must increase: got step {step} after {self.steps[-1]}")
        if self.steps and set(deltas) != set(self.deltas):
            missing = sorted(set(self.deltas) ^ set(deltas))[:3]
            raise ValueError(f"snapshot at step {step} does not have the same modules as before (e.g. {missing})")
        for name, delta in deltas.items():
            history = self.deltas.setdefault(name, [])
            row = gram_row(delta, history)
            t = len(history)
            gram = torch.zeros(t + 1, t + 1, dtype=torch.float64)
            if t:
                gram[:t, :t] = self._gram[name]
            gram[t, :] = row
            gram[:, t] = row
            self._gram[name] = gram
            history.append(delta)
        self.steps.append(step)

    def prefix(self, n: int) -> Trajectory:
        """The first ``n`` points, sharing the deltas (no copy) and slicing the Gram matrices."""
        if not 1 <= n <= len(self):
            raise ValueError(f"prefix length {n} outside 1..{len(self)}")
        view = Trajectory(self.clock)
        view.steps = self.steps[:n]
        view.deltas = {name: history[:n] for name, history in self.deltas.items()}
        view._gram = {name: gram[:n, :n] for name, gram in self._gram.items()}
        return view

    def gram(self, name: str) -> torch.Tensor:
        """``G[i, j] = <D_i, D_j>`` over this module's points (float64, T x T)."""
        return self._gram[name]

    def last(self) -> dict[str, Delta]:
        return {name: history[-1] for name, history in self.deltas.items()}
