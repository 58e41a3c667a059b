"""Cauchy matrix-vector products, the inner loop of the S4 (DPLR) kernel (spec B.3).

    out[s, h, k] = sum_n v[s, h, n] / (a[k] - c[k] mu[h, n])

The (a, c) form (rather than S4's 1 / (z_k - mu_n)) serves the bilinear resolvent at the roots
of unity omega_k: with a = 1 - omega, c = (1 + omega) / 2 and mu = dt * lambda nothing is divided
by 1 + omega, so the Nyquist node omega = -1 is finite.

Materialising the terms, as `cauchy_naive` does, costs O(S H N K) memory (the (H, N, K)
reciprocals alone are 0.5 GB at H = 128, N = 64, K = 8k in complex64); the fast versions loop
over chunks of the K nodes and never hold more than one chunk of reciprocals, in the forward or
the backward pass (which recomputes them rather than saving them). One chunk of reciprocals
serves all S numerator vectors through a batched matmul.

* `cauchy`: general complex v and mu (both holomorphic arguments).
* `cauchy_conj`: the sum over a conjugate-symmetric space (v, conj v) and (mu, conj mu) given
  only the first halves, at half the cost: each pair shares one denominator,

      v / (a - c mu) + conj(v) / (a - c conj(mu))
          = (a * 2 Re(v) - c * 2 Re(v conj(mu))) / (a^2 - 2 a c Re(mu) + c^2 |mu|^2),

  so the numerators and the denominator's coefficients are real and the denominator of a chunk
  is one real matmul with inner dimension 3. Its round-off is that of a - c mu: both lose the
  same digits when a is close to c mu (a node near a pole). With backend='numba' the same sums
  run as fused compiled loops on CPU tensors (`ops.cauchy_numba`, about 2x faster forward and
  backward at the S4 benchmark shape).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .._checks import check_choice
from .backend import BACKENDS, check_cpu, numba_module

Tensor = torch.Tensor

# Elements of one chunk's complex (H, N, chunk) temporary: large enough for efficient matmuls,
# small enough to stay near the cache and far below O(H N K).
CHUNK_ELEMENTS = 2**20


def _chunk(H: int, N: int, K: int, chunk: int | None) -> int:
    if chunk is None:
        chunk = CHUNK_ELEMENTS // (H * N)
    return max(1, min(chunk, K))


def _real(z: Tensor) -> Tensor:
    """(..., K) complex as a (..., 2K) real view, so a complex-by-real product is a real matmul."""
    return torch.view_as_real(z).flatten(-2)


def _complex(x: Tensor) -> Tensor:
    """Inverse of `_real`: (..., 2K) real as (..., K) complex."""
    return torch.view_as_complex(x.unflatten(-1, (-1, 2)))


def cauchy_naive(v: Tensor, mu: Tensor, a: Tensor, c: Tensor) -> Tensor:
    """The oracle: out[s, h, k] = sum_n v[s, h, n] / (a[k] - c[k] mu[h, n]), fully materialised.

    Args:
        v: (S, H, N) complex numerators. mu: (H, N) complex poles. a, c: (K,) complex.
    Returns:
        (S, H, K) complex.
    """
    return (v[..., None] / (a - c * mu[..., None])).sum(-2)


class _Cauchy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: Tensor, mu: Tensor, a: Tensor, c: Tensor, chunk: int) -> Tensor:
        ctx.save_for_backward(v, mu, a, c)
        ctx.chunk = chunk
        vt = v.transpose(0, 1)  # (H, S, N)
        out = torch.empty(*vt.shape[:2], a.shape[0], dtype=v.dtype, device=v.device)  # (H, S, K)
        for k in range(0, a.shape[0], chunk):
            r = torch.reciprocal(a[k : k + chunk] - c[k : k + chunk] * mu[..., None])  # (H, N, k)
            torch.matmul(vt, r, out=out[..., k : k + chunk])
        return out.transpose(0, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        # Holomorphic in v and mu, so grad_in = grad_out * conj(d out / d in):
        # d out / d v = r and d out / d mu = v c r^2, with r = 1 / (a - c mu).
        v, mu, a, c = ctx.saved_tensors
        gt = g.transpose(0, 1)  # (H, S, K)
        grad_v = torch.zeros_like(v.transpose(0, 1))  # (H, S, N)
        grad_mu = torch.zeros_like(grad_v) if ctx.needs_input_grad[1] else None
        for k in range(0, a.shape[0], ctx.chunk):
            ak, ck, gk = a[k : k + ctx.chunk], c[k : k + ctx.chunk], gt[..., k : k + ctx.chunk]
            r_bar = torch.reciprocal(ak.conj() - ck.conj() * mu.conj()[..., None])  # (H, N, k)
            grad_v += gk @ r_bar.mT
            if grad_mu is not None:
                grad_mu += (gk * ck.conj()) @ (r_bar * r_bar).mT
        if grad_mu is not None:
            grad_mu = (grad_mu * v.transpose(0, 1).conj()).sum(1)  # (H, N)
        return grad_v.transpose(0, 1), grad_mu, None, None, None


def cauchy(v: Tensor, mu: Tensor, a: Tensor, c: Tensor, chunk: int | None = None) -> Tensor:
    """out[s, h, k] = sum_n v[s, h, n] / (a[k] - c[k] mu[h, n]), chunked over k.

    Differentiable in v and mu (not in a and c: the nodes are constants).

    Args:
        v: (S, H, N) complex numerators. mu: (H, N) complex poles. a, c: (K,) complex.
        chunk: nodes per chunk (None: about `CHUNK_ELEMENTS` / (H N)).
    Returns:
        (S, H, K) complex, equal to `cauchy_naive(v, mu, a, c)`.
    """
    _, H, N = v.shape
    return _Cauchy.apply(v, mu, a, c, _chunk(H, N, a.shape[0], chunk))


def _denominator_coefficients(m: Tensor) -> Tensor:
    """(1, m[0], m[1]) per pole: (H N, 3) real, from m (2, H, N)."""
    return torch.cat([torch.ones_like(m[:1]), m]).flatten(1).T


def _inverse_denominator(coef: Tensor, a: Tensor, c: Tensor) -> Tensor:
    """1 / D for D[hn, k] = a_k^2 - 2 a_k c_k m[0, hn] + c_k^2 m[1, hn]: (H N, k) complex, from
    coef (H N, 3) (see `_denominator_coefficients`)."""
    basis = _real(torch.stack([a * a, -2 * a * c, c * c]))  # (3, 2k)
    return _complex(coef @ basis).reciprocal_()


class _CauchyConj(torch.autograd.Function):
    """out[s, h, k] = sum_n (a_k w[0, s, h, n] - c_k w[1, s, h, n]) / D[h, n, k] with
    D = a^2 + m[0] (-2 a c) + m[1] c^2, for real w (2, S, H, N) and m (2, H, N)."""

    @staticmethod
    def forward(ctx, w: Tensor, m: Tensor, a: Tensor, c: Tensor, chunk: int) -> Tensor:
        ctx.save_for_backward(w, m, a, c)
        ctx.chunk = chunk
        _, S, H, N = w.shape
        wt = w.permute(2, 0, 1, 3).reshape(H, 2 * S, N)  # (H, 2S, N)
        coef = _denominator_coefficients(m)  # (H N, 3)
        out = torch.empty(S, H, a.shape[0], dtype=a.dtype, device=a.device)  # (S, H, K)
        for k in range(0, a.shape[0], chunk):
            ak, ck = a[k : k + chunk], c[k : k + chunk]
            E = _inverse_denominator(coef, ak, ck).view(H, N, -1)  # (H, N, k)
            W = _complex(wt @ _real(E)).unflatten(1, (2, S))  # (H, 2, S, k)
            out[..., k : k + chunk] = (ak * W[:, 0] - ck * W[:, 1]).transpose(0, 1)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        # Real inputs x: grad_x = Re(sum_k conj(g_k) d out_k / d x), a real matmul of the real
        # views of g conj(q) and of E, for a k-weighting q. d out / d w = (a E, -c E), and
        # d out / d m = (2 a^2 c w0 - 2 a c^2 w1, -a c^2 w0 + c^3 w1) E^2: three weightings.
        w, m, a, c = ctx.saved_tensors
        _, S, H, N = w.shape
        gt = g.transpose(0, 1)  # (H, S, K)
        grad_w = torch.zeros(H, 2, S, N, dtype=w.dtype, device=w.device)
        T = torch.zeros(H, 3, S, N, dtype=w.dtype, device=w.device) if ctx.needs_input_grad[1] else None
        coef = _denominator_coefficients(m)  # (H N, 3)
        for k in range(0, a.shape[0], ctx.chunk):
            ak, ck, gk = a[k : k + ctx.chunk], c[k : k + ctx.chunk], gt[..., k : k + ctx.chunk]
            E = _inverse_denominator(coef, ak, ck).view(H, N, -1)  # (H, N, k)
            q = torch.stack([ak, -ck]).conj()  # (2, k)
            grad_w += (_real((gk[:, None] * q[:, None]).flatten(1, 2)) @ _real(E).mT).view(H, 2, S, N)
            if T is not None:
                q = torch.stack([ak * ak * ck, ak * ck * ck, ck * ck * ck]).conj()  # (3, k)
                T += (_real((gk[:, None] * q[:, None]).flatten(1, 2)) @ _real(E.mul_(E)).mT).view(H, 3, S, N)
        grad_m = None
        if T is not None:
            w0, w1 = w.transpose(1, 2)  # (H, S, N) each
            T0, T1, T2 = T.unbind(1)
            grad_m = torch.stack([(2 * (w0 * T0 - w1 * T1)).sum(1), (w1 * T2 - w0 * T1).sum(1)])  # (2, H, N)
        return grad_w.permute(1, 2, 0, 3), grad_m, None, None, None


def cauchy_conj(
    v: Tensor, mu: Tensor, a: Tensor, c: Tensor, chunk: int | None = None, backend: str = "torch"
) -> Tensor:
    """The Cauchy sum over a conjugate-symmetric space, given its first half:

        out[s, h, k] = sum_n v[s, h, n] / (a_k - c_k mu[h, n]) + conj(v[s, h, n]) / (a_k - c_k conj(mu[h, n])).

    Differentiable in v and mu (not in a and c).

    Args:
        v: (S, H, N) complex numerators (half space). mu: (H, N) complex poles (half space).
        a, c: (K,) complex. chunk: nodes per chunk (None: about `CHUNK_ELEMENTS` / (H N)).
        backend: 'torch' (`_CauchyConj`, chunked) or 'numba' (`ops.cauchy_numba`: fused
            compiled loops, CPU tensors; chunk does not apply).
    Returns:
        (S, H, K) complex, equal to
        `cauchy_naive(cat([v, conj(v)], -1), cat([mu, conj(mu)], -1), a, c)`.
    """
    _, H, N = v.shape
    w = 2 * torch.stack([v.real, (v * mu.conj()).real])  # (2, S, H, N)
    m = torch.stack([mu.real, mu.real.square() + mu.imag.square()])  # (2, H, N)
    if backend == "torch":
        return _CauchyConj.apply(w, m, a, c, _chunk(H, N, a.shape[0], chunk))
    check_choice("backend", backend, BACKENDS)
    check_cpu(v)
    return numba_module("cauchy_numba").CauchyConjNumba.apply(w, m, a, c)
