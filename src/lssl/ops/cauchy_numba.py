"""Compiled (numba) Cauchy sums over a conjugate-symmetric space on CPU tensors: the function
of `ops.cauchy.cauchy_conj` (in its real (w, m) form, `_CauchyConj`) as fused loops, so the
(H, N, K) reciprocals live a block of nodes at a time in registers and L1 instead of going
through memory in chunk-sized temporaries (torch's version makes one pass over each chunk per
operation: the denominators, their reciprocals, the products; the backward twice over).

    out[s, h, k] = sum_n (a_k w[0, s, h, n] - c_k w[1, s, h, n]) E[h, n, k],
    E = 1 / D,  D[h, n, k] = a_k^2 - 2 a_k c_k m[0, h, n] + c_k^2 m[1, h, n].

Forward: per feature h and block of `BLOCK` nodes, the node coefficients (a^2, -2ac, c^2) are
tabulated once, then every pole n adds its reciprocals times the 2S real numerators into
(2, S) complex accumulators of the block, a loop over contiguous nodes that LLVM vectorises.

Backward (real inputs: grad_x = Re sum_k conj(g_k) d out_k / d x): per pole, five weighted sums
over the nodes, the weights X_j = g conj(q_j) for q = (a, -c) against E (the numerators' gradient)
and q = (a^2 c, a c^2, c^3) against E^2 (the poles' coefficients: dE/dm0 = 2ac E^2,
dE/dm1 = -c^2 E^2), each sum Re(conj(X) Y) = Re X Re Y + Im X Im Y; the weights of a block are
tabulated once and every pole reuses them. Block sums are added in float64.

The loops are compiled for float32 and float64 (the dtype of w); numba is optional and this
module is imported only for backend='numba' (`ops.backend`).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from ._numba import compile_sums, first_order_only, loop_input, match_threads

Tensor = torch.Tensor

# Nodes per block: the forward's (2, S, 2, BLOCK) accumulators and the backward's (5, S, 2,
# BLOCK) weights stay in L1 at S = 4 (one Woodbury term each for channels = rank = 1).
BLOCK = 64


@numba.njit(inline="always")
def node_coefficients(a, c, k0, kn, t):
    """t[0..5, k] = (Re, Im) of a^2, -2ac, c^2 at nodes k0 + k, k < kn; a, c (K, 2). (No
    integer literals: numba would widen float32 products with them to float64.)"""
    for k in range(kn):
        ar, ai, cr, ci = a[k0 + k, 0], a[k0 + k, 1], c[k0 + k, 0], c[k0 + k, 1]
        t[0, k] = ar * ar - ai * ai
        t[1, k] = ar * ai + ai * ar
        acr, aci = ar * cr - ai * ci, ar * ci + ai * cr
        t[2, k] = -(acr + acr)
        t[3, k] = -(aci + aci)
        t[4, k] = cr * cr - ci * ci
        t[5, k] = cr * ci + ci * cr


@numba.njit(inline="always")
def reciprocals(t, m0, m1, kn, er, ei, one):
    """(er, ei)[k] = 1 / D at one pole (m0, m1) for the tabulated nodes t (`one` in the loops'
    dtype: a literal 1 would make the division float64)."""
    for k in range(kn):
        dr = t[0, k] + m0 * t[2, k] + m1 * t[4, k]
        di = t[1, k] + m0 * t[3, k] + m1 * t[5, k]
        inv = one / (dr * dr + di * di)
        er[k] = dr * inv
        ei[k] = -di * inv


@compile_sums
def cauchy_conj_forward(w, m, a, c, out):
    """w (2, S, H, N), m (2, H, N) real; a, c (K, 2) (Re, Im); out (S, H, K, 2) written."""
    _, S, H, N = w.shape
    K = a.shape[0]
    for h in numba.prange(H):
        t = np.empty((6, BLOCK), w.dtype)
        er = np.empty(BLOCK, w.dtype)
        ei = np.empty(BLOCK, w.dtype)
        acc = np.empty((2, S, 2, BLOCK), w.dtype)
        one = np.ones(1, w.dtype)[0]
        for k0 in range(0, K, BLOCK):
            kn = min(BLOCK, K - k0)
            node_coefficients(a, c, k0, kn, t)
            acc[:] = 0
            for n in range(N):
                reciprocals(t, m[0, h, n], m[1, h, n], kn, er, ei, one)
                for j in range(2):
                    for s in range(S):
                        ws = w[j, s, h, n]
                        for k in range(kn):
                            acc[j, s, 0, k] += ws * er[k]
                            acc[j, s, 1, k] += ws * ei[k]
            for s in range(S):
                for k in range(kn):
                    ar, ai, cr, ci = a[k0 + k, 0], a[k0 + k, 1], c[k0 + k, 0], c[k0 + k, 1]
                    p0r, p0i, p1r, p1i = acc[0, s, 0, k], acc[0, s, 1, k], acc[1, s, 0, k], acc[1, s, 1, k]
                    out[s, h, k0 + k, 0] = ar * p0r - ai * p0i - (cr * p1r - ci * p1i)
                    out[s, h, k0 + k, 1] = ar * p0i + ai * p0r - (cr * p1i + ci * p1r)


@numba.njit(inline="always")
def put_weight(x, j, s, k, gr, gi, qr, qi):
    """x[j, s, :, k] = (Re, Im) of (gr + i gi) conj(qr + i qi)."""
    x[j, s, 0, k] = gr * qr + gi * qi
    x[j, s, 1, k] = gi * qr - gr * qi


@numba.njit(inline="always")
def gradient_weights(g, a, c, h, k0, kn, x):
    """x[j, s, 0..1, k] = (Re, Im) of g[s, h, k0 + k] conj(q_j), q = (a, -c, a^2 c, a c^2, c^3).
    (No integer literals: numba would widen float32 products with them to float64.)"""
    S = g.shape[0]
    for k in range(kn):
        ar, ai, cr, ci = a[k0 + k, 0], a[k0 + k, 1], c[k0 + k, 0], c[k0 + k, 1]
        acr, aci = ar * cr - ai * ci, ar * ci + ai * cr  # a c
        ccr, cci = cr * cr - ci * ci, cr * ci + ci * cr  # c^2
        aacr, aaci = acr * ar - aci * ai, acr * ai + aci * ar  # a^2 c
        accr, acci = acr * cr - aci * ci, acr * ci + aci * cr  # a c^2
        cccr, ccci = ccr * cr - cci * ci, ccr * ci + cci * cr  # c^3
        for s in range(S):
            gr, gi = g[s, h, k0 + k, 0], g[s, h, k0 + k, 1]
            put_weight(x, 0, s, k, gr, gi, ar, ai)
            put_weight(x, 1, s, k, gr, gi, -cr, -ci)
            put_weight(x, 2, s, k, gr, gi, aacr, aaci)
            put_weight(x, 3, s, k, gr, gi, accr, acci)
            put_weight(x, 4, s, k, gr, gi, cccr, ccci)


@compile_sums
def cauchy_conj_backward(w, m, a, c, g, grad_w, t_sums, with_poles):
    """g (S, H, K, 2) the output's gradient; writes grad_w (2, S, H, N) and, if with_poles,
    t_sums (3, S, H, N) = Re sum_k conj(g) q_j E^2 for q = (a^2 c, a c^2, c^3)."""
    _, S, H, N = w.shape
    K = a.shape[0]
    terms = 5 if with_poles else 2
    for h in numba.prange(H):
        t = np.empty((6, BLOCK), w.dtype)
        er = np.empty(BLOCK, w.dtype)
        ei = np.empty(BLOCK, w.dtype)
        x = np.empty((5, S, 2, BLOCK), w.dtype)
        sums = np.zeros((5, S, N), np.float64)
        zero, one = np.zeros(1, w.dtype)[0], np.ones(1, w.dtype)[0]
        for k0 in range(0, K, BLOCK):
            kn = min(BLOCK, K - k0)
            node_coefficients(a, c, k0, kn, t)
            gradient_weights(g, a, c, h, k0, kn, x)
            for n in range(N):
                reciprocals(t, m[0, h, n], m[1, h, n], kn, er, ei, one)
                for j in range(terms):
                    if j == 2:  # from here on the weights meet E^2
                        for k in range(kn):
                            sq = er[k] * er[k] - ei[k] * ei[k]
                            ei[k] = (er[k] + er[k]) * ei[k]
                            er[k] = sq
                    for s in range(S):
                        total = zero
                        for k in range(kn):
                            total += x[j, s, 0, k] * er[k] + x[j, s, 1, k] * ei[k]
                        sums[j, s, n] += total
        for s in range(S):
            for n in range(N):
                grad_w[0, s, h, n] = sums[0, s, n]
                grad_w[1, s, h, n] = sums[1, s, n]
                if with_poles:
                    for j in range(3):
                        t_sums[j, s, h, n] = sums[2 + j, s, n]


def _nodes(z: Tensor, dtype: torch.dtype) -> np.ndarray:
    """(K,) complex nodes as a (K, 2) (Re, Im) array of the loops' dtype."""
    return torch.view_as_real(z.detach().resolve_conj()).to(dtype).contiguous().numpy()


class CauchyConjNumba(torch.autograd.Function):
    """The function of `ops.cauchy._CauchyConj` (same arguments, same result, both gradients)
    on CPU tensors: w (2, S, H, N), m (2, H, N) real, a, c (K,) complex -> (S, H, K) complex."""

    @staticmethod
    def forward(ctx, w: Tensor, m: Tensor, a: Tensor, c: Tensor) -> Tensor:
        match_threads()
        ww = loop_input(w)
        mw = m.detach().to(ww.dtype).contiguous()
        a_np, c_np = _nodes(a, ww.dtype), _nodes(c, ww.dtype)
        _, S, H, _ = w.shape
        out = torch.empty(S, H, a.shape[0], 2, dtype=ww.dtype)
        cauchy_conj_forward(ww.numpy(), mw.numpy(), a_np, c_np, out.numpy())
        ctx.save_for_backward(ww, mw)
        ctx.dtype, ctx.nodes = w.dtype, (a_np, c_np)
        return torch.view_as_complex(out).to(a.dtype)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, Tensor | None, None, None]:
        first_order_only()
        match_threads()
        ww, mw = ctx.saved_tensors
        gw = torch.view_as_real(g.resolve_conj()).to(ww.dtype).contiguous()
        with_poles = ctx.needs_input_grad[1]
        _, S, H, N = ww.shape
        grad_w = torch.empty_like(ww)
        t_sums = torch.empty(3 if with_poles else 0, S, H, N, dtype=ww.dtype)
        a_np, c_np = ctx.nodes
        cauchy_conj_backward(ww.numpy(), mw.numpy(), a_np, c_np, gw.numpy(), grad_w.numpy(), t_sums.numpy(), with_poles)
        grad_m = None
        if with_poles:  # dout/dm0 = (a w0 - c w1) 2ac E^2, dout/dm1 = -(a w0 - c w1) c^2 E^2
            w0, w1 = ww  # (S, H, N) each
            T0, T1, T2 = t_sums
            grad_m = torch.stack([(2 * (w0 * T0 - w1 * T1)).sum(0), (w1 * T2 - w0 * T1).sum(0)])  # (2, H, N)
            grad_m = grad_m.to(ctx.dtype)
        return grad_w.to(ctx.dtype), grad_m, None, None
