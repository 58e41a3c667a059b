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

Recurrent view (spec B.4). The bilinear step x_k = (2/dt - A)^{-1} [(2/dt + A) x_{k-1} + 2 B u_k]
(S4's "linear" mode) is O(N r): A = Lambda - P P^* is diagonal plus rank r, and Woodbury inverts
2/dt - A = D^{-1} + P P^* with D = 1/(2/dt - Lambda) through the real r x r matrix
S = I + P^* D P. Multiplying the two factors out once (`bilinear_dplr`) leaves A_bar itself
diagonal plus rank r,

    A_bar = diag(D (2/dt + Lambda)) - (D P S^{-1}) ((4/dt) P^* D),

(the two Woodbury terms merge because 1 + D (2/dt + Lambda) = (4/dt) D), so a step is one
diagonal product, one rank-r correction and the input term (`base.DiagonalRecurrence`), on the
half state x (B, H, N/2) complex of the full state (x, conj x), with output 2 Re(C x) (spec
E16). The dense A_bar is never diagonalised (its eigenvectors are ill-conditioned, spec F9).
The step's C is the plain C of the system, recovered from C~ as `discrete` does.

State passing (`state_response`, `final_state`) runs on the dense full-space A_bar assembled
from the same factors (`base.dense_response`, `base.dense_final_state`): O(H N^3 log L) once per
call, then dense products, O(H N^2) memory beyond the signals.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import discretize, hippo
from .._checks import check_choice, check_divides, check_even, check_length, check_positive
from ..ops.backend import check_backend
from ..ops.cauchy import cauchy_conj
from .base import (
    DiagonalRecurrence,
    DiscreteSSM,
    Recurrence,
    SSMKernel,
    complex_dtype,
    dense_final_state,
    dense_response,
    full,
    get_int,
    register_int,
    set_int,
    untruncated_C,
)

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


def generating_function(
    lam: Tensor, P: Tensor, B: Tensor, C: Tensor, dt: Tensor, a: Tensor, c: Tensor, backend: str = "torch"
) -> Tensor:
    """K_hat(z) = C^T (I - A_bar z)^{-1} B_bar of the bilinear DPLR system (module docstring)
    at the nodes a = 1 - z, c = (1 + z) / 2; z = -1 (a = 2, c = 0) is a node like any other.

    Args:
        lam: (H, N/2) complex, Lambda. P: (r, H, N/2) complex. B: (H, N/2) complex.
        C: (C, H, N/2) complex (C~ for the truncated kernel). dt: (H,) step. a, c: (K,) complex.
        backend: of the Cauchy sums, 'torch' or 'numba' (`ops.cauchy.cauchy_conj`).
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
    k_cb, k_cp, k_qb, k_qp = cauchy_conj(v, dt * lam, a, c, backend=backend).split([n_c, n_c * r, r, r * r])
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


def bilinear_dplr(lam: Tensor, P: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The bilinear A_bar, B_bar of A = Lambda - P P^* in diagonal-plus-low-rank form on half
    states (module docstring): A_bar x = a x - sum_k U_k 2 Re(V_k x), B_bar = b, with
    a = (1 + h Lambda) / (1 - h Lambda), D = h / (1 - h Lambda) = 1 / (2/dt - Lambda), h = dt/2,
    S = I + 2 Re(P^* D P) (r, r) real, U = D P S^{-1}, V = (2/h) conj(P) D and
    b = 2 D B - U beta, beta = 2 Re(P^* D 2B) (Woodbury applied to 2B).

    Args:
        lam: (H, N/2) complex. P: (r, H, N/2) complex. B: (H, N/2) complex.
        dt: (..., H) steps, with any leading batch dims (one step per sample for irregular
            sampling).
    Returns:
        a (..., H, N/2), b (..., H, N/2), U (r, ..., H, N/2), V (r, ..., H, N/2), all complex.
    """
    h = (dt / 2)[..., None]  # (..., H, 1)
    D = h / (1 - h * lam)  # (..., H, N/2)
    a = (1 + h * lam) / (1 - h * lam)  # (..., H, N/2)
    r = P.shape[0]
    P = P.reshape(r, *(1,) * (D.dim() - 2), *P.shape[1:])  # (r, 1.., H, N/2)
    PD = P.conj() * D  # (r, ..., H, N/2)
    S = torch.eye(r, dtype=h.dtype, device=h.device).reshape(r, r, *(1,) * (D.dim() - 1))
    S = S + 2 * (PD[:, None] * P[None]).sum(-1).real  # (r, r, ..., H)
    S_inv = small_inverse(S)  # (r, r, ..., H)
    U = (S_inv[..., None] * (D * P)[:, None]).sum(0)  # (r, ..., H, N/2)
    V = (2 / h) * PD  # (r, ..., H, N/2)
    beta = 2 * (PD * 2 * B).sum(-1).real  # (r, ..., H)
    b = 2 * D * B - (U * beta[..., None]).sum(0)  # (..., H, N/2)
    return a, b, U, V


def dplr_dense(a: Tensor, U: Tensor, V: Tensor) -> Tensor:
    """The dense full-space matrix diag(a, conj a) - sum_k (U_k, conj U_k)^T (V_k, conj V_k)
    of the half-state operator x -> a x - sum_k U_k 2 Re(V_k x).

    Args:
        a: (H, N/2) complex. U, V: (r, H, N/2) complex.
    Returns:
        (H, N, N) complex.
    """
    return torch.diag_embed(full(a)) - torch.einsum("rhn,rhm->hnm", full(U), full(V))


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
        backend: of the kernel's Cauchy sums: 'torch' (every device) or 'numba' (CPU tensors,
            fused compiled loops, same values; `ops.cauchy.cauchy_conj`).
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
        backend: str = "torch",
    ):
        super().__init__(d_model, channels, dt_min, dt_max, dt_init, learn_dt, lr_dt)
        check_backend(backend)
        check_length("d_state", d_state)
        check_even("d_state", d_state, hippo.CONJUGATE_PAIRS)
        check_choice("measure", measure, hippo.MEASURES)
        n_ssm = d_model if n_ssm is None else n_ssm
        check_divides("n_ssm", n_ssm, "d_model", d_model)
        if l_max is not None:
            check_length("l_max", l_max)
        self.d_state, self.measure, self.n_ssm, self.l_max, self.backend = d_state, measure, n_ssm, l_max, backend

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
        register_int(self, "l_kernel")  # the length C~ belongs to; 0: C is plain

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_state={self.d_state}, measure={self.measure!r}, n_ssm={self.n_ssm}, "
            f"backend={self.backend!r}"
        )

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
        lk = get_int(self, "l_kernel")
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
        set_int(self, "l_kernel", lk)

    def _nodes(self, L: int, rate: float) -> int:
        """Prepare C~ for (L, rate) and return the number of frequency nodes L_d >= L."""
        self._check_call(L, rate)
        self._setup_C(math.ceil(L * rate))
        return round(get_int(self, "l_kernel") / rate)

    def forward(self, L: int, rate: float = 1.0) -> Tensor:
        """K (C, H, L) real, the bilinear kernel at step dt * rate."""
        L_d = self._nodes(L, rate)
        lam, P, B = self._ssm()
        C = self.complex("C")
        a, c = roots_of_unity(L_d, C.dtype, C.device)
        K_hat = generating_function(lam, P, B, C, self.dt * rate, a, c, self.backend)  # (C, H, L_d//2 + 1)
        return torch.fft.irfft(K_hat, n=L_d)[..., :L]

    def _plain_C(self, A_bar: Tensor, rate: float) -> Tensor:
        """The plain C (C, H, N) complex, full space, of the system with A_bar (H, N, N) at step
        dt * rate: the solution of (I - A_bar^{L_d})^T C = C~, L_d = round(l_kernel / rate)
        (at least 1), so that its kernel is `forward(L, rate)`; C itself while no C~ exists
        (l_kernel = 0)."""
        lk = get_int(self, "l_kernel")
        C = full(self.complex("C"))  # (C, H, N)
        if lk == 0:
            return C
        return untruncated_C(A_bar, C, round(lk / rate))

    def discrete(self, L: int, rate: float = 1.0) -> DiscreteSSM:
        """Dense full-space (A_bar (H, N, N), B_bar (H, N), C (C, H, N)), complex, at step
        dt * rate, with C recovered from C~ by solving (I - A_bar^{L_d})^T C = C~, so that the
        explicit-powers kernel equals `forward(L, rate)`."""
        self._nodes(L, rate)
        lam, P, B = self._ssm()
        P_full = full(P)  # (r, H, N)
        A = torch.diag_embed(full(lam)) - torch.einsum("rhn,rhm->hnm", P_full, P_full.conj())  # (H, N, N)
        A_bar, B_bar = discretize.gbt(A, full(B), self.dt * rate, 0.5)
        return DiscreteSSM(A_bar, B_bar, self._plain_C(A_bar, rate))

    def _step_system(self, rate: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`bilinear_dplr` at step dt * rate: a, b (H, N/2), U, V (r, H, N/2), complex."""
        check_positive("rate", rate)
        lam, P, B = self._ssm()
        return bilinear_dplr(lam, P, B, self.dt * rate)

    def modes(self) -> tuple[Tensor, Tensor]:
        """The diagonal part Lambda (H, N/2) and B (H, N/2) of the half spectrum, complex."""
        lam, _, B = self._ssm()
        return lam, B

    def input_sum(self, rate: float = 1.0) -> Tensor:
        """s = 1^T B_bar (H,) real over the full conjugate-symmetric state, 2 Re sum_n b_n with the
        bilinear B_bar of the whole A = Lambda - P P^* (`bilinear_dplr`) at step dt * rate."""
        _, b, _, _ = self._step_system(rate)
        return 2 * b.sum(-1).real

    def default_state(self, batch: int) -> Tensor:
        """The zero half state (B, H, N/2) complex (module docstring)."""
        check_length("batch", batch)
        C = self.complex("C")
        return torch.zeros(batch, self.d_model, self.d_state // 2, dtype=C.dtype, device=C.device)

    def recurrence(self, rate: float = 1.0) -> Recurrence:
        """The O(N r) bilinear step at step dt * rate on the half state (module docstring), with
        the plain C for L_d = round(l_kernel / rate) nodes, the C of `forward(L, rate)`; before
        any kernel call (l_kernel = 0) C is still the plain C. Setup O(H N^3 log l_kernel)."""
        a, b, U, V = self._step_system(rate)
        half = a.shape[-1]
        C = self._plain_C(dplr_dense(a, U, V), rate)[..., :half]  # (C, H, N/2)
        return DiagonalRecurrence(a, b, C, U, V)

    def state_response(self, state: Tensor, L: int, rate: float = 1.0) -> Tensor:
        """Zero-input response Re(C A_bar^{t+1} x0), t < L, of the half state x0 = `state`
        (B, H, N/2) complex, with the C of `forward(L, rate)`. Returns (B, C, H, L) real."""
        self._nodes(L, rate)
        a, _, U, V = self._step_system(rate)
        A_bar = dplr_dense(a, U, V)  # (H, N, N)
        return dense_response(A_bar, self._plain_C(A_bar, rate), full(state), L)

    def final_state(self, u: Tensor, state: Tensor | None = None, rate: float = 1.0) -> Tensor:
        """The half state x_{L-1} (B, H, N/2) complex after the input u (B, L, H), from `state`
        x_{-1} (B, H, N/2) (None: zeros)."""
        a, b, U, V = self._step_system(rate)
        x0 = None if state is None else full(state)
        return dense_final_state(dplr_dense(a, U, V), full(b), u, x0)[..., : a.shape[-1]]

    def irregular(self, u: Tensor, scale: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The SSM output with a step of its own at every sample, x_t = A_bar_t x_{t-1} +
        B_bar_t u_t (bilinear at step dt * scale[b, t]), with the plain C of `forward(L)` at
        rate 1. The O(N r) DPLR step system of every (b, t) is built at once; the states then
        follow by a Python loop over time, O(B H N r) per sample (a handful of small ops each).

        Args:
            u: (B, L, H) input. scale: (B, L) positive step factors (time gap before each
                sample, in units of dt). state: x_{-1} (B, H, N/2) complex, or None (zeros).
        Returns:
            y (B, C, H, L) real, without the D term, and the final half state (B, H, N/2).
        """
        lam, P, B = self._ssm()
        a, _, U, V = bilinear_dplr(lam, P, B, self.dt)
        C = self._plain_C(dplr_dense(a, U, V), 1.0)[..., : a.shape[-1]]  # (C, H, N/2)
        a, b, U, V = bilinear_dplr(lam, P, B, scale[..., None] * self.dt)  # (B, L, H, N/2), (r, B, L, H, N/2)
        x = self.default_state(u.shape[0]) if state is None else state
        ys = []
        for t in range(u.shape[1]):
            low_rank = (U[:, :, t] * 2 * (V[:, :, t] * x).sum(-1, keepdim=True).real).sum(0)  # (B, H, N/2)
            x = a[:, t] * x + b[:, t] * u[:, t, :, None] - low_rank
            ys.append(2 * torch.einsum("chn,bhn->bch", C, x).real)
        return torch.stack(ys, dim=-1), x
