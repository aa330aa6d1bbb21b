"""Forecast skill (backtests of an extrapolator on the trajectory itself) and per-module diagnostics."""
