"""Incremental bases of the factors, the jump update at its true or a truncated rank, and the snapshot spill."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import pytest
import torch

from rlvr_extrap.config import ExtrapolationArguments, ExtrapolationConfigError
from rlvr_extrap.extrapolators import get_extrapolator
from rlvr_extrap.linalg.lowrank import LowRank
from rlvr_extrap.runtime.worker import TrajectoryWorker
from rlvr_extrap.trajectory.spill import SnapshotSpill, parse_memory
from rlvr_extrap.trajectory.trajectory import DenseVelocity, Trajectory


def structured(points: int = 6, m: int = 40, n: int = 30, r: int = 3, noise: float = 0.0) -> list[LowRank]:
    """``B_t A_t``: ``B_0 = 0``, ``B_t = 2^t B`` (one left span, scaled exactly in floating point), ``A_t = A_0``
    for t < 3, then ``A_0 + 0.1 t E_t``; ``noise`` adds a random part to every ``B_t``."""
    g = torch.Generator().manual_seed(0)
    b, a0 = torch.randn(m, r, generator=g), torch.randn(r, n, generator=g)
    out = []
    for t in range(points):
        left = (b * 2.0**t if t else torch.zeros(m, r)) + noise * torch.randn(m, r, generator=g)
        right = a0 if t < 3 else a0 + 0.1 * t * torch.randn(r, n, generator=g)
        out.append(LowRank(left, right.clone()))
    return out


def test_bases_grow_by_the_new_directions_only_and_give_the_exact_gram():
    points = structured()
    traj = Trajectory()
    for t, d in enumerate(points):
        traj.append(10 * t, {"m": d})
    basis = traj._bases["m"]
    # left: B_0 = 0 adds nothing, B_1 spans 3, B_t = 2^t B adds nothing; right: A_0 spans 3, then 3 per new A_t
    assert (basis.left.rank, basis.right.rank) == (3, 3 + 3 * 3)
    assert traj.basis_rank("m") == 3
    stack = torch.stack([d.dense().flatten() for d in points]).double()
    torch.testing.assert_close(traj.gram("m"), stack @ stack.T, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_reduce_is_exact_at_the_true_rank_and_truncation_reports_its_error(noise):
    points = structured(noise=noise)
    traj = Trajectory()
    for t, d in enumerate(points):
        traj.append(10 * t, {"m": d})
    weights = [0.3, -1.0, 0.5, 2.0, 0.1, -0.7]
    dense = sum(w * d.dense() for w, d in zip(weights, points, strict=True)).double()
    combo = traj.combine("m", weights)
    exact = traj.reduce("m", combo)
    assert exact.factors.rank == traj.basis_rank("m")  # 3 without noise: the left factors span 3 directions
    torch.testing.assert_close(exact.factors.dense().double(), dense, rtol=0, atol=1e-5 * float(dense.norm()))
    singular = torch.linalg.svdvals(dense)
    for rank in (1, 2):
        cut = traj.reduce("m", combo, rank)
        applied_error = float((cut.factors.dense().double() - dense).norm() / dense.norm())
        best_error = float(singular[rank:].square().sum().sqrt() / dense.norm())
        assert cut.factors.rank == rank
        assert applied_error == pytest.approx(best_error, rel=1e-3)  # the best rank-p part (Eckart-Young)
        assert (cut.error_sq / cut.norm_sq) ** 0.5 == pytest.approx(applied_error, rel=1e-3)


def test_a_dense_atom_turns_the_basis_off():
    traj = Trajectory()
    traj.append(0, {"m": torch.ones(4, 3)})
    traj.append(10, {"m": LowRank(torch.ones(4, 1), torch.ones(1, 3))})
    assert traj.basis_rank("m") is None and traj.reduce("m", traj.combine("m", [1.0, 1.0])) is None


def snapshots(worker: TrajectoryWorker, count: int, m: int = 30, n: int = 24, r: int = 4) -> list[dict[str, LowRank]]:
    g = torch.Generator().manual_seed(3)
    sent = []
    for t in range(count):
        snap = {
            name: LowRank(torch.randn(m, r, generator=g) * (t + 1), torch.randn(r, n, generator=g))
            for name in ("q", "v")
        }
        worker.add_snapshot(10 * t, snap).result()
        sent.append(snap)
    return sent


def test_a_truncated_jump_applies_the_best_rank_p_update_and_commits_what_it_applied():
    exact, cut = TrajectoryWorker(get_extrapolator("relex")), TrajectoryWorker(get_extrapolator("relex"), edit_rank=5)
    snapshots(exact, 5)
    sent = snapshots(cut, 5)
    full, plan = exact.plan_jump(40, 20, 1.0).result(), cut.plan_jump(40, 20, 1.0).result()
    assert full.edit_error is None and full.edit_rank == 5 * 4  # lazy and exact: 5 points of rank 4
    assert plan.edit_rank == 5
    error_sq = norm_sq = 0.0
    for name, update in plan.updates.items():
        planned = full.updates[name].dense().double()
        singular = torch.linalg.svdvals(planned)
        torch.testing.assert_close(
            (update.dense().double() - planned).norm(), singular[5:].square().sum().sqrt(), rtol=1e-3, atol=0
        )
        error_sq += float((update.dense().double() - planned).square().sum())
        norm_sq += float(planned.square().sum())
    assert plan.edit_error == pytest.approx((error_sq / norm_sq) ** 0.5, rel=1e-3)
    cut.commit_jump(plan).result()
    for name, offset in cut.offsets.items():  # the trajectory continues from what was applied, not the plan
        torch.testing.assert_close(offset.dense(), plan.updates[name].dense(), rtol=1e-4, atol=1e-4)
        origin = sent[-1][name].dense() + plan.updates[name].dense()
        torch.testing.assert_close(cut.trajectory.deltas[name][0].dense(), origin, rtol=1e-4, atol=1e-4)
    for worker in (exact, cut):
        worker.close()


def test_a_streamed_plan_is_handed_over_before_its_reduction_and_each_read_waits_for_its_module(monkeypatch):
    whole, streamed = (TrajectoryWorker(get_extrapolator("relex"), edit_rank=5) for _ in range(2))
    snapshots(whole, 5)
    snapshots(streamed, 5)
    reference = whole.plan_jump(40, 20, 1.0).result()
    release, reducing = threading.Event(), []
    reduce = streamed.trajectory.reduce

    def held(name, delta, rank=None):  # the second module waits for the test's signal
        reducing.append(name)
        if len(reducing) == 2:
            assert release.wait(30)
        return reduce(name, delta, rank)

    monkeypatch.setattr(streamed.trajectory, "reduce", held)
    plan = streamed.plan_jump(40, 20, 1.0, stream=True).result()
    updates = plan.reduced_updates()
    first, second = list(updates)
    assert updates[first].rank == 5  # reduced while the second is still held
    reader = ThreadPoolExecutor(1).submit(lambda: updates[second])
    with pytest.raises(FutureTimeout):
        reader.result(timeout=0.5)
    assert plan.edit_rank is None  # not settled yet
    release.set()
    assert reader.result(timeout=30).rank == 5
    plan.settled()
    assert (plan.edit_rank, plan.reduce_error) == (5, None)
    assert plan.edit_error == pytest.approx(reference.edit_error, rel=1e-9)
    for name in (first, second):
        torch.testing.assert_close(updates[name].dense(), reference.updates[name].dense())
    for worker in (whole, streamed):
        worker.close()


def test_the_reader_of_a_streamed_plan_reduces_modules_from_the_back_instead_of_waiting(monkeypatch):
    whole, streamed = (TrajectoryWorker(get_extrapolator("relex"), edit_rank=5) for _ in range(2))
    snapshots(whole, 5)
    snapshots(streamed, 5)
    reference = whole.plan_jump(40, 20, 1.0).result()
    entered, release, threads = threading.Event(), threading.Event(), {}
    reduce = streamed.trajectory.reduce

    def held(name, delta, rank=None):  # the worker's first module waits for the test's signal
        threads[name] = threading.current_thread().name
        if name == "q":
            entered.set()
            assert release.wait(30)
        return reduce(name, delta, rank)

    monkeypatch.setattr(streamed.trajectory, "reduce", held)
    plan = streamed.plan_jump(40, 20, 1.0, stream=True).result()
    assert entered.wait(30)  # the worker holds "q", the first module
    items = iter(plan.reduced_updates().items())
    name, update = next(items)  # not waiting for "q": the last module, reduced on this thread
    assert (name, update.rank, threads["v"]) == ("v", 5, threading.current_thread().name)
    release.set()
    name, update = next(items)
    assert (name, update.rank) == ("q", 5) and threads["q"].startswith("rlvr-extrap")
    assert next(items, None) is None
    plan.settled()
    assert (plan.edit_rank, plan.reduce_error) == (5, None) and plan.reduce_seconds > 0
    assert plan.edit_error == pytest.approx(reference.edit_error, rel=1e-9)
    for name in ("q", "v"):
        torch.testing.assert_close(plan.updates[name].dense(), reference.updates[name].dense())
    for worker in (whole, streamed):
        worker.close()


def test_a_module_the_reader_fails_to_reduce_is_applied_exact(monkeypatch):
    worker = TrajectoryWorker(get_extrapolator("relex"), edit_rank=5)
    snapshots(worker, 5)
    entered, release = threading.Event(), threading.Event()
    reduce = worker.trajectory.reduce

    def failing(name, delta, rank=None):
        if name == "q":  # the worker's: held until the reader has failed on "v"
            entered.set()
            assert release.wait(30)
            return reduce(name, delta, rank)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(worker.trajectory, "reduce", failing)
    plan = worker.plan_jump(40, 20, 1.0, stream=True).result()
    assert entered.wait(30)
    items = iter(plan.reduced_updates().items())
    assert next(items)[0] == "v"
    release.set()
    updates = dict([*items, ("v", plan.updates["v"])])
    assert plan.settled().reduce_error == "RuntimeError: out of memory"
    assert (updates["q"].rank, updates["v"].rank) == (5, 5 * 4)  # "v": its exact, lazy combination
    worker.close()


def test_a_streamed_reduction_that_fails_applies_the_modules_left_exact(monkeypatch):
    worker = TrajectoryWorker(get_extrapolator("relex"), edit_rank=5)
    snapshots(worker, 5)
    reduce, calls = worker.trajectory.reduce, []

    def failing(name, delta, rank=None):
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return reduce(name, delta, rank)

    monkeypatch.setattr(worker.trajectory, "reduce", failing)
    plan = worker.plan_jump(40, 20, 1.0, stream=True).result()
    updates = dict(plan.reduced_updates())
    assert plan.settled().reduce_error == "RuntimeError: out of memory"
    assert [updates[name].rank for name in calls] == [5, 5 * 4]  # the second: its exact, lazy combination
    worker.close()


def test_spilled_snapshots_give_the_same_trajectory_and_jump(tmp_path):
    plain = TrajectoryWorker(get_extrapolator("relex"))
    spill = SnapshotSpill(tmp_path / "spill", budget=3 * 2 * (30 + 24) * 4 * 4)  # room for three snapshots
    spilled = TrajectoryWorker(get_extrapolator("relex"), spill=spill)
    snapshots(plain, 6)
    snapshots(spilled, 6)
    assert spill.spilled == 3 and len(list((tmp_path / "spill").iterdir())) == 3
    assert spill.resident_bytes() <= spill.budget
    for name in plain.trajectory.modules:
        torch.testing.assert_close(spilled.trajectory.gram(name), plain.trajectory.gram(name), rtol=0, atol=0)
    first = spilled.trajectory.deltas["q"][0]
    assert not first.left.untyped_storage().resizable()  # a view of the memory map, not an allocation
    plans = [w.plan_jump(50, 20, 1.0).result() for w in (plain, spilled)]
    for name, update in plans[0].updates.items():
        torch.testing.assert_close(plans[1].updates[name].dense(), update.dense(), rtol=0, atol=0)
    spilled.commit_jump(plans[1]).result()
    left = sorted(p.name for p in (tmp_path / "spill").iterdir())  # the old segment's files are gone
    assert all(name.startswith("offset-50") for name in left), left
    for worker in (plain, spilled):
        worker.close()
    assert not (tmp_path / "spill").exists()  # the last segment's files and the directory are gone


@pytest.mark.parametrize("with_velocities", [False, True])  # the optimizer method: a velocity as large as the point
def test_a_dense_snapshot_is_given_room_before_it_is_computed(tmp_path, monkeypatch, with_velocities):
    """Full-parameter snapshots: the oldest is spilled before the new one (and its dense velocity) is computed, so the
    snapshots held never exceed the budget (only the subtraction of one module is in flight beyond it); the Gram
    matrix is unchanged."""
    shapes = {"q": (30, 24), "v": (12, 24)}
    snapshot = sum(m * n for m, n in shapes.values()) * 2 * (1 + with_velocities)  # bfloat16
    spill = SnapshotSpill(tmp_path / "spill", budget=3 * snapshot)
    plain, spilled = (TrajectoryWorker(get_extrapolator("relex"), spill=s) for s in (None, spill))
    held, asked = [], []
    make_room = spill.make_room
    monkeypatch.setattr(
        spill, "make_room", lambda n: (make_room(n), held.append(spill.resident_bytes() + n), asked.append(n))
    )
    g = torch.Generator().manual_seed(0)
    weights = {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}
    for t in range(6):
        weights = {name: w + 0.01 * torch.randn(w.shape, generator=g) for name, w in weights.items()}
        velocities = (
            {name: DenseVelocity(torch.randn(w.shape, generator=g).bfloat16(), 0.9) for name, w in weights.items()}
            if with_velocities
            else None
        )
        for worker in (plain, spilled):
            worker.add_weights(10 * t, dict(weights), torch.bfloat16, velocities).result()
            assert worker is plain or spill.resident_bytes() <= spill.budget
    assert set(asked) == {snapshot}  # room for the point and its velocity (already in memory) both
    assert held and max(held) <= spill.budget and spill.spilled == 3 * (1 + with_velocities)
    for name in shapes:
        torch.testing.assert_close(spilled.trajectory.gram(name), plain.trajectory.gram(name), rtol=0, atol=0)
    for worker in (plain, spilled):
        worker.close()


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (4096, 4096),
        ("4GiB", 4 * 2**30),
        ("500MB", 500 * 10**6),
        ("1.5e9", 1_500_000_000),
        ("2 kib", 2048),
        (None, None),
    ],
)
def test_memory_sizes_parse(value, size):
    assert parse_memory(value) == size


@pytest.mark.parametrize("value", ["4 parsecs", "-1GB", "0", True, "lots"])
def test_a_bad_memory_budget_names_the_field_and_the_fix(value):
    with pytest.raises(ExtrapolationConfigError, match=r"extrap_snapshot_memory=.*'4GiB'"):
        ExtrapolationArguments(extrap_method="relex", extrap_snapshot_memory=value).validate_extrapolation()


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_a_bad_edit_rank_names_the_field_and_the_fix(value):
    with pytest.raises(ExtrapolationConfigError, match=r"extrap_edit_rank=.*None for the exact update"):
        ExtrapolationArguments(extrap_method="relex", extrap_edit_rank=value).validate_extrapolation()
