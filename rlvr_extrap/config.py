"""The ``extrap_*`` settings: a dataclass mixin, the GRPOConfig subclass that carries them, validation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from trl import GRPOConfig

from rlvr_extrap.extrapolators import EXTRAPOLATORS, Extrapolator
from rlvr_extrap.presets import PRESETS, Preset
from rlvr_extrap.trajectory.spill import parse_memory

__all__ = [
    "OPTIMIZER_POLICIES",
    "ExtrapGRPOConfig",
    "ExtrapolationArguments",
    "ExtrapolationConfigError",
    "generation_period",
]

OPTIMIZER_POLICIES = ("keep", "reset_momentum", "reset")
TIME_AXES = ("lr", "steps")
JUMP_INTO = ("auto", "base", "offset")
LABEL_SOURCES = ("reward", "probe")
SNAPSHOT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
AUTO = "auto"


class ExtrapolationConfigError(ValueError):
    """A bad ``extrap_*`` setting; the message names the field and the fix."""


@dataclass
class ExtrapolationArguments:
    """Trajectory-extrapolation settings. Every field is also a CLI flag through ``TrlParser``.

    Groups, in the order docs/options.md shows the fields with their help (``python docs/make_options.py`` writes
    the page from this list and the fields; the grouping lives here because HfArgumentParser hands every
    ``field(metadata=...)`` key to argparse):

    > What to extrapolate and when: extrap_preset, extrap_method, extrap_jump_at, extrap_horizon,
      extrap_snapshot_every, extrap_alpha, extrap_full_modules
    > How the trajectory is fitted: extrap_fit_window, extrap_time_axis, extrap_rank, extrap_through_origin,
      extrap_keep_residual, extrap_coast
    > Labels per snapshot (alpharl): extrap_label_source, extrap_target_score, extrap_label_reach, extrap_add_to_last
    > Gate: which jumps are refused: extrap_min_skill, extrap_skill_origins, extrap_min_energy, extrap_min_r2,
      extrap_max_update_ratio
    > Guard: probing a jump with rewards: extrap_guard, extrap_guard_scales, extrap_guard_prompts,
      extrap_guard_tolerance
    > Memory and speed: extrap_snapshot_dtype, extrap_snapshot_memory, extrap_edit_rank, extrap_worker_threads,
      extrap_lend_threads, extrap_fit_timeout, extrap_wait_for_fit
    > After a jump: extrap_optimizer_policy, extrap_diagnostics, extrap_jump_into, extrap_offset_rank

    Most users set: extrap_method, extrap_jump_at, extrap_horizon, extrap_snapshot_every, extrap_alpha,
    extrap_keep_residual, extrap_min_skill, extrap_guard
    """

    extrap_preset: str | None = field(
        default=None,
        metadata={
            "help": f"Run a method as its reference's code runs it: one of {sorted(PRESETS)}. It sets every "
            "choice that code fixes (method, fit, time axis, gate, guard and scale off, the optimizer after a jump; "
            "next: NextConfig.reference()) and refuses a field set otherwise; the reference's parameters stay "
            "yours: the jump steps and extrap_horizon, and for rl-extra m = extrap_snapshot_every, jumping every m "
            "steps up to max_steps when extrap_jump_at is empty; alpharl needs extrap_target_score. "
            "docs/methods.md lists each. None: no preset."
        },
    )
    extrap_method: str | None = field(
        default=None,
        metadata={
            "help": f"Extrapolation method: one of {sorted(EXTRAPOLATORS)}; None disables the callback. Those that "
            f"read AdamW's state ({sorted(n for n, c in EXTRAPOLATORS.items() if c.needs_optimizer_state)}) are "
            "refused under DeepSpeed and FSDP; those that regress on a score per snapshot "
            f"({sorted(n for n, c in EXTRAPOLATORS.items() if c.needs_labels)}) read it from extrap_label_source."
        },
    )
    extrap_snapshot_every: int = field(
        default=10,
        metadata={
            "help": "Snapshot the LoRA weights every this many optimizer steps (at least 1). With extrap_jump_at "
            "'auto' it must be a multiple of the generation period (optimizer steps between GRPO generations)."
        },
    )
    extrap_snapshot_dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype the snapshots are kept in: 'float32', or 'bfloat16' / 'float16' (the training dtype) "
            "for half the memory; inner products (float64) and the fit are computed at full precision either way."
        },
    )
    extrap_snapshot_memory: int | str | None = field(
        default=None,
        metadata={
            "help": "Memory budget for the kept snapshots' factors, in bytes or as a size such as '4GiB' or "
            "'500MB': past it the oldest snapshots are written to <output_dir>/extrap/spill/ and memory-mapped back "
            "(same values, read from disk when needed). None: all in memory."
        },
    )
    extrap_edit_rank: int | None = field(
        default=None,
        metadata={
            "help": "Apply each module's jump update truncated to its best rank-N part, N >= 1 (the edit of the base "
            "weights costs in proportion to the rank); the relative error is logged as extrap/edit_error. None: "
            "the exact update, at its true rank."
        },
    )
    extrap_worker_threads: int = field(
        default=1,
        metadata={
            "help": "torch threads of the background worker (fits, backtests), at least 1. Keep 1 when training "
            "runs on the CPU: a worker with its own OpenMP team puts more OpenMP threads in the process than there "
            "are cores, and libgomp then stops spin-waiting for the training thread's team, which slows every "
            "step. Raise it where training runs on a GPU and CPU cores are free, to shorten the fit a jump waits for."
        },
    )
    extrap_lend_threads: bool = field(
        default=True,
        metadata={
            "help": "At a jump the training thread waits for the plan: True runs the jump step's snapshot and plan on "
            "the worker's threads plus the training thread's, in a thread that ends with them: at most the "
            "process's share of the cores that the 1-minute load average shows other jobs leave free (a lent team "
            "whose threads the OS deschedules waits at every barrier: the wait then grows instead). False: the "
            "worker's own threads only (docs/results.md, 'What it costs')."
        },
    )
    # typed for the CLI (TrlParser reads these as strings); validation turns them into ints or "auto"
    extrap_jump_at: list[str] | str = field(
        default_factory=list,
        metadata={
            "help": "Optimizer steps after which to jump (several = periodic re-grounding). "
            "Each must be on a generation-buffer boundary and at least extrap_snapshot_every steps "
            "after the previous jump (or the start). 'auto': at any snapshot step where the forecast-skill "
            "backtest clears extrap_min_skill, at least a fit window (extrap_fit_window snapshots, at least 3) "
            "after the previous jump. Empty: snapshot and log the forecast skill, never jump."
        },
    )
    extrap_horizon: int | str | None = field(
        default=100,
        metadata={
            "help": "How many training steps one jump skips (at least 1): it predicts step t + horizon. 'auto': "
            "the longest horizon whose backtest skill clears extrap_min_skill (0 when unset): never beyond what the "
            "run's own history verifies."
        },
    )
    extrap_alpha: float = field(
        default=1.0,
        metadata={"help": "Scale of the applied update, finite and > 0: W <- W + alpha * (W_predicted - W)."},
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
    extrap_through_origin: bool = field(
        default=False,
        metadata={
            "help": "relex only: fit the coefficient line through the segment origin (the base) too; False is "
            "the paper's fit over the observed snapshots."
        },
    )
    extrap_coast: bool = field(
        default=True,
        metadata={
            "help": "optimizer only: let AdamW's momentum fade over the horizon (beta1^k per step, at most "
            "beta1 / (1 - beta1) steps in all) instead of continuing the current update unchanged."
        },
    )
    extrap_keep_residual: bool = field(
        default=False,
        metadata={
            "help": "relex only: continue from the current weights along the fitted direction instead of "
            "rebuilding from the base (which drops the part of the weights off that direction)."
        },
    )
    extrap_label_source: str = field(
        default="reward",
        metadata={
            "help": "alpharl only: the score each snapshot is labelled with. 'reward': the mean of the training "
            "reward the trainer logged since the previous snapshot (the log of a snapshot's own step comes after "
            "it, so counts toward the next one; after a jump, only logs from later steps); a snapshot with no "
            "such log gets no label. 'probe': the mean reward of greedy completions of the guard's probe prompts "
            "(extrap_guard_prompts) at the snapshot itself, generated at every snapshot (one process or DDP)."
        },
    )
    extrap_target_score: float | None = field(
        default=None,
        metadata={
            "help": "alpharl only: the score the jump predicts the weights at; None: the labels' own linear trend "
            "at the jump's target step."
        },
    )
    extrap_label_reach: float = field(
        default=1.0,
        metadata={
            "help": "alpharl only: how far (>= 0, in units of the labels' range) the target score may lie outside "
            "the fitted labels; a target further out skips the jump."
        },
    )
    extrap_add_to_last: bool = field(
        default=False,
        metadata={
            "help": "alpharl only: add the predicted rank-1 part onto the last snapshot's whole delta (the "
            "reference's model build) instead of replacing that delta's own rank-1 part."
        },
    )
    extrap_time_axis: str = field(
        default="lr",
        metadata={
            "help": "Time axis of the fits: 'lr' (cumulative learning rate, read from the trainer's schedule; "
            "a decaying schedule moves the weights less per step) or 'steps'. With a constant rate they agree."
        },
    )
    extrap_min_skill: float | None = field(
        default=0.2,
        metadata={
            "help": "Skip a planned jump whose forecast-skill backtest at its horizon is below this (at most 1: "
            "1 perfect, 0 no better than not moving, below 0 worse), or whose horizon is longer than the history "
            "can backtest; None: jump without checking. Only methods with a cheap backtest "
            f"({sorted(n for n, c in EXTRAPOLATORS.items() if c.can_backtest)}) can be gated; with the others set None."
        },
    )
    extrap_skill_origins: int = field(
        default=3,
        metadata={
            "help": "Latest snapshots the forecast-skill backtest scores, at least 1 (its errors pooled per horizon)."
        },
    )
    extrap_min_energy: float | None = field(
        default=None,
        metadata={"help": "Only modules whose time stack has at least this rank-1 energy (0..1) jump; None: all."},
    )
    extrap_min_r2: float | None = field(
        default=None,
        metadata={
            "help": "Only modules whose rank-1 coefficient fits its line with at least this R^2 (at most 1) jump; "
            "None: all."
        },
    )
    extrap_max_update_ratio: float | None = field(
        default=20.0,
        metadata={
            "help": "Refuse a jump whose update norm exceeds this multiple (> 0) of the distance the segment travelled "
            "(||D_now - D_origin||); None: no limit. Updates with NaN/Inf are always refused."
        },
    )
    extrap_guard: bool = field(
        default=True,
        metadata={
            "help": "Probe-guarded jump: score the pre-jump model and each candidate step size (extrap_guard_scales) "
            "with the trainer's reward functions on greedy completions of a few probe prompts; keep the best, or "
            "do not jump when none scores at least the pre-jump score minus extrap_guard_tolerance. Single process "
            "and DDP only: turned off, with a warning, under DeepSpeed and FSDP."
        },
    )
    extrap_guard_scales: list[float] = field(
        default_factory=lambda: [0.5, 1.0, 1.5, 2.0],
        metadata={
            "help": "Candidate step sizes the guard tries, as multiples of extrap_alpha's update: at least one, each "
            "finite and > 0."
        },
    )
    extrap_guard_prompts: int = field(
        default=32,
        metadata={
            "help": "Probe prompts the guard scores, at least 1 (from the trainer's eval_dataset if it has one, "
            "else sampled from the train set)."
        },
    )
    extrap_guard_tolerance: float = field(
        default=0.0,
        metadata={
            "help": "A candidate may score this much (mean reward, finite and >= 0) below the pre-jump model and still "
            "be kept."
        },
    )
    extrap_fit_timeout: float | None = field(
        default=600.0,
        metadata={
            "help": "Seconds (> 0) the training thread waits for the fit at a jump step before skipping that jump "
            "(training goes on); None waits for as long as it takes."
        },
    )
    extrap_wait_for_fit: bool = field(
        default=True,
        metadata={
            "help": "True: training waits at a jump step until the fit's plan is ready (the stall, logged as "
            "extrap/wait_seconds). False: training goes on while the worker fits, and the jump lands at the first "
            "step end after the plan is ready (extrap/landed_step), at the latest before the next snapshot, "
            "checkpoint or the last step (waiting there at most extrap_fit_timeout): the planned update is added to "
            "the weights of that later step, so the steps trained meanwhile stay on top of it. For large models "
            "on few cores, where the fit takes longer than a step."
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
            "(zero both moments and the step count). Only 'keep' under DeepSpeed and FSDP."
        },
    )

    extrap_jump_into: str = field(
        default="auto",
        metadata={
            "help": "Where a jump lands: 'base' adds it into the frozen base weights, in their dtype (a bfloat16 "
            "weight keeps 8 bits: most of a small update is rounded away); 'offset' holds the jumps as a frozen "
            "float32 low-rank offset beside the LoRA path (the layer computes W_base x + s B A x + offset x; a small "
            "matmul per forward pass; merges and the vLLM sync include it); 'auto': 'offset' when a base weight is "
            "not float32 (bf16, fp16, a bitsandbytes 8-/4-bit QLoRA base), else 'base' (a float32 base keeps the "
            "update to round-off). What landed is logged as "
            "extrap/landed_fraction and extrap/landed_noise."
        },
    )
    extrap_offset_rank: int | None = field(
        default=None,
        metadata={
            "help": "Largest rank of a module's jump offset (extrap_jump_into 'offset'), >= 1: after each jump the "
            "offset is compacted and cut to its best rank-N part; the dropped relative norm is logged as "
            "extrap/offset_truncation. None: 4 x the module's LoRA rank."
        },
    )

    extrap_full_modules: str = field(
        default="*.layers.*",
        metadata={
            "help": "Full-parameter runs (a model without a LoRA adapter): comma-separated globs over module names; "
            "the trainable 2-D weights of the modules they match are snapshotted and jumped. The default takes the "
            "decoder layers' linear weights; add e.g. '*embed_tokens,lm_head' for the embeddings (a tied pair is "
            "one weight). Ignored in LoRA runs."
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

    @property
    def probe_labels(self) -> bool:
        """Whether every snapshot is labelled with the probe's score (every process scores its share)."""
        return self.enabled and self.extrap_label_source == "probe" and self.build_extrapolator().needs_labels

    @property
    def auto_jumps(self) -> bool:
        return self.extrap_jump_at == AUTO

    @property
    def jump_steps(self) -> list[int]:
        """The fixed jump steps (none when jumps are 'auto')."""
        return [] if self.auto_jumps else list(self.extrap_jump_at)

    def min_jump_gap(self) -> int:
        """Steps between two 'auto' jumps (and from the start): a fit window of snapshots, at least 3."""
        return self.extrap_snapshot_every * max(self.extrap_fit_window or 0, 3)

    def validate_extrapolation(self) -> None:
        """Check every setting on its own; raises ExtrapolationConfigError naming the field and the fix."""
        self._apply_preset()
        if not self.enabled:
            return
        self._validate_what_and_when()
        self._validate_memory_and_speed()
        self._validate_gate()
        self._validate_guard()
        self._validate_after_jump()
        self._validate_jump_steps()
        try:
            self.build_extrapolator()
        except ValueError as err:
            raise ExtrapolationConfigError(str(err)) from None

    @property
    def preset(self) -> Preset | None:
        """The ``extrap_preset`` in force (after validation), or None."""
        return PRESETS.get(self.extrap_preset) if self.extrap_preset is not None else None

    def _apply_preset(self) -> None:
        """Set the fields the preset fixes; refuse one set to something else (a value other than its default)."""
        if self.extrap_preset is None:
            return
        if self.extrap_preset not in PRESETS:
            raise ExtrapolationConfigError(
                f"extrap_preset={self.extrap_preset!r} is not a known preset; choose one of {sorted(PRESETS)}, or None"
            )
        preset = PRESETS[self.extrap_preset]
        defaults = {f.name: f.default for f in fields(ExtrapolationArguments)}
        for name, fixed in preset.fixed.items():
            value = getattr(self, name)
            if value != fixed and value != defaults[name]:
                raise ExtrapolationConfigError(
                    f"extrap_preset={self.extrap_preset!r} fixes {name}={fixed!r} (as {preset.reference} runs it), "
                    f"but {name}={value!r} is set; leave {name} unset, or drop extrap_preset and set the fields "
                    "yourself (docs/methods.md lists what each preset sets)"
                )
            setattr(self, name, fixed)
        for name, what in (preset.required or {}).items():
            if getattr(self, name) is None:
                raise ExtrapolationConfigError(
                    f"extrap_preset={self.extrap_preset!r} needs {name} ({what}, as {preset.reference} takes it); "
                    f"set {name}, or drop extrap_preset"
                )
        for name in ("extrap_jump_at", "extrap_horizon"):
            value = getattr(self, name)
            if [str(v).strip().lower() for v in (value if isinstance(value, list) else [value])] == [AUTO]:
                raise ExtrapolationConfigError(
                    f"extrap_preset={self.extrap_preset!r} jumps on a fixed schedule, as {preset.reference} does, but "
                    f"{name}={value!r} asks the backtest; give step numbers, or drop extrap_preset"
                )

    def _validate_what_and_when(self) -> None:
        if self.extrap_method not in EXTRAPOLATORS:
            raise ExtrapolationConfigError(
                f"extrap_method={self.extrap_method!r} is not a known method; choose one of "
                f"{sorted(EXTRAPOLATORS)}, or None to disable extrapolation"
            )
        if self.extrap_label_source not in LABEL_SOURCES:
            raise ExtrapolationConfigError(
                f"extrap_label_source={self.extrap_label_source!r}: choose one of {list(LABEL_SOURCES)}"
            )
        if self.extrap_snapshot_every < 1:
            raise ExtrapolationConfigError(
                f"extrap_snapshot_every={self.extrap_snapshot_every}: must be a positive number of steps"
            )
        self._normalise_horizon_and_jumps()
        if self.extrap_horizon != AUTO and self.extrap_horizon < 1:
            raise ExtrapolationConfigError(
                f"extrap_horizon={self.extrap_horizon}: a jump must skip at least 1 step; use a positive value"
            )
        if self.extrap_time_axis not in TIME_AXES:
            raise ExtrapolationConfigError(
                f"extrap_time_axis={self.extrap_time_axis!r}: choose one of {list(TIME_AXES)}"
            )

    def _validate_memory_and_speed(self) -> None:
        if self.extrap_snapshot_dtype not in SNAPSHOT_DTYPES:
            raise ExtrapolationConfigError(
                f"extrap_snapshot_dtype={self.extrap_snapshot_dtype!r}: choose one of {list(SNAPSHOT_DTYPES)}"
            )
        try:
            parse_memory(self.extrap_snapshot_memory)
        except ValueError as err:
            raise ExtrapolationConfigError(
                f"extrap_snapshot_memory={self.extrap_snapshot_memory!r}: {err}; give bytes (e.g. 4294967296) or a "
                "size such as '4GiB' or '500MB', or None to keep every snapshot in memory"
            ) from None
        if self.extrap_edit_rank is not None and not _is_count(self.extrap_edit_rank):
            raise ExtrapolationConfigError(
                f"extrap_edit_rank={self.extrap_edit_rank!r}: give a rank >= 1 (e.g. 32) to truncate the update, or "
                "None for the exact update"
            )
        if not _is_count(self.extrap_worker_threads):
            raise ExtrapolationConfigError(
                f"extrap_worker_threads={self.extrap_worker_threads!r}: give a number of threads >= 1 (1 unless "
                "training runs on a GPU and CPU cores are free)"
            )
        if self.extrap_fit_timeout is not None and not self.extrap_fit_timeout > 0:
            raise ExtrapolationConfigError(
                f"extrap_fit_timeout={self.extrap_fit_timeout}: must be a number of seconds > 0, or None to wait"
            )

    def _validate_gate(self) -> None:
        if self.extrap_min_skill is not None and not (
            math.isfinite(self.extrap_min_skill) and self.extrap_min_skill <= 1.0
        ):
            raise ExtrapolationConfigError(
                f"extrap_min_skill={self.extrap_min_skill}: skill is at most 1 (0 = no better than not moving); "
                "use e.g. 0.2, or None"
            )
        if self.extrap_skill_origins < 1:
            raise ExtrapolationConfigError(
                f"extrap_skill_origins={self.extrap_skill_origins}: the backtest needs at least 1 target (e.g. 3)"
            )
        needs_backtest = [
            name
            for name, used in (
                ("extrap_min_skill", self.extrap_min_skill is not None),
                ("extrap_horizon=auto", self.extrap_horizon == AUTO),
                ("extrap_jump_at=auto", self.auto_jumps),
            )
            if used
        ]
        if needs_backtest and not EXTRAPOLATORS[self.extrap_method].can_backtest:
            able = sorted(name for name, cls in EXTRAPOLATORS.items() if cls.can_backtest)
            raise ExtrapolationConfigError(
                f"{', '.join(needs_backtest)}: the forecast-skill backtest needs a method with a cheap backtest "
                f"({', '.join(able)}), not {self.extrap_method}; change extrap_method, or for {self.extrap_method} set "
                "extrap_min_skill=None with numeric extrap_horizon and extrap_jump_at"
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

    def _validate_guard(self) -> None:
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

    def _validate_after_jump(self) -> None:
        if not (math.isfinite(self.extrap_alpha) and self.extrap_alpha > 0):
            raise ExtrapolationConfigError(f"extrap_alpha={self.extrap_alpha}: must be a finite number > 0")
        if self.extrap_optimizer_policy not in OPTIMIZER_POLICIES:
            raise ExtrapolationConfigError(
                f"extrap_optimizer_policy={self.extrap_optimizer_policy!r}: choose one of {list(OPTIMIZER_POLICIES)}"
            )
        if self.extrap_jump_into not in JUMP_INTO:
            raise ExtrapolationConfigError(
                f"extrap_jump_into={self.extrap_jump_into!r}: choose one of {list(JUMP_INTO)} ('auto' unless you "
                "need one)"
            )
        if self.extrap_offset_rank is not None and not _is_count(self.extrap_offset_rank):
            raise ExtrapolationConfigError(
                f"extrap_offset_rank={self.extrap_offset_rank!r}: give a rank >= 1 (e.g. 32), or None for 4 x the "
                "LoRA rank"
            )

    def _normalise_horizon_and_jumps(self) -> None:
        """CLI strings (and Python values) to an int or 'auto' horizon and a list of ints or 'auto' jump steps."""
        horizon = self.extrap_horizon
        if isinstance(horizon, str) and horizon.strip().lower() != AUTO:
            try:
                horizon = int(horizon)
            except ValueError:
                horizon = None
        elif isinstance(horizon, str):
            horizon = AUTO
        if not (horizon == AUTO or (isinstance(horizon, int) and not isinstance(horizon, bool))):
            raise ExtrapolationConfigError(
                f"extrap_horizon={self.extrap_horizon!r}: give a number of steps (e.g. 100) or 'auto'"
            )
        self.extrap_horizon = horizon
        jumps = self.extrap_jump_at
        if isinstance(jumps, str):
            jumps = [jumps]
        if [str(j).strip().lower() for j in jumps] == [AUTO]:
            self.extrap_jump_at = AUTO
            return
        try:
            self.extrap_jump_at = [j if isinstance(j, int) else int(j) for j in jumps]
        except (TypeError, ValueError):
            raise ExtrapolationConfigError(
                f"extrap_jump_at={self.extrap_jump_at!r}: give step numbers (e.g. 100 200) or 'auto'"
            ) from None

    def _validate_jump_steps(self) -> None:
        if self.auto_jumps:
            return
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
        preset = self.preset
        make = getattr(cls.config_class, preset.method_config) if preset and preset.method_config else cls.config_class
        return cls(make(**{name: getattr(self, f"extrap_{name}") for name in names}))

    @property
    def full_module_patterns(self) -> list[str]:
        return [p.strip() for p in str(self.extrap_full_modules).split(",") if p.strip()]

    def validate_full_parameter(self) -> None:
        """Refuse settings a full-parameter run (no LoRA adapter) cannot honour, naming each."""
        if not self.full_module_patterns:
            raise ExtrapolationConfigError(
                f"extrap_full_modules={self.extrap_full_modules!r} names no module; give globs such as '*.layers.*'"
            )
        refused = {
            "extrap_jump_into": (
                self.extrap_jump_into == "offset",
                "a full-parameter jump goes into the trainable weights (the optimizer's float32 master copy where "
                "one exists); leave it 'auto'",
            ),
            "extrap_offset_rank": (self.extrap_offset_rank is not None, "there are no LoRA offsets; leave it None"),
            "extrap_edit_rank": (
                self.extrap_edit_rank is not None,
                "a full-parameter update is a dense matrix, applied exact; leave it None",
            ),
        }
        for name, (bad, why) in refused.items():
            if bad:
                raise ExtrapolationConfigError(
                    f"{name}={getattr(self, name)!r} does not apply to a full-parameter run (no LoRA adapter): {why}"
                )

    def validate_for_training(self, args: Any) -> None:
        """Checks that need the trainer's arguments: every jump on a generation-buffer boundary. A periodic preset
        with no ``extrap_jump_at`` gets its jumps here: every ``extrap_snapshot_every`` steps up to ``max_steps``."""
        preset = self.preset
        if preset is not None and preset.periodic and not self.extrap_jump_at:
            max_steps = getattr(args, "max_steps", 0) or 0
            if max_steps < 1:
                raise ExtrapolationConfigError(
                    f"extrap_preset={self.extrap_preset!r} jumps every extrap_snapshot_every steps up to max_steps, "
                    f"but max_steps={max_steps}; set max_steps, or give extrap_jump_at"
                )
            every = self.extrap_snapshot_every
            self.extrap_jump_at = list(range(every, max_steps + 1, every))
        period = generation_period(args)
        if self.auto_jumps and self.extrap_snapshot_every % period:
            raise ExtrapolationConfigError(
                f"extrap_jump_at=auto jumps at snapshot steps, but extrap_snapshot_every={self.extrap_snapshot_every} "
                f"is not a multiple of the generation period ({period} optimizer steps between GRPO generations); "
                f"use a multiple of {period}"
            )
        bad = [j for j in self.jump_steps if j % period]
        if bad:
            raise ExtrapolationConfigError(
                f"extrap_jump_at={list(self.extrap_jump_at)}: step(s) {bad} are not on a generation-buffer "
                f"boundary. GRPO generates completions every {period} optimizer step(s) (steps_per_generation="
                f"{getattr(args, 'steps_per_generation', 1)}, num_iterations={getattr(args, 'num_iterations', 1)}, "
                f"gradient_accumulation_steps={args.gradient_accumulation_steps}), and a jump inside a buffer "
                f"would mix pre- and post-jump log-probs; use multiples of {period}"
            )


def _is_count(value: Any) -> bool:
    """An int of at least 1 (``True`` is an int to Python, not a count)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


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
