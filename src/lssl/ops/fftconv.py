"""Causal (non-circular) convolution by FFT."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

Tensor = torch.Tensor


class FFTConv(torch.autograd.Function):
    """y = the first L samples of irfft_n(rfft_n(u) rfft_n(K)), n >= L + Lk - 1, with the adjoint
    written out: both gradients are causal correlations of the output gradient g,

        dL/du = irfft_n(sum_c rfft_n(g) conj(rfft_n(K)))[:L],
        dL/dK = irfft_n(sum_b rfft_n(g) conj(rfft_n(u)))[:Lk],

    exact because the zero padding keeps the circular wrap-around on zeros. One rfft of g and one
    irfft per needed gradient, summed over C (or B) in the frequency domain first; autograd's own
    chain for the same graph runs a complex FFT of the full spectrum and a zero fill for the
    rfft's input gradient. Once differentiable (no double backward).

    Args (of `apply`):
        u: (B, H, L). K: (C, H, Lk), Lk <= L.
    Returns:
        y (B, C, H, L).
    """

    @staticmethod
    def forward(ctx, u: Tensor, K: Tensor) -> Tensor:
        L, Lk = u.shape[-1], K.shape[-1]
        n = L + Lk
        u_f = torch.fft.rfft(u, n=n)  # (B, H, n//2+1)
        k_f = torch.fft.rfft(K, n=n)  # (C, H, n//2+1)
        ctx.save_for_backward(u_f, k_f)
        ctx.lengths = (L, Lk, n)
        return torch.fft.irfft(u_f[:, None] * k_f, n=n)[..., :L]

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None]:
        u_f, k_f = ctx.saved_tensors
        L, Lk, n = ctx.lengths
        g_f = torch.fft.rfft(g, n=n)  # (B, C, H, n//2+1)
        grad_u = grad_K = None
        if ctx.needs_input_grad[0]:
            grad_u = torch.fft.irfft((g_f * k_f.conj()).sum(1), n=n)[..., :L]
        if ctx.needs_input_grad[1]:
            grad_K = torch.fft.irfft((g_f * u_f.conj()[:, None]).sum(0), n=n)[..., :Lk]
        return grad_u, grad_K


def fftconv(u: Tensor, K: Tensor) -> Tensor:
    """Causal convolution of each feature with its kernels.

    Both signals are zero-padded to n >= L + Lk - 1 so the circular product of the FFTs is the
    linear convolution; the first L outputs are kept (`FFTConv`).

    Args:
        u: (B, H, L) input.
        K: (C, H, Lk) kernels; only the first L taps matter.
    Returns:
        y (B, C, H, L), y[b, c, h, t] = sum_{i <= t} K[c, h, i] u[b, h, t - i].
    """
    return FFTConv.apply(u, K[..., : u.shape[-1]])
