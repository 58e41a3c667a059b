"""HiPPO transition matrices and their normal-plus-low-rank (NPLR) factorisation.

Pure functions returning float64 (or complex128) tensors. Convention everywhere:

    x'(t) = A x(t) + B u(t),   A stable (eigenvalues in the left half plane).

The LSSL paper (App. B.2) prints the matrices with the opposite sign (HiPPO's x' = -A x + B u);
the official code and this module both use the stable sign.

Measures (n, k = 0..N-1, R_n = sqrt(2n + 1)):

* ``legs``: scaled Legendre. A_nk = -R_n R_k (n > k), -(n + 1) (n = k), 0 (n < k); B_n = R_n.
* ``legt``: translated Legendre, **halved** as in the S4 code's ``transition('legt')``:
  A_nk = -1/2 R_n R_k s_nk with s_nk = (-1)^(n-k) above the diagonal and 1 on and below;
  B_n = R_n / 2. The LSSL paper's structured LegT (and its standalone code) is twice this.
* ``lagt``: translated Laguerre (beta = 1): A = I/2 - tril(11^T), B = 1.
* ``fout``: translated Fourier: pairs (2f, 2f+1) rotate at frequency pi*f, A = skew - B B^T,
  B_0 = 1, B_2f = sqrt(2) (f >= 1), B_odd = 0. Needs an even N.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from ._checks import check_choice, check_even

Tensor = torch.Tensor
_F64 = torch.float64

CONJUGATE_PAIRS = "the modes come in complex-conjugate pairs; an odd size would drop the real one"


def _check_n(N: int) -> None:
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"N (state size) must be a positive int, got {N!r}")


def legs(N: int) -> tuple[Tensor, Tensor]:
    """HiPPO-LegS (A (N, N), B (N,)); eigenvalues of A are -1, ..., -N."""
    r = torch.sqrt(2 * torch.arange(N, dtype=_F64) + 1)
    A = -torch.tril(r[:, None] * r[None, :], diagonal=-1)
    A = A - torch.diag(torch.arange(1, N + 1, dtype=_F64))
    return A, r.clone()


def legt(N: int) -> tuple[Tensor, Tensor]:
    """HiPPO-LegT, halved (see the module docstring): (A (N, N), B (N,))."""
    n = torch.arange(N, dtype=_F64)
    r = torch.sqrt(2 * n + 1)
    sign = torch.where(n[:, None] < n[None, :], (-1.0) ** (n[:, None] - n[None, :]), 1.0)
    return -0.5 * r[:, None] * r[None, :] * sign, 0.5 * r


def lagt(N: int) -> tuple[Tensor, Tensor]:
    """HiPPO-LagT with beta = 1: (A (N, N), B (N,))."""
    A = 0.5 * torch.eye(N, dtype=_F64) - torch.tril(torch.ones(N, N, dtype=_F64))
    return A, torch.ones(N, dtype=_F64)


def fout(N: int) -> tuple[Tensor, Tensor]:
    """HiPPO-FouT (translated Fourier): (A (N, N), B (N,)); N must be even."""
    check_even("N", N, "measure 'fout' rotates pairs of states")
    f = torch.arange(N // 2, dtype=_F64)
    A = torch.zeros(N, N, dtype=_F64)
    idx = torch.arange(0, N, 2)
    A[idx, idx + 1] = -math.pi * f
    A[idx + 1, idx] = math.pi * f
    B = torch.zeros(N, dtype=_F64)
    B[0::2] = math.sqrt(2.0)
    B[0] = 1.0
    return A - torch.outer(B, B), B


def _legs_correction(N: int) -> Tensor:
    return torch.sqrt(torch.arange(N, dtype=_F64) + 0.5)[None, :]


def _legt_correction(N: int) -> Tensor:
    p = torch.sqrt(2 * torch.arange(N, dtype=_F64) + 1) / math.sqrt(2.0)
    even, odd = p.clone(), p.clone()
    even[1::2] = 0.0
    odd[0::2] = 0.0
    return torch.stack([even, odd])


def _lagt_correction(N: int) -> Tensor:
    return torch.full((1, N), 2**-0.5, dtype=_F64)


def _fout_correction(N: int) -> Tensor:
    return fout(N)[1][None, :]


class Measure(NamedTuple):
    """A HiPPO measure: its transition (A, B) and the low-rank P with A + P^T P normal."""

    transition: Callable[[int], tuple[Tensor, Tensor]]
    correction: Callable[[int], Tensor]


MEASURES: dict[str, Measure] = {
    "legs": Measure(legs, _legs_correction),
    "legt": Measure(legt, _legt_correction),
    "lagt": Measure(lagt, _lagt_correction),
    "fout": Measure(fout, _fout_correction),
}


def transition(measure: str, N: int) -> tuple[Tensor, Tensor]:
    """The HiPPO matrices of `measure`: float64 A (N, N) and B (N,), with x' = A x + B u."""
    check_choice("measure", measure, MEASURES)
    _check_n(N)
    return MEASURES[measure].transition(N)


def rank_correction(measure: str, N: int) -> Tensor:
    """Low-rank factor P (r, N), float64, such that A + P^T P = c I + skew-symmetric."""
    check_choice("measure", measure, MEASURES)
    _check_n(N)
    return MEASURES[measure].correction(N)


class NPLR(NamedTuple):
    """Normal-plus-low-rank form of a HiPPO matrix, on the half of the spectrum with Im < 0.

    With the full conjugate-symmetric quantities x_full = concat(x, conj(x)):
    A = V_full (diag(Lambda_full) - P_full P_full^*) V_full^*, B = V_full B_full.
    """

    Lambda: Tensor  # (N/2,) complex128, eigenvalues of the normal part, Im <= 0
    P: Tensor  # (r, N/2) complex128, low-rank factor in the eigenbasis, V^* P
    B: Tensor  # (N/2,) complex128, input vector in the eigenbasis, V^* B
    V: Tensor  # (N, N/2) complex128, orthonormal eigenvectors of the normal part


def nplr(measure: str, N: int) -> NPLR:
    """Diagonalise the normal part of a HiPPO matrix with a unitary V (never the ill-conditioned
    eigenvectors of A itself). N must be even: the modes come in conjugate pairs. Computed on the
    CPU whatever the default device (on 'meta' an eigendecomposition has no values)."""
    with torch.device("cpu"):
        return _nplr(measure, N)


def _nplr(measure: str, N: int) -> NPLR:
    A, B = transition(measure, N)
    check_even("N", N, CONJUGATE_PAIRS)
    P = rank_correction(measure, N)
    S = A + P.T @ P
    c = torch.diagonal(S).mean()
    skew = S - c * torch.eye(N, dtype=_F64)
    # -i * skew is Hermitian: its real eigenvalues mu give skew v = i mu v.
    mu, W = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    tol = 1e-10 * max(1.0, mu.abs().max().item())
    negative = W[:, mu < -tol]
    zero = W[:, mu.abs() <= tol]
    if zero.shape[1]:
        # A zero frequency's eigenspace is real; pair an orthonormal real basis (a, b) of it
        # into (a + i b)/sqrt(2) so that the kept vector and its conjugate span it.
        basis = torch.linalg.svd(torch.cat([zero.real, zero.imag], dim=1))[0][:, : zero.shape[1]]
        zero = (basis[:, 0::2] + 1j * basis[:, 1::2]) / math.sqrt(2.0)
    V = torch.cat([negative, zero], dim=1)
    Lambda = c + 1j * torch.cat([mu[mu < -tol], torch.zeros(zero.shape[1], dtype=_F64)])
    Vh = V.conj().T
    P_tilde = (Vh @ P.T.to(V.dtype)).T  # (r, N/2)
    return NPLR(Lambda, P_tilde, Vh @ B.to(V.dtype), V)


def dense_from_nplr(f: NPLR) -> tuple[Tensor, Tensor]:
    """Rebuild the real (A (N, N), B (N,)) from an NPLR factorisation (for checks)."""
    V = torch.cat([f.V, f.V.conj()], dim=1)
    lam = torch.cat([f.Lambda, f.Lambda.conj()])
    P = torch.cat([f.P, f.P.conj()], dim=1)
    Bf = torch.cat([f.B, f.B.conj()])
    A = V @ (torch.diag(lam) - P.T @ P.conj()) @ V.conj().T
    return A.real, (V @ Bf).real
