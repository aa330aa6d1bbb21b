"""What an edit of a weight kept of the update it was meant to add: ``Landed`` (a jump, an extrapolated checkpoint).

With ``U`` the intended update and ``L`` what the weight (or the function it computes) actually changed by, the
kept fraction is ``<L, U> / |U|^2`` and the noise ``|L - fraction U| / |U|``: a bfloat16 weight rounds a small
``U`` to a shorter, noisier ``L``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

import torch

from rlvr_extrap.linalg.lowrank import DENSE_BLOCK, LowRank, inner

__all__ = ["Landed"]


@dataclass
class Landed:
    """What a jump's edit kept of the intended update ``U``, summed over modules: ``<L, U>``, ``|L|^2``, ``|U|^2``
    with ``L`` what the module's function changed by; and the offsets' truncation (squared norms dropped, held)."""

    dot: float = 0.0
    landed_sq: float = 0.0
    intended_sq: float = 0.0
    dropped_sq: float = 0.0
    offset_sq: float = 0.0

    @classmethod
    def total(cls, parts: Iterable[Landed | None]) -> Landed | None:
        """The sums over ``parts``; None when any part was not measured."""
        parts = list(parts)
        if any(part is None for part in parts):
            return None
        return cls(*(sum(getattr(p, f.name) for p in parts) for f in fields(cls)))

    @classmethod
    def of_factors(cls, landed: LowRank, intended: LowRank) -> Landed:
        """From factored ``L`` and ``U``: inner products of the factors in float64 (``L`` ~ ``U``: no cancellation)."""
        landed, intended = (LowRank(x.left.double(), x.right.double()) for x in (landed, intended))
        return cls(inner(landed, intended), inner(landed, landed), inner(intended, intended))

    @classmethod
    def of_dense(cls, landed: torch.Tensor, intended: torch.Tensor) -> Landed:
        """From dense ``L`` and ``U``: float64 products and sums, ``DENSE_BLOCK`` elements at a time (the 2 x 2 Gram
        matrix of each block's ``[L; U]``)."""
        landed, intended = landed.reshape(-1), intended.reshape(-1)
        gram = torch.zeros(2, 2, dtype=torch.float64)
        for start in range(0, landed.numel(), DENSE_BLOCK):
            pair = torch.stack([landed[start : start + DENSE_BLOCK], intended[start : start + DENSE_BLOCK]]).double()
            gram += pair @ pair.T
        return cls(float(gram[0, 1]), float(gram[0, 0]), float(gram[1, 1]))

    @property
    def fraction(self) -> float:
        """``<L, U> / |U|^2``: the share of the update kept along its direction (1: all of it)."""
        return self.dot / self.intended_sq if self.intended_sq > 0 else 1.0

    @property
    def noise(self) -> float:
        """``|L - fraction U| / |U|``: what landed off the update's direction, relative to the update."""
        if self.intended_sq <= 0:
            return 0.0
        off_sq = self.landed_sq - self.dot**2 / self.intended_sq
        return max(off_sq, 0.0) ** 0.5 / self.intended_sq**0.5

    @property
    def truncation(self) -> float:
        """Norm the offsets' rank cap dropped, relative to the offsets' norm before the cut (0: none)."""
        return (self.dropped_sq / self.offset_sq) ** 0.5 if self.offset_sq > 0 else 0.0
