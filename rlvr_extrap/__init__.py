"""Trajectory extrapolation for RLVR: jump ahead in GRPO training from the fitted weight trajectory."""

from .callback import ExtrapolationCallback
from .config import ExtrapGRPOConfig, ExtrapolationArguments, ExtrapolationConfigError
from .extrapolators import EXTRAPOLATORS, Extrapolator, get_extrapolator
from .offsets import apply_offsets

__all__ = [
    "EXTRAPOLATORS",
    "ExtrapGRPOConfig",
    "ExtrapolationArguments",
    "ExtrapolationCallback",
    "ExtrapolationConfigError",
    "Extrapolator",
    "apply_offsets",
    "get_extrapolator",
]
__version__ = "0.1.0"
