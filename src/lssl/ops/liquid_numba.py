"""Compiled (numba) elementary symmetric polynomials for the Liquid-S4 signals on CPU tensors:
one pass over time, vectorised over the H features of the (B, L, H) layout (the layer's own, so
nothing is transposed), float64 inside. `kernels.liquid` keeps the torch versions as the
reference and the path for every other device; the tests hold the two together in float64.

PB (`WindowPolynomialNumba`):

    z[b, k, h] = sum_{p=2..P} a[p-2, b, h] e_p(x[b, k-W_p+1, h], ..., x[b, k, h])

(zeros before the start), the function of `kernels.liquid.WindowPolynomial`. Where the torch
version makes a dozen passes over (B, H, L) float64 temporaries (block prefix and suffix power
sums, Newton's identities), this keeps the window power sums in float64 as one running sum and
one buffer per order: prefix and suffix sums restart at every block of W samples, the window at
k is the prefix of k's block plus the suffix of the block before, so its sums hold its own
samples only (a sliding sum, add x_k^j and subtract x_{k-W}^j, keeps an outlier's rounding in
every later window). Then Newton's identities; each order p has its own window and state, and
all orders run over one time block (`WINDOW_BLOCK`) before the next. Orders 2 to 4 have
written-out loops (`forward_2` .. `forward_4`, `backward_2` .. `backward_4`) beside the generic
ones for any p, with the same arithmetic in the same order.

Backward: dz/dx_i = sum_p a_p sum_{j=1..p} (-x_i)^{j-1} R_j(i), R_j(i) = sum of g_k e_{p-j}(k)
over the windows k that contain i, k = i .. i+W-1 (`horner_gradient` in liquid.py). One reverse
sweep recomputes the window sums (the same values as the forward's) and splits R_j at the same
blocks: the terms of i's block from i on, a running sum, plus the prefix sums of the next
block's terms, kept in a ring buffer of one block; so only x is saved by the forward.

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
    """Rows of an order's running state: 0 the gradient of a_p; 1..p the backward's running sums
    R_1..R_p; p+1..2p+1 the running part of the window power sums, T in the forward and U in the
    backward (row p+1 unused); 2p+2..3p+2 the window power sums p_0..p_p (p_0 unused);
    3p+3..4p+3 e_0..e_p; 4p+4 a power; 4p+5 Horner's sum."""
    return 4 * p + 6


@numba.njit(inline="always")
def state_views(st, p):
    """(R, run, ps, e, t, horner): the rows of `state_rows` (R[0] the gradient of a_p)."""
    return (
        st[: p + 1], st[p + 1 : 2 * p + 2], st[2 * p + 2 : 3 * p + 3], st[3 * p + 3 : 4 * p + 4], st[4 * p + 4],
        st[4 * p + 5],
    )


@numba.njit(inline="always")
def add_powers(acc, x_i, p, t):
    """acc[j] += x_i^j, j = 1..p, for every feature (x_i (H,); t (H,) scratch)."""
    H = x_i.shape[0]
    for h in range(H):
        t[h] = x_i[h]
    for j in range(1, p + 1):
        for h in range(H):
            acc[j, h] += t[h]
            t[h] *= x_i[h]


@numba.njit(inline="always")
def clear(rows):
    """rows[1:] = 0 (row 0 unused)."""
    for j in range(1, rows.shape[0]):
        for h in range(rows.shape[1]):
            rows[j, h] = 0.0


@numba.njit(inline="always")
def add_rows(ps, a, c):
    """ps[j] = a[j] + c[j], j >= 1, for every feature."""
    for j in range(1, ps.shape[0]):
        for h in range(ps.shape[1]):
            ps[j, h] = a[j, h] + c[j, h]


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


# The window power sums. Prefix and suffix sums restart at every block of W samples (as in
# `kernels.liquid.block_sums`): the window ending at k = bW + r is the prefix of block b up to
# k, T(k), plus the suffix of block b - 1 after k - W, U(k), so that its sums add its own samples
# only; sliding one sum (add the entering sample, subtract the leaving one) would keep the
# rounding of every sample that ever entered, eps x^p of an outlier x in every later window. The
# forward runs T and reads U from a buffer that `suffix_sums` fills at the start of each block;
# the backward sweep runs U and reads T from a buffer that `prefix_sums` fills on entering a
# block. Both sum in the same order, so forward and backward see the same e's.


@numba.njit(inline="always")
def add_row(u, before, x_m, p, t, fused):
    """u[j] = before[j] + x_m^j, j = 1..p, for every feature (x_m (H,)): in one loop over the
    features (fused, for the written-out orders: inlined with a constant p, the loop over j
    unrolls and the compiler vectorises the features), or in a loop per power (t (H,) scratch),
    vectorised for any p. Same arithmetic either way."""
    H = x_m.shape[0]
    if fused:
        for h in range(H):
            v = np.float64(x_m[h])
            power = v
            for j in range(1, p + 1):
                u[j, h] = before[j, h] + power
                power *= v
    else:
        for h in range(H):
            t[h] = x_m[h]
        for j in range(1, p + 1):
            for h in range(H):
                u[j, h] = before[j, h] + t[h]
                t[h] *= x_m[h]


@numba.njit(inline="always")
def suffix_sums(x, b, k0, W, p, buf, t, fused):
    """buf[r, j] = U(k0 + r) (every feature), the sums of x^j over the block of W samples before
    k0 (a multiple of W) after k0 - W + r, for the rows r of buf (zeros at the start), each row
    from the one after it (`add_row`)."""
    H = x.shape[2]
    for r in range(buf.shape[0] - 1, -1, -1):
        if r == W - 1 or k0 == 0:
            for j in range(1, p + 1):
                for h in range(H):
                    buf[r, j, h] = 0.0
        else:  # buf has W rows here: n > k0 >= W
            add_row(buf[r], buf[r + 1], x[b, k0 - W + r + 1], p, t, fused)


@numba.njit(inline="always")
def prefix_sums(x, b, k0, p, buf, zero, t, fused):
    """buf[r, j] = T(k0 + r) (every feature), the sums of x^j over x[b, k0 .. k0 + r], for
    r < min(rows of buf, n - k0), each row from the one before it (`add_row`); zero (p+1, H)
    holds zeros."""
    for r in range(min(buf.shape[0], x.shape[1] - k0)):
        add_row(buf[r], zero if r == 0 else buf[r - 1], x[b, k0 + r], p, t, fused)


# One time block of one order, forward: z[b, k] += a_b e_p(window at k), k = k0..k1-1, with T in
# the state's running rows and U in buf (min(W, n), p+1, H). `forward_any` is the generic order;
# `forward_2` .. `forward_4` the orders up to the benchmarked degrees (P <= 4) written out: one
# loop over the features per sample with a feature's sums in registers, where the generic one
# runs a loop per power and per step of Newton's identities, each streaming its operands through
# memory (and likewise for the block buffers, `add_row`). Same arithmetic in the same order, so
# the two agree to the last bit (the tests hold them together).


@numba.njit(inline="always")
def forward_any(x, b, k0, k1, p, W, a_b, z, st, buf):
    _, run, ps, e, t, _ = state_views(st, p)
    H = x.shape[2]
    for k in range(k0, k1):
        r = k % W
        if r == 0:
            suffix_sums(x, b, k, W, p, buf, t, False)
            clear(run)
        add_powers(run, x[b, k], p, t)
        add_rows(ps, run, buf[r])
        newton(ps, p, e)
        z_k = z[b, k]
        for h in range(H):
            z_k[h] += a_b[h] * e[p, h]


@numba.njit(inline="always")
def forward_2(x, b, k0, k1, W, a_b, z, st, buf):
    _, run, _, _, t, _ = state_views(st, 2)
    run1, run2 = run[1], run[2]
    H = x.shape[2]
    for k in range(k0, k1):
        r = k % W
        if r == 0:
            suffix_sums(x, b, k, W, 2, buf, t, True)
            clear(run)
        x_k, u, z_k = x[b, k], buf[r], z[b, k]
        for h in range(H):
            v = np.float64(x_k[h])
            s1 = run1[h] + v
            s2 = run2[h] + v * v
            run1[h] = s1
            run2[h] = s2
            p1, p2 = s1 + u[1, h], s2 + u[2, h]
            z_k[h] += a_b[h] * ((p1 * p1 - p2) * 0.5)


@numba.njit(inline="always")
def forward_3(x, b, k0, k1, W, a_b, z, st, buf):
    _, run, _, _, t, _ = state_views(st, 3)
    run1, run2, run3 = run[1], run[2], run[3]
    H = x.shape[2]
    for k in range(k0, k1):
        r = k % W
        if r == 0:
            suffix_sums(x, b, k, W, 3, buf, t, True)
            clear(run)
        x_k, u, z_k = x[b, k], buf[r], z[b, k]
        for h in range(H):
            v = np.float64(x_k[h])
            s1 = run1[h] + v
            s2 = run2[h] + v * v
            s3 = run3[h] + v * v * v
            run1[h] = s1
            run2[h] = s2
            run3[h] = s3
            p1, p2, p3 = s1 + u[1, h], s2 + u[2, h], s3 + u[3, h]
            e2 = (p1 * p1 - p2) * 0.5
            z_k[h] += a_b[h] * ((e2 * p1 - p1 * p2 + p3) * (1.0 / 3.0))


@numba.njit(inline="always")
def forward_4(x, b, k0, k1, W, a_b, z, st, buf):
    _, run, _, _, t, _ = state_views(st, 4)
    run1, run2, run3, run4 = run[1], run[2], run[3], run[4]
    H = x.shape[2]
    for k in range(k0, k1):
        r = k % W
        if r == 0:
            suffix_sums(x, b, k, W, 4, buf, t, True)
            clear(run)
        x_k, u, z_k = x[b, k], buf[r], z[b, k]
        for h in range(H):
            v = np.float64(x_k[h])
            s1 = run1[h] + v
            s2 = run2[h] + v * v
            s3 = run3[h] + v * v * v
            s4 = run4[h] + v * v * v * v
            run1[h] = s1
            run2[h] = s2
            run3[h] = s3
            run4[h] = s4
            p1, p2, p3, p4 = s1 + u[1, h], s2 + u[2, h], s3 + u[3, h], s4 + u[4, h]
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
        bufs = [np.empty((min(W, n), p + 1, H)) for p, W in zip(orders, windows)]
        for o in range(len(orders)):
            states[o][3 * orders[o] + 3] = 1.0  # e_0
        for k0 in range(0, n, WINDOW_BLOCK):
            k1 = min(n, k0 + WINDOW_BLOCK)
            z[b, k0:k1] = 0.0
            for o in range(len(orders)):
                p, W, st, buf = orders[o], windows[o], states[o], bufs[o]
                if written_out and p == 2:
                    forward_2(x, b, k0, k1, W, a[o, b], z, st, buf)
                elif written_out and p == 3:
                    forward_3(x, b, k0, k1, W, a[o, b], z, st, buf)
                elif written_out and p == 4:
                    forward_4(x, b, k0, k1, W, a[o, b], z, st, buf)
                else:
                    forward_any(x, b, k0, k1, p, W, a[o, b], z, st, buf)


# One time block of one order, backward, i = i1-1 down to i0: gx[b, i] += a_b sum_{j=1..p}
# (-x_i)^{j-1} R_j(i), R_j(i) = sum_{k=i..i+W-1} g_k e_{p-j}(k), split at the blocks of W samples
# as the window sums are: the terms of i's block from i on (the running sums R_j, restarted at
# every block) plus those of the next block before i + W. The ring holds one term per sample of
# a block (slot r + 1 for offset r, rows slot * p + j - 1; slot 0 stays zero): on entering a
# block the next block's terms become their prefix sums in place (`enter_block`), and the sample
# at offset r reads slot r (offset r - 1 of the next block) before its own terms take slot r + 1,
# whose prefix sum the sample after it has read. The gradient of a_p, sum_k g_k e_p(k),
# accumulates in its row. The running U gains the sample x[i - W + 1] at every step but at a
# block's last offset, where the sweep enters it (`leaving_sample`).


@numba.njit(inline="always")
def enter_block(x, b, k0, r, W, p, buf, ring, R, run, t, fused):
    """The backward sweep enters the block of W samples from k0 at offset r (its last sample):
    the next block's terms in the ring become their prefix sums (slots past the end of the
    sequence hold zeros, so they repeat the total), the running sums R restart, T goes to buf
    (`prefix_sums`, fused as in `add_row`) and `run` starts U with the block before's samples
    after k0 - W + r + 1 (the step at offset r adds the next one, `leaving_sample`)."""
    H = x.shape[2]
    if k0 + W < x.shape[1]:
        for s in range(2, W + 1):
            for j in range(p):
                total, before = ring[s * p + j], ring[(s - 1) * p + j]
                for h in range(H):
                    total[h] += before[h]
    clear(R)
    clear(run)
    prefix_sums(x, b, k0, p, buf, run, t, fused)
    if k0 > 0:
        for m in range(W - 1, r + 1, -1):
            add_powers(run, x[b, k0 - W + m], p, t)


@numba.njit(inline="always")
def leaving_sample(x, b, i, r, W, zero):
    """The sample that joins the backward's running U at i (offset r in its block): x[i - W + 1],
    which the window at i holds and the window at i + 1 does not (offset r + 1 of the block
    before); zeros at a block's last offset and in the first block."""
    return x[b, i - W + 1] if r < W - 1 and i >= W else zero


@numba.njit(inline="always")
def backward_any(x, b, i0, i1, p, W, a_b, g, gx, st, buf, ring, zero):
    R, run, ps, e, t, horner = state_views(st, p)
    n, H = x.shape[1], x.shape[2]
    for i in range(i1 - 1, i0 - 1, -1):
        r = i % W
        if r == W - 1 or i == n - 1:
            enter_block(x, b, i - r, r, W, p, buf, ring, R, run, t, False)
        add_powers(run, leaving_sample(x, b, i, r, W, zero), p, t)
        add_rows(ps, buf[r], run)
        newton(ps, p, e)
        x_i, g_i, gx_i = x[b, i], g[b, i], gx[b, i]
        # Descending j, Horner's sum in the same pass.
        for j in range(p, 0, -1):
            e_j, R_j, nxt, own = e[p - j], R[j], ring[r * p + j - 1], ring[(r + 1) * p + j - 1]
            for h in range(H):
                term = g_i[h] * e_j[h]
                s = R_j[h] + term
                R_j[h] = s
                own[h] = term
                v = s + nxt[h]
                horner[h] = v if j == p else v - x_i[h] * horner[h]
        g_sum = R[0]
        for h in range(H):
            g_sum[h] += g_i[h] * e[p, h]
            gx_i[h] += a_b[h] * horner[h]


# The written-out orders take two loops over the features per sample: U gains its sample and
# buf[r] turns from T into the window power sums; then the rest, indexing st (0: the gradient of
# a_p, j: R_j), ring, x, g and gx directly (order 4: the terms into the ring, then the sums R and
# Horner's rule). In one loop, or through a view per row, the compiler left the rest scalar (too
# many arrays to check for overlap), as slow as the generic loops.


@numba.njit(inline="always")
def backward_2(x, b, i0, i1, W, a_b, g, gx, st, buf, ring, zero):
    R, run, _, _, t, _ = state_views(st, 2)
    run1, run2 = run[1], run[2]
    n, H = x.shape[1], x.shape[2]
    for i in range(i1 - 1, i0 - 1, -1):
        r = i % W
        if r == W - 1 or i == n - 1:
            enter_block(x, b, i - r, r, W, 2, buf, ring, R, run, t, True)
        x_u, ps = leaving_sample(x, b, i, r, W, zero), buf[r]
        for h in range(H):
            v = np.float64(x_u[h])
            u1 = run1[h] + v
            u2 = run2[h] + v * v
            run1[h] = u1
            run2[h] = u2
            ps[1, h] += u1
            ps[2, h] += u2
        q = 2 * r
        for h in range(H):
            p1, p2 = buf[r, 1, h], buf[r, 2, h]
            gk, xv = np.float64(g[b, i, h]), np.float64(x[b, i, h])
            t1 = gk * p1  # g e_1; g e_0 = g
            s1 = st[1, h] + t1
            s2 = st[2, h] + gk
            st[1, h] = s1
            st[2, h] = s2
            ring[q + 2, h] = t1
            ring[q + 3, h] = gk
            st[0, h] += gk * ((p1 * p1 - p2) * 0.5)
            gx[b, i, h] += a_b[h] * ((s1 + ring[q, h]) - xv * (s2 + ring[q + 1, h]))


@numba.njit(inline="always")
def backward_3(x, b, i0, i1, W, a_b, g, gx, st, buf, ring, zero):
    R, run, _, _, t, _ = state_views(st, 3)
    run1, run2, run3 = run[1], run[2], run[3]
    n, H = x.shape[1], x.shape[2]
    for i in range(i1 - 1, i0 - 1, -1):
        r = i % W
        if r == W - 1 or i == n - 1:
            enter_block(x, b, i - r, r, W, 3, buf, ring, R, run, t, True)
        x_u, ps = leaving_sample(x, b, i, r, W, zero), buf[r]
        for h in range(H):
            v = np.float64(x_u[h])
            u1 = run1[h] + v
            u2 = run2[h] + v * v
            u3 = run3[h] + v * v * v
            run1[h] = u1
            run2[h] = u2
            run3[h] = u3
            ps[1, h] += u1
            ps[2, h] += u2
            ps[3, h] += u3
        q = 3 * r
        for h in range(H):
            p1, p2, p3 = buf[r, 1, h], buf[r, 2, h], buf[r, 3, h]
            gk, xv = np.float64(g[b, i, h]), np.float64(x[b, i, h])
            e2 = (p1 * p1 - p2) * 0.5
            t1 = gk * e2  # g e_2; g e_1 = g p_1; g e_0 = g
            t2 = gk * p1
            s1 = st[1, h] + t1
            s2 = st[2, h] + t2
            s3 = st[3, h] + gk
            st[1, h] = s1
            st[2, h] = s2
            st[3, h] = s3
            ring[q + 3, h] = t1
            ring[q + 4, h] = t2
            ring[q + 5, h] = gk
            st[0, h] += gk * ((e2 * p1 - p1 * p2 + p3) * (1.0 / 3.0))
            gx[b, i, h] += a_b[h] * ((s1 + ring[q, h]) - xv * ((s2 + ring[q + 1, h]) - xv * (s3 + ring[q + 2, h])))


@numba.njit(inline="always")
def backward_4(x, b, i0, i1, W, a_b, g, gx, st, buf, ring, zero):
    R, run, _, _, t, _ = state_views(st, 4)
    run1, run2, run3, run4 = run[1], run[2], run[3], run[4]
    n, H = x.shape[1], x.shape[2]
    for i in range(i1 - 1, i0 - 1, -1):
        r = i % W
        if r == W - 1 or i == n - 1:
            enter_block(x, b, i - r, r, W, 4, buf, ring, R, run, t, True)
        x_u, ps = leaving_sample(x, b, i, r, W, zero), buf[r]
        for h in range(H):
            v = np.float64(x_u[h])
            u1 = run1[h] + v
            u2 = run2[h] + v * v
            u3 = run3[h] + v * v * v
            u4 = run4[h] + v * v * v * v
            run1[h] = u1
            run2[h] = u2
            run3[h] = u3
            run4[h] = u4
            ps[1, h] += u1
            ps[2, h] += u2
            ps[3, h] += u3
            ps[4, h] += u4
        q = 4 * r
        for h in range(H):
            p1, p2, p3, p4 = buf[r, 1, h], buf[r, 2, h], buf[r, 3, h], buf[r, 4, h]
            gk = np.float64(g[b, i, h])
            e2 = (p1 * p1 - p2) * 0.5
            e3 = (e2 * p1 - p1 * p2 + p3) * (1.0 / 3.0)
            ring[q + 4, h] = gk * e3  # g e_3; g e_2; g e_1 = g p_1; g e_0 = g
            ring[q + 5, h] = gk * e2
            ring[q + 6, h] = gk * p1
            ring[q + 7, h] = gk
            st[0, h] += gk * ((e3 * p1 - e2 * p2 + p1 * p3 - p4) * 0.25)
        for h in range(H):
            xv = np.float64(x[b, i, h])
            s1 = st[1, h] + ring[q + 4, h]
            s2 = st[2, h] + ring[q + 5, h]
            s3 = st[3, h] + ring[q + 6, h]
            s4 = st[4, h] + ring[q + 7, h]
            st[1, h] = s1
            st[2, h] = s2
            st[3, h] = s3
            st[4, h] = s4
            horner = (s3 + ring[q + 2, h]) - xv * (s4 + ring[q + 3, h])
            gx[b, i, h] += a_b[h] * ((s1 + ring[q, h]) - xv * ((s2 + ring[q + 1, h]) - xv * horner))


@compile_loops
def window_backward(x, a, orders, windows, g, gx, ga, written_out):
    """The gradients of `window_forward`: g (B, n, H) that of z; gx (B, n, H) that of x and
    ga (O, B, H) float64 that of a, out."""
    B, n, H = x.shape
    for b in numba.prange(B):
        states = [np.zeros((state_rows(p), H)) for p in orders]
        bufs = [np.empty((min(W, n), p + 1, H)) for p, W in zip(orders, windows)]
        rings = [np.zeros(((min(W, n) + 1) * p, H)) for p, W in zip(orders, windows)]
        zero = np.zeros_like(x[b, 0])
        for o in range(len(orders)):
            states[o][3 * orders[o] + 3] = 1.0  # e_0
        for i1 in range(n, 0, -WINDOW_BLOCK):
            i0 = max(0, i1 - WINDOW_BLOCK)
            gx[b, i0:i1] = 0.0
            for o in range(len(orders)):
                p, W, st, buf, ring = orders[o], windows[o], states[o], bufs[o], rings[o]
                if written_out and p == 2:
                    backward_2(x, b, i0, i1, W, a[o, b], g, gx, st, buf, ring, zero)
                elif written_out and p == 3:
                    backward_3(x, b, i0, i1, W, a[o, b], g, gx, st, buf, ring, zero)
                elif written_out and p == 4:
                    backward_4(x, b, i0, i1, W, a[o, b], g, gx, st, buf, ring, zero)
                else:
                    backward_any(x, b, i0, i1, p, W, a[o, b], g, gx, st, buf, ring, zero)
        for o in range(len(orders)):
            ga_ob = ga[o, b]
            for h in range(H):
                ga_ob[h] = states[o][0, h]


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
