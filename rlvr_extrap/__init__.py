"""Trajectory extrapolation for RLVR: jump ahead in GRPO training from the fitted weight trajectory."""

from rlvr_extrap.config import ExtrapGRPOConfig, ExtrapolationArguments, ExtrapolationConfigError
from rlvr_extrap.extrapolators import EXTRAPOLATORS, Extrapolator, get_extrapolator
from rlvr_extrap.runtime.callback import ExtrapolationCallback
from rlvr_extrap.runtime.record import JumpRecord
from rlvr_extrap.runtime.state import apply_offsets

__all__ = [
    "EXTRAPOLATORS",
    "ExtrapGRPOConfig",
    "ExtrapolationArguments",
    "ExtrapolationCallback",
    "ExtrapolationConfigError",
    "Extrapolator",
    "JumpRecord",
    "apply_offsets",
    "get_extrapolator",
]
__version__ = "0.1.0"
