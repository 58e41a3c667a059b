"""Causal (non-circular) convolution by FFT."""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def fftconv(u: Tensor, K: Tensor) -> Tensor:
    """Causal convolution of each feature with its kernels.

    Both signals are zero-padded to n >= L + Lk - 1 so the circular product of the FFTs is the
    linear convolution; the first L outputs are kept.

    Args:
        u: (B, H, L) input.
        K: (C, H, Lk) kernels; only the first L taps matter.
    Returns:
        y (B, C, H, L), y[b, c, h, t] = sum_{i <= t} K[c, h, i] u[b, h, t - i].
    """
    L = u.shape[-1]
    K = K[..., :L]
    n = L + K.shape[-1]
    u_f = torch.fft.rfft(u, n=n)  # (B, H, n//2+1)
    k_f = torch.fft.rfft(K, n=n)  # (C, H, n//2+1)
    return torch.fft.irfft(u_f[:, None] * k_f, n=n)[..., :L]
