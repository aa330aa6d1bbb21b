"""Leading singular triple of a delta, factored or dense, and sign alignment of singular pairs."""

from __future__ import annotations

import torch

from rlvr_extrap.linalg.lowrank import Delta, LowRank

__all__ = ["align_sign", "rank1_svd"]


def _working_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; anything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def rank1_svd(delta: Delta) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Leading singular triple ``(sigma, u, v)`` of ``delta``; a LowRank is never materialised.

    A LowRank ``L @ R`` goes through QR of ``L`` and ``R^T`` and an SVD of the small core ``R_L R_R^T``:
    O((m + n) k^2) for inner dimension ``k``. A dense matrix takes an exact (full) SVD. A zero matrix
    gives ``sigma = 0`` and zero vectors. Vectors come back in float32 (float64 if the input is).
    """
    if isinstance(delta, LowRank):
        dtype = _working_dtype(delta.left)
        m, n = delta.shape
        if delta.rank == 0:
            return 0.0, torch.zeros(m, dtype=dtype), torch.zeros(n, dtype=dtype)
        q_l, r_l = torch.linalg.qr(delta.left.to(dtype))
        q_r, r_r = torch.linalg.qr(delta.right.T.to(dtype))
        u_c, s, vh_c = torch.linalg.svd(r_l @ r_r.T, full_matrices=False)
        sigma, u, v = float(s[0]), q_l @ u_c[:, 0], q_r @ vh_c[0]
    else:
        if delta.dim() != 2:
            raise ValueError(f"rank1_svd needs a 2-D delta, got shape {tuple(delta.shape)}")
        u_all, s, vh = torch.linalg.svd(delta.to(_working_dtype(delta)), full_matrices=False)
        sigma, u, v = float(s[0]), u_all[:, 0], vh[0]
    if sigma == 0.0:
        return 0.0, torch.zeros_like(u), torch.zeros_like(v)
    return sigma, u, v


def align_sign(u: torch.Tensor, v: torch.Tensor, reference: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip the pair ``(u, v)`` so that ``<u, reference> > 0``; the same matrix ``u v^T`` either way.

    Without a usable reference (None, or orthogonal to ``u``), the entry of ``u`` with the largest
    magnitude is made positive, so the result never depends on the sign the SVD happened to return.
    """
    score = float(u @ reference) if reference is not None else 0.0
    if score == 0.0 and u.numel():
        score = float(u[int(u.abs().argmax())])
    return (-u, -v) if score < 0 else (u, v)
