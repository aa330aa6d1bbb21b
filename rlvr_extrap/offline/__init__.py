"""Offline tools over saved checkpoints of any trainer: reading runs, and the extrapolate / analyze commands."""
