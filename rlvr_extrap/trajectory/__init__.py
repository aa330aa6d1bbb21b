"""The weight trajectory a run travels (snapshots of merged deltas on a clock) and its storage past a memory budget."""

from rlvr_extrap.trajectory.trajectory import Clock, DenseVelocity, FactorVelocity, Trajectory, Velocity

__all__ = ["Clock", "DenseVelocity", "FactorVelocity", "Trajectory", "Velocity"]
