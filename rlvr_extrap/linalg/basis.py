"""Orthonormal bases of a module's concatenated factors, extended as snapshots arrive and never formed.

For the factored atoms ``L_1 R_1, ..., L_J R_J`` of one module let ``[L] = [L_1 .. L_J]`` (m x N) and
``[R] = [R_1; ..; R_J]`` (N x n). Each side keeps ``P`` (k x N, block upper triangular) with ``[L] = Q P`` for an
orthonormal ``Q`` (m x k) that exists only implicitly, ``Q = [L] X``: adding an atom costs its cross products with
the atoms already held (``L_i^T L_new``, which the trajectory's Gram row needs anyway) and ``r x r`` work. Any
combination ``sum_j w_j L_j R_j`` is then ``Q_L K Q_R^T`` with the small core ``K = P_L diag(w) P_R^T``
(k x k'), whose rank and singular values are the combination's own: its true rank, its best rank-p
approximation and that approximation's error come from the core, and only the final factors touch the
m- and n-sized matrices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlvr_extrap.linalg.lowrank import LowRank

__all__ = ["FactorBasis", "ModuleBasis", "Reduced"]

RANK_RTOL = 1e-10
"""A new direction is kept when its squared norm outside the basis is above this fraction of the factor's
(largest column's). The cross products are float64, so only what is in the span up to round-off (a zero factor, a
repeated or a linearly dependent one) adds no column, and a reduction without truncation is exact."""


class FactorBasis:
    """One side's implicit orthonormal basis ``Q = [L] X`` of the concatenated factors, block by block."""

    def __init__(self) -> None:
        self.rank = 0  # k: columns of Q
        self._coords: list[torch.Tensor] = []  # block j (float64): (k after block j, r_j), factor j's coordinates in Q
        self._pinv: list[torch.Tensor] = []  # block j (float64): (r_j, k_new_j), Q_new_j = (F_j - Q_<j C_j) pinv_j
        self._start: list[int] = []  # first column of Q that block j added

    @property
    def columns(self) -> int:
        """N: the factors' total inner dimension."""
        return sum(c.shape[1] for c in self._coords)

    def extend(self, cross: torch.Tensor, own: torch.Tensor) -> None:
        """Add factor ``F`` given ``cross = [F_1 .. F_J]^T F`` (N x r) and ``own = F^T F`` (r x r)."""
        cross, own = cross.to(torch.float64), own.to(torch.float64)
        c = self._project(cross)  # Q^T F (k x r)
        schur = own - c.T @ c
        evals, evecs = torch.linalg.eigh((schur + schur.T) / 2)
        keep = evals > RANK_RTOL * max(float(own.diagonal().max()) if own.numel() else 0.0, 1e-300)
        evals, evecs = evals[keep], evecs[:, keep]
        self._start.append(self.rank)
        self._coords.append(torch.cat([c, evals.sqrt()[:, None] * evecs.T], 0))
        self._pinv.append(evecs / evals.sqrt())
        self.rank += int(keep.sum())

    def _project(self, cross: torch.Tensor) -> torch.Tensor:
        """``Q^T F`` from ``[F_1 .. F_J]^T F`` (forward substitution over the blocks)."""
        out = torch.zeros(self.rank, cross.shape[1], dtype=torch.float64)
        row = 0
        for coords, pinv, start in zip(self._coords, self._pinv, self._start, strict=True):
            r = coords.shape[1]
            out[start : start + pinv.shape[1]] = pinv.T @ (cross[row : row + r] - coords[:start].T @ out[:start])
            row += r
        return out

    def blocks(self, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
        """``P`` by block columns without its zeros: block ``j`` (``k_j x r_j``) fills rows ``[0, k_j)``."""
        return [c.to(dtype) for c in self._coords]

    def matrix(self) -> torch.Tensor:
        """``P`` (k x N): factor columns in the basis, ``[F_1 .. F_J] = Q P``."""
        out = torch.zeros(self.rank, self.columns, dtype=torch.float64)
        col = 0
        for coords in self._coords:
            out[: coords.shape[0], col : col + coords.shape[1]] = coords
            col += coords.shape[1]
        return out

    def lift(self, y: torch.Tensor) -> torch.Tensor:
        """``X`` (N x p) with ``Q y = [F_1 .. F_J] X`` for ``y`` (k x p) (backward substitution over the blocks)."""
        y = y.to(torch.float64).clone()
        blocks = []
        for coords, pinv, start in reversed(list(zip(self._coords, self._pinv, self._start, strict=True))):
            x = pinv @ y[start : start + pinv.shape[1]]
            y[:start] -= coords[:start] @ x
            blocks.append(x)
        return torch.cat(blocks[::-1], 0)


@dataclass(frozen=True)
class Reduced:
    """A combination as factors of reduced rank, with its squared Frobenius norm and the squared error dropped."""

    factors: LowRank
    norm_sq: float
    error_sq: float


class ModuleBasis:
    """The left and right bases of one module's factored atoms (the columns of ``[L]`` and rows of ``[R]``)."""

    def __init__(self) -> None:
        self.left, self.right = FactorBasis(), FactorBasis()
        self.ranks: list[int] = []  # inner dimension of each atom

    def add(self, left_cross: torch.Tensor, left_own: torch.Tensor, right_cross: torch.Tensor, right_own: torch.Tensor):
        """Extend both sides by one atom ``L R`` (cross products with the atoms held, in their order)."""
        self.left.extend(left_cross, left_own)
        self.right.extend(right_cross, right_own)
        self.ranks.append(left_own.shape[0])

    def core(self, weights: Sequence[float]) -> torch.Tensor:
        """``K = P_L diag(w) P_R^T`` (k x k'): the combination ``sum_j w_j atom_j`` is ``Q_L K Q_R^T``."""
        return (self.left.matrix() * self._scale(weights)) @ self.right.matrix().T

    def _scale(self, weights: Sequence[float]) -> torch.Tensor:
        """The atoms' weights, one per factor column."""
        return torch.repeat_interleave(torch.tensor(weights, dtype=torch.float64), torch.tensor(self.ranks))

    def reduce(
        self, atoms: Sequence[LowRank], weights: Sequence[float], norm_sq: float, rank: int | None = None
    ) -> Reduced:
        """``sum_j weights[j] atoms[j]`` as factors of rank ``min(k, k')``, or its best rank-``rank`` part.

        ``norm_sq`` is the combination's squared norm from the exact Gram matrix of the atoms. The truncated
        factors are ``Q_L U_p S_p`` and ``V_p^T Q_R^T`` from a randomized SVD of the core ``K`` (applied as
        ``P_L (w * (P_R^T x))``, never formed), an orthogonal projection of the combination, so the squared error
        is ``norm_sq - sum(S_p^2)``, exact up to round-off.
        """
        k_left, k_right = self.left.rank, self.right.rank
        if rank is None or rank >= min(k_left, k_right):
            core = self.core(weights)
            if k_left <= k_right:
                left_y, right_y = torch.eye(k_left, dtype=torch.float64), core.T
            else:
                left_y, right_y = core, torch.eye(k_right, dtype=torch.float64)
            kept = float(core.square().sum())
        else:
            u, s, v = _top_singular(self.left, self._scale(weights), self.right, rank)
            left_y, right_y = u * s, v
            kept = float(s.square().sum())
        left = _gather(self.left.lift(left_y), [a.left for a in atoms], self.ranks, transpose=False)
        right = _gather(self.right.lift(right_y), [a.right for a in atoms], self.ranks, transpose=True)
        return Reduced(LowRank(left, right), norm_sq, max(norm_sq - kept, 0.0))


def _times(blocks: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``P x`` for ``P`` given by its ``blocks`` (block upper triangular: about half the work of the dense product)."""
    out = x.new_zeros(blocks[-1].shape[0], x.shape[1])
    col = 0
    for block in blocks:
        out[: block.shape[0]].addmm_(block, x[col : col + block.shape[1]])
        col += block.shape[1]
    return out


def _times_t(blocks: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """``P^T y`` for ``P`` given by its ``blocks``."""
    return torch.cat([block.T @ y[: block.shape[0]] for block in blocks])


def _top_singular(
    left: FactorBasis, scale: torch.Tensor, right: FactorBasis, rank: int, niter: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top ``rank`` singular triplets of ``K = P_L diag(scale) P_R^T`` (randomized, Halko et al., seeded).

    The range is found in float32; the final projection ``Q^T K`` and its SVD are float64, so the kept energy (and
    the error the caller derives from it) is not limited by float32 round-off.
    """
    single = (left.blocks(torch.float32), scale.float(), right.blocks(torch.float32))

    def apply(x: torch.Tensor, factors: tuple = single) -> torch.Tensor:
        p_left, w, p_right = factors
        return _times(p_left, w[:, None] * _times_t(p_right, x))

    def apply_t(y: torch.Tensor, factors: tuple = single) -> torch.Tensor:
        p_left, w, p_right = factors
        return _times(p_right, w[:, None] * _times_t(p_left, y))

    width = min(rank + 10, left.rank, right.rank)
    g = torch.Generator().manual_seed(0)
    y = apply(torch.randn(right.rank, width, generator=g))
    for _ in range(niter):
        y = apply(apply_t(torch.linalg.qr(y).Q))
    q = torch.linalg.qr(torch.linalg.qr(y).Q.double()).Q  # re-orthonormalised in float64
    exact = (left.blocks(), scale, right.blocks())
    u, s, vh = torch.linalg.svd(apply_t(q, exact).T, full_matrices=False)  # Q^T K = U S V^T
    return (q @ u)[:, :rank], s[:rank], vh[:rank].T


def _gather(x: torch.Tensor, factors: Sequence[torch.Tensor], ranks: Sequence[int], transpose: bool) -> torch.Tensor:
    """``[F_1 .. F_J] X`` (left factors, m x p) or ``X^T [F_1; ..; F_J]`` (right factors, p x n), block by block."""
    x = x.to(torch.float32)
    out, row = None, 0
    for factor, r in zip(factors, ranks, strict=True):
        block = x[row : row + r]
        row += r
        if not r or not bool(block.any()):
            continue
        part = block.T @ factor.to(torch.float32) if transpose else factor.to(torch.float32) @ block
        out = part if out is None else out.add_(part)
    if out is None:
        shape = (x.shape[1], factors[0].shape[1]) if transpose else (factors[0].shape[0], x.shape[1])
        out = torch.zeros(shape)
    return out
