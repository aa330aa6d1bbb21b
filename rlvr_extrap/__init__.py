"""Trajectory extrapolation for RLVR: jump ahead in GRPO training from the fitted weight trajectory."""

from .callback import ExtrapolationCallback
from .config import ExtrapGRPOConfig, ExtrapolationArguments, ExtrapolationConfigError
from .extrapolators import EXTRAPOLATORS, Extrapolator, get_extrapolator

__all__ = [
    "EXTRAPOLATORS",
    "ExtrapGRPOConfig",
    "ExtrapolationArguments",
    "ExtrapolationCallback",
    "ExtrapolationConfigError",
    "Extrapolator",
    "get_extrapolator",
]
__version__ = "0.1.0"
