"""Extrapolators behind one interface, selected by name (``extrap_method``)."""

from __future__ import annotations

from typing import Any

from rlvr_extrap.extrapolators.alpharl import AlphaRLConfig, AlphaRLExtrapolator
from rlvr_extrap.extrapolators.base import Extrapolator, ExtrapolatorConfig
from rlvr_extrap.extrapolators.linear import LinearConfig, LinearExtrapolator, linear_weights
from rlvr_extrap.extrapolators.next import NextConfig, NextExtrapolator
from rlvr_extrap.extrapolators.optimizer import OptimizerConfig, OptimizerExtrapolator
from rlvr_extrap.extrapolators.relex import RelexConfig, RelexExtrapolator, RelexFit, fit_relex

EXTRAPOLATORS: dict[str, type[Extrapolator]] = {
    "relex": RelexExtrapolator,
    "linear": LinearExtrapolator,
    "next": NextExtrapolator,
    "optimizer": OptimizerExtrapolator,
    "alpharl": AlphaRLExtrapolator,
}


def get_extrapolator(method: str, **config: Any) -> Extrapolator:
    """Build the extrapolator registered as ``method`` with its config fields as keyword arguments."""
    if method not in EXTRAPOLATORS:
        raise ValueError(f"extrap_method={method!r} is not a known method; choose one of {sorted(EXTRAPOLATORS)}")
    cls = EXTRAPOLATORS[method]
    return cls(cls.config_class(**config))


__all__ = [
    "AlphaRLConfig",
    "AlphaRLExtrapolator",
    "EXTRAPOLATORS",
    "Extrapolator",
    "ExtrapolatorConfig",
    "LinearConfig",
    "LinearExtrapolator",
    "NextConfig",
    "NextExtrapolator",
    "OptimizerConfig",
    "OptimizerExtrapolator",
    "RelexConfig",
    "RelexExtrapolator",
    "RelexFit",
    "fit_relex",
    "get_extrapolator",
    "linear_weights",
]
