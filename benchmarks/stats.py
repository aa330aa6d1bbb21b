"""The benchmarks' statistics: steps for a vanilla accuracy curve to reach an accuracy, the steps ratio against the
best learning rate, and a mean with its 95% t-interval, which is what "±" means in every results file
(``with_interval``). Plain Python (no torch, no scipy)."""

from __future__ import annotations

import math
import statistics

T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
"""Two-sided 95% quantiles of Student's t (the 0.975 quantile) for 1 to 30 degrees of freedom."""
Z975 = 1.959963984540054


def t95(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom: the table to 30, then the Cornish-Fisher
    expansion around the normal quantile (within 1e-4 of the exact value from 30 on)."""
    if df < 1:
        raise ValueError(f"t95: df must be >= 1, got {df}")
    if df <= len(T95):
        return T95[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample standard deviation and the half-width of a 95% t-interval (nan where n < 2)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan, math.nan
    sd = statistics.stdev(values)
    return mean, sd, t95(n - 1) * sd / math.sqrt(n)


INTERVAL = "± 95% interval"
"""How a results file labels its ± cells (a table header or the sentence above the table)."""


def with_interval(mean: float, half: float, digits: int) -> str:
    """``mean ± half`` where ``half`` is the half-width of a 95% interval; the mean alone where there is none (one
    value: ``half`` is NaN); "–" where there is no mean."""
    if math.isnan(mean):
        return "–"
    text = f"{mean:.{digits}f}"
    return text if math.isnan(half) else f"{text} ± {half:.{digits}f}"


def mean_with_interval(values: list[float], digits: int) -> str:
    """The mean of ``values`` ± its 95% t-interval, as ``with_interval`` writes it."""
    mean, _, half = mean_interval(values)
    return with_interval(mean, half, digits)


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """First step at which ``curve`` reaches ``target``, interpolated between evaluations; None if never."""
    for (s0, a0), (s1, a1) in zip(curve, curve[1:], strict=False):
        if a0 >= target:
            return float(s0)
        if a1 >= target:
            return s0 + (s1 - s0) * (target - a0) / (a1 - a0)
    return float(curve[-1][0]) if curve and curve[-1][1] >= target else None


def first_step_reaching(history: list[tuple[int, float]], accuracy: float) -> int | None:
    """First *evaluated* step of a curve at or above ``accuracy`` (to within 1e-9), not interpolated as in
    ``steps_to_reach``; None if never."""
    return next((step for step, acc in history if acc >= accuracy - 1e-9), None)


def ratio_of(curves: dict[float, list], accuracy: float, steps: int) -> tuple[float, bool, float | None]:
    """(steps ratio, whether it is a lower bound, the rate that reached ``accuracy`` first) over ``curves``
    (learning rate -> vanilla curve): the fewest vanilla steps to reach ``accuracy`` / ``steps``; where no curve
    reaches it, the longest curve's length / ``steps``, a lower bound."""
    reached = {lr: steps_to_reach(c, accuracy) for lr, c in curves.items()}
    hits = {lr: n for lr, n in reached.items() if n is not None}
    if not hits:
        return max(c[-1][0] for c in curves.values()) / steps, True, None
    best = min(hits, key=hits.get)
    return hits[best] / steps, False, best
