"""What a jump will do: the gate that admits modules, and the plan of updates the worker hands the callback."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from transformers.utils import logging

from rlvr_extrap.linalg.lowrank import Delta, LowRank
from rlvr_extrap.runtime.reduction import Reduction
from rlvr_extrap.skill.diagnostics import ModuleDiagnostics

__all__ = ["JumpGate", "JumpPlan", "JumpSkipped", "ReducedUpdates"]

logger = logging.get_logger(__name__)


class JumpSkipped(Exception):
    """A planned jump the gate turned down (not a failure: the reason is logged and training goes on)."""


@dataclass(frozen=True)
class JumpGate:
    """Which modules may jump (rank-1 energy and in-sample R^2 above thresholds), and how far a jump may go."""

    min_energy: float | None = None
    min_r2: float | None = None
    max_update_ratio: float | None = None
    min_skill: float | None = None  # backtest skill a jump's horizon needs (None: jump unverified)

    def passes(self, diag: ModuleDiagnostics) -> bool:
        return (self.min_energy is None or diag.energy >= self.min_energy) and (
            self.min_r2 is None or diag.r2 >= self.min_r2
        )


class ReducedUpdates(Mapping[str, Delta]):
    """A streamed plan's updates: reading one waits until it is final; ``items()`` hands them over as they become
    final (see ``Reduction.completed``), so the edit of a module overlaps the reduction of the next."""

    def __init__(self, plan: JumpPlan) -> None:
        self._plan = plan

    def __getitem__(self, name: str) -> Delta:
        if self._plan.reduction is not None:
            self._plan.reduction.wait(name)
        return self._plan.updates[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._plan.updates))

    def __len__(self) -> int:
        return len(self._plan.updates)

    def items(self) -> Iterator[tuple[str, Delta]]:  # type: ignore[override]
        """(name, final update) pairs in the order they become final, not in plan order."""
        if self._plan.reduction is None:
            yield from self._plan.updates.items()
            return
        for name in self._plan.reduction.completed():
            yield name, self._plan.updates[name]


@dataclass
class JumpPlan:
    """The update each module takes at a jump, ``alpha * (D_hat(target) - D_now)``, kept factored.

    Modules the gate refused have no update; ``diagnostics`` covers every module. A plan asked for with
    ``stream=True`` comes back before its updates are reduced: read them through ``reduced_updates()`` (each waits
    for its own module), and the reduction's figures (``edit_rank``, ``edit_error``, ``reduce_seconds``) after
    ``settled()``.
    """

    step: int
    target_step: int
    updates: dict[str, Delta]
    diagnostics: dict[str, dict[str, float]] = field(default_factory=dict)
    fit_seconds: float = 0.0
    size_ratio: float | None = None  # update norm / distance the segment travelled (None: not checked)
    skill: float | None = None  # backtest skill at this plan's horizon (None: not measured)
    edit_rank: int | None = None  # largest inner dimension of the updates as applied (None: dense updates)
    edit_error: float | None = None  # ||applied - planned|| / ||planned|| over all modules (None: not reduced)
    reduce_seconds: float = 0.0  # bringing the updates to their true (or the truncated) rank
    reduction: Reduction | None = None  # set while a streamed reduction runs on the worker
    reduce_error: str | None = None  # a streamed reduction that failed: the modules left are applied exact

    def reduced_updates(self) -> Mapping[str, Delta]:
        return self.updates if self.reduction is None else ReducedUpdates(self)

    def settled(self) -> JumpPlan:
        """This plan once its streamed reduction (if any) has finished, with its figures."""
        if self.reduction is not None:
            self.reduction.wait()
            self.reduce_seconds = self.reduction.seconds
            self.summarize_reduction()
        return self

    def summarize_reduction(self) -> None:
        """``edit_rank`` and ``edit_error`` of the plan from its modules' reductions (an error only where updates
        were truncated: an exact reduction differs by round-off)."""
        dense = any(not isinstance(u, LowRank) for u in self.updates.values())  # full-parameter: no rank to report
        self.edit_rank = None if dense else max((u.rank for u in self.updates.values()), default=0)
        reduced = [self.diagnostics[n] for n in self.updates if "edit_norm_sq" in self.diagnostics[n]]
        if reduced:
            norm_sq = sum(d["edit_norm_sq"] for d in reduced)
            self.edit_error = (sum(d["edit_error_sq"] for d in reduced) / norm_sq) ** 0.5 if norm_sq > 0 else 0.0

    def record_reduce_error(self, err: Exception) -> None:
        self.reduce_error = self.reduce_error or f"{type(err).__name__}: {err}"
        logger.warning(f"extrapolation: reducing the jump's updates failed ({self.reduce_error}); applied exact")

    @property
    def update_norm(self) -> float:
        return sum(self.diagnostics[n]["update_norm"] ** 2 for n in self.updates) ** 0.5

    def scaled(self, factor: float) -> JumpPlan:
        """The same plan with every update multiplied by ``factor`` (a step-size candidate)."""
        if factor == 1.0:
            return self
        diagnostics = {
            name: {**d, "update_norm": d["update_norm"] * abs(factor)} if name in self.updates else d
            for name, d in self.diagnostics.items()
        }
        updates = {
            name: u.scaled(factor) if isinstance(u, LowRank) else u * factor
            for name, u in self.settled().updates.items()
        }
        ratio = None if self.size_ratio is None else self.size_ratio * abs(factor)
        return replace(self, updates=updates, diagnostics=diagnostics, size_ratio=ratio, reduction=None)
