"""Vandermonde products: out[..., l] = sum_n v[..., n] z_n^l for l < L, the core of the S4D
kernel (spec B.5), with z given by its logarithm so that z^l = exp(l log z).

Materialising every z_n^l costs O(H N L) memory (and as much again for autograd), the limit
that issue state-spaces/s4#51 reports. Splitting l = j T + i with T ~ sqrt(L), J = ceil(L / T),

    out[..., j T + i] = sum_n (v_n z_n^{jT}) z_n^i,

turns the sum into one batched matrix product (C J x N) @ (N x T) per feature, and only the
J + T powers of each z_n are ever stored: O(H N (J + T) + C H L) memory.

`vandermonde_re` returns only the real part, which is all a kernel over conjugate pairs needs
(K = 2 Re sum_n ...): Re(a b) = Re a Re b - Im a Im b is one real product over 2N terms, half
the multiplications of the complex product.

`vandermonde_transpose` is the transposed product, out[..., n] = sum_l u[..., l] z_n^l, which
carries a diagonal SSM's state over a whole input chunk (spec B.5, state forwarding): with the
same split, out_n = sum_j z_n^{jT} (sum_i u[jT + i] z_n^i), one real matmul (B J x T) @ (T x 2N)
per feature and a weighted sum over the J blocks, O(H N (J + T) + B H N J) memory.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_length

Tensor = torch.Tensor


def vandermonde_naive(v: Tensor, log_z: Tensor, L: int) -> Tensor:
    """The oracle: every power z_n^l materialised, (C, H, N, L).

    Args:
        v: (C, H, N) complex. log_z: (H, N) complex, log z_n. L: output length.
    Returns:
        (C, H, L) complex, out[c, h, l] = sum_n v[c, h, n] exp(l log_z[h, n]).
    """
    check_length("L", L)
    l = torch.arange(L, dtype=log_z.real.dtype, device=log_z.device)  # (L,)
    powers = torch.exp(log_z[..., None] * l)  # (H, N, L)
    return (v[..., None] * powers).sum(-2)


def _powers(log_z: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Real and imaginary parts of exp(k log z), each (H, N, K), for log_z (H, N) complex and
    exponents k (K,).

    Each power is one exp of its own exponent, not a product of earlier powers, so its error
    does not grow with k the way k repeated multiplications would. It is built from the real
    exp, cos and sin, which are vectorised on CPU where the complex exp is not (~20x).

    Moduli below tiny^(1/3) are set to exactly 0. Relative to z^0 = 1 they are far below the
    dtype's epsilon (2e-13 in float32, 3e-103 in float64), and dropping them keeps out of the
    computation torch's slow exp path for large negative arguments (~70x slower) and subnormal
    products (~20x slower)."""
    floor = math.log(torch.finfo(log_z.real.dtype).tiny) / 3
    arg = log_z.real[..., None] * k  # (H, N, K)
    mag = torch.exp(arg.clamp(min=floor)).masked_fill(arg < floor, 0.0)  # (H, N, K)
    phase = log_z.imag[..., None] * k  # (H, N, K)
    return mag * torch.cos(phase), mag * torch.sin(phase)


def _split(L: int) -> tuple[int, int]:
    """Block length T (the power of two nearest sqrt(L)) and block count J = ceil(L / T)."""
    check_length("L", L)
    T = 2 ** round(math.log2(math.sqrt(L)))
    return T, -(-L // T)


def _blocks(v: Tensor, log_z: Tensor, L: int) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The two factors of the blocked product.

    Returns:
        left (H, C J, N) complex, v_n z_n^{jT} for channel c and block j in row c J + j;
        right, the real and imaginary parts of z_n^i, (H, N, T) each.
    """
    C, H, N = v.shape
    T, J = _split(L)
    real = log_z.real.dtype
    i = torch.arange(T, dtype=real, device=log_z.device)  # (T,)
    jT = torch.arange(J, dtype=real, device=log_z.device) * T  # (J,)
    z_jT = torch.complex(*_powers(log_z, jT)).transpose(-1, -2)  # (H, J, N)
    left = v.transpose(0, 1)[:, :, None, :] * z_jT[:, None]  # (H, C, J, N)
    return left.reshape(H, C * J, N), _powers(log_z, i)


def _unblock(out: Tensor, C: int, L: int) -> Tensor:
    """(H, C J, T) block layout to (C, H, L)."""
    H = out.shape[0]
    return out.reshape(H, C, -1)[..., :L].transpose(0, 1)


def vandermonde(v: Tensor, log_z: Tensor, L: int) -> Tensor:
    """out[..., l] = sum_n v[..., n] z_n^l without an (H, N, L) intermediate.

    Args:
        v: (C, H, N) complex. log_z: (H, N) complex, log z_n. L: output length.
    Returns:
        (C, H, L) complex, equal to `vandermonde_naive(v, log_z, L)`.
    """
    left, right = _blocks(v, log_z, L)
    return _unblock(torch.bmm(left, torch.complex(*right)), v.shape[0], L)  # (C, H, L)


def vandermonde_re(v: Tensor, log_z: Tensor, L: int) -> Tensor:
    """Re sum_n v[..., n] z_n^l, by one real product of (Re, Im) rows with (Re, -Im) columns.

    Args:
        v: (C, H, N) complex. log_z: (H, N) complex, log z_n. L: output length.
    Returns:
        (C, H, L) real, equal to `vandermonde_naive(v, log_z, L).real`.
    """
    left, (re, im) = _blocks(v, log_z, L)
    H, CJ, N = left.shape
    left = torch.view_as_real(left).reshape(H, CJ, 2 * N)  # (H, C J, 2N), n-major
    right = torch.stack([re, -im], dim=2).reshape(H, 2 * N, -1)  # (H, 2N, T), n-major
    return _unblock(torch.bmm(left, right), v.shape[0], L)  # (C, H, L)


def vandermonde_transpose_naive(u: Tensor, log_z: Tensor) -> Tensor:
    """The oracle of the transposed product: every power z_n^l materialised, (H, N, L).

    Args:
        u: (B, H, L) real. log_z: (H, N) complex, log z_n.
    Returns:
        (B, H, N) complex, out[b, h, n] = sum_l u[b, h, l] exp(l log_z[h, n]).
    """
    l = torch.arange(u.shape[-1], dtype=log_z.real.dtype, device=log_z.device)  # (L,)
    powers = torch.exp(log_z[..., None] * l)  # (H, N, L)
    return torch.einsum("bhl,hnl->bhn", u.to(powers.dtype), powers)


def vandermonde_transpose(u: Tensor, log_z: Tensor) -> Tensor:
    """out[..., n] = sum_l u[..., l] z_n^l without an (H, N, L) intermediate (module docstring).

    Args:
        u: (B, H, L) real. log_z: (H, N) complex, log z_n.
    Returns:
        (B, H, N) complex, equal to `vandermonde_transpose_naive(u, log_z)`.
    """
    batch, H, L = u.shape
    N = log_z.shape[-1]
    T, J = _split(L)
    real = log_z.real.dtype
    blocks = torch.nn.functional.pad(u, (0, J * T - L)).unflatten(-1, (J, T))  # (B, H, J, T)
    blocks = blocks.transpose(0, 1).reshape(H, batch * J, T)  # (H, B J, T)
    re, im = _powers(log_z, torch.arange(T, dtype=real, device=log_z.device))  # (H, N, T) each
    inner = torch.bmm(blocks, torch.cat([re, im], dim=1).transpose(1, 2))  # (H, B J, 2N)
    inner = torch.complex(inner[..., :N], inner[..., N:]).unflatten(1, (batch, J))  # (H, B, J, N)
    jT = torch.arange(J, dtype=real, device=log_z.device) * T  # (J,)
    z_jT = torch.complex(*_powers(log_z, jT)).transpose(-1, -2)  # (H, J, N)
    return (inner * z_jT[:, None]).sum(2).transpose(0, 1)  # (B, H, N)
