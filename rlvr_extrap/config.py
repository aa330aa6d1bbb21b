"""The ``extrap_*`` settings: a dataclass mixin, the GRPOConfig subclass that carries them, validation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from trl import GRPOConfig

from .extrapolators import EXTRAPOLATORS, Extrapolator

__all__ = [
    "OPTIMIZER_POLICIES",
    "ExtrapGRPOConfig",
    "ExtrapolationArguments",
    "ExtrapolationConfigError",
    "generation_period",
]

OPTIMIZER_POLICIES = ("keep", "reset_momentum", "reset")


class ExtrapolationConfigError(ValueError):
    """A bad ``extrap_*`` setting; the message names the field and the fix."""


@dataclass
class ExtrapolationArguments:
    """Trajectory-extrapolation settings. Every field is also a CLI flag through ``TrlParser``."""

    extrap_method: str | None = field(
        default=None,
        metadata={"help": f"Extrapolation method: one of {sorted(EXTRAPOLATORS)}; None disables the callback."},
    )
    extrap_snapshot_every: int = field(
        default=10, metadata={"help": "Snapshot the LoRA weights every this many optimizer steps."}
    )
    extrap_jump_at: list[int] = field(
        default_factory=list,
        metadata={
            "help": "Optimizer steps after which to jump (several = periodic re-grounding). "
            "Each must be on a generation-buffer boundary and at least extrap_snapshot_every steps "
            "after the previous jump (or the start)."
        },
    )
    extrap_horizon: int = field(
        default=100, metadata={"help": "How many training steps one jump skips: it predicts step t + horizon."}
    )
    extrap_alpha: float = field(
        default=1.0,
        metadata={"help": "Scale of the applied update: W <- W + alpha * (W_predicted - W)."},
    )
    extrap_fit_window: int | None = field(
        default=None,
        metadata={
            "help": "Number of most recent trajectory points the fit uses (the segment's origin counts); "
            "None uses the whole segment."
        },
    )
    extrap_rank: int = field(
        default=1, metadata={"help": "relex only: number of singular directions of the time stack."}
    )
    extrap_min_energy: float | None = field(
        default=None,
        metadata={"help": "Only modules whose time stack has at least this rank-1 energy (0..1) jump; None: all."},
    )
    extrap_min_r2: float | None = field(
        default=None,
        metadata={
            "help": "Only modules whose rank-1 coefficient fits its line with at least this R^2 jump; None: all."
        },
    )
    extrap_max_update_ratio: float | None = field(
        default=20.0,
        metadata={
            "help": "Refuse a jump whose update norm exceeds this multiple of the distance the segment travelled "
            "(||D_now - D_origin||); None: no limit. Updates with NaN/Inf are always refused."
        },
    )
    extrap_guard: bool = field(
        default=True,
        metadata={
            "help": "Probe-guarded jump: score the pre-jump model and each candidate step size (extrap_guard_scales) "
            "with the trainer's reward functions on greedy completions of a few probe prompts; keep the best, or "
            "do not jump when none scores at least the pre-jump score minus extrap_guard_tolerance. Costs about "
            "1% of a run on the embedded toy (benchmarks/results/steps_saved_guard.md). Single process and DDP only."
        },
    )
    extrap_guard_scales: list[float] = field(
        default_factory=lambda: [0.5, 1.0, 1.5, 2.0],
        metadata={"help": "Candidate step sizes the guard tries, as multiples of extrap_alpha's update."},
    )
    extrap_guard_prompts: int = field(
        default=32,
        metadata={
            "help": "Probe prompts the guard scores (from the trainer's eval_dataset if it has one, else sampled "
            "from the train set)."
        },
    )
    extrap_guard_tolerance: float = field(
        default=0.0,
        metadata={"help": "A candidate may score this much (mean reward) below the pre-jump model and still be kept."},
    )
    extrap_fit_timeout: float | None = field(
        default=600.0,
        metadata={
            "help": "Seconds the training thread waits for the fit at a jump step before skipping that jump "
            "(training goes on); None waits for as long as it takes."
        },
    )
    extrap_diagnostics: bool = field(
        default=True,
        metadata={"help": "Write per-module diagnostics (JSON and PNG) to <output_dir>/extrap/step-<N>/ at each jump."},
    )
    extrap_optimizer_policy: str = field(
        default="keep",
        metadata={
            "help": "AdamW state after a jump: 'keep', 'reset_momentum' (zero exp_avg) or 'reset' "
            "(zero both moments and the step count)."
        },
    )

    @classmethod
    def from_object(cls, obj: Any, **overrides: Any) -> ExtrapolationArguments:
        """Read the ``extrap_*`` attributes of ``obj`` (e.g. a GRPOConfig), then apply ``overrides``.

        ``overrides`` use the names without the prefix (``method="relex"``), as the callback's
        constructor takes them.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(f"extrap_{k}" for k in overrides if f"extrap_{k}" not in names)
        if unknown:
            valid = ", ".join(sorted(n.removeprefix("extrap_") for n in names))
            raise ExtrapolationConfigError(f"unknown extrapolation setting(s) {unknown}; valid names: {valid}")
        values = {n: getattr(obj, n) for n in names if hasattr(obj, n)}
        values.update({f"extrap_{k}": v for k, v in overrides.items()})
        return cls(**values)

    @property
    def enabled(self) -> bool:
        return self.extrap_method is not None

    def validate_extrapolation(self) -> None:
        """Check every setting on its own; raises ExtrapolationConfigError naming the field and the fix."""
        if not self.enabled:
            return
        if self.extrap_method not in EXTRAPOLATORS:
            raise ExtrapolationConfigError(
                f"extrap_method={self.extrap_method!r} is not a known method; choose one of "
                f"{sorted(EXTRAPOLATORS)}, or None to disable extrapolation"
            )
        if self.extrap_snapshot_every < 1:
            raise ExtrapolationConfigError(
                f"extrap_snapshot_every={self.extrap_snapshot_every}: must be a positive number of steps"
            )
        if self.extrap_horizon < 1:
            raise ExtrapolationConfigError(
                f"extrap_horizon={self.extrap_horizon}: a jump must skip at least 1 step; use a positive value"
            )
        if not (math.isfinite(self.extrap_alpha) and self.extrap_alpha > 0):
            raise ExtrapolationConfigError(f"extrap_alpha={self.extrap_alpha}: must be a finite number > 0")
        if self.extrap_optimizer_policy not in OPTIMIZER_POLICIES:
            raise ExtrapolationConfigError(
                f"extrap_optimizer_policy={self.extrap_optimizer_policy!r}: choose one of {list(OPTIMIZER_POLICIES)}"
            )
        if self.extrap_min_energy is not None and not 0.0 <= self.extrap_min_energy <= 1.0:
            raise ExtrapolationConfigError(
                f"extrap_min_energy={self.extrap_min_energy}: an energy fraction lies in [0, 1]; use e.g. 0.8, or None"
            )
        if self.extrap_min_r2 is not None and not self.extrap_min_r2 <= 1.0:
            raise ExtrapolationConfigError(
                f"extrap_min_r2={self.extrap_min_r2}: R^2 is at most 1; use e.g. 0.9, or None"
            )
        if self.extrap_max_update_ratio is not None and not self.extrap_max_update_ratio > 0:
            raise ExtrapolationConfigError(
                f"extrap_max_update_ratio={self.extrap_max_update_ratio}: must be > 0 (e.g. 20), or None for no limit"
            )
        scales = list(self.extrap_guard_scales)
        if not scales or not all(isinstance(c, (int, float)) and math.isfinite(c) and c > 0 for c in scales):
            raise ExtrapolationConfigError(
                f"extrap_guard_scales={scales}: needs at least one finite step size > 0 (e.g. 0.5 1.0 1.5 2.0)"
            )
        if self.extrap_guard_prompts < 1:
            raise ExtrapolationConfigError(
                f"extrap_guard_prompts={self.extrap_guard_prompts}: the guard needs at least one probe prompt (e.g. 32)"
            )
        if not (math.isfinite(self.extrap_guard_tolerance) and self.extrap_guard_tolerance >= 0):
            raise ExtrapolationConfigError(
                f"extrap_guard_tolerance={self.extrap_guard_tolerance}: must be a finite number >= 0 (reward units)"
            )
        if self.extrap_fit_timeout is not None and not self.extrap_fit_timeout > 0:
            raise ExtrapolationConfigError(
                f"extrap_fit_timeout={self.extrap_fit_timeout}: must be a number of seconds > 0, or None to wait"
            )
        self._validate_jump_steps()
        try:
            self.build_extrapolator()
        except ValueError as err:
            raise ExtrapolationConfigError(str(err)) from None

    def _validate_jump_steps(self) -> None:
        jumps = list(self.extrap_jump_at)
        if any(not isinstance(j, int) or j < 1 for j in jumps) or jumps != sorted(set(jumps)):
            raise ExtrapolationConfigError(
                f"extrap_jump_at={jumps}: must be positive step numbers in increasing order, without repeats"
            )
        start = 0
        for jump in jumps:
            if jump - start < self.extrap_snapshot_every:
                raise ExtrapolationConfigError(
                    f"extrap_jump_at={jumps}: the jump at step {jump} comes before two snapshots exist "
                    f"(segment starts at step {start}, snapshots every {self.extrap_snapshot_every} steps); "
                    f"jump at step >= {start + self.extrap_snapshot_every} or lower extrap_snapshot_every"
                )
            start = jump

    def build_extrapolator(self) -> Extrapolator:
        """The configured extrapolator, its config filled from the matching ``extrap_*`` fields."""
        cls = EXTRAPOLATORS[self.extrap_method]
        names = [f.name for f in fields(cls.config_class) if hasattr(self, f"extrap_{f.name}")]
        return cls(cls.config_class(**{name: getattr(self, f"extrap_{name}") for name in names}))

    def validate_for_training(self, args: Any) -> None:
        """Checks that need the trainer's arguments: every jump on a generation-buffer boundary."""
        period = generation_period(args)
        bad = [j for j in self.extrap_jump_at if j % period]
        if bad:
            raise ExtrapolationConfigError(
                f"extrap_jump_at={list(self.extrap_jump_at)}: step(s) {bad} are not on a generation-buffer "
                f"boundary. GRPO generates completions every {period} optimizer step(s) (steps_per_generation="
                f"{getattr(args, 'steps_per_generation', 1)}, num_iterations={getattr(args, 'num_iterations', 1)}, "
                f"gradient_accumulation_steps={args.gradient_accumulation_steps}), and a jump inside a buffer "
                f"would mix pre- and post-jump log-probs; use multiples of {period}"
            )


def generation_period(args: Any) -> int:
    """Optimizer steps between two GRPO generations: a jump must land on a multiple of this."""
    micro = (getattr(args, "steps_per_generation", None) or 1) * (getattr(args, "num_iterations", None) or 1)
    grad_accum = args.gradient_accumulation_steps
    return micro // math.gcd(micro, grad_accum)


@dataclass
class ExtrapGRPOConfig(ExtrapolationArguments, GRPOConfig):
    """``GRPOConfig`` with the ``extrap_*`` fields; validated on construction."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_extrapolation()
