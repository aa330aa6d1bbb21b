"""The observed weight trajectory of one training segment: step-numbered deltas per module."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .lowrank import Delta, gram_row

__all__ = ["Trajectory"]


class Trajectory:
    """Per-module global deltas ``D_t = W_t - W0`` at increasing steps, with a cached Gram matrix.

    The first point is the segment's origin (step 0, or the step of the last jump). Each appended
    point adds one row to every module's Gram matrix ``G[i, j] = <D_i, D_j>``, so the cost of the
    fit is paid snapshot by snapshot, not at the jump.
    """

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.deltas: dict[str, list[Delta]] = {}
        self._gram: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def modules(self) -> list[str]:
        return list(self.deltas)

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

    def gram(self, name: str) -> torch.Tensor:
        """``G[i, j] = <D_i, D_j>`` over this module's points (float64, T x T)."""
        return self._gram[name]

    def last(self) -> dict[str, Delta]:
        return {name: history[-1] for name, history in self.deltas.items()}
