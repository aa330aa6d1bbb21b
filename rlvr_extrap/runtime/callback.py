"""``ExtrapolationCallback``: train -> extrapolate -> train inside a (GRPO) Trainer."""

from __future__ import annotations

import os
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import torch
from accelerate import PartialState
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from rlvr_extrap.config import ExtrapolationArguments, ExtrapolationConfigError
from rlvr_extrap.runtime.dense import DenseTarget
from rlvr_extrap.runtime.distributed import broadcast_from_main, check_distributed_support
from rlvr_extrap.runtime.guard import JumpGuard, probe_rows
from rlvr_extrap.runtime.lora import JumpTarget
from rlvr_extrap.runtime.plan import JumpGate, JumpPlan, JumpSkipped
from rlvr_extrap.runtime.record import JumpFigures, JumpRecord
from rlvr_extrap.runtime.state import POINTS_DIR, STATE_FILE, StateFileError, read_resume_state, save_state
from rlvr_extrap.runtime.weights import DenseWeights, RunWeights, find_weights
from rlvr_extrap.runtime.worker import TrajectoryWorker, idle_threads
from rlvr_extrap.skill.forecast import schedule_clock
from rlvr_extrap.trajectory.spill import SnapshotSpill, parse_memory

__all__ = ["ExtrapolationCallback", "reset_optimizer_state"]

logger = logging.get_logger(__name__)


class ExtrapolationCallback(TrainerCallback):
    """Snapshots the LoRA weights, fits their trajectory in a background thread, and jumps ahead.

    On a model without a LoRA adapter (full-parameter GRPO) it does the same with the trainable 2-D weights that
    ``extrap_full_modules`` selects (``runtime.dense``): their trajectory is ``W_t - W_0``, and a jump edits the
    weights the optimizer steps from.

    Add it to the trainer it runs in: ``trainer.add_callback(ExtrapolationCallback(trainer))``. The trainer
    logs its metrics (``Trainer.log``), gives the guard its rewards and re-syncs vLLM weights after a jump.
    A callback that must sit at a given place among ``callbacks=[...]`` can be built first and given its
    trainer as ``callback.trainer = trainer`` before training starts.

    Settings come from the trainer's ``args`` (``extrap_*`` fields, see ``ExtrapGRPOConfig``); keyword
    arguments given here (without the prefix, e.g. ``method="relex"``) take precedence, for users who
    keep a plain ``GRPOConfig``. With no method set the callback does nothing at all.

    ``jumps`` holds a ``JumpRecord`` per planned jump: applied, or skipped with the reason.
    """

    def __init__(self, trainer: Trainer | None = None, **settings: Any) -> None:
        ExtrapolationArguments.from_object(None, **settings)  # fail fast on unknown names
        self.trainer = trainer
        self.settings = settings
        self.config: ExtrapolationArguments | None = None
        self.weights: RunWeights | None = None  # what is extrapolated, found at train begin
        self.full = False  # a full-parameter run: no LoRA adapter, the weights themselves are extrapolated
        self.worker: TrajectoryWorker | None = None  # main process only
        self.model: torch.nn.Module | None = None
        self.guard: JumpGuard | None = None
        self.jumps: list[JumpRecord] = []
        self.skill_history: list[dict[str, Any]] = []  # one forecast-skill backtest per snapshot (main process)
        self._skill_logged = 0  # worker.skill_records already in skill_history
        self.snapshot_steps: list[int] = []
        self._pending: tuple[int, Future[JumpPlan] | None] | None = None  # a plan made beside training (its step)
        self.labels: dict[int, float] = {}  # step -> score, for methods that regress on one (main process)
        self.snapshot_seconds = 0.0
        self.worker_cpu_seconds = 0.0  # CPU time of the background thread, read at train end (main process)

    @property
    def active(self) -> bool:
        return self.weights is not None  # found at train begin only when a method is set; cleared at train end

    @property
    def target(self) -> JumpTarget | DenseTarget | None:
        """Where jumps land (None outside training)."""
        return None if self.weights is None else self.weights.target

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ):
        self.config = ExtrapolationArguments.from_object(args, **self.settings)
        self.config.validate_extrapolation()
        if not self.config.enabled:
            return
        if self.trainer is None:
            raise ExtrapolationConfigError(
                "ExtrapolationCallback has no trainer: pass the trainer: "
                "trainer.add_callback(ExtrapolationCallback(trainer))"
            )
        self.config.validate_for_training(args)
        check_distributed_support(self.config)
        late = [j for j in self.config.jump_steps if state.max_steps and j > state.max_steps]
        if late:
            logger.warning(f"extrap_jump_at: step(s) {late} come after max_steps={state.max_steps} and never run")
        if not self.config.extrap_jump_at:
            logger.warning(
                "extrap_method is set but extrap_jump_at is empty: observing only (snapshots and forecast skill, "
                "no jump); give extrap_jump_at steps or auto to jump"
            )
        clock = None
        if self.config.extrap_time_axis == "lr":
            clock = schedule_clock(kwargs.get("lr_scheduler"))
            if clock is None:
                logger.warning(
                    "extrap_time_axis='lr': the trainer's scheduler is not a LambdaLR, so its future rates are "
                    "unknown; fitting against steps instead"
                )
        self.model = model  # what the trainer hands callbacks: the FSDP1 root under FSDP1
        self.weights = find_weights(model, self.config, args.output_dir)
        self.full = isinstance(self.weights, DenseWeights)
        if self.config.extrap_guard or self.config.probe_labels:  # the probe also labels snapshots
            self.guard = self._build_guard(args)
        if state.is_world_process_zero:  # the trajectory lives on the main process only; the others get the plan
            diagnostics_dir = os.path.join(args.output_dir, "extrap") if self.config.extrap_diagnostics else None
            cfg = self.config
            gate = JumpGate(cfg.extrap_min_energy, cfg.extrap_min_r2, cfg.extrap_max_update_ratio, cfg.extrap_min_skill)
            budget = parse_memory(cfg.extrap_snapshot_memory)
            if budget is not None:
                self.weights.check_budget(cfg, budget)
            spill = None if budget is None else SnapshotSpill(os.path.join(args.output_dir, "extrap", "spill"), budget)
            self.worker = TrajectoryWorker(
                cfg.build_extrapolator(),
                gate,
                diagnostics_dir,
                clock=clock,
                skill_origins=cfg.extrap_skill_origins,
                edit_rank=cfg.extrap_edit_rank,
                spill=spill,
                threads=cfg.extrap_worker_threads,
            )
        if state.global_step == 0 or not self._resume(args, state):
            self._snapshot(state.global_step)
        elif self._jump_due_at_resume(state.global_step):  # a branch from a run that had no jump here
            optimizer = kwargs.get("optimizer")  # the Trainer loads the checkpoint's state before on_train_begin
            self._lend_threads()
            if self.snapshot_steps[-1] != state.global_step:
                self._snapshot(state.global_step, optimizer)
            else:
                self._attach_velocities(state.global_step, optimizer)
            self._jump(state.global_step, optimizer)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs):
        if not self.active:
            return
        cfg, step, optimizer = self.config, state.global_step, kwargs.get("optimizer")
        snapshot_step = step % cfg.extrap_snapshot_every == 0
        if self._pending is not None:  # a snapshot, a checkpoint and the end must see the jumped weights
            due = snapshot_step or step in cfg.jump_steps or control.should_save or step >= state.max_steps
            self._land_pending(step, optimizer, wait=due)
        jumping = step in cfg.jump_steps or (cfg.auto_jumps and snapshot_step and self._auto_jump_due(step))
        if jumping and cfg.extrap_wait_for_fit:
            self._lend_threads()
        if snapshot_step or step in cfg.jump_steps:  # after the last jump too: the skill is still measured
            self._snapshot(step, optimizer)
        if snapshot_step:
            self._log_skill()
        if jumping and cfg.extrap_wait_for_fit:
            self._jump(step, optimizer)
        elif jumping:  # the worker fits while training goes on; the plan lands at a later step end
            future = None if self.worker is None else self.worker.plan_jump(step, cfg.extrap_horizon, cfg.extrap_alpha)
            self._pending = (step, future)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        """Jumps live in the base weights or offsets, which a PEFT checkpoint does not save: save them (and the
        trajectory)."""
        if self.worker is not None:
            self._save_state(_checkpoint_dir(args, state.global_step))

    def on_train_end(self, args, state, control, **kwargs):
        if self._pending is not None:  # training stopped early, before the plan was due
            step, self._pending = self._pending[0], None
            why = "training ended before the plan made beside it landed"
            self._skip(JumpRecord.unplanned(step, self.config.extrap_horizon, why), logging.WARNING, f"dropped: {why}")
        if self.worker is not None:
            try:
                self._save_state(args.output_dir)
                self.worker_cpu_seconds = self.worker.cpu_seconds().result()
            finally:  # a failed save still ends the thread
                self.worker.close()
                self.worker = None
        self.weights, self.model = None, None

    def _build_guard(self, args: TrainingArguments) -> JumpGuard:
        try:
            rows = probe_rows(self.trainer, self.config.extrap_guard_prompts, seed=args.seed)
            return JumpGuard(self.trainer, self.target, rows, getattr(args, "max_completion_length", None) or 256)
        except ValueError as err:
            raise ExtrapolationConfigError(str(err)) from None

    def _log_skill(self) -> None:
        """Log the forecast-skill backtests the worker finished since the last call (never waits for it)."""
        if self.worker is None:
            return
        records = self.worker.skill_records[self._skill_logged :]
        self._skill_logged += len(records)
        horizon = self.config.extrap_horizon
        for record in records:
            self.skill_history.append(record.to_dict())
            metrics = record.to_metrics(None if horizon == "auto" else horizon)
            self._log({**metrics, "extrap/skill_step": record.step})

    def _auto_jump_due(self, step: int) -> bool:
        """'auto' jumps are tried at snapshot steps at least ``min_jump_gap()`` after the last jump (or the start)."""
        last = max([j.step for j in self.jumps if j.applied], default=0)
        return step - last >= self.config.min_jump_gap()

    def _save_state(self, directory: str) -> None:
        """Once the worker has caught up: log its finished backtests, then save offsets, trajectory and history."""
        now = self.worker.state_now().result()
        self._log_skill()  # every backtest up to here goes into the saved history
        jumps = [j.to_dict() for j in self.jumps]
        history = {"snapshot_steps": self.snapshot_steps, "jumps": jumps, "skill": self.skill_history}
        if self.labels:
            history["labels"] = {str(step): label for step, label in self.labels.items()}
        path = save_state(self.weights.state(self.worker, now, history, directory), directory)
        logger.info(f"extrapolation: state saved to {path} (load a jumped model with rlvr_extrap.apply_offsets)")

    def _jump_due_at_resume(self, step: int) -> bool:
        """Whether ``extrap_jump_at`` names the resume step and the checkpoint's run made no jump there.

        So a jump arm can branch from another run's checkpoint at its jump step (saved after that step's
        update, before any jump), and resuming a run that did jump there does not jump twice.
        """
        return step in self.config.jump_steps and all(j.step != step for j in self.jumps)

    def _resume(self, args: TrainingArguments, state: TrainerState) -> bool:
        """Restore offsets (into the base weights or beside the LoRA path), trajectory and history from the checkpoint
        resumed from."""
        directory = _resume_dir(args, state.global_step)
        saved, error = None, None
        if self.worker is not None:
            try:
                cfg = self.config  # 'auto' jumps may have happened from the first allowed step on
                possible = [cfg.min_jump_gap()] if cfg.auto_jumps else cfg.jump_steps
                saved = read_resume_state(directory, state.global_step, possible)
            except StateFileError as err:
                error = str(err)
            if saved is None and error is None:
                logger.warning(
                    f"extrapolation: resuming at step {state.global_step} without {STATE_FILE} in {directory}; "
                    "the trajectory starts afresh here (no jump was due before this step)"
                )
        outcome = (saved.offsets, saved.history, None) if saved else (None, None, error)
        offsets, history, error = broadcast_from_main(outcome)
        if error is not None:  # raised on every process: none may train on (nor wait in a collective for the others)
            raise StateFileError(error)
        if offsets is None:
            return False
        self.snapshot_steps = history["snapshot_steps"]
        self.jumps = [JumpRecord.from_dict(j) for j in history["jumps"]]
        self.skill_history = history.get("skill", [])
        self.labels = {int(step): label for step, label in history.get("labels", {}).items()}
        if self.weights.resume(self.worker, saved, offsets, directory, self.labels):
            if self.worker is not None:
                logger.info(f"extrapolation: resumed from {directory} ({len(saved.steps)} trajectory points)")
            return True
        if self.worker is not None:  # only a full-parameter run keeps its points in files of their own
            logger.warning(
                f"extrapolation: the trajectory points {directory}/{STATE_FILE} names are missing (deleted "
                f"{POINTS_DIR} of the run?); the trajectory restarts at step {state.global_step}"
            )
        self.snapshot_steps = [s for s in self.snapshot_steps if s < state.global_step]
        self._snapshot(state.global_step)
        return True

    def _lend_threads(self) -> None:
        """The training thread is about to wait for a jump's plan: the worker takes its idle cores until then."""
        if self.worker is None or not self.config.extrap_lend_threads:  # the main process alone has the worker
            return
        own = self.config.extrap_worker_threads
        threads = idle_threads(own)
        if threads > own:
            self.worker.lend_threads(threads)

    def _snapshot(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Every process reads the factors (a gather under ZeRO-3 / FSDP); the main process keeps them.

        For a method that continues the optimizer's direction, the main process also reads AdamW's state of the
        weights (one elementwise pass and a CPU copy, like the snapshot; not supported under sharding).
        """
        if self.config.probe_labels:  # every process scores its share of the probe
            label = self.guard.score()
        elif self.worker is not None and self.worker.extrapolator.needs_labels:
            label = self._reward_label(step)
        else:
            label = None
        if label is not None:
            self.labels[step] = label
        self.snapshot_steps.append(step)
        start = time.perf_counter()
        snapshot, velocities = self.weights.read(self._velocity_source(optimizer))
        self.snapshot_seconds += time.perf_counter() - start
        if self.worker is not None:
            self.weights.add(self.worker, step, snapshot, velocities, label)

    def _velocity_source(self, optimizer: torch.optim.Optimizer | None) -> torch.optim.Optimizer | None:
        """``optimizer`` where the method continues its direction (main process only): its velocities are read;
        None otherwise."""
        if self.worker is None or not self.worker.extrapolator.needs_optimizer_state:
            return None
        return optimizer

    def _reward_label(self, step: int) -> float | None:
        """The mean ``reward`` the trainer logged since the previous snapshot; None when it logged none.

        The Trainer logs a step after its ``on_step_end``, so a snapshot's own step is logged after it and counts
        toward the next snapshot; after a jump at the previous snapshot, that step's log (which scores the weights
        before the jump) does not count.
        """
        if not self.snapshot_steps:
            return None
        previous = self.snapshot_steps[-1]
        start = previous + 1 if any(j.applied and j.step == previous for j in self.jumps) else previous
        rewards = []
        for entry in reversed(self.trainer.state.log_history):  # newest first, back to the window's start
            logged = entry.get("step", step)
            if logged < start:
                break
            if logged < step and "reward" in entry:
                rewards.append(float(entry["reward"]))
        return sum(rewards) / len(rewards) if rewards else None

    def _attach_velocities(self, step: int, optimizer: torch.optim.Optimizer | None) -> None:
        """Give the restored last point AdamW's state (a saved trajectory has none) for the ``optimizer`` method."""
        optimizer = self._velocity_source(optimizer)
        if optimizer is None:
            return
        velocities = self.weights.velocities(optimizer)
        if velocities is not None:
            self.worker.set_velocities(step, velocities)

    def _land_pending(self, step: int, optimizer: torch.optim.Optimizer | None, wait: bool) -> None:
        """Land the plan made beside training once it is ready (every process at the same step end), or now when
        ``wait``."""
        planned, future = self._pending
        if broadcast_from_main(wait or future is None or future.done()):
            self._pending = None
            self._jump(planned, optimizer, future=future, landed_step=step)

    def _plan(
        self, step: int, future: Future[JumpPlan] | None = None
    ) -> tuple[JumpPlan | None, str | None, bool, float]:
        """The main process waits for the fit (bounded by extrap_fit_timeout); every process gets its outcome.

        ``future``: a plan already asked for (made beside training); else it is asked for here.
        Returns (plan, why there is none, whether the skill gate turned it down, seconds waited).
        """
        plan, error, gated, wait_start = None, None, False, time.perf_counter()
        if self.worker is not None:
            cfg = self.config
            # one process, no guard: the plan is edited as it comes, so the worker's reduction of the updates
            # overlaps the edit (the guard probes whole plans; other processes get the plan pickled, whole)
            stream = not cfg.extrap_guard and PartialState().num_processes == 1
            if future is None:
                future = self.worker.plan_jump(step, cfg.extrap_horizon, cfg.extrap_alpha, stream=stream)
            try:
                plan = future.result(timeout=cfg.extrap_fit_timeout)
            except FutureTimeout:
                error = f"the fit took longer than extrap_fit_timeout={cfg.extrap_fit_timeout}s"
            except JumpSkipped as skip:
                error, gated = str(skip), True
            except Exception as err:  # the fit must never stop training
                error = f"{type(err).__name__}: {err}"
        plan, error, gated = broadcast_from_main((plan, error, gated))
        return plan, error, gated, time.perf_counter() - wait_start

    def _jump(
        self,
        step: int,
        optimizer: torch.optim.Optimizer | None,
        future: Future[JumpPlan] | None = None,
        landed_step: int | None = None,
    ) -> None:
        """The jump planned at ``step``: waited for here, or made beside training (``future``) and landing at the
        end of ``landed_step``."""
        cfg = self.config
        plan, error, gated, wait = self._plan(step, future)
        # Why a jump did not happen is said by default (WARNING) when it failed or extrap_jump_at asked for it by
        # step; an 'auto' jump the gate or the guard turned down is routine (INFO).
        refused = logging.INFO if cfg.auto_jumps else logging.WARNING
        if plan is None:
            if gated and cfg.auto_jumps:  # tried at every snapshot: the backtest itself is in skill_history
                logger.info(f"extrapolation: no jump at step {step}: {error}")
                return
            record = JumpRecord.unplanned(step, cfg.extrap_horizon, error)
            if gated:
                self._skip(record, refused, f"not taken: {error}")
            else:
                self._skip(record, logging.WARNING, f"skipped: {error}")
            return
        record = JumpRecord(step, plan.target_step - step, plan.target_step, planned=True, skill=plan.skill)
        if wait > 1.0:
            logger.info(f"extrapolation: waited {wait:.2f}s for the fit at step {step}")
        if self.guard is not None and cfg.extrap_guard:
            limit, ratio = cfg.extrap_max_update_ratio, plan.size_ratio
            scales = [c for c in cfg.extrap_guard_scales if limit is None or ratio is None or c * ratio <= limit]
            try:
                record.guard = self.guard.decide(plan, scales, cfg.extrap_guard_tolerance)
            except Exception as err:  # scoring failed: the weights were restored; do not jump blind
                record.skipped = f"guard: {type(err).__name__}: {err}"
                self._skip(record, logging.WARNING, f"skipped: the guard failed: {type(err).__name__}: {err}")
                return
            if record.guard.scale is None:
                record.skipped = "guard: no candidate beat the pre-jump score"
                self._skip(
                    record,
                    refused,
                    f"rolled back: no step size scored at least the pre-jump probe score {record.guard.pre_score:.4g} "
                    f"- extrap_guard_tolerance ({record.guard.scores})",
                )
                return
            plan = plan.scaled(record.guard.scale)

        apply_start = time.perf_counter()
        landed = self.target.apply(plan.reduced_updates(), self.model)
        plan.settled()
        if cfg.extrap_optimizer_policy != "keep" and optimizer is not None:
            reset_optimizer_state(optimizer, self.weights.parameters(), cfg.extrap_optimizer_policy)
        if hasattr(self.trainer, "_last_loaded_step"):
            self.trainer._last_loaded_step = -1  # next generation re-syncs vLLM weights
        if self.worker is not None:  # the offsets as held (cut to their rank cap), or None: plan's updates added
            self.worker.commit_jump(plan, self.target.offsets if self.target.into == "offset" else None)
        record.figures = JumpFigures.of(plan, wait, time.perf_counter() - apply_start, landed, landed_step)
        self.jumps.append(record)
        self._log(record.to_metrics())

    def _skip(self, record: JumpRecord, level: int, why: str) -> None:
        """Keep the record of a jump that did not happen, say ``why`` at ``level``, and log ``extrap/jump_skipped``."""
        logger.log(level, f"extrapolation jump at step {record.step} {why}")
        self.jumps.append(record)
        self._log({**record.to_metrics(), "extrap/jump_skipped": 1.0})

    def _log(self, metrics: dict[str, Any]) -> None:
        """Log the numbers in ``metrics`` through the trainer; text (reasons, errors) stays in the jump records."""
        metrics = {k: v for k, v in metrics.items() if isinstance(v, int | float)}  # TensorBoard, W&B want numbers
        # The base log (GRPO's override would flush its own metrics). Its on_log clears should_log, which at a
        # logging step would drop the trainer's own log (loss, reward) due right after this hook: keep it.
        should_log = self.trainer.control.should_log
        Trainer.log(self.trainer, metrics)
        self.trainer.control.should_log = should_log


def reset_optimizer_state(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], policy: str) -> None:
    """Apply an ``extrap_optimizer_policy`` to the AdamW state of ``params`` in place."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the real one
    for p in params:
        state = inner.state.get(p)
        if not state:
            continue
        if "exp_avg" in state:
            state["exp_avg"].zero_()
        if policy == "reset":
            if "exp_avg_sq" in state:
                state["exp_avg_sq"].zero_()
            if "step" in state:
                state["step"] = torch.zeros_like(state["step"]) if torch.is_tensor(state["step"]) else 0


def _checkpoint_dir(args: TrainingArguments, step: int) -> str:
    return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")


def _resume_dir(args: TrainingArguments, step: int) -> str:
    """The checkpoint resumed from: ``args.resume_from_checkpoint`` when it names a folder (another run's
    checkpoint: a branch), else this run's ``checkpoint-<step>``."""
    named = args.resume_from_checkpoint
    return named if isinstance(named, str) and os.path.isdir(named) else _checkpoint_dir(args, step)
