"""Property-based tests (hypothesis) for the factored math, the extrapolators and config validation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlvr_extrap import ExtrapolationArguments, ExtrapolationConfigError, get_extrapolator
from rlvr_extrap.linalg.lowrank import LowRank, inner, lincomb
from rlvr_extrap.trajectory.trajectory import Trajectory

dims = st.integers(min_value=1, max_value=7)


@settings(max_examples=40, deadline=None)
@given(m=dims, n=dims, k1=dims, k2=dims, w1=st.floats(-3, 3), w2=st.floats(-3, 3), seed=st.integers(0, 10_000))
def test_factored_inner_and_lincomb_match_dense(m, n, k1, k2, w1, w2, seed):
    g = torch.Generator().manual_seed(seed)
    a = LowRank(
        torch.randn(m, k1, generator=g, dtype=torch.float64), torch.randn(k1, n, generator=g, dtype=torch.float64)
    )
    b = LowRank(
        torch.randn(m, k2, generator=g, dtype=torch.float64), torch.randn(k2, n, generator=g, dtype=torch.float64)
    )
    assert inner(a, b) == pytest.approx(float((a.dense() * b.dense()).sum()), rel=1e-9, abs=1e-9)
    combined = lincomb([w1, w2], [a, b])
    torch.testing.assert_close(combined.dense(), w1 * a.dense() + w2 * b.dense())
    # compact() drops singular values below rtol * s_max (1e-7): at most that much per dropped direction
    s_max = float(torch.linalg.matrix_norm(combined.dense(), ord=2))
    bound = 1e-7 * s_max * math.sqrt(k1 + k2) + 1e-12
    torch.testing.assert_close(combined.compact().dense(), combined.dense(), rtol=0.0, atol=bound)


@settings(max_examples=30, deadline=None)
@given(
    gaps=st.lists(st.integers(1, 20), min_size=2, max_size=8),
    slope=st.floats(0.05, 2.0),
    intercept=st.floats(-1.0, 1.0),
    ahead=st.integers(1, 500),
    method=st.sampled_from(["relex", "linear"]),
)
def test_any_rank1_linear_trajectory_is_recovered(gaps, slope, intercept, ahead, method):
    steps = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    direction = torch.arange(12, dtype=torch.float64).reshape(3, 4) - 5.0
    traj = Trajectory()
    for t in steps:
        traj.append(t, {"m": (slope * t + intercept) * direction})
    ex = get_extrapolator(method)
    ex.fit(traj)
    target = steps[-1] + ahead
    torch.testing.assert_close(
        ex.predict_module("m", target), (slope * target + intercept) * direction, rtol=1e-6, atol=1e-6
    )


@settings(max_examples=60, deadline=None)
@given(
    jumps=st.lists(st.integers(-5, 60), max_size=4),
    every=st.integers(-2, 15),
    horizon=st.integers(-5, 50),
    window=st.one_of(st.none(), st.integers(-1, 6)),
    method=st.sampled_from(["relex", "linear", "next", "bogus"]),
    scales=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
    prompts=st.integers(-2, 64),
    tolerance=st.floats(allow_nan=True, allow_infinity=True),
    timeout=st.one_of(st.none(), st.floats(-10, 1000)),
)
def test_config_validation_either_passes_or_names_a_field(
    jumps, every, horizon, window, method, scales, prompts, tolerance, timeout
):
    args = ExtrapolationArguments(
        extrap_method=method,
        extrap_jump_at=jumps,
        extrap_snapshot_every=every,
        extrap_horizon=horizon,
        extrap_fit_window=window,
        extrap_guard_scales=scales,
        extrap_guard_prompts=prompts,
        extrap_guard_tolerance=tolerance,
        extrap_fit_timeout=timeout,
    )
    try:
        args.validate_extrapolation()
    except ExtrapolationConfigError as err:
        assert "extrap_" in str(err)
    else:
        assert method != "bogus" and every >= 1 and horizon >= 1 and jumps == sorted(set(jumps))
        assert scales and all(math.isfinite(c) and c > 0 for c in scales) and prompts >= 1
        assert math.isfinite(tolerance) and tolerance >= 0 and (timeout is None or timeout > 0)
