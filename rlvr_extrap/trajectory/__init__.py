"""The weight trajectory a run travels (snapshots of merged deltas on a clock) and its storage past a memory budget."""

from rlvr_extrap.trajectory.trajectory import Clock, FactorVelocity, Trajectory

__all__ = ["Clock", "FactorVelocity", "Trajectory"]
