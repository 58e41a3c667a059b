"""Compiled (numba) elementary symmetric polynomials for the Liquid-S4 signals on CPU tensors:
one pass over time, vectorised over the H features of the (B, L, H) layout (the layer's own, so
nothing is transposed), float64 inside. `kernels.liquid` keeps the torch versions as the
reference and the path for every other device; the tests hold the two together in float64.

PB (`WindowPolynomialNumba`):

    z[b, k, h] = sum_{p=2..P} a[p-2, b, h] e_p(x[b, k-W_p+1, h], ..., x[b, k, h])

(zeros before the start), the function of `kernels.liquid.WindowPolynomial`. Where the torch
version makes a dozen passes over (B, H, L) float64 temporaries (prefix power sums, window
differences, Newton's identities), this keeps the window power sums in float64 and slides them:
add x_k^j, subtract x_{k-W}^j, then Newton's identities, each order p with its own window and
state, all orders over one time block (`WINDOW_BLOCK`) before the next. The running sums carry
the same float64 round-off as the prefix differences (an outlier's x^p leaves its rounding
behind in both). Orders 2 to 4 have written-out loops (`forward_2` .. `forward_4`,
`backward_2` .. `backward_4`) beside the generic ones for any p, with the same arithmetic in the
same order.

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


# Samples per time block of the PB loops: every order runs over a block before the next block,
# so the block's rows of x, g and the output (64 x H each) are read from cache by all orders.
WINDOW_BLOCK = 64


@numba.njit(inline="always")
def state_rows(p):
    """Rows of an order's running state (`window_forward`, `window_backward`): 0..p the window
    power sums (row 0 unused), p+1..2p+1 e_0..e_p, 2p+2..3p+2 R_0..R_p (R_0 unused), 3p+3 the
    gradient of a_p, then three rows of scratch. The written-out orders use only the power sums,
    R and the gradient rows."""
    return 3 * p + 7


@numba.njit(inline="always")
def slide(ps, x_add, x_remove, p, t_add, t_remove):
    """ps[j] += x_add^j - x_remove^j, j = 1..p, for every feature: the sample x_add (H,) enters
    the window, x_remove (H,) leaves it (a row of zeros where none does)."""
    H = x_add.shape[0]
    for h in range(H):
        t_add[h] = x_add[h]
        t_remove[h] = x_remove[h]
    for j in range(1, p + 1):
        for h in range(H):
            ps[j, h] += t_add[h] - t_remove[h]
            t_add[h] *= x_add[h]
            t_remove[h] *= x_remove[h]


@numba.njit(inline="always")
def before_window(x, b, k, W, zero):
    """x[b, k - W] (H,), the sample just before the window of the last W samples ending at k:
    the one that leaves the window when it moves to k, zeros before the start."""
    return x[b, k - W] if k >= W else zero


@numba.njit(inline="always")
def newton(ps, p, e):
    """e[1..p] (every feature) from the power sums ps[1..p] by Newton's identities,
    q e_q = sum_{j=1..q} (-1)^{j-1} e_{q-j} p_j; e[0] = 1 is set once by the caller. The last
    term (j = q, e_0 = 1) and the division by q share one pass."""
    H = e.shape[1]
    for h in range(H):
        e[1, h] = ps[1, h]
    for q in range(2, p + 1):
        inv = 1.0 / q
        if q == 2:
            for h in range(H):
                e[2, h] = (e[1, h] * ps[1, h] - ps[2, h]) * inv
            continue
        for h in range(H):
            e[q, h] = e[q - 1, h] * ps[1, h] - e[q - 2, h] * ps[2, h]
        sign = 1.0
        for j in range(3, q):
            for h in range(H):
                e[q, h] += sign * e[q - j, h] * ps[j, h]
            sign = -sign
        for h in range(H):
            e[q, h] = (e[q, h] + sign * ps[q, h]) * inv


# One time block of one order, forward: z[b, k] += a_b e_p(window at k), k = k0..k1-1, from the
# state st (`state_rows`) at k0 - 1. `forward_any` is the generic order; `forward_2` ..
# `forward_4` the orders up to the benchmarked degrees (P <= 4) written out: one loop over the
# features per sample with a feature's sums in registers, where the generic one runs a loop per
# power and per step of Newton's identities, each streaming its operands through memory.
# Same arithmetic in the same order, so the two agree to the last bit (the tests hold them
# together).


@numba.njit(inline="always")
def forward_any(x, b, k0, k1, p, W, a_b, z, st, zero):
    e, t_add, t_remove = st[p + 1 : 2 * p + 2], st[3 * p + 4], st[3 * p + 5]
    H = x.shape[2]
    for k in range(k0, k1):
        slide(st, x[b, k], before_window(x, b, k, W, zero), p, t_add, t_remove)
        newton(st, p, e)
        z_k = z[b, k]
        for h in range(H):
            z_k[h] += a_b[h] * e[p, h]


@numba.njit(inline="always")
def forward_2(x, b, k0, k1, W, a_b, z, st, zero):
    H = x.shape[2]
    for k in range(k0, k1):
        x_add, x_remove, z_k = x[b, k], before_window(x, b, k, W, zero), z[b, k]
        for h in range(H):
            u, v = np.float64(x_add[h]), np.float64(x_remove[h])
            p1 = st[1, h] + (u - v)
            p2 = st[2, h] + (u * u - v * v)
            st[1, h] = p1
            st[2, h] = p2
            z_k[h] += a_b[h] * ((p1 * p1 - p2) * 0.5)


@numba.njit(inline="always")
def forward_3(x, b, k0, k1, W, a_b, z, st, zero):
    H = x.shape[2]
    for k in range(k0, k1):
        x_add, x_remove, z_k = x[b, k], before_window(x, b, k, W, zero), z[b, k]
        for h in range(H):
            u, v = np.float64(x_add[h]), np.float64(x_remove[h])
            p1 = st[1, h] + (u - v)
            p2 = st[2, h] + (u * u - v * v)
            p3 = st[3, h] + (u * u * u - v * v * v)
            st[1, h] = p1
            st[2, h] = p2
            st[3, h] = p3
            e2 = (p1 * p1 - p2) * 0.5
            z_k[h] += a_b[h] * ((e2 * p1 - p1 * p2 + p3) * (1.0 / 3.0))


@numba.njit(inline="always")
def forward_4(x, b, k0, k1, W, a_b, z, st, zero):
    H = x.shape[2]
    for k in range(k0, k1):
        x_add, x_remove, z_k = x[b, k], before_window(x, b, k, W, zero), z[b, k]
        for h in range(H):
            u, v = np.float64(x_add[h]), np.float64(x_remove[h])
            p1 = st[1, h] + (u - v)
            p2 = st[2, h] + (u * u - v * v)
            p3 = st[3, h] + (u * u * u - v * v * v)
            p4 = st[4, h] + (u * u * u * u - v * v * v * v)
            st[1, h] = p1
            st[2, h] = p2
            st[3, h] = p3
            st[4, h] = p4
            e2 = (p1 * p1 - p2) * 0.5
            e3 = (e2 * p1 - p1 * p2 + p3) * (1.0 / 3.0)
            z_k[h] += a_b[h] * ((e3 * p1 - e2 * p2 + p1 * p3 - p4) * 0.25)


@compile_loops
def window_forward(x, a, orders, windows, z, written_out):
    """z = sum_o a[o] e_{p_o}(the causal window of the last W_o samples of x). x, z (B, n, H);
    a (O, B, H) float64; orders, windows (O,) int64; written_out: use `forward_2` .. `forward_4`
    for those orders (False: `forward_any` for every order, the tests' reference)."""
    B, n, H = x.shape
    for b in numba.prange(B):
        states = [np.zeros((state_rows(p), H)) for p in orders]
        for o in range(len(orders)):
            states[o][orders[o] + 1] = 1.0  # e_0
        zero = np.zeros_like(x[b, 0])
        for k0 in range(0, n, WINDOW_BLOCK):
            k1 = min(n, k0 + WINDOW_BLOCK)
            z[b, k0:k1] = 0.0
            for o in range(len(orders)):
                p, W, st = orders[o], windows[o], states[o]
                if written_out and p == 2:
                    forward_2(x, b, k0, k1, W, a[o, b], z, st, zero)
                elif written_out and p == 3:
                    forward_3(x, b, k0, k1, W, a[o, b], z, st, zero)
                elif written_out and p == 4:
                    forward_4(x, b, k0, k1, W, a[o, b], z, st, zero)
                else:
                    forward_any(x, b, k0, k1, p, W, a[o, b], z, st, zero)


# One time block of one order, backward, i = i1-1 down to i0, from the state st at the window
# k = i1 - 1: gx[b, i] += a_b sum_{j=1..p} (-x_i)^{j-1} R_j(i), R_j(i) = sum_{k=i..i+W-1} g_k
# e_{p-j}(k), kept as running sums: sample i's terms enter R and wait in the ring buffer of the
# last `slots` samples (row slot * p + j - 1) until they leave it. The ring starts at zero: a
# slot is read before its first write exactly while no sample has left the window yet, so
# subtracting it then subtracts 0. The gradient of a_p, sum_k g_k e_p(k), accumulates in its row.


@numba.njit(inline="always")
def backward_any(x, b, i0, i1, p, W, a_b, g, gx, st, ring, zero):
    e, R, t_add, t_remove, acc = st[p + 1 : 2 * p + 2], st[2 * p + 2 : 3 * p + 3], st[3 * p + 4], st[3 * p + 5], st[3 * p + 6]
    g_sum = st[3 * p + 3]
    H, slots = x.shape[2], ring.shape[0] // p
    for i in range(i1 - 1, i0 - 1, -1):
        newton(st, p, e)
        x_i, g_i, gx_i = x[b, i], g[b, i], gx[b, i]
        row = (i % slots) * p
        # R_j gains sample i's term and loses sample i + W's, in the slot that sample i's term
        # takes over; descending j, Horner's sum in the same pass.
        for j in range(p, 0, -1):
            ring_j, R_j, e_j = ring[row + j - 1], R[j], e[p - j]
            for h in range(H):
                term = g_i[h] * e_j[h]
                r = R_j[h] + term - ring_j[h]
                R_j[h] = r
                ring_j[h] = term
                acc[h] = r if j == p else r - x_i[h] * acc[h]
        for h in range(H):
            g_sum[h] += g_i[h] * e[p, h]
            gx_i[h] += a_b[h] * acc[h]
        slide(st, before_window(x, b, i, W, zero), x_i, p, t_add, t_remove)  # the window at i - 1


@numba.njit(inline="always")
def backward_2(x, b, i0, i1, W, a_b, g, gx, st, ring, zero):
    H, slots = x.shape[2], ring.shape[0] // 2
    for i in range(i1 - 1, i0 - 1, -1):
        x_i, x_add, g_i, gx_i = x[b, i], before_window(x, b, i, W, zero), g[b, i], gx[b, i]
        ring1, ring2 = ring[2 * (i % slots)], ring[2 * (i % slots) + 1]
        for h in range(H):
            p1, p2, gk, xv = st[1, h], st[2, h], np.float64(g_i[h]), np.float64(x_i[h])
            t1 = gk * p1  # g e_1; g e_0 = g
            r1 = st[7, h] + t1 - ring1[h]
            r2 = st[8, h] + gk - ring2[h]
            st[7, h] = r1
            st[8, h] = r2
            ring1[h] = t1
            ring2[h] = gk
            st[9, h] += gk * ((p1 * p1 - p2) * 0.5)
            gx_i[h] += a_b[h] * (r1 - xv * r2)
            u = np.float64(x_add[h])
            st[1, h] = p1 + (u - xv)
            st[2, h] = p2 + (u * u - xv * xv)


@numba.njit(inline="always")
def backward_3(x, b, i0, i1, W, a_b, g, gx, st, ring, zero):
    H, slots = x.shape[2], ring.shape[0] // 3
    for i in range(i1 - 1, i0 - 1, -1):
        x_i, x_add, g_i, gx_i = x[b, i], before_window(x, b, i, W, zero), g[b, i], gx[b, i]
        row = 3 * (i % slots)
        ring1, ring2, ring3 = ring[row], ring[row + 1], ring[row + 2]
        for h in range(H):
            p1, p2, p3, gk, xv = st[1, h], st[2, h], st[3, h], np.float64(g_i[h]), np.float64(x_i[h])
            e2 = (p1 * p1 - p2) * 0.5
            t1 = gk * e2  # g e_2; g e_1 = g p_1; g e_0 = g
            t2 = gk * p1
            r1 = st[9, h] + t1 - ring1[h]
            r2 = st[10, h] + t2 - ring2[h]
            r3 = st[11, h] + gk - ring3[h]
            st[9, h] = r1
            st[10, h] = r2
            st[11, h] = r3
            ring1[h] = t1
            ring2[h] = t2
            ring3[h] = gk
            st[12, h] += gk * ((e2 * p1 - p1 * p2 + p3) * (1.0 / 3.0))
            gx_i[h] += a_b[h] * (r1 - xv * (r2 - xv * r3))
            u = np.float64(x_add[h])
            st[1, h] = p1 + (u - xv)
            st[2, h] = p2 + (u * u - xv * xv)
            st[3, h] = p3 + (u * u * u - xv * xv * xv)


@numba.njit(inline="always")
def backward_4(x, b, i0, i1, W, a_b, g, gx, st, ring, zero):
    # The window slides in a second loop over the features: in one loop with the rest (as in
    # `backward_3`) the compiler left it scalar, as slow as the generic loops.
    H, slots = x.shape[2], ring.shape[0] // 4
    for i in range(i1 - 1, i0 - 1, -1):
        x_i, x_add, g_i, gx_i = x[b, i], before_window(x, b, i, W, zero), g[b, i], gx[b, i]
        row = 4 * (i % slots)
        ring1, ring2, ring3, ring4 = ring[row], ring[row + 1], ring[row + 2], ring[row + 3]
        ps1, ps2, ps3, ps4 = st[1], st[2], st[3], st[4]
        R1, R2, R3, R4, g_sum = st[11], st[12], st[13], st[14], st[15]
        for h in range(H):
            p1, p2, p3, p4 = ps1[h], ps2[h], ps3[h], ps4[h]
            gk, xv = np.float64(g_i[h]), np.float64(x_i[h])
            e2 = (p1 * p1 - p2) * 0.5
            e3 = (e2 * p1 - p1 * p2 + p3) * (1.0 / 3.0)
            t1 = gk * e3  # g e_3; g e_2; g e_1 = g p_1; g e_0 = g
            t2 = gk * e2
            t3 = gk * p1
            r1 = R1[h] + t1 - ring1[h]
            r2 = R2[h] + t2 - ring2[h]
            r3 = R3[h] + t3 - ring3[h]
            r4 = R4[h] + gk - ring4[h]
            R1[h] = r1
            R2[h] = r2
            R3[h] = r3
            R4[h] = r4
            ring1[h] = t1
            ring2[h] = t2
            ring3[h] = t3
            ring4[h] = gk
            g_sum[h] += gk * ((e3 * p1 - e2 * p2 + p1 * p3 - p4) * 0.25)
            gx_i[h] += a_b[h] * (r1 - xv * (r2 - xv * (r3 - xv * r4)))
        for h in range(H):
            u, xv = np.float64(x_add[h]), np.float64(x_i[h])
            ps1[h] += u - xv
            ps2[h] += u * u - xv * xv
            ps3[h] += u * u * u - xv * xv * xv
            ps4[h] += u * u * u * u - xv * xv * xv * xv


@compile_loops
def window_backward(x, a, orders, windows, g, gx, ga, written_out):
    """The gradients of `window_forward`: g (B, n, H) that of z; gx (B, n, H) that of x and
    ga (O, B, H) float64 that of a, out."""
    B, n, H = x.shape
    for b in numba.prange(B):
        states = [np.zeros((state_rows(p), H)) for p in orders]
        rings = [np.zeros((min(W, n) * p, H)) for p, W in zip(orders, windows)]
        zero = np.zeros_like(x[b, 0])
        for o in range(len(orders)):
            p, st = orders[o], states[o]
            st[p + 1] = 1.0  # e_0
            for k in range(max(0, n - windows[o]), n):  # the window at k = n - 1, summed directly
                slide(st, x[b, k], zero, p, st[3 * p + 4], st[3 * p + 5])
        for i1 in range(n, 0, -WINDOW_BLOCK):
            i0 = max(0, i1 - WINDOW_BLOCK)
            gx[b, i0:i1] = 0.0
            for o in range(len(orders)):
                p, W, st, ring = orders[o], windows[o], states[o], rings[o]
                if written_out and p == 2:
                    backward_2(x, b, i0, i1, W, a[o, b], g, gx, st, ring, zero)
                elif written_out and p == 3:
                    backward_3(x, b, i0, i1, W, a[o, b], g, gx, st, ring, zero)
                elif written_out and p == 4:
                    backward_4(x, b, i0, i1, W, a[o, b], g, gx, st, ring, zero)
                else:
                    backward_any(x, b, i0, i1, p, W, a[o, b], g, gx, st, ring, zero)
        for o in range(len(orders)):
            ga_ob = ga[o, b]
            for h in range(H):
                ga_ob[h] = states[o][3 * orders[o] + 3, h]


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
    windows (W_2, ..., W_P), one pass over time per order; float64 inside, x's dtype out (half
    precision runs the float32 loops); only x (as the loops read it) is saved for the backward."""

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, windows: tuple[int, ...]) -> Tensor:
        match_threads()
        xw = loop_input(x)
        coeff = a.detach().double()[:, None].expand(-1, x.shape[0], -1).contiguous()  # (P-1, B, H)
        orders = np.arange(2, len(windows) + 2, dtype=np.int64)
        w = np.asarray(windows, dtype=np.int64)
        z = torch.empty_like(xw)
        window_forward(xw.numpy(), coeff.numpy(), orders, w, z.numpy(), True)
        ctx.orders, ctx.windows, ctx.dtype, ctx.coeff = orders, w, x.dtype, coeff
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
        window_backward(
            xw.numpy(), ctx.coeff.numpy(), ctx.orders, ctx.windows, g.numpy(), grad_x.numpy(), grad_coeff.numpy(), True
        )
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
