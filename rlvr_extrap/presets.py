"""Presets: the ``extrap_*`` values each anchor method's reference code fixes (``extrap_preset``; docs/methods.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PRESETS", "Preset"]


@dataclass(frozen=True)
class Preset:
    """The ``extrap_*`` values a reference's code fixes; the fields it leaves free (its parameters) stay the user's."""

    reference: str
    fixed: dict[str, Any]
    method_config: str | None = None
    """A classmethod of the method's config class that returns the reference's config (``NextConfig.reference``)."""
    periodic: bool = False
    """With ``extrap_jump_at`` empty, jump every ``extrap_snapshot_every`` steps (m) up to ``max_steps``."""
    required: dict[str, str] | None = None
    """Fields the reference takes as input, which must be set: name -> what it is."""


# the references jump without a gate, a guard or a scale of their own
UNCONDITIONAL: dict[str, Any] = {
    "extrap_min_skill": None,
    "extrap_min_energy": None,
    "extrap_min_r2": None,
    "extrap_max_update_ratio": None,
    "extrap_guard": False,
    "extrap_alpha": 1.0,
}
PRESETS: dict[str, Preset] = {
    "relex": Preset(
        "weizhepei/RELEX",
        {
            "extrap_method": "relex",
            "extrap_rank": 1,
            "extrap_through_origin": False,
            "extrap_keep_residual": False,
            "extrap_time_axis": "steps",
            **UNCONDITIONAL,
        },
    ),
    "next": Preset(
        "RUCAIBox/NExt",
        {"extrap_method": "next", "extrap_snapshot_every": 10, **UNCONDITIONAL},
        method_config="reference",
    ),
    "rl-extra": Preset(
        "Miaow-Lab/RLVR-Linearity",
        {
            "extrap_method": "linear",
            "extrap_time_axis": "steps",
            "extrap_fit_window": None,
            "extrap_optimizer_policy": "reset",
            **UNCONDITIONAL,
        },
        periodic=True,
    ),
    "alpharl": Preset(
        "caiyuchen-ustc/AlphaRL",
        {"extrap_method": "alpharl", "extrap_add_to_last": True, **UNCONDITIONAL},
        required={"extrap_target_score": "the accuracy the reference maps back to weights"},
    ),
}
