"""The S4 kernel: a diagonal-plus-low-rank (DPLR) state matrix A = Lambda - P P^*, kernel by
Cauchy sums and Woodbury at the roots of unity (S4 paper §3, Alg. 1; spec B.1–B.3).

Only half of the spectrum is stored; on the full conjugate-symmetric space of size N,
x_full = concat(x, conj(x)) and A_full = diag(Lambda_full) - P_full^T conj(P_full) (sum over
the rank r), so the system and its kernel are real.

Kernel. The bilinear discretisation (step dt) has, at z on the unit circle,

    (I - A_bar z)^{-1} B_bar = [(1 - z) I - (1 + z) (dt/2) A]^{-1} dt B,

so with a = 1 - z, c = (1 + z) / 2, mu = dt Lambda and R = diag(1 / (a - c mu)), Woodbury gives

    K_hat(z) = C~^T (I - A_bar z)^{-1} B_bar
             = dt [k_{C~B} - c k_{C~P'} (I + c k_{QP'})^{-1} k_{QB}],   P' = dt P, Q = conj(P),

with the Cauchy sums k_{xy} = sum_n x_n y_n / (a - c mu_n) over the full space. C~ is stored
instead of C: the truncated generating function sum_{j<L} K_j z^j = C^T (I - A_bar^L z^L)
(I - A_bar z)^{-1} B_bar equals C~^T (I - A_bar z)^{-1} B_bar, C~ = (I - A_bar^L)^T C, at the
L-th roots of unity z = omega_k, so K = irfft(K_hat(omega_0..omega_{L/2}), L) exactly.

Lengths and rates. C~ belongs to the step dt and the length `l_kernel` (a buffer; 0 while C
still holds the plain C). The first call converts C for the length it needs, ceil(L * rate)
(or l_max if longer); a call that needs more doubles it, (I - A_bar^{2L}) = (I + A_bar^L)
(I - A_bar^L). At rate r the kernel uses L_d = round(l_kernel / r) >= L nodes and step dt * r:
the exact truncated kernel of the system whose C solves (I - A_bar_r^{L_d})^T C = C~, which is
the C that `discrete` returns (close to the rate-1 C, not equal: the bilinear A_bar_r^{L_d} only
approximates A_bar^{l_kernel}).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import discretize, hippo
from .._checks import check_choice, check_divides, check_even, check_length
from ..ops.cauchy import cauchy_conj
from ..ops.linalg import solve
from .base import DiscreteSSM, SSMKernel, complex_dtype, full

Tensor = torch.Tensor


def small_inverse(M: Tensor) -> Tensor:
    """Inverse of r x r matrices stored in the two leading dims, M (r, r, ...): closed forms for
    the HiPPO ranks r <= 2, so the kernel needs no batched general solve; a larger r (no HiPPO
    measure has one) goes through torch.linalg.inv on the tiny blocks."""
    r = M.shape[0]
    if r == 1:
        return 1 / M
    if r == 2:
        det = M[0, 0] * M[1, 1] - M[0, 1] * M[1, 0]
        return torch.stack([torch.stack([M[1, 1], -M[0, 1]]), torch.stack([-M[1, 0], M[0, 0]])]) / det
    return torch.linalg.inv(M.movedim((0, 1), (-2, -1))).movedim((-2, -1), (0, 1))


def roots_of_unity(L: int, dtype: torch.dtype, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """a = 1 - omega and c = (1 + omega) / 2 at omega_k = exp(-2 pi i k / L), k = 0..L//2.

    Written with half angles (1 - omega = 2 sin^2(t/2) + i sin t) so that a is accurate near
    omega = 1, and computed in float64 so the Nyquist node is exact to round-off.
    Returns:
        a, c: (L//2 + 1,) complex of `dtype`.
    """
    t = 2 * math.pi * torch.arange(L // 2 + 1, dtype=torch.float64) / L
    s, h, hc = torch.sin(t), torch.sin(t / 2), torch.cos(t / 2)
    a = torch.complex(2 * h * h, s)
    c = torch.complex(hc * hc, -s / 2)
    return a.to(dtype=dtype, device=device), c.to(dtype=dtype, device=device)


def generating_function(lam: Tensor, P: Tensor, B: Tensor, C: Tensor, dt: Tensor, a: Tensor, c: Tensor) -> Tensor:
    """K_hat(z) = C^T (I - A_bar z)^{-1} B_bar of the bilinear DPLR system (module docstring)
    at the nodes a = 1 - z, c = (1 + z) / 2; z = -1 (a = 2, c = 0) is a node like any other.

    Args:
        lam: (H, N/2) complex, Lambda. P: (r, H, N/2) complex. B: (H, N/2) complex.
        C: (C, H, N/2) complex (C~ for the truncated kernel). dt: (H,) step. a, c: (K,) complex.
    Returns:
        K_hat (C, H, K) complex.
    """
    n_c, r = C.shape[0], P.shape[0]
    dt = dt[:, None]  # (H, 1)
    Q, P_dt = P.conj(), dt * P  # (r, H, N/2)
    v = torch.cat([
        C * B,  # (C, H, N/2)
        (C[:, None] * P_dt).flatten(0, 1),  # (C r, H, N/2)
        Q * B,  # (r, H, N/2)
        (Q[:, None] * P_dt).flatten(0, 1),  # (r r, H, N/2)
    ])
    # One split (not four slices) so that the backward is one concatenation.
    k_cb, k_cp, k_qb, k_qp = cauchy_conj(v, dt * lam, a, c).split([n_c, n_c * r, r, r * r])
    k_cp, k_qp = k_cp.unflatten(0, (n_c, r)), k_qp.unflatten(0, (r, r))  # (C, r, H, K), (r, r, H, K)
    M_inv = small_inverse(torch.eye(r, dtype=k_qp.dtype, device=k_qp.device)[..., None, None] + c * k_qp)
    low_rank = (k_cp * (M_inv * k_qb).sum(1)).sum(1)  # (C, H, K)
    return dt * (k_cb - c * low_rank)


def bilinear_dense(lam: Tensor, P: Tensor, dt: Tensor) -> Tensor:
    """Dense A_bar = (I - dt/2 A)^{-1} (I + dt/2 A) = 2 (I - dt/2 A)^{-1} - I on the full space,
    inverting I - dt/2 A = diag(1 - dt/2 lam) + (dt/2) P^T conj(P) by Woodbury (diagonal
    inverse plus an r x r one): no batched general solve, whose CPU results have been wrong
    above ~130 x 130 (pytorch#142815).

    Args:
        lam: (H, N/2) complex. P: (r, H, N/2) complex. dt: (H,) step.
    Returns:
        A_bar (H, N, N) complex.
    """
    h = (dt / 2)[:, None]  # (H, 1)
    d_inv = 1 / (1 - h * full(lam))  # (H, N)
    U = (h * full(P)).permute(1, 2, 0)  # (H, N, r)
    V = full(P).conj().transpose(0, 1)  # (H, r, N)
    r = P.shape[0]
    S = torch.eye(r, dtype=U.dtype, device=U.device) + V @ (d_inv[..., None] * U)  # (H, r, r)
    S_inv = small_inverse(S.permute(1, 2, 0)).permute(2, 0, 1)  # (H, r, r)
    M_inv = torch.diag_embed(d_inv) - (d_inv[..., None] * U) @ S_inv @ (V * d_inv[:, None, :])  # (H, N, N)
    return 2 * M_inv - torch.eye(M_inv.shape[-1], dtype=M_inv.dtype, device=M_inv.device)


class DPLRKernel(SSMKernel):
    """S4 kernel with A = Lambda - P P^* initialised from HiPPO's NPLR form (spec B.1–B.3).

    Args:
        d_model: H features. d_state: N (even; the modes come in conjugate pairs).
        channels: C output channels per feature.
        measure: HiPPO measure of the initial A, one of `hippo.MEASURES`; its rank-correction
            rank r (1 for legs, lagt, fout; 2 for legt) is the rank of P.
        n_ssm: number of distinct (Lambda, P, B) copies (None: H); feature h uses copy
            h % n_ssm, so n_ssm must divide H.
        dt_min, dt_max, dt_init, learn_dt, lr_dt: see `SSMKernel`.
        learn: train Lambda, P and B (else buffers). lr: learning-rate hint for them.
        l_max: length of the first C~ (None: the first call's length).
    Shapes: log_neg_re, lam_im (n_ssm, N/2); P (r, n_ssm, N/2) complex; B (n_ssm, N/2)
    complex; C (C, H, N/2) complex, holding C~ for length `l_kernel` once `l_kernel` > 0;
    log_dt (H,). Complex tensors are stored as real views (..., 2).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int,
        channels: int = 1,
        measure: str = "legs",
        n_ssm: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init: str = "random",
        learn_dt: bool = True,
        lr_dt: float | None = 1e-3,
        learn: bool = True,
        lr: float | None = 1e-3,
        l_max: int | None = None,
    ):
        super().__init__(d_model, channels, dt_min, dt_max, dt_init, learn_dt, lr_dt)
        check_length("d_state", d_state)
        check_even("d_state", d_state, hippo.CONJUGATE_PAIRS)
        check_choice("measure", measure, hippo.MEASURES)
        n_ssm = d_model if n_ssm is None else n_ssm
        check_divides("n_ssm", n_ssm, "d_model", d_model)
        if l_max is not None:
            check_length("l_max", l_max)
        self.d_state, self.measure, self.n_ssm, self.l_max = d_state, measure, n_ssm, l_max

        f = hippo.nplr(measure, d_state)
        dtype = torch.get_default_dtype()
        cdtype = complex_dtype(dtype)
        copies = (n_ssm, d_state // 2)
        # legt, lagt and fout have Re(Lambda) = 0 exactly; nudge it to -1e-4 so log(-Re) exists
        # and every mode of the normal part decays (their A is HiPPO's A - 1e-4 I).
        re = f.Lambda.real.clamp(max=-1e-4)
        self.register("log_neg_re", torch.log(-re).expand(copies).to(dtype), learn=learn, lr=lr)
        self.register("lam_im", f.Lambda.imag.expand(copies).to(dtype), learn=learn, lr=lr)
        self.register("P", f.P[:, None].expand(-1, *copies).to(cdtype), learn=learn, lr=lr)
        self.register("B", f.B.expand(copies).to(cdtype), learn=learn, lr=lr)
        # C is an ordinary parameter (global learning rate and weight decay), E|C_n|^2 = 1.
        C = torch.randn(channels, d_model, d_state // 2, dtype=cdtype)
        self.C = nn.Parameter(torch.view_as_real(C))
        # 0: C holds the plain C; L > 0: it holds C~ = (I - A_bar^L)^T C, A_bar at step dt.
        self.register_buffer("l_kernel", torch.tensor(0))

    def _features(self, x: Tensor) -> Tensor:
        """Broadcast n_ssm copies (..., n_ssm, N/2) to the H features (..., H, N/2)."""
        *lead, n, half = x.shape
        return x.unsqueeze(-3).expand(*lead, self.d_model // n, n, half).reshape(*lead, self.d_model, half)

    def _ssm(self) -> tuple[Tensor, Tensor, Tensor]:
        """(Lambda (H, N/2), P (r, H, N/2), B (H, N/2)), complex."""
        lam = torch.complex(-self.log_neg_re.exp(), self.lam_im)
        return self._features(lam), self._features(self.complex("P")), self._features(self.complex("B"))

    @torch.no_grad()
    def _setup_C(self, length: int) -> None:
        """Make C hold C~ for a length >= `length` (the first time, for max(l_max, length)),
        doubling with (I - A_bar^{2L}) = (I + A_bar^L)(I - A_bar^L): C~ <- C~ + (A_bar^L)^T C~."""
        lk = self.l_kernel.item()
        if lk >= length:
            return
        lam, P, _ = self._ssm()
        A_bar = bilinear_dense(lam, P, self.dt)  # (H, N, N)
        C = self.complex("C")
        half = C.shape[-1]
        if lk == 0:
            lk = max(self.l_max or 0, length)
            power = torch.linalg.matrix_power(A_bar, lk)
            C = C - (full(C)[..., None, :] @ power).squeeze(-2)[..., :half]
        while lk < length:
            power = torch.linalg.matrix_power(A_bar, lk)
            C = C + (full(C)[..., None, :] @ power).squeeze(-2)[..., :half]
            lk *= 2
        self.C.copy_(torch.view_as_real(C))
        self.l_kernel.fill_(lk)

    def _nodes(self, L: int, rate: float) -> int:
        """Prepare C~ for (L, rate) and return the number of frequency nodes L_d >= L."""
        self._check_call(L, rate)
        self._setup_C(math.ceil(L * rate))
        return round(self.l_kernel.item() / rate)

    def forward(self, L: int, rate: float = 1.0) -> Tensor:
        """K (C, H, L) real, the bilinear kernel at step dt * rate."""
        L_d = self._nodes(L, rate)
        lam, P, B = self._ssm()
        C = self.complex("C")
        a, c = roots_of_unity(L_d, C.dtype, C.device)
        K_hat = generating_function(lam, P, B, C, self.dt * rate, a, c)  # (C, H, L_d//2 + 1)
        return torch.fft.irfft(K_hat, n=L_d)[..., :L]

    def discrete(self, L: int, rate: float = 1.0) -> DiscreteSSM:
        """Dense full-space (A_bar (H, N, N), B_bar (H, N), C (C, H, N)), complex, at step
        dt * rate, with C recovered from C~ by solving (I - A_bar^{L_d})^T C = C~, so that the
        explicit-powers kernel equals `forward(L, rate)`."""
        L_d = self._nodes(L, rate)
        lam, P, B = self._ssm()
        P_full = full(P)  # (r, H, N)
        A = torch.diag_embed(full(lam)) - torch.einsum("rhn,rhm->hnm", P_full, P_full.conj())  # (H, N, N)
        A_bar, B_bar = discretize.gbt(A, full(B), self.dt * rate, 0.5)
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        lhs = (eye - torch.linalg.matrix_power(A_bar, L_d)).mT  # (H, N, N)
        C = solve(lhs, full(self.complex("C"))[..., None])[..., 0]  # (C, H, N)
        return DiscreteSSM(A_bar, B_bar, C)
