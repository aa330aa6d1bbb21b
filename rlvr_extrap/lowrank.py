"""Matrices kept in factored form, and the few linear-algebra operations the extrapolators need.

A LoRA module's weight delta is ``s * B @ A``: rank ``r``, far smaller than the ``m x n`` matrix.
Every method here only needs inner products between deltas and linear combinations of them, and
both can be done on the factors: ``<L1 R1, L2 R2> = trace((L1^T L2)(R2 R1^T))`` and a sum of
factored matrices is the product of concatenated factors. Dense tensors are accepted everywhere too
(full-parameter trajectories), so a ``Delta`` is either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Delta", "LowRank", "inner", "gram_row", "lincomb", "to_dense", "frobenius_norm"]


@dataclass(frozen=True)
class LowRank:
    """The matrix ``left @ right``, with ``left`` of shape (m, k) and ``right`` of shape (k, n)."""

    left: torch.Tensor
    right: torch.Tensor

    def __post_init__(self) -> None:
        if self.left.dim() != 2 or self.right.dim() != 2 or self.left.shape[1] != self.right.shape[0]:
            raise ValueError(
                f"LowRank needs left (m, k) and right (k, n); got {tuple(self.left.shape)} and "
                f"{tuple(self.right.shape)}"
            )

    @classmethod
    def zeros(cls, m: int, n: int, dtype: torch.dtype = torch.float32) -> LowRank:
        return cls(torch.zeros(m, 0, dtype=dtype), torch.zeros(0, n, dtype=dtype))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.left.shape[0], self.right.shape[1])

    @property
    def rank(self) -> int:
        """Inner dimension of the factors (an upper bound on the matrix rank)."""
        return self.left.shape[1]

    def dense(self) -> torch.Tensor:
        return self.left @ self.right

    def scaled(self, c: float) -> LowRank:
        return LowRank(self.left * c, self.right)

    def __add__(self, other: LowRank) -> LowRank:
        if self.shape != other.shape:
            raise ValueError(f"cannot add LowRank of shape {self.shape} and {other.shape}")
        return LowRank(torch.cat([self.left, other.left], 1), torch.cat([self.right, other.right], 0))

    def __sub__(self, other: LowRank) -> LowRank:
        return self + other.scaled(-1.0)

    def compact(self, rtol: float = 1e-7) -> LowRank:
        """The same matrix with the smallest inner dimension (QR of both factors, SVD of the core)."""
        if self.rank == 0:
            return self
        q_l, r_l = torch.linalg.qr(self.left)
        q_r, r_r = torch.linalg.qr(self.right.T)
        u, s, vh = torch.linalg.svd(r_l @ r_r.T, full_matrices=False)
        keep = s > (s[0] * rtol if s.numel() else 0)
        return LowRank(q_l @ (u[:, keep] * s[keep]), vh[keep] @ q_r.T)


Delta = LowRank | torch.Tensor


def inner(a: Delta, b: Delta) -> float:
    """Frobenius inner product ``<a, b> = sum(a * b)``, computed on the factors when there are any."""
    if isinstance(a, LowRank) and isinstance(b, LowRank):
        return float(torch.sum((a.left.T @ b.left) * (a.right @ b.right.T)))
    return float(torch.dot(to_dense(a).reshape(-1), to_dense(b).reshape(-1)))


def gram_row(new: Delta, previous: Sequence[Delta]) -> torch.Tensor:
    """Inner products of ``new`` with each of ``previous`` and with itself, as one row (float64)."""
    return torch.tensor([inner(new, p) for p in previous] + [inner(new, new)], dtype=torch.float64)


def lincomb(weights: Sequence[float], deltas: Sequence[Delta]) -> Delta:
    """``sum_i weights[i] * deltas[i]``: concatenated factors for LowRank, a dense sum otherwise."""
    if len(weights) != len(deltas) or not deltas:
        raise ValueError(f"lincomb needs as many weights as deltas (>0); got {len(weights)} and {len(deltas)}")
    terms = [(float(w), d) for w, d in zip(weights, deltas, strict=True) if w != 0.0]
    if all(isinstance(d, LowRank) for d in deltas):
        if not terms:
            return LowRank.zeros(*deltas[0].shape, dtype=deltas[0].left.dtype)
        return LowRank(torch.cat([d.left * w for w, d in terms], 1), torch.cat([d.right for _, d in terms], 0))
    out = torch.zeros_like(to_dense(deltas[0]))
    for w, d in terms:
        out.add_(to_dense(d), alpha=w)
    return out


def to_dense(d: Delta) -> torch.Tensor:
    return d.dense() if isinstance(d, LowRank) else d


def frobenius_norm(d: Delta) -> float:
    return max(inner(d, d), 0.0) ** 0.5
