"""Compiled (numba) sliding-window elementary symmetric polynomials: the PB signal of Liquid-S4
as one pass over time, for CPU tensors.

    z[b, k, h] = sum_{p=2..P} a[p-2, b, h] e_p(x[b, k-W_p+1, h], ..., x[b, k, h])

(zeros before the start), the same function as `kernels.liquid.WindowPolynomial`, which stays the
reference and the path for every other device. Where the torch version makes a dozen passes over
(B, H, L) float64 temporaries (prefix power sums, window differences, Newton's identities), this
keeps the window power sums of every feature in float64 registers and slides them: add x_k^j,
subtract x_{k-W}^j, then Newton's identities, one sample at a time, vectorised over the H
features of the (B, L, H) layout (the layer's own, so nothing is transposed). The running sums
carry the same float64 round-off as the prefix differences (an outlier's x^p leaves its rounding
behind in both), and the tests hold the two paths together in float64.

Backward: dz/dx_i = sum_p a_p sum_{j=1..p} (-x_i)^{j-1} R_j(i), R_j(i) = sum of g_k e_{p-j}(k)
over the windows k that contain i, k = i .. i+W-1 (`horner_gradient` in liquid.py). One reverse
sweep keeps R_j as running sums and two sliding window states, at k = i (entering) and at
k = i + W (leaving), so no (L,)-sized buffer is kept and the e's are recomputed, not saved.

numba is optional (`pip install lssl[numba]`): this module imports it, and `kernels.liquid`
imports this module only for backend='numba'.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

Tensor = torch.Tensor

_compile = numba.njit(parallel=True, cache=True, boundscheck=False, error_model="numpy")


@numba.njit(inline="always")
def slide(ps, x, b, k, o, p, sign, t, xv):
    """ps[o, j] += sign * x[b, k]^j, j = 1..p, for every feature."""
    for h in range(x.shape[2]):
        xv[h] = x[b, k, h]
        t[h] = xv[h]
    for j in range(1, p + 1):
        for h in range(x.shape[2]):
            ps[o, j, h] += sign * t[h]
            t[h] *= xv[h]

@numba.njit(inline="always")
def newton(ps, o, p, e, acc):
    """e[0..p] (every feature) from the power sums ps[o, 1..p] by Newton's identities."""
    H = acc.shape[0]
    for h in range(H):
        e[0, h] = 1.0
    for q in range(1, p + 1):
        for h in range(H):
            acc[h] = e[q - 1, h] * ps[o, 1, h]
        sign = -1.0
        for j in range(2, q + 1):
            for h in range(H):
                acc[h] += sign * e[q - j, h] * ps[o, j, h]
            sign = -sign
        inv = 1.0 / q
        for h in range(H):
            e[q, h] = acc[h] * inv

@_compile
def window_forward(x, a, windows, z):
    """x (B, n, H); a (P-1, B, H) float64; windows (P-1,) int64; z (B, n, H) out."""
    B, n, H = x.shape
    orders = windows.shape[0]
    for b in numba.prange(B):
        ps = np.zeros((orders, orders + 2, H))
        e = np.empty((orders + 2, H))
        acc, t, xv, zk = np.empty(H), np.empty(H), np.empty(H), np.empty(H)
        for k in range(n):
            for h in range(H):
                zk[h] = 0.0
            for o in range(orders):
                p, W = o + 2, windows[o]
                slide(ps, x, b, k, o, p, 1.0, t, xv)
                if k >= W:
                    slide(ps, x, b, k - W, o, p, -1.0, t, xv)
                newton(ps, o, p, e, acc)
                for h in range(H):
                    zk[h] += a[o, b, h] * e[p, h]
            for h in range(H):
                z[b, k, h] = zk[h]

@_compile
def window_backward(x, a, windows, g, gx, ga):
    """g (B, n, H) the gradient of z; gx (B, n, H) and ga (P-1, B, H) float64 out."""
    B, n, H = x.shape
    orders = windows.shape[0]
    for b in numba.prange(B):
        top = orders + 2
        enter = np.zeros((orders, top, H))  # window power sums at k = i
        leave = np.zeros((orders, top, H))  # and at k = i + W
        R = np.zeros((orders, top, H))  # R[o, j] = sum_{k=i..i+W-1} g_k e_{p-j}(k)
        e = np.empty((top, H))
        acc, t, xv, gi, gk = np.empty(H), np.empty(H), np.empty(H), np.empty(H), np.empty(H)
        gsum = np.zeros((orders, H))  # sum_k g_k e_p(k), the gradient of a_p
        for o in range(orders):
            p, W = o + 2, windows[o]
            # The window state at k = n - 1, summed directly; `leave` starts there too and
            # is first read at i = n - 1 - W.
            for k in range(max(0, n - W), n):
                slide(enter, x, b, k, o, p, 1.0, t, xv)
            for j in range(1, p + 1):
                for h in range(H):
                    leave[o, j, h] = enter[o, j, h]
        for i in range(n - 1, -1, -1):
            for h in range(H):
                gi[h] = 0.0
            for o in range(orders):
                p, W = o + 2, windows[o]
                if i < n - 1:  # slide `enter` from k = i + 1 to k = i
                    slide(enter, x, b, i + 1, o, p, -1.0, t, xv)
                    if i + 1 >= W:
                        slide(enter, x, b, i + 1 - W, o, p, 1.0, t, xv)
                newton(enter, o, p, e, acc)
                for h in range(H):
                    gk[h] = g[b, i, h]
                for h in range(H):
                    gsum[o, h] += gk[h] * e[p, h]
                for j in range(1, p + 1):
                    for h in range(H):
                        R[o, j, h] += gk[h] * e[p - j, h]
                m = i + W
                if m <= n - 1:
                    if m < n - 1:  # slide `leave` from k = m + 1 to k = m
                        slide(leave, x, b, m + 1, o, p, -1.0, t, xv)
                        if m + 1 >= W:
                            slide(leave, x, b, m + 1 - W, o, p, 1.0, t, xv)
                    newton(leave, o, p, e, acc)
                    for h in range(H):
                        gk[h] = g[b, m, h]
                    for j in range(1, p + 1):
                        for h in range(H):
                            R[o, j, h] -= gk[h] * e[p - j, h]
                # Horner: a_p sum_j (-x_i)^{j-1} R_j.
                for h in range(H):
                    xv[h] = x[b, i, h]
                    acc[h] = R[o, p, h]
                for j in range(p - 1, 0, -1):
                    for h in range(H):
                        acc[h] = R[o, j, h] - xv[h] * acc[h]
                for h in range(H):
                    gi[h] += a[o, b, h] * acc[h]
            for h in range(H):
                gx[b, i, h] = gi[h]
        for o in range(orders):
            for h in range(H):
                ga[o, b, h] = gsum[o, h]



def _threads() -> None:
    """Run numba's loops on as many threads as torch's (at most what numba was started with)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


class WindowPolynomialNumba(torch.autograd.Function):
    """z (B, n, H) = sum_p a_p e_p(causal window W_p of x) for x (B, n, H) on the CPU, a (P-1, H),
    windows (W_2, ..., W_P); float64 inside, x's dtype out; only x is saved for the backward."""

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, windows: tuple[int, ...]) -> Tensor:
        _threads()
        x = x.contiguous()
        coeff = a.detach().double()[:, None].expand(-1, x.shape[0], -1).contiguous()  # (P-1, B, H)
        w = np.asarray(windows, dtype=np.int64)
        z = torch.empty_like(x)
        window_forward(x.detach().numpy(), coeff.numpy(), w, z.numpy())
        ctx.windows = w
        ctx.save_for_backward(x, a)
        return z

    @staticmethod
    def backward(ctx, grad_z: Tensor) -> tuple[Tensor, Tensor, None]:
        _threads()
        x, a = ctx.saved_tensors
        coeff = a.detach().double()[:, None].expand(-1, x.shape[0], -1).contiguous()
        g = grad_z.contiguous()
        grad_x = torch.empty_like(x)
        grad_coeff = torch.empty(coeff.shape, dtype=torch.float64)
        window_backward(x.detach().numpy(), coeff.numpy(), ctx.windows, g.numpy(), grad_x.numpy(), grad_coeff.numpy())
        return grad_x, grad_coeff.sum(1).to(a.dtype), None
