"""Jumps at scale: lazy combinations, one shared offset per segment, half-precision snapshots."""

from __future__ import annotations

import pytest
import torch

from rlvr_extrap.extrapolators import get_extrapolator
from rlvr_extrap.linalg.lowrank import Combination, LowRank, inner, lincomb
from rlvr_extrap.runtime.worker import TrajectoryWorker
from rlvr_extrap.trajectory.trajectory import Trajectory


def factors(g: torch.Generator, m: int, n: int, k: int, dtype=torch.float64) -> LowRank:
    return LowRank(torch.randn(m, k, generator=g, dtype=dtype), torch.randn(k, n, generator=g, dtype=dtype))


def test_combination_is_the_weighted_sum_and_merges_identical_terms():
    g = torch.Generator().manual_seed(0)
    a, b, c = (factors(g, 6, 5, k) for k in (2, 3, 1))
    combo = Combination.of(a, b, weights=[2.0, -0.5])
    torch.testing.assert_close(combo.dense(), 2 * a.dense() - 0.5 * b.dense())
    torch.testing.assert_close((combo + c).scaled(3.0).dense(), 3 * (combo.dense() + c.dense()))
    step = (combo + c) - combo  # the shared terms cancel exactly: only c is left, by reference
    assert step.terms == (c,) and step.weights == (1.0,)
    assert (Combination.of(a) - a).dense().abs().max() == 0
    assert inner(combo, c) == pytest.approx(float((combo.dense() * c.dense()).sum()), rel=1e-12)
    assert inner(combo, combo) == pytest.approx(float((combo.dense() ** 2).sum()), rel=1e-12)
    torch.testing.assert_close(lincomb([1.0, 2.0], [combo, c]).dense(), combo.dense() + 2 * c.dense())
    torch.testing.assert_close(combo.compact().dense(), combo.dense())
    assert isinstance(combo, LowRank) and combo.rank == 5 and combo.left.shape == (6, 5)


def offset_trajectory(shared: bool, points: int = 6) -> tuple[Trajectory, LowRank]:
    """``offset + L_t`` for a drifting L_t: shared (one offset atom) or eagerly concatenated per point."""
    g = torch.Generator().manual_seed(1)
    offset, drift = factors(g, 9, 7, 4), factors(g, 9, 7, 2)
    traj = Trajectory()
    for t in range(points):
        lora = LowRank(drift.left * (t + 1), drift.right + 0.1 * torch.randn(2, 7, generator=g, dtype=torch.float64))
        traj.append(10 * t, {"m": Combination.of(offset, lora) if shared else offset + lora})
    return traj, offset


@pytest.mark.parametrize("method", ["relex", "linear"])
def test_a_shared_offset_gives_the_same_gram_and_prediction_as_concatenated_points(method):
    shared, offset = offset_trajectory(shared=True)
    eager, _ = offset_trajectory(shared=False)
    assert len(shared.atoms("m")) == len(shared) + 1 and shared.atoms("m")[0] is offset
    torch.testing.assert_close(shared.gram("m"), eager.gram("m"), rtol=1e-10, atol=1e-10)
    predictions = []
    for traj in (shared, eager):
        ex = get_extrapolator(method)
        ex.fit(traj)
        predictions.append(ex.predict_module("m", 90).dense())
    torch.testing.assert_close(predictions[0], predictions[1], rtol=1e-5, atol=1e-8)
    prefix = shared.prefix(4)
    torch.testing.assert_close(prefix.combine("m", [0.0, 0.0, 0.0, 1.0]).dense(), shared.deltas["m"][3].dense())


def test_a_fork_takes_new_points_and_leaves_the_trajectory_as_it_was():
    traj, _ = offset_trajectory(shared=True, points=4)
    traj.labels = {0: 0.1, 30: 0.4}
    gram, atoms, rank = traj.gram("m").clone(), len(traj.atoms("m")), traj.basis_rank("m")
    fork = traj.fork()
    fork.labels[60] = 0.5
    assert traj.labels == {0: 0.1, 30: 0.4} and fork.labels == {0: 0.1, 30: 0.4, 60: 0.5}
    assert len(Trajectory().fork()) == 0
    point = factors(torch.Generator().manual_seed(3), 9, 7, 2)
    fork.append(60, {"m": point})  # a new factored atom in new directions: grows the fork's basis
    assert len(traj) == 4 and len(traj.atoms("m")) == atoms and traj.basis_rank("m") == rank
    torch.testing.assert_close(traj.gram("m"), gram, rtol=0, atol=0)
    assert fork.basis_rank("m") > rank and len(fork) == 5
    torch.testing.assert_close(fork.gram("m")[:4, :4], gram, rtol=0, atol=0)
    reduced = fork.reduce("m", fork.combine("m", [0.0] * 4 + [1.0])).factors  # float32, the edit's precision
    torch.testing.assert_close(reduced.dense().double(), point.dense(), rtol=1e-5, atol=1e-5)


def synthetic_snapshots(
    worker: TrajectoryWorker, count: int, dtype=torch.float32, shapes=(("q", 8, 6), ("o", 5, 8))
) -> list[dict[str, LowRank]]:
    g = torch.Generator().manual_seed(2)
    direction = {name: (m, n) for name, m, n in shapes}
    sent = []
    for t in range(count):
        snapshot = {
            name: LowRank(
                (torch.randn(m, 3, generator=g) * (t + 1)).to(dtype), torch.randn(3, n, generator=g).to(dtype)
            )
            for name, (m, n) in direction.items()
        }
        worker.add_snapshot(5 * t, snapshot).result()
        sent.append(snapshot)
    return sent


def test_the_jump_update_references_the_points_and_equals_the_eager_update():
    worker = TrajectoryWorker(get_extrapolator("relex"))
    sent = synthetic_snapshots(worker, 3, shapes=(("q", 12, 10), ("o", 10, 12)))  # 9 factor columns: full rank
    plan = worker.plan_jump(10, 30, 0.5).result()
    traj = worker.trajectory
    ex = get_extrapolator("relex")
    ex.fit(traj)
    for name, update in plan.updates.items():
        assert isinstance(update, Combination)
        assert {id(t) for t in update.terms} <= {id(d) for d in traj.atoms(name)}  # no copied factors
        weights = ex.combination(name, plan.target_step)
        expected = 0.5 * (lincomb(weights, [s[name] for s in sent]).dense() - sent[-1][name].dense())
        torch.testing.assert_close(update.dense(), expected, rtol=1e-5, atol=1e-5)
    worker.commit_jump(plan).result()
    worker.close()


def test_after_a_jump_the_offset_is_stored_once_per_segment():
    worker = TrajectoryWorker(get_extrapolator("linear"))
    sent = synthetic_snapshots(worker, 3)
    plan = worker.plan_jump(10, 10, 1.0).result()
    worker.commit_jump(plan).result()
    new = {n: LowRank(d.left * 2, d.right) for n, d in sent[-1].items()}
    worker.add_snapshot(15, new).result()
    for name, offset in worker.offsets.items():
        atoms = worker.trajectory.atoms(name)
        assert len(atoms) == 3 and atoms[0] is offset  # the offset, the jump step's LoRA delta, the new one
        origin = sent[-1][name].dense() + plan.updates[name].dense()
        torch.testing.assert_close(worker.trajectory.deltas[name][0].dense(), origin, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(worker.trajectory.deltas[name][1].dense(), offset.dense() + new[name].dense())
    worker.close()


def test_half_precision_snapshots_fit_in_float32():
    full, half = (TrajectoryWorker(get_extrapolator("relex")) for _ in range(2))
    synthetic_snapshots(full, 4)
    synthetic_snapshots(half, 4, dtype=torch.bfloat16)
    for name in full.trajectory.modules:
        gram = full.trajectory.gram(name)  # bfloat16 rounding: errors relative to the largest entry
        torch.testing.assert_close(half.trajectory.gram(name), gram, rtol=0, atol=1e-2 * float(gram.abs().max()))
    plan = half.plan_jump(15, 10, 1.0).result()
    half.commit_jump(plan).result()  # compaction of bfloat16 factors runs in float32
    assert all(o.left.dtype == torch.float32 for o in half.offsets.values())
    for worker in (full, half):
        worker.close()
