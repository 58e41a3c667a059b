"""Discretisation of x' = A x + B u with step dt: pure functions returning (A_bar, B_bar) such
that x_k = A_bar x_{k-1} + B_bar u_k.

* Generalised bilinear transform (GBT), alpha in [0, 1] (LSSL eq. 3):
  A_bar = (I - alpha dt A)^{-1} (I + (1 - alpha) dt A),  B_bar = dt (I - alpha dt A)^{-1} B.
  alpha = 0 forward Euler, 1/2 bilinear (Tustin), 1 backward Euler.
* Zero-order hold (exact for piecewise-constant input):
  A_bar = exp(dt A),  B_bar = (int_0^dt exp(s A) ds) B,
  computed from one matrix exponential of the augmented matrix [[dt A, dt B], [0, 0]], so it
  is also correct for singular A (where the textbook A^{-1}(exp(dt A) - I) B is undefined).

Each comes for a dense A (..., N, N) and for a diagonal A given by its (complex) diagonal
(..., N). dt is a float or a tensor of per-feature steps (H,), which becomes a leading batch
dimension: A (N, N) with dt (H,) gives A_bar (H, N, N).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from ._checks import check_positive, check_unit_interval
from .ops.linalg import solve

Tensor = torch.Tensor


def _as_dt(dt: float | Tensor, like: Tensor) -> Tensor:
    check_positive("dt", dt)
    dtype = like.real.dtype if like.is_complex() else like.dtype
    return torch.as_tensor(dt, dtype=dtype, device=like.device)


def gbt(A: Tensor, B: Tensor, dt: float | Tensor, alpha: float = 0.5) -> tuple[Tensor, Tensor]:
    """Generalised bilinear transform of a dense system.

    Args:
        A: (..., N, N) state matrix. B: (..., N) input vector. dt: float or (H,) steps.
        alpha: 0 forward Euler, 0.5 bilinear, 1 backward Euler.
    Returns:
        A_bar (..., N, N) and B_bar (..., N), batch shapes broadcast with dt's.
    """
    check_unit_interval("alpha", alpha)
    dt = _as_dt(dt, A)
    N = A.shape[-1]
    dtA = dt[..., None, None] * A
    eye = torch.eye(N, dtype=A.dtype, device=A.device)
    dtB = dt[..., None] * B
    lhs = eye - alpha * dtA
    rhs = torch.cat(torch.broadcast_tensors(eye + (1 - alpha) * dtA, dtB[..., None]), dim=-1)
    out = solve(lhs, rhs)
    return out[..., :N], out[..., N]


def zoh(A: Tensor, B: Tensor, dt: float | Tensor) -> tuple[Tensor, Tensor]:
    """Zero-order hold of a dense system (also for singular A).

    Args:
        A: (..., N, N) state matrix. B: (..., N) input vector. dt: float or (H,) steps.
    Returns:
        A_bar (..., N, N) and B_bar (..., N).
    """
    dt = _as_dt(dt, A)
    N = A.shape[-1]
    dtA, dtB = torch.broadcast_tensors(dt[..., None, None] * A, (dt[..., None] * B)[..., None])
    top = torch.cat([dtA, dtB[..., :1]], dim=-1)  # (..., N, N+1)
    aug = torch.cat([top, torch.zeros_like(top[..., :1, :])], dim=-2)  # (..., N+1, N+1)
    E = torch.linalg.matrix_exp(aug)
    return E[..., :N, :N], E[..., :N, N]


def gbt_diag(lam: Tensor, B: Tensor, dt: float | Tensor, alpha: float = 0.5) -> tuple[Tensor, Tensor]:
    """GBT of a diagonal system x_n' = lam_n x_n + B_n u.

    Args:
        lam: (..., N) diagonal of A (complex). B: (..., N). dt: float or (H,) steps.
    Returns:
        A_bar (..., N) and B_bar (..., N).
    """
    check_unit_interval("alpha", alpha)
    dt = _as_dt(dt, lam)[..., None]
    denom = 1 - alpha * dt * lam
    return (1 + (1 - alpha) * dt * lam) / denom, dt * B / denom


def phi1(z: Tensor) -> Tensor:
    """(exp(z) - 1) / z, with its limit 1 at z = 0 (and a series near it, where the quotient
    loses digits)."""
    small = z.abs() < 1e-4
    z_safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1 + z / 2 + z * z / 6, torch.expm1(z_safe) / z_safe)


def zoh_diag(lam: Tensor, B: Tensor, dt: float | Tensor) -> tuple[Tensor, Tensor]:
    """Zero-order hold of a diagonal system (also for lam_n = 0).

    Args:
        lam: (..., N) diagonal of A (complex). B: (..., N). dt: float or (H,) steps.
    Returns:
        A_bar = exp(dt lam) (..., N) and B_bar = dt phi1(dt lam) B (..., N).
    """
    dt = _as_dt(dt, lam)[..., None]
    z = dt * lam
    return torch.exp(z), dt * phi1(z) * B


DENSE: dict[str, Callable[[Tensor, Tensor, float | Tensor], tuple[Tensor, Tensor]]] = {
    "forward_euler": partial(gbt, alpha=0.0),
    "bilinear": partial(gbt, alpha=0.5),
    "backward_euler": partial(gbt, alpha=1.0),
    "zoh": zoh,
}

DIAGONAL: dict[str, Callable[[Tensor, Tensor, float | Tensor], tuple[Tensor, Tensor]]] = {
    "forward_euler": partial(gbt_diag, alpha=0.0),
    "bilinear": partial(gbt_diag, alpha=0.5),
    "backward_euler": partial(gbt_diag, alpha=1.0),
    "zoh": zoh_diag,
}
