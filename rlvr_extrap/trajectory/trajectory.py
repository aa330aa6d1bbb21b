"""The observed weight trajectory of one training segment: step-numbered deltas per module."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from rlvr_extrap.linalg.basis import ModuleBasis, Reduced
from rlvr_extrap.linalg.lowrank import Combination, Delta, LowRank, inners, lincomb, weighted_terms

__all__ = ["Clock", "DenseVelocity", "FactorVelocity", "Trajectory", "Velocity"]

Clock = Callable[[int], float]
"""Maps an optimizer step to the time axis the fits use (e.g. the cumulative learning rate)."""


@dataclass(frozen=True)
class FactorVelocity:
    """One LoRA module's factors at a point and the optimizer's next change of them, per optimizer step.

    ``left = s B`` (m, r) and ``right = A`` (r, n) as in the snapshot; ``d_left = -lr s u_B`` and
    ``d_right = -lr u_A``, with ``u`` AdamW's update direction ``m_hat / (sqrt(v_hat) + eps) + wd p``.
    ``beta1`` is the optimizer's momentum coefficient (how fast that direction fades without new gradients).
    """

    left: torch.Tensor
    right: torch.Tensor
    d_left: torch.Tensor
    d_right: torch.Tensor
    beta1: float

    def move(self, steps: float) -> LowRank:
        """``(left + k d_left)(right + k d_right) - left right`` for ``k = steps``: exact, factored (rank 3r)."""
        left, right = self.left.float(), self.right.float()
        d_left, d_right = self.d_left.float(), self.d_right.float()
        return LowRank(
            torch.cat([steps * d_left, left, steps**2 * d_left], 1), torch.cat([right, steps * d_right, d_right], 0)
        )


@dataclass(frozen=True)
class DenseVelocity:
    """One dense weight's next change per optimizer step, ``d = -lr u`` (``u`` as for ``FactorVelocity``), and
    ``beta1``: a full-parameter run's counterpart of ``FactorVelocity``, in the snapshot's dtype."""

    d: torch.Tensor
    beta1: float

    def move(self, steps: float) -> torch.Tensor:
        """``steps * d`` in float32 (the weight moves linearly: exact)."""
        return lincomb([steps], [self.d], torch.float32)


Velocity = FactorVelocity | DenseVelocity
"""The optimizer's velocity of one module at a trajectory point (LoRA factors or a dense weight)."""


class Trajectory:
    """Per-module global deltas ``D_t = W_t - W0`` at increasing steps, with a cached Gram matrix.

    The first point is the segment's origin (step 0, or the step of the last jump). Each appended
    point adds one row to every module's Gram matrix ``G[i, j] = <D_i, D_j>``, so the cost of the
    fit is paid snapshot by snapshot, not at the jump.

    A point may be a ``Combination`` of factored *atoms* (e.g. ``offset + s B_t A_t`` after a jump, the
    offset being one object shared by every point of the segment): each atom is stored once and its
    inner products with the others are computed once, and the points' Gram matrix is ``E H E^T`` with
    ``H`` the atoms' Gram matrix and ``E`` the points' weights over the atoms. ``combine`` turns weights
    over points into a lazy combination of atoms, so a prediction copies no factors.

    Factored atoms also extend the module's ``ModuleBasis`` (implicit orthonormal bases of the concatenated
    factors) from the same cross products as their Gram row, so ``reduce`` can hand a combination back at its
    true rank, or truncated, from a small core.

    ``clock`` sets the time axis the extrapolators fit and predict against (``time(step)``); without
    one it is the step number itself.

    A point may carry the optimizer's velocity there (``velocities[t]``: module -> ``FactorVelocity`` of the LoRA
    factors or ``DenseVelocity`` of a dense weight, or None), which the ``optimizer`` extrapolator continues.

    ``labels`` maps a step to a score measured there (accuracy, mean reward), which the ``alpharl`` extrapolator
    regresses the weights on; the steps need not be points of the trajectory.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock
        self.steps: list[int] = []
        self.deltas: dict[str, list[Delta]] = {}
        self._gram: dict[str, torch.Tensor] = {}
        self._atoms: dict[str, list[Delta]] = {}  # distinct terms the points are made of, by identity
        self._atom_gram: dict[str, torch.Tensor] = {}  # H[i, j] = <atom_i, atom_j>
        self._weights: dict[str, torch.Tensor] = {}  # E[t, j]: point t = sum_j E[t, j] atom_j
        self._bases: dict[str, ModuleBasis | None] = {}  # None once a module has a dense atom
        self.velocities: list[dict[str, Velocity] | None] = []
        self.labels: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def modules(self) -> list[str]:
        return list(self.deltas)

    def time(self, step: int) -> float:
        """The fit's time coordinate of ``step``."""
        return float(step) if self.clock is None else float(self.clock(step))

    def times(self) -> list[float]:
        return [self.time(s) for s in self.steps]

    def append(self, step: int, deltas: Mapping[str, Delta], velocities: Mapping[str, Velocity] | None = None) -> None:
        if self.steps and step <= self.steps[-1]:
            raise ValueError(f"trajectory steps must increase: got step {step} after {self.steps[-1]}")
        if self.steps and set(deltas) != set(self.deltas):
            missing = sorted(set(self.deltas) ^ set(deltas))[:3]
            raise ValueError(f"snapshot at step {step} does not have the same modules as before (e.g. {missing})")
        for name, delta in deltas.items():
            self._append_point(name, delta)
        self.steps.append(step)
        self.velocities.append(dict(velocities) if velocities is not None else None)

    def _append_point(self, name: str, delta: Delta) -> None:
        """Add one point of module ``name``: Gram rows for its new atoms, then the points' Gram row."""
        atoms = self._atoms.setdefault(name, [])
        known = {id(a): j for j, a in enumerate(atoms)}
        parts = weighted_terms(delta)
        for _, term in parts:
            if id(term) not in known:
                known[id(term)] = len(atoms)
                self._atom_gram[name] = _grown(self._atom_gram.get(name), self._atom_row(name, atoms, term))
                atoms.append(term)
        row = torch.zeros(len(atoms), dtype=torch.float64)
        for w, term in parts:
            row[known[id(term)]] += w
        old = self._weights.get(name, torch.zeros(0, 0, dtype=torch.float64))
        weights = torch.zeros(old.shape[0] + 1, len(atoms), dtype=torch.float64)
        weights[:-1, : old.shape[1]] = old
        weights[-1] = row
        self._weights[name] = weights
        products = weights @ (self._atom_gram[name] @ row)
        self._gram[name] = _grown(self._gram.get(name), products.tolist())
        self.deltas.setdefault(name, []).append(delta)

    def _atom_row(self, name: str, atoms: list[Delta], term: Delta) -> list[float]:
        """``<term, a>`` for every atom held, then ``<term, term>``; factored atoms also extend the module's basis."""
        basis = self._bases.setdefault(name, ModuleBasis())
        if basis is None or not isinstance(term, LowRank) or not all(isinstance(a, LowRank) for a in atoms):
            self._bases[name] = None
            return inners(term, [*atoms, term])  # dense: one pass over the new term
        left, right = term.left.double(), term.right.double()  # float64: the bases' rank test needs the precision
        lefts = [a.left.double().T @ left for a in atoms]  # L_i^T L (r_i x r)
        rights = [a.right.double() @ right.T for a in atoms]  # R_i R^T
        own_l, own_r = left.T @ left, right @ right.T
        basis.add(_stacked(lefts, left.shape[1]), own_l, _stacked(rights, left.shape[1]), own_r)
        pairs = [*zip(lefts, rights, strict=True), (own_l, own_r)]
        return [float(torch.sum(a * b)) for a, b in pairs]

    def atoms(self, name: str) -> list[Delta]:
        """The distinct terms this module's points are made of (each stored once)."""
        return self._atoms[name]

    def combine(self, name: str, weights: torch.Tensor | list[float]) -> Delta:
        """``sum_t weights[t] D_t`` over this module's points: lazy over the atoms when they are factored."""
        w = torch.as_tensor(weights, dtype=torch.float64)
        over_atoms = w @ self._weights[name][: len(w)]
        over_atoms = torch.where(self._atom_gram[name].diagonal() > 0, over_atoms, 0.0).tolist()  # zero atoms out
        atoms = self._atoms[name]
        if all(isinstance(a, LowRank) for a in atoms):
            return Combination.of(*atoms, weights=over_atoms)
        return lincomb(over_atoms, atoms)

    def reduce(self, name: str, delta: Delta, rank: int | None = None) -> Reduced | None:
        """``delta`` (a combination of this module's atoms) at its true rank, or its best rank-``rank`` part.

        None when the module has no basis (dense atoms) or ``delta`` holds a term that is not one of its atoms.
        """
        basis, index = self._bases.get(name), {id(a): j for j, a in enumerate(self._atoms[name])}
        parts = weighted_terms(delta)
        if basis is None or any(id(t) not in index for _, t in parts):
            return None
        weights = torch.zeros(len(index), dtype=torch.float64)
        for w, term in parts:
            weights[index[id(term)]] += w
        norm_sq = max(float(weights @ self._atom_gram[name] @ weights), 0.0)
        return basis.reduce(self._atoms[name], weights.tolist(), norm_sq, rank)

    def basis_rank(self, name: str) -> int | None:
        """``min(k, k')``: the largest rank a combination of this module's atoms can have (None: no basis)."""
        basis = self._bases.get(name)
        return None if basis is None else min(basis.left.rank, basis.right.rank)

    def prefix(self, n: int) -> Trajectory:
        """The first ``n`` points, sharing the deltas (no copy) and slicing the Gram matrices."""
        if not 1 <= n <= len(self):
            raise ValueError(f"prefix length {n} outside 1..{len(self)}")
        view = Trajectory(self.clock)
        view.steps = self.steps[:n]
        view.deltas = {name: history[:n] for name, history in self.deltas.items()}
        view._gram = {name: gram[:n, :n] for name, gram in self._gram.items()}
        view._atoms, view._atom_gram = self._atoms, self._atom_gram  # shared: the view only reads them
        view._bases = self._bases
        view._weights = {name: weights[:n] for name, weights in self._weights.items()}
        view.velocities = self.velocities[:n]
        view.labels = {step: y for step, y in self.labels.items() if step <= view.steps[-1]}  # none from the future
        return view

    def fork(self) -> Trajectory:
        """A copy to append to, leaving this one as it is (the deltas shared, the bookkeeping copied)."""
        fork = self.prefix(len(self)) if self else Trajectory(self.clock)
        fork._atoms = {name: list(atoms) for name, atoms in self._atoms.items()}
        fork._atom_gram = dict(self._atom_gram)
        fork._bases = copy.deepcopy(self._bases)  # appending extends a basis in place
        fork.labels = dict(self.labels)
        return fork

    def gram(self, name: str) -> torch.Tensor:
        """``G[i, j] = <D_i, D_j>`` over this module's points (float64, T x T)."""
        return self._gram[name]

    def last(self) -> dict[str, Delta]:
        return {name: history[-1] for name, history in self.deltas.items()}


def _stacked(blocks: list[torch.Tensor], width: int) -> torch.Tensor:
    """Row blocks stacked (an empty ``0 x width`` block when there are none)."""
    return torch.cat(blocks, 0) if blocks else torch.zeros(0, width, dtype=torch.float64)


def _grown(gram: torch.Tensor | None, row: list[float]) -> torch.Tensor:
    """``gram`` (k x k, or None for k = 0) bordered by ``row`` (k + 1 values, the last one diagonal)."""
    k = 0 if gram is None else gram.shape[0]
    out = torch.zeros(k + 1, k + 1, dtype=torch.float64)
    if k:
        out[:k, :k] = gram
    out[k, :] = out[:, k] = torch.tensor(row, dtype=torch.float64)
    return out
