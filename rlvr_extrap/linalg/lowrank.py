"""Matrices kept in factored form, and the few linear-algebra operations the extrapolators need.

A LoRA module's weight delta is ``s * B @ A``: rank ``r``, far smaller than the ``m x n`` matrix.
Every method here only needs inner products between deltas and linear combinations of them, and
both can be done on the factors: ``<L1 R1, L2 R2> = trace((L1^T L2)(R2 R1^T))`` and a sum of
factored matrices is the product of concatenated factors. Dense tensors are accepted everywhere too
(full-parameter trajectories), so a ``Delta`` is either, or a ``Combination``: a weighted sum of factored
matrices kept by reference, so that a prediction over T snapshots (or a point that shares a jump offset with
every other point of its segment) copies nothing until one module's factors are actually needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "Combination",
    "Delta",
    "LowRank",
    "frobenius_norm",
    "inner",
    "inners",
    "is_finite",
    "lincomb",
    "to_dense",
    "weighted_terms",
]


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
        if isinstance(other, Combination):
            return Combination.of(self, other)
        if self.shape != other.shape:
            raise ValueError(f"cannot add LowRank of shape {self.shape} and {other.shape}")
        return LowRank(torch.cat([self.left, other.left], 1), torch.cat([self.right, other.right], 0))

    def __sub__(self, other: LowRank) -> LowRank:
        return self + other.scaled(-1.0)

    def is_finite(self) -> bool:
        return bool(self.left.isfinite().all() and self.right.isfinite().all())

    def compact(self, rtol: float = 1e-7) -> LowRank:
        """The same matrix with the smallest inner dimension (QR of both factors, SVD of the core)."""
        if self.rank == 0:
            return self
        dtype = _common_dtype([self])  # half-precision snapshots are compacted in float32
        q_l, r_l = torch.linalg.qr(self.left.to(dtype))
        q_r, r_r = torch.linalg.qr(self.right.T.to(dtype))
        u, s, vh = torch.linalg.svd(r_l @ r_r.T, full_matrices=False)
        keep = s > (s[0] * rtol if s.numel() else 0)
        return LowRank(q_l @ (u[:, keep] * s[keep]), vh[keep] @ q_r.T)


class Combination(LowRank):
    """``sum_i weights[i] * terms[i]`` over factored matrices, the terms kept by reference (nothing is copied).

    A ``LowRank`` whose ``left`` and ``right`` are built on demand (the concatenated factors: a copy of this
    one matrix's factors); ``+``, ``-`` and ``scaled`` stay lazy, and terms that are the same object are
    merged, so ``(D_now + step) - D_now`` is exactly ``step``.
    """

    weights: tuple[float, ...]
    terms: tuple[LowRank, ...]

    def __init__(self, weights: Sequence[float], terms: Sequence[LowRank]) -> None:
        if len(weights) != len(terms) or not terms:
            raise ValueError(f"Combination needs as many weights as terms (>0); got {len(weights)}, {len(terms)}")
        if len({t.shape for t in terms}) != 1:
            raise ValueError(f"Combination terms differ in shape: {sorted({t.shape for t in terms})}")
        object.__setattr__(self, "weights", tuple(float(w) for w in weights))
        object.__setattr__(self, "terms", tuple(terms))

    @classmethod
    def of(cls, *parts: LowRank, weights: Sequence[float] | None = None) -> Combination:
        """``sum_i weights[i] * parts[i]`` (weights default to 1), flattened, with identical terms merged."""
        merged: dict[int, list] = {}
        for w, part in zip(weights or [1.0] * len(parts), parts, strict=True):
            for v, term in weighted_terms(part):
                merged.setdefault(id(term), [0.0, term])[0] += float(w) * v
        kept = [(w, t) for w, t in merged.values() if w != 0.0] or [(0.0, next(iter(merged.values()))[1])]
        return cls([w for w, _ in kept], [t for _, t in kept])

    def __repr__(self) -> str:
        return f"Combination(weights={self.weights}, shape={self.shape}, ranks={[t.rank for t in self.terms]})"

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__

    @property
    def shape(self) -> tuple[int, int]:
        return self.terms[0].shape

    @property
    def rank(self) -> int:
        return sum(t.rank for t in self.terms)

    @property
    def left(self) -> torch.Tensor:
        dtype = _common_dtype(self.terms)
        return torch.cat([t.left.to(dtype) * w for w, t in zip(self.weights, self.terms, strict=True)], 1)

    @property
    def right(self) -> torch.Tensor:
        dtype = _common_dtype(self.terms)
        return torch.cat([t.right.to(dtype) for t in self.terms], 0)

    def factored(self) -> LowRank:
        """The same matrix as a plain ``LowRank`` (concatenated factors: a copy)."""
        return LowRank(self.left, self.right)

    def dense(self) -> torch.Tensor:
        return self.left @ self.right

    def scaled(self, c: float) -> Combination:
        return Combination([w * c for w in self.weights], self.terms)

    def __add__(self, other: LowRank) -> Combination:
        if self.shape != other.shape:
            raise ValueError(f"cannot add matrices of shape {self.shape} and {other.shape}")
        return Combination.of(self, other)

    def __sub__(self, other: LowRank) -> Combination:
        if self.shape != other.shape:
            raise ValueError(f"cannot subtract matrices of shape {self.shape} and {other.shape}")
        return Combination.of(self, other, weights=[1.0, -1.0])

    def compact(self, rtol: float = 1e-7) -> LowRank:
        return self.factored().compact(rtol)

    def is_finite(self) -> bool:
        """Whether every weight and every term's factors are finite (reads the terms, copies nothing)."""
        return all(math.isfinite(w) for w in self.weights) and all(t.is_finite() for t in self.terms)


def _dense_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """float64 if any tensor is, else float32 (dense deltas may be stored in bf16 to halve their size)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _common_dtype(terms: Sequence[LowRank]) -> torch.dtype:
    """float64 if any term is, else float32 (terms may be kept in a half-precision snapshot dtype)."""
    return torch.float64 if any(t.left.dtype == torch.float64 for t in terms) else torch.float32


Delta = LowRank | torch.Tensor

DENSE_BLOCK = 2**18
"""Elements of a dense delta converted and combined at a time (1 MiB in float32: in a core's cache), so a bfloat16
snapshot is never copied whole to float32."""


def inner(a: Delta, b: Delta) -> float:
    """Frobenius inner product ``<a, b> = sum(a * b)``, computed on the factors when there are any.

    Half-precision factors are multiplied in float32; a ``Combination`` is expanded term by term.
    """
    if isinstance(a, Combination) or isinstance(b, Combination):
        a_parts, b_parts = (weighted_terms(x) for x in (a, b))
        return sum(wa * wb * inner(ta, tb) for wa, ta in a_parts for wb, tb in b_parts)
    if isinstance(a, LowRank) and isinstance(b, LowRank):
        dtype = _common_dtype([a, b])
        left = a.left.to(dtype).T @ b.left.to(dtype)
        return float(torch.sum(left * (a.right.to(dtype) @ b.right.to(dtype).T)))
    return _dense_inners(to_dense(a), [to_dense(b)])[0]


def inners(x: Delta, others: Sequence[Delta]) -> list[float]:
    """``[inner(x, y) for y in others]``; when all are dense, in one pass over ``x`` (see ``_dense_inners``)."""
    if isinstance(x, LowRank) or any(isinstance(y, LowRank) for y in others):
        return [inner(x, y) for y in others]
    return _dense_inners(x, others)


def _dense_inners(x: torch.Tensor, others: Sequence[torch.Tensor]) -> list[float]:
    """``<x, y>`` for every dense ``y``: ``DENSE_BLOCK`` elements at a time converted to float32 (float64 if any
    tensor is: a bf16 dot would round the result to 3 digits), each block's products summed in float64."""
    dtype = _dense_dtype([x, *others])
    x, others = x.reshape(-1), [y.reshape(-1) for y in others]
    sums = [0.0] * len(others)
    for start in range(0, x.numel(), DENSE_BLOCK):
        block = x[start : start + DENSE_BLOCK].to(dtype)
        for i, y in enumerate(others):
            sums[i] += float(torch.dot(block, y[start : start + DENSE_BLOCK].to(dtype)))
    return sums


def weighted_terms(d: Delta) -> list[tuple[float, Delta]]:
    """``d`` as (weight, term) pairs: a Combination's own, else the single pair ``(1, d)``."""
    return list(zip(d.weights, d.terms, strict=True)) if isinstance(d, Combination) else [(1.0, d)]


def lincomb(weights: Sequence[float], deltas: Sequence[Delta], dtype: torch.dtype | None = None) -> Delta:
    """``sum_i weights[i] * deltas[i]``: concatenated factors for LowRank, a dense sum otherwise: summed in float32 at
    least, ``DENSE_BLOCK`` elements at a time, and stored in ``dtype`` (default: the sum's)."""
    if len(weights) != len(deltas) or not deltas:
        raise ValueError(f"lincomb needs as many weights as deltas (>0); got {len(weights)} and {len(deltas)}")
    if any(isinstance(d, Combination) for d in deltas):
        pairs = [(w * v, t) for w, d in zip(weights, deltas, strict=True) for v, t in weighted_terms(d)]
        return lincomb([w for w, _ in pairs], [t for _, t in pairs], dtype)
    terms = [(float(w), d) for w, d in zip(weights, deltas, strict=True) if w != 0.0]
    if all(isinstance(d, LowRank) for d in deltas):
        if not terms:
            return LowRank.zeros(*deltas[0].shape, dtype=deltas[0].left.dtype)
        return LowRank(torch.cat([d.left * w for w, d in terms], 1), torch.cat([d.right for _, d in terms], 0))
    dense = [to_dense(d) for d in deltas]
    summed = _dense_dtype(dense)
    out = torch.empty(dense[0].shape, dtype=dtype or summed)
    flat, parts = out.view(-1), [(float(w), d.reshape(-1)) for w, d in zip(weights, dense, strict=True) if w != 0.0]
    scratch = None if out.dtype == summed else torch.empty(min(DENSE_BLOCK, flat.numel()), dtype=summed)
    for start in range(0, flat.numel(), DENSE_BLOCK):  # block by block: the sum stays in cache
        stored = flat[start : start + DENSE_BLOCK]
        block = stored if scratch is None else scratch[: stored.numel()]
        block.zero_()
        for w, d in parts:
            block.add_(d[start : start + DENSE_BLOCK].to(summed), alpha=w)
        if scratch is not None:
            stored.copy_(block)
    return out


def to_dense(d: Delta) -> torch.Tensor:
    return d.dense() if isinstance(d, LowRank) else d


def is_finite(d: Delta) -> bool:
    """No NaN or Inf in ``d`` (in its factors and weights when it has them)."""
    return d.is_finite() if isinstance(d, LowRank) else bool(d.isfinite().all())


def frobenius_norm(d: Delta) -> float:
    return max(inner(d, d), 0.0) ** 0.5
