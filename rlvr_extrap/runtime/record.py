"""What one planned jump did, or why it did not happen: ``ExtrapolationCallback.jumps`` and the state file's history."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, fields
from typing import Any

from rlvr_extrap.linalg.landed import Landed
from rlvr_extrap.runtime.guard import GuardDecision
from rlvr_extrap.runtime.plan import JumpPlan

__all__ = ["JumpFigures", "JumpRecord"]

_MEASURED_LATER = ("landed_fraction", "landed_noise", "offset_truncation", "landed_step")


@dataclass
class JumpFigures:
    """What an applied jump measured: the update, the fit and the edit, and how long the training thread stalled."""

    update_norm: float  # ||update|| over the modules that jumped
    update_ratio: float | None  # update norm / distance the segment travelled (None: not checked)
    fit_seconds: float
    edit_rank: int | None  # largest inner dimension of the updates as applied
    edit_error: float | None  # ||applied - planned|| / ||planned|| (None: not reduced)
    reduce_seconds: float
    reduce_error: str | None  # a streamed reduction that failed: the modules left were applied exact
    wait_seconds: float  # the training thread waiting for the fit
    apply_seconds: float  # adding the updates into the base weights
    modules_jumped: int
    modules_held: int  # modules the gate left where they were
    energy_mean: float
    r2_mean: float
    # Written only when measured (records from before these existed read back byte for byte):
    landed_fraction: float | None = None  # <landed, update> / |update|^2 over the modules: 1 = all of it
    landed_noise: float | None = None  # |landed - fraction * update| / |update|: rounding off the update's direction
    offset_truncation: float | None = None  # offsets' norm dropped by their rank cap, relative (offset path only)
    landed_step: int | None = None  # the step end a plan made beside training landed at (extrap_wait_for_fit=False)

    @classmethod
    def of(
        cls,
        plan: JumpPlan,
        wait_seconds: float,
        apply_seconds: float,
        landed: Landed | None = None,
        landed_step: int | None = None,
    ) -> JumpFigures:
        """The figures of ``plan`` once applied (and settled); ``landed``: what the edit kept, when measured;
        ``landed_step``: where a plan made beside training landed."""
        return cls(
            update_norm=plan.update_norm,
            update_ratio=plan.size_ratio,
            fit_seconds=plan.fit_seconds,
            edit_rank=plan.edit_rank,
            edit_error=plan.edit_error,
            reduce_seconds=plan.reduce_seconds,
            reduce_error=plan.reduce_error,
            wait_seconds=wait_seconds,
            apply_seconds=apply_seconds,
            modules_jumped=len(plan.updates),
            modules_held=len(plan.diagnostics) - len(plan.updates),
            energy_mean=statistics.fmean(d["energy"] for d in plan.diagnostics.values()),
            r2_mean=statistics.fmean(d["r2"] for d in plan.diagnostics.values()),
            landed_fraction=None if landed is None else landed.fraction,
            landed_noise=None if landed is None else landed.noise,
            offset_truncation=None if landed is None or not landed.offset_sq else landed.truncation,
            landed_step=landed_step,
        )


@dataclass
class JumpRecord:
    """One jump the callback planned: applied (``skipped`` is None) or not, and why.

    ``to_dict`` is the JSON form results files and ``extrap_state.safetensors`` hold (a flat dict, ``skipped``
    only when skipped); ``from_dict`` reads it back, from files written by earlier versions too.
    """

    step: int
    horizon: int | str  # steps jumped over; extrap_horizon ('auto') when no plan chose one
    target_step: int | None  # None when no plan chose a horizon
    skipped: str | None = None  # why the jump did not happen; None: it was applied
    planned: bool = False  # the fit made a plan (False: it failed, timed out, or the skill gate refused it)
    skill: float | None = None  # the plan's backtest skill at its horizon (None: not measured)
    guard: GuardDecision | None = None  # the probe's scores, when the guard decided
    figures: JumpFigures | None = None  # set when applied

    @classmethod
    def unplanned(cls, step: int, horizon: int | str, why: str) -> JumpRecord:
        """A jump at ``step`` that got no plan to apply (``horizon``: extrap_horizon), skipped for ``why``."""
        return cls(step, horizon, step + horizon if isinstance(horizon, int) else None, skipped=why)

    @property
    def applied(self) -> bool:
        return self.skipped is None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "horizon": self.horizon, "target_step": self.target_step}
        if self.planned:
            out["skill"] = self.skill
        if self.guard is not None:
            out.update(self.guard.to_metrics())
        if self.figures is not None:
            out.update({k: v for k, v in asdict(self.figures).items() if v is not None or k not in _MEASURED_LATER})
        if self.skipped is not None:
            out["skipped"] = self.skipped
        return out

    def to_metrics(self) -> dict[str, Any]:
        """The record as ``extrap/<field>`` metrics (the trainer's log keeps the numbers)."""
        return {f"extrap/{key}": value for key, value in self.to_dict().items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JumpRecord:
        """The record ``to_dict`` wrote; figures an earlier version did not record are None."""
        figures = None
        if "update_norm" in data:
            figures = JumpFigures(**{f.name: data.get(f.name) for f in fields(JumpFigures)})
        return cls(
            step=data["step"],
            horizon=data["horizon"],
            target_step=data["target_step"],
            skipped=data.get("skipped"),
            planned="skill" in data,
            skill=data.get("skill"),
            guard=GuardDecision.from_metrics(data) if "guard_score_pre" in data else None,
            figures=figures,
        )
