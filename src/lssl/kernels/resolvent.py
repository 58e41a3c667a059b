"""LSSL's learned-A kernel by its generating function: O(H N L) through the TriD structure.

The Krylov kernel (`krylov.py`) squares the dense A_bar, O(H N^3 log L) per call. For a TriD
transition, -A = M = P (Dg + T^{-1}) Q, B = P b (`transition.py`), the kernel's generating
function needs only O(N) work per frequency node instead.

Derivation. For the GBT with parameter alpha, A_bar = (I - alpha dt A)^{-1} (I + (1 - alpha)
dt A) and B_bar = dt (I - alpha dt A)^{-1} B. Then

    I - omega A_bar = (I - alpha dt A)^{-1} [(1 - omega) I - (alpha + (1 - alpha) omega) dt A],

so (I - omega A_bar)^{-1} B_bar = dt (a I + b M)^{-1} B with a = 1 - omega and
b = beta dt, beta = alpha + (1 - alpha) omega = 1 - (1 - alpha) a. As in S4 (spec B.3), the
truncated generating function sum_{j<L} K_j omega^j = C^T (I - A_bar^L omega^L)
(I - omega A_bar)^{-1} B_bar equals C~^T (I - omega A_bar)^{-1} B_bar with C~ = (I - A_bar^L)^T C
at the L-th roots of unity (omega^L = 1), so

    K = irfft(K_hat),   K_hat(omega_k) = dt C~^T x_k,   (a_k I + b_k M) x_k = B,   k = 0..L/2.

The shifted system in O(N). With w = T^{-1} Q x the system reads, row by row,

    e_n x_n + b p_n w_n = B_n                       (x-row n,  e_n = a + b p_n c_n q_n)
    -q_n x_n + (T w)_n = 0                          (w-row n),

p = pl, q = pr, c the diagonal of Dg. x_n appears in these two rows only, so q_n (x-row) +
e_n (w-row) eliminates it: J w = q B with the tridiagonal J = diag(e) T + diag(b p q), solved
by Gaussian elimination with partial pivoting (`ops.tridiagonal.gtsv`). Then x_n comes from
whichever of its two rows divides by the larger pivot relative to what it multiplies w by:
x_n = (B_n - b p_n w_n) / e_n, or x_n = (T w)_n / q_n. Replacing the two rows by (J's row, the
kept row) is an invertible row operation whenever the kept row's x_n coefficient is nonzero,
and the system is then block triangular, so J is nonsingular exactly when a I + b M is: the
elimination cannot break down at a nonsingular system, including omega = 1 (a = 0) where
e_0 = 0 for LegS (c_0 = 0) and x_0 comes from its w-row. Cost: O(N) per (feature, node), so
O(C H N L) for the kernel, like S4's Cauchy sums, and no N^3 term in the training step.

Backward (adjoint method, no graph through the elimination). With y = C~^T x and an upstream
gradient g, lambda solves the transposed system (a I + b M^T) lambda = conj(g) C~, whose
structure is the same with P and Q swapped and T transposed; its auxiliary unknown is
mu = T^{-T} P lambda. With Phi = sum conj(g) y, dPhi = lambda^T (dB - dS x) for S = a I + b M,
and dM = dP (Dg + T^{-1}) Q + P dDg Q - P T^{-1} dT T^{-1} Q + P (Dg + T^{-1}) dQ, so every
parameter's gradient is a sum over nodes of products of x, w, lambda and mu (`_Resolvent`).
The backward recomputes x and w and solves once more, node block by node block: memory stays
O(H N K_block) beyond the inputs, not O(H N L).

C~ is stored in place of C, as S4 does (`dplr.py`): `l_kernel` holds the length it belongs to
(0: C is still the plain C), converted on the first call and doubled when a longer kernel is
asked for, with the dense A_bar (O(H N^3 log L), under no_grad, outside the training step); the
plain C for the recurrent view and state passing solves (I - A_bar^{L_d})^T C = C~. Learning
C~ instead of C changes the parameterisation, not the model class: both reach every C.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from .. import discretize
from ..ops.backend import check_backend, check_cpu, numba_module
from ..ops.tridiagonal import gtsv, tridiagonal_matvec
from .base import DiscreteSSM, get_int, register_int, set_int, untruncated_C
from .dplr import roots_of_unity
from .krylov import KrylovKernel
from .transition import TRID_INITS, TriD, TriDTransition, trid_dense

Tensor = torch.Tensor

# GBT parameter alpha of each discretisation with a rational generating function (not ZOH).
GBT_ALPHA = {"forward_euler": 0.0, "bilinear": 0.5, "backward_euler": 1.0}

# Complex entries of one (N, H, K_block) work tensor: the node blocks' size (16 MB complex64).
BLOCK_ELEMENTS = 2**21
# Features per dense A_bar block in the conversions between C and C~.
FEATURE_BLOCK = 32


def shifted_solve(p: TriD, a: Tensor, b: Tensor, rhs: Tensor) -> tuple[Tensor, Tensor]:
    """x = (a I + b M)^{-1} rhs and w = T^{-1} Q x for M = P (Dg + T^{-1}) Q (module docstring).

    Rows first: every TriD field is (N, S, 1) (dl, du (N-1, S, 1)), S = 1 (shared) or H.
    Args:
        p: the TriD parameters (b unused). a: (K,) complex. b: (H, K) complex.
        rhs: (N, S or H, 1 or K).
    Returns:
        x, w: (N, H, K) complex.
    """
    e = a + b * (p.pl * p.c * p.pr)  # (N, H, K)
    w = gtsv(e[1:] * p.dl, e * p.d + b * (p.pl * p.pr), e[:-1] * p.du, p.pr * rhs)
    # Each x_n from whichever of its rows amplifies an error in w the least.
    b_p = b * p.pl
    t_norm = p.d.abs() + torch.nn.functional.pad(p.dl.abs(), (0, 0, 0, 0, 1, 0)) + torch.nn.functional.pad(
        p.du.abs(), (0, 0, 0, 0, 0, 1)
    )  # (N, S, 1)
    from_x_row = e.abs() * t_norm >= b_p.abs() * p.pr.abs()
    x_row = (rhs - b_p * w) / torch.where(from_x_row, e, torch.ones_like(e))
    w_row = tridiagonal_matvec(p.dl, p.d, p.du, w) / torch.where(from_x_row, torch.ones_like(p.pr), p.pr)
    return torch.where(from_x_row, x_row, w_row), w


def transposed(p: TriD) -> TriD:
    """The TriD form of M^T = Q (Dg + T^{-T}) P: P and Q swapped, T transposed."""
    return p._replace(dl=p.du, du=p.dl, pl=p.pr, pr=p.pl)


def _rows(t: Tensor) -> Tensor:
    """(S, N) -> (N, S, 1): rows first, broadcasting over nodes."""
    return t.T[..., None]


def _blocks(N: int, H: int, K: int) -> list[slice]:
    """Node blocks of at most BLOCK_ELEMENTS entries of an (N, H, K_block) tensor."""
    size = max(1, BLOCK_ELEMENTS // (N * H))
    return [slice(k, min(K, k + size)) for k in range(0, K, size)]


def _contract(Ct: Tensor, x: Tensor) -> Tensor:
    """y (C, H, K) complex = sum_n Ct[c, h, n] x[n, h, k] for real Ct (C, H, N), x (N, H, K)."""
    return torch.view_as_complex(torch.einsum("chn,nhkt->chkt", Ct, torch.view_as_real(x)).contiguous())


def _re_sum(u: Tensor, v: Tensor) -> Tensor:
    """Re sum_k u v over the last dim (nodes)."""
    return (u * v).real.sum(-1)


class _Resolvent(torch.autograd.Function):
    """y[c, h, k] = sum_n Ct[c, h, n] x[n, h, k], (a_k I + b[h, k] M_h) x = B_h (module docstring).

    Inputs: a (K,) complex (no gradient); b (H, K) complex; the TriD fields dl, du (S, N-1) and
    d, pl, pr, c (S, N), S = 1 or H, real; B (S or H, N) real; Ct (C, H, N) real.
    Output: y (C, H, K) complex.
    """

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, dl: Tensor, d: Tensor, du: Tensor, pl: Tensor, pr: Tensor,
                c: Tensor, B: Tensor, Ct: Tensor) -> Tensor:
        p = TriD(*(_rows(t) for t in (dl, d, du, pl, pr, c)), b=None)
        rhs = _rows(B)
        N, H, K = d.shape[-1], b.shape[0], a.shape[0]
        y = torch.empty(Ct.shape[0], H, K, dtype=b.dtype, device=b.device)
        for blk in _blocks(N, H, K):
            x, _ = shifted_solve(p, a[blk], b[:, blk], rhs)
            y[..., blk] = _contract(Ct, x)
        ctx.save_for_backward(a, b, dl, d, du, pl, pr, c, B, Ct)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        a, b, dl, d, du, pl, pr, c, B, Ct = ctx.saved_tensors
        p = TriD(*(_rows(t) for t in (dl, d, du, pl, pr, c)), b=None)
        pt = transposed(p)
        rhs = _rows(B)
        N, H, K = d.shape[-1], b.shape[0], a.shape[0]
        real = d.dtype
        g_b = torch.empty_like(b)
        # Sums over nodes, (N, H): reduced to the parameters' shapes at the end.
        g_B, g_pl, g_pr, g_c, g_d = (torch.zeros(N, H, dtype=real, device=b.device) for _ in range(5))
        g_dl, g_du = (torch.zeros(N - 1, H, dtype=real, device=b.device) for _ in range(2))
        g_Ct = torch.zeros_like(Ct)
        seed = torch.view_as_real(g.conj().resolve_conj())  # (C, H, K, 2): conj(g), Phi's weights
        for blk in _blocks(N, H, K):
            a_k, b_k = a[blk], b[:, blk]
            x, w = shifted_solve(p, a_k, b_k, rhs)
            psi = torch.view_as_complex(torch.einsum("chn,chkt->nhkt", Ct, seed[:, :, blk]).contiguous())
            lam, mu = shifted_solve(pt, a_k, b_k, psi)  # (a I + b M^T) lam = psi, mu = T^{-T} P lam
            g_Ct += torch.einsum("chkt,nhkt->chn", torch.view_as_real(g[..., blk].resolve_conj()),
                                 torch.view_as_real(x))
            inner = p.c * p.pr * x + w  # (Dg + T^{-1}) Q x
            b_lam, b_mu = b_k * lam, b_k * mu
            g_b[:, blk] = -(lam * p.pl * inner).sum(0).conj()
            g_B += lam.real.sum(-1)
            g_pl -= _re_sum(b_lam, inner)
            g_pr -= _re_sum(p.c * p.pl * b_lam + b_mu, x)
            g_c -= _re_sum(b_lam * (p.pl * p.pr), x)
            g_d += _re_sum(b_mu, w)
            g_dl += _re_sum(b_mu[1:], w[:-1])
            g_du += _re_sum(b_mu[:-1], w[1:])

        def fit(grad: Tensor, like: Tensor) -> Tensor:
            """(n, H) sums -> `like`'s (S, n): summed over features when shared."""
            grad = grad.T
            return grad.sum(0, keepdim=True) if like.shape[0] == 1 and H > 1 else grad

        return (None, g_b, fit(g_dl, dl), fit(g_d, d), fit(g_du, du), fit(g_pl, pl), fit(g_pr, pr), fit(g_c, c),
                fit(g_B, B), g_Ct)


def generating_function(p: TriD, dt: Tensor, Ct: Tensor, L: int, alpha: float, backend: str = "torch") -> Tensor:
    """K_hat(omega_k) = dt C~^T (I - omega_k A_bar)^{-1} B_bar at the L-th roots of unity,
    k = 0..L/2, for the GBT(alpha) of x' = -M x + B u (module docstring).

    Args:
        p: TriD with fields (N,) shared or (H, N) per feature (dl, du (..., N-1)).
        dt: (H,) steps. Ct: (C, H, N) real, C~ for length L. L: the nodes' count.
        backend: 'torch' (`_Resolvent`, every device) or 'numba' (CPU tensors, compiled loops,
            `ops.resolvent_numba`), same values.
    Returns:
        K_hat (C, H, L//2 + 1) complex.
    """
    cdtype = torch.complex128 if dt.dtype == torch.float64 else torch.complex64
    a, _ = roots_of_unity(L, cdtype, dt.device)
    beta = 1 - (1 - alpha) * a  # (K,)
    dl, d, du, pl, pr, c, bvec = (t if t.dim() == 2 else t[None] for t in p)  # (S, N)
    B = pl * bvec
    if backend == "numba":
        check_cpu(dt)
        fn = numba_module("resolvent_numba").ResolventNumba
        y = fn.apply(a, beta, dt, dl, d, du, pl, pr, c, B.expand(dt.shape[0], -1), Ct)
    else:
        y = _Resolvent.apply(a, beta * dt[:, None], dl, d, du, pl, pr, c, B, Ct)
    return dt[:, None] * y


def resolvent_kernel(p: TriD, dt: Tensor, Ct: Tensor, L: int, alpha: float, backend: str = "torch") -> Tensor:
    """K (C, H, L) of the GBT(alpha) system from its generating function: irfft of
    `generating_function` at L nodes (C~ for length L)."""
    return torch.fft.irfft(generating_function(p, dt, Ct, L, alpha, backend), n=L)


class ResolventKernel(KrylovKernel):
    """LSSL kernel for TriD transitions (legs, legt, lagt; learned or fixed) by its generating
    function, O(C H N L) per call with no N^3 term (module docstring). Same arguments, parameters
    and views as `KrylovKernel`, whose dense Krylov path stays the reference; only GBT
    discretisations (bilinear, forward and backward Euler) have a rational generating function,
    so disc='zoh' is refused (use `KrylovKernel`).

    C holds C~ = (I - A_bar^L)^T C for the length `l_kernel` (a buffer, 0 while C is still the
    plain C). At rate r the kernel uses L_d = round(l_kernel / r) nodes and step dt * r, as S4
    does; `discrete` returns the plain C that gives the same kernel by explicit powers.
    With learn_a=False the transition is the fixed TriD form of the HiPPO matrix (buffers).

    Args: as `KrylovKernel`; measure one of 'legs', 'legt', 'lagt'. backend: of the shifted
        solves, 'torch' (every device; on the CPU slower than the Krylov kernel at the sizes
        benchmarked) or 'numba' (CPU tensors, compiled loops, same values; `ops.resolvent_numba`).
    Shapes: as `KrylovKernel`; l_kernel () int.
    """

    def __init__(self, d_model: int, d_state: int, channels: int = 1, measure: str = "legs",
                 disc: str = "bilinear", learn_a: bool = False, share_a: bool = True, lr: float | None = 1e-4,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init: str = "random", learn_dt: bool = True,
                 lr_dt: float | None = 1e-3, backend: str = "torch"):
        check_backend(backend)
        if measure not in TRID_INITS:
            raise ValueError(
                f"kernel='resolvent' needs a TriD transition: measure must be one of "
                f"{', '.join(map(repr, TRID_INITS))}, got {measure!r} (use kernel='krylov')"
            )
        if disc not in GBT_ALPHA:
            raise ValueError(
                f"kernel='resolvent' needs a GBT discretisation: disc must be one of "
                f"{', '.join(map(repr, GBT_ALPHA))}, got {disc!r} (ZOH has no rational generating function; "
                f"use kernel='krylov')"
            )
        super().__init__(d_model, d_state, channels, measure, disc, learn_a, share_a, lr, dt_min, dt_max, dt_init,
                         learn_dt, lr_dt)
        if not learn_a:
            self.transition = TriDTransition(d_state, measure, H=None, learn=False)
        self.backend = backend
        register_int(self, "l_kernel")  # the length C~ belongs to; 0: C is plain

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"

    def _A_bar_blocks(self, rate: float) -> Iterator[tuple[slice, Tensor]]:
        """The dense A_bar (h, N, N) at step dt * rate of `FEATURE_BLOCK` features at a time,
        with their slice: the conversions between C and C~ then hold a few (h, N, N) matrices
        instead of (H, N, N) ones (at H = N = 256, 8 MB each instead of 64)."""
        p = self.transition.params()
        dt = self.dt * rate
        for start in range(0, self.d_model, FEATURE_BLOCK):
            block = slice(start, min(start + FEATURE_BLOCK, self.d_model))
            A, B = trid_dense(p if p.d.dim() == 1 else TriD(*(t[block] for t in p)))
            yield block, discretize.DENSE[self.disc](A, B, dt[block])[0]

    @torch.no_grad()
    def _setup_C(self, length: int) -> None:
        """Make C hold C~ for a length >= `length` (the first time, for `length`), doubling with
        (I - A_bar^{2L}) = (I + A_bar^L)(I - A_bar^L): C~ <- C~ + (A_bar^L)^T C~."""
        lk = get_int(self, "l_kernel")
        if lk >= length:
            return
        # The conversion as a list of (sign, power): C <- C + sign (A_bar^power)^T C, in order.
        steps = []
        if lk == 0:
            lk = length
            steps.append((-1, lk))
        while lk < length:
            steps.append((1, lk))
            lk *= 2
        for block, A_bar in self._A_bar_blocks(1.0):
            C = self.C[:, block]  # (C, h, N)
            for sign, power in steps:
                C = C + sign * (C[..., None, :] @ torch.linalg.matrix_power(A_bar, power)).squeeze(-2)
            self.C[:, block] = C
        set_int(self, "l_kernel", lk)

    def _nodes(self, L: int, rate: float) -> int:
        """Prepare C~ for (L, rate) and return the number of frequency nodes L_d >= L."""
        self._check_call(L, rate)
        self._setup_C(math.ceil(L * rate))
        return round(get_int(self, "l_kernel") / rate)

    def forward(self, L: int, rate: float = 1.0) -> Tensor:
        """K (C, H, L) at step dt * rate; memoised while the kernel is frozen (`KrylovKernel`)."""
        self._nodes(L, rate)
        return super().forward(L, rate)

    def _kernel(self, L: int, rate: float) -> Tensor:
        L_d = round(get_int(self, "l_kernel") / rate)
        p = self.transition.params()
        return resolvent_kernel(p, self.dt * rate, self.C, L_d, GBT_ALPHA[self.disc], self.backend)[..., :L]

    def discrete(self, L: int, rate: float = 1.0) -> DiscreteSSM:
        """Dense (A_bar (H, N, N), B_bar (H, N), C (C, H, N)) at step dt * rate, with the plain C
        solving (I - A_bar^{L_d})^T C = C~, L_d = round(l_kernel / rate), so that the
        explicit-powers kernel equals `forward(L, rate)`."""
        L_d = self._nodes(L, rate)
        A_bar, B_bar = self._discretize(rate)
        return DiscreteSSM(A_bar, B_bar, untruncated_C(A_bar, self.C, L_d))

