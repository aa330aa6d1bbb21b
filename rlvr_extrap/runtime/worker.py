"""A background thread that owns the trajectory: it ingests snapshots and plans jumps while training runs."""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers.utils import logging

from rlvr_extrap.extrapolators import EXTRAPOLATORS, Extrapolator
from rlvr_extrap.linalg.lowrank import Combination, Delta, LowRank, is_finite, lincomb, weighted_terms
from rlvr_extrap.runtime.plan import JumpGate, JumpPlan, JumpSkipped
from rlvr_extrap.runtime.reduction import Reduction
from rlvr_extrap.skill.diagnostics import (
    combination_update_norm,
    module_diagnostics,
    write_jump_report,
)
from rlvr_extrap.skill.forecast import SkillRecord, gram_distance, measure_skill
from rlvr_extrap.trajectory.spill import SnapshotSpill, delta_nbytes
from rlvr_extrap.trajectory.trajectory import Clock, DenseVelocity, FactorVelocity, Trajectory, Velocity

__all__ = ["TrajectoryWorker", "idle_threads"]

logger = logging.get_logger(__name__)
T = TypeVar("T")


class TrajectoryWorker:
    """Serialises all trajectory work on one background thread, in submission order.

    Deltas are kept as ``offset + s * B_t @ A_t``: the offset (a factored sum) is what earlier jumps
    added to the base weights, so the trajectory stays in the global merged-delta space across jumps.
    Each point is a lazy ``Combination`` that references the one offset of its segment, so the offset is
    stored (and its inner products computed) once per segment, not once per snapshot. A jump's update is
    a ``Combination`` of the trajectory's points too: planning it copies no factors, and each module's
    factors are concatenated only when that module is edited.
    Nothing here touches the live model, and no collective is ever called from this thread.

    A full-parameter run hands in the weights themselves (``add_weights``): the worker keeps the first as the
    ``origin`` and stores each point as the dense ``W_t - origin``; a jump is in the weights the next snapshot reads,
    so no offsets are kept and a new segment starts at the jumped point.
    """

    def __init__(
        self,
        extrapolator: Extrapolator,
        gate: JumpGate | None = None,
        diagnostics_dir: str | Path | None = None,
        clock: Clock | None = None,
        skill_origins: int = 3,
        edit_rank: int | None = None,
        spill: SnapshotSpill | None = None,
        threads: int = 1,
    ) -> None:
        self.extrapolator = extrapolator
        self.gate = gate or JumpGate()
        self.diagnostics_dir = diagnostics_dir
        self.clock = clock
        self.skill_origins = skill_origins
        self.edit_rank = edit_rank  # truncate each update to this rank (None: exact, at its true rank)
        self.spill = spill  # moves old snapshots to memory-mapped files past its budget (None: all in memory)
        self.trajectory = Trajectory(clock)
        self.offsets: dict[str, LowRank] = {}
        self.origin: dict[str, torch.Tensor] | None = None  # full-parameter runs: the weights deltas are measured from
        self._lora: dict[str, LowRank] = {}  # the last snapshot's own s * B @ A, without the offset
        self.latest_skill: SkillRecord | None = None  # of the current segment's last point
        self.skill_records: list[SkillRecord] = []  # every backtest, appended here only (read from any thread)
        # The worker's torch runs on ``threads`` threads (a team of its own beside the training thread's makes
        # libgomp throttle that one's spin-waits when cores are short). torch.set_num_threads also sets the default
        # of threads that first use torch later: this thread's count is fixed now, and the default restored on close.
        self._default_threads = torch.get_num_threads()
        self._threads = threads
        self._lent: int | None = None  # threads lent for the tasks up to the next plan (lend_threads)
        self._lent_cpu_seconds = 0.0  # CPU time of the threads those tasks ran on
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="rlvr-extrap", initializer=torch.set_num_threads, initargs=(threads,)
        )
        _OPEN.add(self)

    def add_snapshot(
        self,
        step: int,
        lora_deltas: dict[str, LowRank],
        velocities: dict[str, FactorVelocity] | None = None,
        label: float | None = None,
    ) -> Future[None]:
        """Append a snapshot (and the optimizer's velocity of the factors there, for the ``optimizer`` method; its
        score, for the ``alpharl`` method)."""
        return self._pool.submit(self._on_lent_threads, self._add_snapshot, step, lora_deltas, velocities, label)

    def add_weights(
        self,
        step: int,
        weights: dict[str, torch.Tensor],
        dtype: torch.dtype,
        velocities: dict[str, DenseVelocity] | None = None,
        label: float | None = None,
    ) -> Future[None]:
        """Append a full-parameter snapshot: the weights, stored as ``W - origin`` in ``dtype`` (the first weights
        handed in become the origin), and as ``add_snapshot`` the optimizer's velocity and the score there."""
        return self._pool.submit(self._on_lent_threads, self._add_weights, step, weights, dtype, velocities, label)

    def plan_jump(self, step: int, horizon: int | str, alpha: float, stream: bool = False) -> Future[JumpPlan]:
        """The plan for a jump at ``step`` over ``horizon`` steps (``"auto"``: the longest that passes the backtest).

        Raises ``JumpSkipped`` (through the future) when the gate's ``min_skill`` is not met. ``stream``: the plan
        comes back before its updates are reduced to their rank, and the worker reduces them module by module
        while the caller edits (see ``JumpPlan``).
        """
        return self._pool.submit(self._lent_plan, step, horizon, alpha, stream)

    def lend_threads(self, threads: int) -> None:
        """Run the snapshots and the plan queued from now to the next ``plan_jump`` on ``threads`` torch threads: the
        cores the training thread leaves idle while it waits for a jump's plan.

        Each runs in a thread of its own that ends with it, and its OpenMP team with it: a team left alive beside the
        training thread's puts more OpenMP threads in the process than there are cores, and libgomp then stops
        spin-waiting for the training thread's team, slowing every later step (``extrap_worker_threads``).
        """
        self._pool.submit(setattr, self, "_lent", threads)

    def commit_jump(self, plan: JumpPlan, offsets: dict[str, LowRank] | None = None) -> Future[None]:
        """Record that ``plan`` was applied: fold it into the offsets and start a new segment there.

        ``offsets``: the offsets the model holds after the jump, where they are not exactly the old ones plus the
        plan's updates (held beside the LoRA path and cut to a rank cap); they replace the worker's own.
        """
        return self._pool.submit(self._commit_jump, plan, offsets)

    def state_now(self) -> Future[tuple[dict[str, LowRank], list[int], dict[str, list[Delta]]]]:
        """(offsets, trajectory steps, trajectory deltas) once every queued task has run."""
        return self._pool.submit(
            lambda: (
                dict(self.offsets),
                list(self.trajectory.steps),
                {n: list(d) for n, d in self.trajectory.deltas.items()},
            )
        )

    def set_velocities(self, step: int, velocities: dict[str, Velocity]) -> Future[None]:
        """Attach the optimizer's velocity of the weights to the last point, which must be at ``step``."""

        def _set() -> None:
            if not self.trajectory.steps or self.trajectory.steps[-1] != step:
                raise ValueError(f"set_velocities: the last trajectory point is not at step {step}")
            self.trajectory.velocities[-1] = dict(velocities)

        return self._pool.submit(_set)

    def restore(
        self,
        offsets: dict[str, LowRank],
        steps: list[int],
        deltas: dict[str, list[LowRank]],
        labels: dict[int, float] | None = None,
        origin: dict[str, torch.Tensor] | None = None,
    ) -> Future[None]:
        """Start from a saved state (resume): the offsets, the current segment's points and their labels (and a
        full-parameter run's origin)."""

        def _restore() -> None:
            self.offsets, self._lora, self.origin = dict(offsets), {}, origin
            self.trajectory = Trajectory(self.clock)
            self.trajectory.labels = {s: y for s, y in (labels or {}).items() if s in steps}
            self._spill_clear()
            for i, step in enumerate(steps):
                self.trajectory.append(step, {n: d[i] for n, d in deltas.items()})
                self._spill_add(f"point-{step}", {n: d[i] for n, d in deltas.items()})
            self._measure_skill(keep=False)  # the saved history already holds this point's backtest

        return self._pool.submit(_restore)

    def set_threads(self, threads: int) -> Future[None]:
        """Run the worker's torch on ``threads`` threads from the next task on (as ``threads`` at construction)."""

        def _set() -> None:
            self._threads = threads
            torch.set_num_threads(threads)

        return self._pool.submit(_set)

    def cpu_seconds(self) -> Future[float]:
        """CPU time the worker's thread, and the threads of its lent tasks, have used (``time.thread_time``), once
        every queued task has run."""
        return self._pool.submit(lambda: time.thread_time() + self._lent_cpu_seconds)

    def close(self) -> None:
        self._pool.submit(torch.set_num_threads, self._default_threads)
        self._pool.shutdown(wait=True)  # finish queued work (diagnostics files, the last commit)
        if self.spill is not None:
            self.spill.close()
        _OPEN.discard(self)

    def abandon(self) -> None:
        """Drop the queued work (fits nobody will wait for) and let the running task end: exit after a crash."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _on_lent_threads(self, task: Callable[..., T], *args: Any) -> T:
        """``task(*args)`` here, or on the lent threads in a thread that ends with it (see ``lend_threads``)."""
        if self._lent is None:
            return task(*args)

        def timed() -> T:
            try:
                return task(*args)
            finally:
                self._lent_cpu_seconds += time.thread_time()

        try:
            with ThreadPoolExecutor(1, "rlvr-lent", initializer=torch.set_num_threads, initargs=(self._lent,)) as lent:
                return lent.submit(timed).result()
        finally:  # that also set the default count of threads new to torch (this one's too, until it first uses it)
            torch.set_num_threads(self._threads)

    def _lent_plan(self, step: int, horizon: int | str, alpha: float, stream: bool) -> JumpPlan:
        """``_plan_jump``, on the lent threads if any; the loan ends with it (its streamed reductions run here)."""
        try:
            return self._on_lent_threads(self._plan_jump, step, horizon, alpha, stream)
        finally:
            self._lent = None

    def _add_snapshot(
        self,
        step: int,
        lora_deltas: dict[str, LowRank],
        velocities: dict[str, Velocity] | None = None,
        label: float | None = None,
    ) -> None:
        deltas = {n: Combination.of(self.offsets[n], d) if n in self.offsets else d for n, d in lora_deltas.items()}
        self.trajectory.append(step, deltas, velocities)
        if label is not None:
            self.trajectory.labels[step] = label
        self._lora = lora_deltas
        self._spill_add(f"snapshot-{step}", lora_deltas)
        self._measure_skill()

    def _add_weights(
        self,
        step: int,
        weights: dict[str, torch.Tensor],
        dtype: torch.dtype,
        velocities: dict[str, DenseVelocity] | None,
        label: float | None,
    ) -> None:
        if self.origin is None:
            self.origin = weights
        if self.spill is not None:  # room before it is computed (the budget + one module's subtraction at most), and
            point = sum(w.numel() for w in weights.values()) * dtype.itemsize  # for the velocity, in memory already
            self.spill.make_room(point + sum(delta_nbytes(v.d) for v in (velocities or {}).values()))
        deltas = {name: lincomb([1.0, -1.0], [w, self.origin[name]], dtype) for name, w in weights.items()}
        self._add_snapshot(step, deltas, velocities, label)
        if velocities is not None:  # a dense velocity is as large as the point: it counts against the same budget
            self._spill_add(f"velocity-{step}", {name: v.d for name, v in velocities.items()})

    def _spill_add(self, tag: str, factors: dict[str, Delta]) -> None:
        if self.spill is not None:
            self.spill.add(tag, {n: f for n, f in factors.items() if not isinstance(f, Combination)})

    def _spill_clear(self) -> None:
        if self.spill is not None:
            self.spill.clear()

    def _measure_skill(self, keep: bool = True) -> None:
        """Backtest the configured extrapolator on the points seen so far (never raises: it only informs)."""
        try:
            self.latest_skill = measure_skill(self.trajectory, self.extrapolator, self.skill_origins)
            if keep and self.latest_skill is not None:
                self.skill_records.append(self.latest_skill)
        except Exception as err:  # a failed measurement must not stop the snapshots
            logger.warning(f"extrapolation: forecast-skill backtest failed at step {self.trajectory.steps[-1]}: {err}")
            self.latest_skill = None

    def _gated_horizon(self, step: int, horizon: int | str) -> tuple[int, float | None]:
        """The horizon to jump over and its backtest skill; raises ``JumpSkipped`` when the gate says no."""
        bar, record = self.gate.min_skill, self.latest_skill
        if horizon != "auto" and bar is None:  # ungated: the skill is only reported
            return int(horizon), None if record is None else record.at(int(horizon))
        if record is None or record.step != step or not record.skill:
            able = ", ".join(name for name, cls in EXTRAPOLATORS.items() if cls.can_backtest)
            raise JumpSkipped(
                f"no forecast-skill backtest at step {step} yet (it needs 3 trajectory points and a method "
                f"with a cheap backtest: {able})"
            )
        if horizon == "auto":
            best = record.longest_horizon(0.0 if bar is None else bar)
            if best is None:
                raise JumpSkipped(
                    f"no backtested horizon reaches skill {0.0 if bar is None else bar} "
                    f"(skill by horizon: {_rounded(record.skill)})"
                )
            return best, record.skill[best]
        horizon = int(horizon)
        score = record.at(horizon)
        if score is None:
            raise JumpSkipped(
                f"extrap_horizon={horizon} is longer than the history can verify (backtested horizons: "
                f"{sorted(record.skill)}); use extrap_horizon=auto or a backtested horizon, or set "
                "extrap_min_skill=None to jump unverified"
            )
        if score < bar:
            raise JumpSkipped(f"backtest skill {score:.3f} at horizon {horizon} is below extrap_min_skill={bar}")
        return horizon, score

    def _plan_jump(self, step: int, horizon: int | str, alpha: float, stream: bool = False) -> JumpPlan:
        if not self.trajectory.steps or self.trajectory.steps[-1] != step:
            raise RuntimeError(f"no snapshot at the jump step {step} (last: {self.trajectory.steps[-1:]})")
        horizon, skill = self._gated_horizon(step, horizon)
        target_step = step + horizon
        start = time.perf_counter()
        method_diagnostics = self.extrapolator.fit(self.trajectory)
        updates, report, diags = {}, {}, []
        current = self.trajectory.last()
        proposed = {name: self._proposed_update(name, now, target_step, alpha) for name, now in current.items()}
        bad = [n for n, u in proposed.items() if u is None]
        if bad:
            raise ValueError(f"the prediction contains NaN or Inf (e.g. module {bad[0]}); jump refused")
        for name, update in proposed.items():
            diag = module_diagnostics(
                self.trajectory,
                name,
                target_step,
                fit_window=self.extrapolator.config.fit_window,
                update=update,
                update_norm=self._update_norm(name, target_step, alpha),
            )
            passed = self.gate.passes(diag)
            if passed:
                updates[name] = update
            report[name] = {**diag.to_dict(), **method_diagnostics.get(name, {}), "jumped": passed}
            diags.append(diag)
        plan = JumpPlan(step, target_step, updates, report, skill=skill)
        self._check_size(plan)
        if stream:  # queued first: it runs as soon as the plan is handed over
            plan.reduction = Reduction(list(updates), lambda name: self._reduce_taken(plan, name))
            self._pool.submit(self._reduce_streamed, plan)
        else:
            self._reduce(plan)
        plan.fit_seconds = time.perf_counter() - start
        if self.diagnostics_dir is not None:  # queued behind this task: the training thread does not wait for it
            out = Path(self.diagnostics_dir) / f"step-{plan.step}"
            self._pool.submit(
                write_jump_report, out, plan.step, plan.target_step, plan.diagnostics, diags, self.latest_skill
            )
        return plan

    def _reduce(self, plan: JumpPlan) -> None:
        """Every update reduced here, in plan order (see ``_reduce_module``)."""
        start = time.perf_counter()
        for name in plan.updates:
            self._reduce_module(plan, name)
        plan.reduce_seconds = time.perf_counter() - start
        plan.summarize_reduction()

    def _reduce_module(self, plan: JumpPlan, name: str) -> None:
        """One update at its true rank when the module's bases show it is lower than its terms' (exact up to float32
        round-off), truncated to ``edit_rank`` when set; its rank and squared error go to its diagnostics."""
        update, basis_rank = plan.updates[name], self.trajectory.basis_rank(name)
        if basis_rank is None or (self.edit_rank is None and basis_rank >= update.rank):
            return
        reduced = self.trajectory.reduce(name, update, self.edit_rank)
        if reduced is not None:
            plan.updates[name] = reduced.factors
            plan.diagnostics[name] |= {"edit_rank": reduced.factors.rank, "edit_error_sq": reduced.error_sq}
            if self.edit_rank is not None:  # truncated: its error counts in the plan's edit_error
                plan.diagnostics[name]["edit_norm_sq"] = reduced.norm_sq

    def _reduce_streamed(self, plan: JumpPlan) -> None:
        """The worker's share of a streamed reduction (from the front of the plan; the training thread takes
        modules from the back). A failure cannot refuse a jump already under way: the modules nobody reduced are
        applied exact (their full-rank combination), and the failure is recorded."""
        try:
            while (name := plan.reduction.claim_first()) is not None:
                self._reduce_module(plan, name)
                plan.reduction.mark(name)
        except Exception as err:
            plan.record_reduce_error(err)
        finally:
            plan.reduction.finish()

    def _reduce_taken(self, plan: JumpPlan, name: str) -> None:
        """A module the training thread reduces itself (``Reduction.completed``): on failure it is applied exact."""
        try:
            self._reduce_module(plan, name)
        except Exception as err:
            plan.record_reduce_error(err)

    def _proposed_update(self, name: str, now: Delta, target_step: int, alpha: float) -> Delta | None:
        """``alpha (D_hat - D_now)``; None when the prediction is not finite. Dense points whose prediction combines
        them give the update as one combination of the points (one pass over them), finite when the combination's
        weights and the Gram matrix are."""
        weights = None if isinstance(now, LowRank) else self.extrapolator.combination(name, target_step)
        if weights is None:
            predicted = self.extrapolator.predict_module(name, target_step)
            return _scaled_difference(predicted, now, alpha) if self._finite(name, predicted) else None
        weights = [alpha * w for w in weights]
        weights[-1] -= alpha
        finite = all(map(math.isfinite, weights)) and bool(self.trajectory.gram(name).isfinite().all())
        return self.trajectory.combine(name, weights) if finite else None

    def _finite(self, name: str, predicted: Delta) -> bool:
        """No NaN or Inf in a prediction; the trajectory's own points count as finite when its Gram matrix is."""
        held = {id(a) for a in self.trajectory.atoms(name)}
        if not bool(self.trajectory.gram(name).isfinite().all()):
            return False
        return all(math.isfinite(w) and (id(t) in held or is_finite(t)) for w, t in weighted_terms(predicted))

    def _update_norm(self, name: str, target_step: int, alpha: float) -> float | None:
        """``||alpha (D_hat - D_now)||`` from the Gram matrix when the prediction is a combination of points."""
        weights = self.extrapolator.combination(name, target_step)
        return None if weights is None else combination_update_norm(self.trajectory.gram(name), weights, alpha)

    def _check_size(self, plan: JumpPlan) -> None:
        """Refuse an update far larger than the distance the segment has travelled."""
        limit = self.gate.max_update_ratio
        if limit is None:
            return
        travelled = sum(gram_distance(g, 0, -1) for g in map(self.trajectory.gram, plan.updates))
        ratio = plan.size_ratio = plan.update_norm / max(travelled**0.5, 1e-30)
        if ratio > limit:
            raise ValueError(
                f"the update norm {plan.update_norm:.3g} is {ratio:.1f}x the distance the segment travelled "
                f"({travelled**0.5:.3g}), above extrap_max_update_ratio={limit}; jump refused"
            )

    def _commit_jump(self, plan: JumpPlan, offsets: dict[str, LowRank] | None = None) -> None:
        """The new segment starts at ``offset' + s B_T A_T`` with ``offset' = offset + update`` (compacted), or the
        ``offsets`` given."""
        origin = {}
        for name, delta in self.trajectory.last().items():
            update = plan.updates.get(name)
            if update is None:  # a module the gate kept in place
                origin[name] = delta
                continue
            if self.origin is not None:  # full-parameter: the jumped weights, as the next snapshot would read them
                origin[name] = lincomb([1.0, 1.0], [delta, update], delta.dtype)
                continue
            old = self.offsets.get(name)
            if offsets is not None:  # what the offset changed by is the update as it landed
                update = offsets[name] if old is None else offsets[name] - old
            self.offsets[name] = (
                offsets[name] if offsets is not None else (update if old is None else old + update).compact()
            )
            lora = self._lora.get(name)  # unknown right after a restore: the saved point holds its offset
            origin[name] = (delta + update).compact() if lora is None else Combination.of(self.offsets[name], lora)
        self.trajectory = Trajectory(self.clock)
        self.trajectory.append(plan.step, origin)
        self._spill_clear()  # the old segment's points are gone
        if self.origin is not None:
            self._spill_add(f"point-{plan.step}", origin)
        else:
            self._spill_add(f"offset-{plan.step}", self.offsets)
            self._spill_add(f"snapshot-{plan.step}", self._lora)
        self.latest_skill = None  # a new segment: nothing backtested yet


def idle_threads(own: int) -> int:
    """The worker's torch threads while the training thread waits for it: its ``own`` and the training thread's
    (called there), at most this process's share of the cores (the machine's, over its local processes) that other
    jobs leave free: the 1-minute load average beyond the local processes' own threads counts as theirs (a lent
    thread the OS deschedules for another job stalls the worker's team at every barrier)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    training = torch.get_num_threads()
    others = max(0.0, os.getloadavg()[0] - local * (own + training)) if hasattr(os, "getloadavg") else 0.0
    share = round((cores - others) / local)
    return max(own, min(own + training, share))


def _scaled_difference(predicted: Delta, now: Delta, alpha: float) -> Delta:
    """``alpha (predicted - now)``: lazy for factored deltas (compacted at commit, off the training thread), a float32
    matrix for dense ones."""
    if isinstance(predicted, LowRank) and isinstance(now, LowRank):
        return (predicted - now).scaled(alpha)
    return lincomb([alpha, -alpha], [predicted, now])


def _rounded(scores: dict[int, float]) -> dict[int, float]:
    return {h: round(v, 3) for h, v in scores.items()}


_OPEN: weakref.WeakSet[TrajectoryWorker] = weakref.WeakSet()  # created and not closed


def _abandon_open_workers() -> None:
    """At interpreter exit, workers never closed (training raised before on_train_end) drop their queued fits."""
    for worker in list(_OPEN):
        worker.abandon()


# A threading exit hook runs before the interpreter joins non-daemon threads (a plain atexit one runs after, too late).
threading._register_atexit(_abandon_open_workers)
