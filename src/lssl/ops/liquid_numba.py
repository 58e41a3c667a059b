"""Compiled (numba) elementary symmetric polynomials for the Liquid-S4 signals on CPU tensors:
one pass over time, vectorised over the H features of the (B, L, H) layout (the layer's own, so
nothing is transposed), float64 inside. `kernels.liquid` keeps the torch versions as the
reference and the path for every other device; the tests hold the two together in float64.

PB (`WindowPolynomialNumba`):

    z[b, k, h] = sum_{p=2..P} a[p-2, b, h] e_p(x[b, k-W_p+1, h], ..., x[b, k, h])

(zeros before the start), the function of `kernels.liquid.WindowPolynomial`. Where the torch
version makes a dozen passes over (B, H, L) float64 temporaries (prefix power sums, window
differences, Newton's identities), this keeps the window power sums in float64 and slides them:
add x_k^j, subtract x_{k-W}^j, then Newton's identities. The running sums carry the same float64
round-off as the prefix differences (an outlier's x^p leaves its rounding behind in both).

Backward: dz/dx_i = sum_p a_p sum_{j=1..p} (-x_i)^{j-1} R_j(i), R_j(i) = sum of g_k e_{p-j}(k)
over the windows k that contain i, k = i .. i+W-1 (`horner_gradient` in liquid.py). One reverse
sweep slides the window state back and keeps R_j as running sums: each sample's terms enter R and
wait in a ring buffer of the last W samples until they leave it, so only x is saved by the
forward and the e's are recomputed.

KB (`PrefixPolynomialNumba`): w_i = x_i (1 + sum_{q=0..Q} c_q E_q(i)), E_q(i) = e_q(x_0..x_{i-1}),
the function of `kernels.liquid.PrefixPolynomial`, by the defining recurrence itself,
e_q <- e_q + x_i e_{q-1} (no power sums, so nothing cancels). Backward: the adjoint of that
recurrence, run in reverse over blocks of `BLOCK` samples, each block's states recomputed from a
checkpoint kept at its start (memory O(L / BLOCK + BLOCK) per feature instead of O(L)).

numba is optional (`pip install lssl[numba]`): this module imports it, and `kernels.liquid`
imports this module only for backend='numba'.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from ._numba import compile_loops, first_order_only, loop_input, match_threads

Tensor = torch.Tensor

# Samples per block of the KB backward: its states (BLOCK, Q+1, H) float64 stay in cache.
BLOCK = 256


@numba.njit(inline="always")
def slide(ps, x, b, o, p, add, remove, t_add, t_remove, x_add, x_remove):
    """ps[o, j] += x[b, add]^j - x[b, remove]^j, j = 1..p, for every feature; add or remove
    -1: no sample enters or leaves (read as 0, whose powers change nothing)."""
    H = x.shape[2]
    for h in range(H):
        x_add[h] = x[b, add, h] if add >= 0 else 0.0
        x_remove[h] = x[b, remove, h] if remove >= 0 else 0.0
        t_add[h] = x_add[h]
        t_remove[h] = x_remove[h]
    for j in range(1, p + 1):
        for h in range(H):
            ps[o, j, h] += t_add[h] - t_remove[h]
            t_add[h] *= x_add[h]
            t_remove[h] *= x_remove[h]


@numba.njit(inline="always")
def newton(ps, o, p, e):
    """e[1..p] (every feature) from the power sums ps[o, 1..p] by Newton's identities,
    q e_q = sum_{j=1..q} (-1)^{j-1} e_{q-j} p_j; e[0] = 1 is set once by the caller. The last
    term (j = q, e_0 = 1) and the division by q share one pass."""
    H = e.shape[1]
    for h in range(H):
        e[1, h] = ps[o, 1, h]
    for q in range(2, p + 1):
        inv = 1.0 / q
        if q == 2:
            for h in range(H):
                e[2, h] = (e[1, h] * ps[o, 1, h] - ps[o, 2, h]) * inv
            continue
        for h in range(H):
            e[q, h] = e[q - 1, h] * ps[o, 1, h] - e[q - 2, h] * ps[o, 2, h]
        sign = 1.0
        for j in range(3, q):
            for h in range(H):
                e[q, h] += sign * e[q - j, h] * ps[o, j, h]
            sign = -sign
        for h in range(H):
            e[q, h] = (e[q, h] + sign * ps[o, q, h]) * inv


@compile_loops
def window_forward(x, a, windows, z):
    """x (B, n, H); a (P-1, B, H) float64; windows (P-1,) int64; z (B, n, H) out."""
    B, n, H = x.shape
    orders = windows.shape[0]
    for b in numba.prange(B):
        ps = np.zeros((orders, orders + 2, H))
        e = np.ones((orders + 2, H))
        t_add, t_remove, x_add, x_remove = np.empty(H), np.empty(H), np.empty(H), np.empty(H)
        zk = np.empty(H)
        for k in range(n):
            for o in range(orders):
                p, W = o + 2, windows[o]
                slide(ps, x, b, o, p, k, k - W, t_add, t_remove, x_add, x_remove)
                newton(ps, o, p, e)
                if o == 0:
                    for h in range(H):
                        zk[h] = a[o, b, h] * e[p, h]
                else:
                    for h in range(H):
                        zk[h] += a[o, b, h] * e[p, h]
            for h in range(H):
                z[b, k, h] = zk[h]


@compile_loops
def window_backward(x, a, windows, g, gx, ga):
    """g (B, n, H) the gradient of z; gx (B, n, H) and ga (P-1, B, H) float64 out."""
    B, n, H = x.shape
    orders = windows.shape[0]
    # Ring buffers of g_k e_{p-j}(k), j = 1..p, over the last min(W, n) samples of every order,
    # stacked in one array: order o starts at row start[o] and has rows (slot * p + j - 1).
    start = np.zeros(orders + 1, dtype=np.int64)
    for o in range(orders):
        start[o + 1] = start[o] + min(windows[o], n) * (o + 2)
    for b in numba.prange(B):
        top = orders + 2
        ps = np.zeros((orders, top, H))  # window power sums at k = i
        R = np.zeros((orders, top, H))  # R[o, j] = sum_{k=i..i+W-1} g_k e_{p-j}(k)
        ring = np.empty((start[orders], H))
        e = np.ones((top, H))
        t_add, t_remove, x_add, x_remove = np.empty(H), np.empty(H), np.empty(H), np.empty(H)
        acc, xv, gi, gk = np.empty(H), np.empty(H), np.empty(H), np.empty(H)
        gsum = np.zeros((orders, H))  # sum_k g_k e_p(k), the gradient of a_p
        for o in range(orders):  # the window state at k = n - 1, summed directly
            for k in range(max(0, n - windows[o]), n):
                slide(ps, x, b, o, o + 2, k, -1, t_add, t_remove, x_add, x_remove)
        for i in range(n - 1, -1, -1):
            for h in range(H):
                gk[h] = g[b, i, h]
                xv[h] = x[b, i, h]
                gi[h] = 0.0
            for o in range(orders):
                p, W = o + 2, windows[o]
                if i < n - 1:  # slide the window from k = i + 1 to k = i
                    slide(ps, x, b, o, p, i + 1 - W, i + 1, t_add, t_remove, x_add, x_remove)
                newton(ps, o, p, e)
                # R_j gains sample i's term g_i e_{p-j}(i) and, once i + W < n, loses sample
                # i + W's, which sits in the ring slot that sample i's term takes over. Fused into
                # the same passes, descending j: Horner's a_p sum_j (-x_i)^{j-1} R_j, and (at
                # j = p) the gradient of a_p, sum_k g_k e_p(k).
                row = start[o] + (i % min(W, n)) * p
                leaving = i + W <= n - 1
                for j in range(p, 0, -1):
                    slot = row + j - 1
                    if j == p:
                        for h in range(H):
                            gsum[o, h] += gk[h] * e[p, h]
                            term = gk[h]  # e_0 = 1
                            r = R[o, j, h] + term - (ring[slot, h] if leaving else 0.0)
                            R[o, j, h] = r
                            ring[slot, h] = term
                            acc[h] = r
                    elif j > 1:
                        for h in range(H):
                            term = gk[h] * e[p - j, h]
                            r = R[o, j, h] + term - (ring[slot, h] if leaving else 0.0)
                            R[o, j, h] = r
                            ring[slot, h] = term
                            acc[h] = r - xv[h] * acc[h]
                    else:
                        for h in range(H):
                            term = gk[h] * e[p - 1, h]
                            r = R[o, 1, h] + term - (ring[slot, h] if leaving else 0.0)
                            R[o, 1, h] = r
                            ring[slot, h] = term
                            gi[h] += a[o, b, h] * (r - xv[h] * acc[h])
            for h in range(H):
                gx[b, i, h] = gi[h]
        for o in range(orders):
            for h in range(H):
                ga[o, b, h] = gsum[o, h]


@numba.njit(inline="always")
def prefix_gain(c, cb, e, gain):
    """gain = 1 + c_0 + sum_{q>=1} c_q e_q (every feature), the KB factor before a sample."""
    for h in range(gain.shape[0]):
        gain[h] = 1.0 + c[0, cb, h]
    for q in range(1, e.shape[0]):
        for h in range(gain.shape[0]):
            gain[h] += c[q, cb, h] * e[q, h]


@numba.njit(inline="always")
def prefix_update(e, x, b, i, xv):
    """e_q <- e_q + x_i e_{q-1}, q = Q..1: the elementary symmetric polynomials after sample i."""
    for h in range(xv.shape[0]):
        xv[h] = x[b, i, h]
    for q in range(e.shape[0] - 1, 0, -1):
        for h in range(xv.shape[0]):
            e[q, h] += xv[h] * e[q - 1, h]


@compile_loops
def prefix_forward(x, c, w, totals):
    """x (B, n, H); c (Q+1, 1 or B, H) float64; w (B, n, H) and totals (Q, B, H) float64 out."""
    B, n, H = x.shape
    Q = c.shape[0] - 1
    for b in numba.prange(B):
        cb = np.int64(b) % c.shape[1]  # c per batch row, or one row for all
        e = np.zeros((Q + 1, H))
        e[0, :] = 1.0
        gain, xv = np.empty(H), np.empty(H)
        for i in range(n):
            prefix_gain(c, cb, e, gain)
            for h in range(H):
                w[b, i, h] = x[b, i, h] * gain[h]
            prefix_update(e, x, b, i, xv)
        for q in range(Q):
            for h in range(H):
                totals[q, b, h] = e[q + 1, h]


@compile_loops
def prefix_backward(x, c, g, t, gx, gc):
    """g (B, n, H) the gradient of w; t (Q, B, H) float64 that of the totals; gx (B, n, H) and
    gc (Q+1, B, H) float64 out (the gradient of c per batch row)."""
    B, n, H = x.shape
    Q = c.shape[0] - 1
    blocks = (n + BLOCK - 1) // BLOCK
    for b in numba.prange(B):
        cb = np.int64(b) % c.shape[1]  # c per batch row, or one row for all
        e = np.zeros((Q + 1, H))
        e[0, :] = 1.0
        xv, gv, gain, acc = np.empty(H), np.empty(H), np.empty(H), np.empty(H)
        checkpoints = np.empty((blocks, Q + 1, H))
        for i in range(n):
            if i % BLOCK == 0:
                checkpoints[i // BLOCK] = e
            prefix_update(e, x, b, i, xv)
        lam = np.zeros((Q + 2, H))  # adjoint of e_q after the current sample; lam[Q+1] = 0
        for q in range(Q):
            for h in range(H):
                lam[q + 1, h] = t[q, b, h]
        gcb = np.zeros((Q + 1, H))
        states = np.empty((BLOCK, Q + 1, H))  # e before each sample of the block
        for blk in range(blocks - 1, -1, -1):
            i0 = blk * BLOCK
            i1 = min(n, i0 + BLOCK)
            e[:] = checkpoints[blk]
            for i in range(i0, i1):
                states[i - i0] = e
                prefix_update(e, x, b, i, xv)
            for i in range(i1 - 1, i0 - 1, -1):
                E = states[i - i0]
                for h in range(H):
                    xv[h] = x[b, i, h]
                    gv[h] = g[b, i, h]
                prefix_gain(c, cb, E, gain)
                # dw_i/dx_i = gain; d e_q(after) / dx_i = e_{q-1}(before).
                for h in range(H):
                    acc[h] = gv[h] * gain[h]
                for q in range(1, Q + 1):
                    for h in range(H):
                        acc[h] += lam[q, h] * E[q - 1, h]
                for h in range(H):
                    gx[b, i, h] = acc[h]
                    gv[h] *= xv[h]  # g_i x_i
                    gcb[0, h] += gv[h]
                # The adjoint of e before sample i: lam_q + x_i lam_{q+1} + g_i x_i c_q
                # (ascending q reads lam_{q+1} before it is updated).
                for q in range(1, Q + 1):
                    for h in range(H):
                        gcb[q, h] += gv[h] * E[q, h]
                        lam[q, h] += xv[h] * lam[q + 1, h] + gv[h] * c[q, cb, h]
        for q in range(Q + 1):
            for h in range(H):
                gc[q, b, h] = gcb[q, h]


class WindowPolynomialNumba(torch.autograd.Function):
    """z (B, n, H) = sum_p a_p e_p(causal window W_p of x) for x (B, n, H) on the CPU, a (P-1, H),
    windows (W_2, ..., W_P); float64 inside, x's dtype out (half precision runs the float32
    loops); only x (as the loops read it) is saved for the backward."""

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, windows: tuple[int, ...]) -> Tensor:
        match_threads()
        xw = loop_input(x)
        coeff = a.detach().double()[:, None].expand(-1, x.shape[0], -1).contiguous()  # (P-1, B, H)
        w = np.asarray(windows, dtype=np.int64)
        z = torch.empty_like(xw)
        window_forward(xw.numpy(), coeff.numpy(), w, z.numpy())
        ctx.windows, ctx.dtype, ctx.coeff = w, x.dtype, coeff
        ctx.save_for_backward(xw, a)
        return z.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_z: Tensor) -> tuple[Tensor, Tensor, None]:
        first_order_only()
        match_threads()
        xw, a = ctx.saved_tensors
        g = grad_z.to(xw.dtype).contiguous()
        grad_x = torch.empty_like(xw)
        grad_coeff = torch.empty(ctx.coeff.shape, dtype=torch.float64)
        window_backward(xw.numpy(), ctx.coeff.numpy(), ctx.windows, g.numpy(), grad_x.numpy(), grad_coeff.numpy())
        return grad_x.to(ctx.dtype), grad_coeff.sum(1).to(a.dtype), None


class PrefixPolynomialNumba(torch.autograd.Function):
    """w (B, n, H) = x (1 + sum_{q=0..Q} c_q e_q(x_0 .. x_{i-1})) for x (B, n, H) on the CPU and
    c (Q+1, 1 or B, H), and the e_1 .. e_Q of the whole chunk (Q, B, H) float64; float64 inside,
    x's dtype out (half precision runs the float32 loops); only x (as the loops read it) and c
    are saved for the backward."""

    @staticmethod
    def forward(ctx, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        match_threads()
        xw = loop_input(x)
        c64 = c.detach().double().contiguous()
        w = torch.empty_like(xw)
        totals = torch.empty(c.shape[0] - 1, x.shape[0], x.shape[2], dtype=torch.float64)
        prefix_forward(xw.numpy(), c64.numpy(), w.numpy(), totals.numpy())
        ctx.dtype, ctx.c64 = x.dtype, c64
        ctx.save_for_backward(xw, c)
        return w.to(x.dtype), totals

    @staticmethod
    def backward(ctx, grad_w: Tensor, grad_totals: Tensor | None) -> tuple[Tensor, Tensor]:
        first_order_only()
        match_threads()
        xw, c = ctx.saved_tensors
        Q = c.shape[0] - 1
        t = torch.zeros(Q, xw.shape[0], xw.shape[2], dtype=torch.float64) if grad_totals is None else grad_totals
        grad_x = torch.empty_like(xw)
        grad_c = torch.empty(Q + 1, xw.shape[0], xw.shape[2], dtype=torch.float64)
        prefix_backward(
            xw.numpy(), ctx.c64.numpy(), grad_w.to(xw.dtype).contiguous().numpy(), t.double().contiguous().numpy(),
            grad_x.numpy(), grad_c.numpy(),
        )
        if c.shape[1] == 1:
            grad_c = grad_c.sum(1, keepdim=True)
        return grad_x.to(ctx.dtype), grad_c.to(c.dtype)
