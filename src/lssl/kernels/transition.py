"""LSSL's learnable transitions (A, B): the structured TriD family and a dense fallback.

The LSSL paper learns A inside a structured family that contains the HiPPO matrices
(LSSL App. E.2, Theorem 11; spec A.6). The positive matrix M = -A is

    M = P (Dg + T^{-1}) Q,   B = P b,

with P = diag(pl), Q = diag(pr), Dg = diag(c) and T tridiagonal (subdiagonal dl, diagonal d,
superdiagonal du): 7N - 2 numbers {dl, d, du, pl, pr, c, b} per transition instead of N^2 + N.
Initialisations (n = 0..N-1, R_n = sqrt(2n + 1); T as (sub, diag, super)):

    measure  pl = pr         T                                   c           b          -> A
    legs     R_n             (-1, 1, 0): T^{-1} = tril(ones)     -n/(2n+1)   1          A_legs
    lagt     1               (-1, 1, 0)                          -1/2        1          A_lagt
    legt     R_n / sqrt(2)   (-1/2, d, +1/2), d = 0 except       0           1/sqrt(2)  A_legt
                             d_0 = d_{N-1} = 1/2 (d_0 = 1 if N = 1)

each reproducing `hippo.transition(measure, N)` exactly (spec E6). `legt` is scaled so that one
name means one matrix: the halved LegT of `hippo` (S4 code convention). The paper's own LegT
init (`legt_lssl`: pl = pr = R_n, b = 1) is twice that, -M = 2 A_legt (spec F29).

Differences from the official code (s4 repo, hippo/transition.py):
* no N(0, 0.01^2) noise on LegT's d (F28): the init is HiPPO exactly, and deterministic;
* dl, du have length N - 1 (the official N + 1 with zero ends is the layout of its unpublished
  CUDA extension, F1);
* for the Krylov kernel (`krylov.py`) T^{-1} is formed densely by a solve: the official O(N)
  tridiagonal primitives only speed up forming A_bar, which that kernel then squares densely
  anyway (spec A.6). The structure pays off in the generating function instead: the resolvent
  kernel (`resolvent.py`) solves the shifted systems (a I + b M) x = B through one tridiagonal
  system each, O(N) per frequency node, with no N^3 term at all.

Transitions without a TriD form ('fout') are stored densely (`DenseTransition`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from .. import hippo
from .._checks import check_choice, check_length
from ..ops.linalg import solve
from .base import register

Tensor = torch.Tensor
_F64 = torch.float64


class TriD(NamedTuple):
    """Parameters of M = P (Dg + T^{-1}) Q, B = P b; any common leading batch shape (...)."""

    dl: Tensor  # (..., N-1) subdiagonal of T
    d: Tensor  # (..., N) diagonal of T
    du: Tensor  # (..., N-1) superdiagonal of T
    pl: Tensor  # (..., N) P = diag(pl)
    pr: Tensor  # (..., N) Q = diag(pr)
    c: Tensor  # (..., N) Dg = diag(c)
    b: Tensor  # (..., N) B = P b


def _lower_bidiagonal(N: int, p: Tensor, c: Tensor) -> TriD:
    """T = (sub -1, diag 1, super 0), whose inverse is the lower-triangular matrix of ones."""
    ones = torch.ones(N, dtype=_F64)
    return TriD(-ones[1:], ones, torch.zeros(N - 1, dtype=_F64), p, p.clone(), c, ones.clone())


def legs(N: int) -> TriD:
    """LegS: M_nk = R_n (c_n [n = k] + [n >= k]) R_k = R_n R_k (n > k), n + 1 (n = k)."""
    n = torch.arange(N, dtype=_F64)
    return _lower_bidiagonal(N, torch.sqrt(2 * n + 1), -n / (2 * n + 1))


def lagt(N: int) -> TriD:
    """LagT: M = tril(ones) - I/2."""
    return _lower_bidiagonal(N, torch.ones(N, dtype=_F64), torch.full((N,), -0.5, dtype=_F64))


def legt_lssl(N: int) -> TriD:
    """The LSSL paper's LegT init: -M = 2 * hippo.legt(N) (the unhalved LegT), B = 2 * B_legt.
    T^{-1} has entries s_nk (1 on and below the diagonal, (-1)^(n-k) above), as R T^{-1} R is
    the unhalved LegT."""
    r = torch.sqrt(2 * torch.arange(N, dtype=_F64) + 1)
    half = torch.full((N - 1,), 0.5, dtype=_F64)
    d = torch.zeros(N, dtype=_F64)
    d[0] += 0.5
    d[-1] += 0.5
    return TriD(-half, d, half.clone(), r, r.clone(), torch.zeros(N, dtype=_F64), torch.ones(N, dtype=_F64))


def legt(N: int) -> TriD:
    """LegT halved as `hippo.legt`: `legt_lssl` with P, Q and b scaled by 1/sqrt(2)."""
    t = legt_lssl(N)
    s = 1 / math.sqrt(2.0)
    return t._replace(pl=s * t.pl, pr=s * t.pr, b=s * t.b)


TRID_INITS: dict[str, Callable[[int], TriD]] = {"legs": legs, "legt": legt, "lagt": lagt}


def trid_init(measure: str, N: int) -> TriD:
    """The float64 TriD parameters reproducing `hippo.transition(measure, N)`."""
    check_choice("measure", measure, TRID_INITS)
    check_length("N", N)
    return TRID_INITS[measure](N)


def tridiagonal(dl: Tensor, d: Tensor, du: Tensor) -> Tensor:
    """Dense T (..., N, N) from its subdiagonal dl (..., N-1), diagonal d (..., N) and
    superdiagonal du (..., N-1)."""
    return torch.diag_embed(d) + torch.diag_embed(dl, offset=-1) + torch.diag_embed(du, offset=1)


def trid_dense(p: TriD) -> tuple[Tensor, Tensor]:
    """Dense A = -P (Dg + T^{-1}) Q and B = P b.

    Args:
        p: TriD with leading shape (...).
    Returns:
        A (..., N, N) and B (..., N).
    """
    T = tridiagonal(p.dl, p.d, p.du)  # (..., N, N)
    # An explicit (..., N, N) right-hand side: with T (H, N, N) and a bare (N, N) identity,
    # torch.linalg.solve would read the identity as H vectors whenever H == N.
    eye = torch.eye(T.shape[-1], dtype=T.dtype, device=T.device).expand_as(T)
    M = p.pl[..., :, None] * (torch.diag_embed(p.c) + solve(T, eye)) * p.pr[..., None, :]  # (..., N, N)
    return -M, p.pl * p.b


def _check_features(H: int | None) -> None:
    if H is not None:
        check_length("H", H)


class TriDTransition(nn.Module):
    """A learnable TriD transition, initialised to a HiPPO measure (module docstring).

    Args:
        N: state size. measure: 'legs', 'legt' or 'lagt'.
        H: None for one transition shared by all features (LSSL learn mode 1), or the number of
            features for one per feature (learn mode 2: every parameter gets a leading dim H).
        learn: parameters (True) or buffers (False). lr: their learning-rate hint.
    Shapes: dl, du (N-1,) and d, pl, pr, c, b (N,), each with a leading H when per feature.
    """

    def __init__(self, N: int, measure: str = "legs", H: int | None = None, learn: bool = True, lr: float | None = 1e-4):
        super().__init__()
        init = trid_init(measure, N)
        _check_features(H)
        self.N, self.measure, self.H = N, measure, H
        dtype = torch.get_default_dtype()
        for name, value in init._asdict().items():
            value = value.to(dtype)
            register(self, name, value if H is None else value.expand(H, *value.shape), learn, lr)

    def params(self) -> TriD:
        """The TriD parameters as stored."""
        return TriD(*(getattr(self, name) for name in TriD._fields))

    def dense(self) -> tuple[Tensor, Tensor]:
        """A (N, N) and B (N,) shared, or (H, N, N) and (H, N) per feature; x' = A x + B u."""
        return trid_dense(self.params())


class DenseTransition(nn.Module):
    """A dense transition initialised to `hippo.transition(measure, N)`: any measure, including
    those without a TriD form ('fout'); with learn=False it is the exact fixed HiPPO pair.

    Args: as `TriDTransition` (measure: any of `hippo.MEASURES`).
    Shapes: A (N, N) and B (N,), each with a leading H when per feature.
    """

    def __init__(self, N: int, measure: str = "legs", H: int | None = None, learn: bool = True, lr: float | None = 1e-4):
        super().__init__()
        A, B = hippo.transition(measure, N)
        _check_features(H)
        self.N, self.measure, self.H = N, measure, H
        dtype = torch.get_default_dtype()
        A, B = A.to(dtype), B.to(dtype)
        if H is not None:
            A, B = A.expand(H, N, N), B.expand(H, N)
        register(self, "A", A, learn, lr)
        register(self, "B", B, learn, lr)

    def dense(self) -> tuple[Tensor, Tensor]:
        """A (N, N) and B (N,) shared, or (H, N, N) and (H, N) per feature; x' = A x + B u."""
        return self.A, self.B


# The learnable transition of each HiPPO measure: structured where a TriD form exists.
TRANSITIONS: dict[str, type[nn.Module]] = {
    "legs": TriDTransition,
    "legt": TriDTransition,
    "lagt": TriDTransition,
    "fout": DenseTransition,
}
