"""The S4D kernel: a diagonal complex state matrix Lambda, discretised per feature, and its
kernel by one Vandermonde product (S4D; spec B.5):

    K_l = 2 Re sum_{n < N/2} C_n B_bar_n A_bar_n^l,

over the N/2 stored modes; the other N/2 are their complex conjugates, whose terms are the
conjugates of these, hence the 2 Re (spec E16).

The recurrent view works on the same half: the state is x (B, H, N/2) complex, the first half
of the full state (x, conj x), stepped as x_t = A_bar x_{t-1} + B_bar u_t with output
2 Re(C x_t), O(N) per sample. State passing uses Vandermonde products too: the zero-input
response 2 Re sum_n C_n A_bar_n^{t+1} x0_n is the kernel with C B_bar replaced by C A_bar x0, and
the final state sum_l A_bar^{L-1-l} B_bar u_l is a transposed product over the reversed input
(spec B.5, state forwarding); neither materialises (B, H, N, L).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .. import discretize, hippo
from .._checks import check_choice, check_divides, check_even, check_length, check_positive
from ..ops.scan import linear_scan
from ..ops.vandermonde import vandermonde_re, vandermonde_transpose
from .base import DiagonalRecurrence, DiscreteSSM, Recurrence, SSMKernel, complex_dtype, full

Tensor = torch.Tensor
_C128 = torch.complex128


def init_legs(N: int) -> tuple[Tensor, Tensor]:
    """S4D-LegS: the eigenvalues -1/2 + i omega_n of the normal part of HiPPO-LegS and its B in
    that eigenbasis (spec B.2), so the diagonal system approximates LegS."""
    f = hippo.nplr("legs", N)
    return f.Lambda, f.B


def init_inv(N: int) -> tuple[Tensor, Tensor]:
    """S4D-Inv: Lambda_n = -1/2 - i (N / pi) (N / (2n + 1) - 1), B_n = 1."""
    n = torch.arange(N // 2, dtype=torch.float64)
    lam = torch.complex(torch.full_like(n, -0.5), -(N / math.pi) * (N / (2 * n + 1) - 1))
    return lam, torch.ones(N // 2, dtype=_C128)


def init_lin(N: int) -> tuple[Tensor, Tensor]:
    """S4D-Lin: Lambda_n = -1/2 - i pi n, B_n = 1."""
    n = torch.arange(N // 2, dtype=torch.float64)
    return torch.complex(torch.full_like(n, -0.5), -math.pi * n), torch.ones(N // 2, dtype=_C128)


def init_real(N: int) -> tuple[Tensor, Tensor]:
    """S4D-Real: Lambda_n = -(n + 1), B_n = 1."""
    n = torch.arange(N // 2, dtype=torch.float64)
    return torch.complex(-(n + 1), torch.zeros_like(n)), torch.ones(N // 2, dtype=_C128)


INITS: dict[str, Callable[[int], tuple[Tensor, Tensor]]] = {
    "legs": init_legs,
    "inv": init_inv,
    "lin": init_lin,
    "real": init_real,
}


def zoh_log(dt_lam: Tensor) -> Tensor:
    """log A_bar of the ZOH A_bar = exp(dt Lambda): dt Lambda itself, with no rounding.

    Args:
        dt_lam: (..., N) complex, dt Lambda.
    Returns:
        (..., N) complex, log A_bar.
    """
    return dt_lam


def bilinear_log(dt_lam: Tensor) -> Tensor:
    """A logarithm of the bilinear A_bar = (1 + x) / (1 - x), x = dt Lambda / 2, as
    log1p(x) - log1p(-x).

    It differs from the principal log(A_bar) by a multiple of 2 pi i at most, which no power
    A_bar^l sees, and keeps full relative precision when dt Lambda is small, where the log of a
    rounded A_bar ~ 1 loses digits that the Vandermonde product then multiplies by l (float32,
    dt = 1e-4: 1e-7 relative error against 2e-4). A_bar = 0 (dt Lambda = -2) has no logarithm;
    log(tiny) stands in, so the kernel is B_bar C at l = 0 and 0 after it, as it should be,
    with no -inf or NaN in the values or gradients.

    Args:
        dt_lam: (..., N) complex, dt Lambda.
    Returns:
        (..., N) complex, log A_bar.
    """
    x = dt_lam / 2
    zero = x == -1
    x_safe = torch.where(zero, torch.zeros_like(x), x)
    floor = math.log(torch.finfo(x.real.dtype).tiny)
    return torch.where(zero, torch.full_like(x, floor), torch.log1p(x_safe) - torch.log1p(-x_safe))


# log A_bar per discretisation (A_bar, B_bar themselves come from `discretize.DIAGONAL`).
LOG_A_BAR: dict[str, Callable[[Tensor], Tensor]] = {"zoh": zoh_log, "bilinear": bilinear_log}

DISCRETIZATIONS = tuple(LOG_A_BAR)


class DiagKernel(SSMKernel):
    """S4D kernel (spec B.1, B.5): n_ssm diagonal SSMs shared across the H features.

    Args:
        d_model: H features. d_state: N, even (N/2 stored conjugate-pair modes).
        channels: C output channels per feature.
        init: initial Lambda and B, one of `INITS` ('legs', 'inv', 'lin', 'real').
        disc: 'zoh' or 'bilinear'.
        n_ssm: number of distinct (Lambda, B) copies, dividing H; feature h uses copy h % n_ssm
            (None: H, one per feature).
        learn: train Lambda and B (else buffers). lr: learning-rate hint for Lambda and B.
        dt_min, dt_max, dt_init, learn_dt, lr_dt: see `SSMKernel`.
    Shapes: Lambda = -exp(log_neg_re) + i lam_im (n_ssm, N/2) complex; B (n_ssm, N/2) complex;
    C (C, H, N/2) complex; log_dt (H,). Complex tensors are stored as real views (..., 2).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int,
        channels: int = 1,
        init: str = "legs",
        disc: str = "zoh",
        n_ssm: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init: str = "random",
        learn_dt: bool = True,
        lr_dt: float | None = 1e-3,
        learn: bool = True,
        lr: float | None = 1e-3,
    ):
        super().__init__(d_model, channels, dt_min, dt_max, dt_init, learn_dt, lr_dt)
        check_length("d_state", d_state)
        check_even("d_state", d_state, hippo.CONJUGATE_PAIRS)
        check_choice("init", init, INITS)
        check_choice("disc", disc, DISCRETIZATIONS)
        n_ssm = d_model if n_ssm is None else n_ssm
        check_divides("n_ssm", n_ssm, "d_model", d_model)
        self.d_state, self.init, self.disc, self.n_ssm = d_state, init, disc, n_ssm

        lam, B = INITS[init](d_state)  # (N/2,) complex128 each
        dtype = torch.get_default_dtype()
        cdtype = complex_dtype(dtype)
        expand = (n_ssm, d_state // 2)
        self.register("log_neg_re", torch.log(-lam.real).to(dtype).expand(expand), learn=learn, lr=lr)
        self.register("lam_im", lam.imag.to(dtype).expand(expand), learn=learn, lr=lr)
        self.register("B", B.to(cdtype).expand(expand), learn=learn, lr=lr)
        # C is an ordinary parameter (global learning rate and weight decay), complex normal.
        self.C = nn.Parameter(torch.view_as_real(torch.randn(channels, d_model, d_state // 2, dtype=cdtype)))

    @property
    def Lambda(self) -> Tensor:
        """The stored diagonal (n_ssm, N/2) complex, with Re < 0 by construction."""
        return torch.complex(-self.log_neg_re.exp(), self.lam_im)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_state={self.d_state}, init={self.init!r}, disc={self.disc!r}, n_ssm={self.n_ssm}"

    def _discretize(self, rate: float) -> tuple[Tensor, Tensor, Tensor]:
        """(A_bar, B_bar, log A_bar), each (H, N/2) complex, at step dt * rate."""
        lam, B = self.modes()  # (H, N/2) each
        dt = self.dt * rate  # (H,)
        A_bar, B_bar = discretize.DIAGONAL[self.disc](lam, B, dt)
        dt_lam = dt[:, None] * lam  # (H, N/2)
        return A_bar, B_bar, LOG_A_BAR[self.disc](dt_lam)

    def forward(self, L: int, rate: float = 1.0) -> Tensor:
        """K (C, H, L) real at step dt * rate, by the real-part Vandermonde product (half the
        multiplications of the complex one; the imaginary part is never needed)."""
        self._check_call(L, rate)
        _, B_bar, log_A = self._discretize(rate)
        v = torch.view_as_complex(self.C) * B_bar  # (C, H, N/2)
        return 2 * vandermonde_re(v, log_A, L)

    def discrete(self, L: int, rate: float = 1.0) -> DiscreteSSM:
        """The full conjugate-symmetric space: A_bar (H, N, N) diagonal, B_bar (H, N),
        C (C, H, N), all complex, with K_l = Re(C A_bar^l B_bar)."""
        self._check_call(L, rate)
        A_bar, B_bar, _ = self._discretize(rate)
        C = torch.view_as_complex(self.C)
        return DiscreteSSM(torch.diag_embed(full(A_bar)), full(B_bar), full(C))

    def modes(self) -> tuple[Tensor, Tensor]:
        """Lambda (H, N/2) and B (H, N/2) per feature, complex."""
        copies = self.d_model // self.n_ssm
        return self.Lambda.repeat(copies, 1), self.complex("B").repeat(copies, 1)

    def input_sum(self, rate: float = 1.0) -> Tensor:
        """s = 1^T B_bar (H,) real over the full conjugate-symmetric state, 2 Re sum_n B_bar_n, at
        step dt * rate."""
        check_positive("rate", rate)
        _, B_bar, _ = self._discretize(rate)
        return 2 * B_bar.sum(-1).real

    def default_state(self, batch: int) -> Tensor:
        """The zero half state (B, H, N/2) complex (module docstring)."""
        check_length("batch", batch)
        C = torch.view_as_complex(self.C)
        return torch.zeros(batch, self.d_model, self.d_state // 2, dtype=C.dtype, device=C.device)

    def recurrence(self, rate: float = 1.0) -> Recurrence:
        """The diagonal step at step dt * rate on the half state, O(H N) per sample."""
        check_positive("rate", rate)
        A_bar, B_bar, _ = self._discretize(rate)
        return DiagonalRecurrence(A_bar, B_bar, torch.view_as_complex(self.C))

    def state_response(self, state: Tensor, L: int, rate: float = 1.0) -> Tensor:
        """Zero-input response 2 Re sum_n C_n A_bar_n^{t+1} x0_n, t < L, of the half state
        x0 = `state` (B, H, N/2) complex. Returns (B, C, H, L) real."""
        self._check_call(L, rate)
        A_bar, _, log_A = self._discretize(rate)
        v = torch.view_as_complex(self.C) * (A_bar * state)[:, None]  # (B, C, H, N/2)
        return 2 * vandermonde_re(v.flatten(0, 1), log_A, L).unflatten(0, v.shape[:2])

    def final_state(self, u: Tensor, state: Tensor | None = None, rate: float = 1.0) -> Tensor:
        """The half state x_{L-1} = A_bar^L x0 + sum_l A_bar^{L-1-l} B_bar u_l (B, H, N/2)
        complex after the input u (B, L, H), from `state` x0 (B, H, N/2) (None: zeros)."""
        check_positive("rate", rate)
        _, B_bar, log_A = self._discretize(rate)
        x = B_bar * vandermonde_transpose(u.flip(1).transpose(1, 2), log_A)  # (B, H, N/2)
        if state is not None:
            x = x + torch.exp(u.shape[1] * log_A) * state
        return x

    def irregular(self, u: Tensor, scale: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The SSM output with a step of its own at every sample, x_t = A_bar_t x_{t-1} +
        B_bar_t u_t at step dt * scale[b, t] (exact for piecewise-constant input with ZOH), by a
        parallel scan (`ops.scan.linear_scan`), no loop over time: O(B H N L log L) time and
        O(B H N L) memory.

        Args:
            u: (B, L, H) input. scale: (B, L) positive step factors (time gap before each
                sample, in units of dt). state: x_{-1} (B, H, N/2) complex, or None (zeros).
        Returns:
            y (B, C, H, L) real, without the D term, and the final half state (B, H, N/2).
        """
        lam, B = self.modes()  # (H, N/2) each
        dt = scale[..., None] * self.dt  # (B, L, H)
        A_bar, B_bar = discretize.DIAGONAL[self.disc](lam, B, dt)  # (B, L, H, N/2) each
        b = B_bar * u[..., None]  # (B, L, H, N/2)
        if state is not None:
            b = torch.cat([b[:, :1] + A_bar[:, :1] * state[:, None], b[:, 1:]], dim=1)
        x = linear_scan(A_bar.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1))  # (B, H, N/2, L)
        y = 2 * torch.einsum("chn,bhnl->bchl", torch.view_as_complex(self.C), x).real
        return y, x[..., -1]
