"""Compiled (numba) shifted TriD solves for LSSL's generating-function kernel on CPU tensors: the
function of `kernels.resolvent._Resolvent` as fused loops,

    y[c, h, k] = sum_n Ct[c, h, n] x[n],   (a_k I + b_hk M_h) x = B_h,   b_hk = beta_k dt_h,

with M = P (Dg + T^{-1}) Q solved through the tridiagonal J = diag(e) T + diag(b p q) by
Gaussian elimination with partial pivoting (`kernels.resolvent` derives it). Per feature h and
block of `BLOCK` nodes, the elimination runs down the N rows with every node of the block in
the innermost loop (contiguous, no branches: the pivot choice is a select), so LLVM vectorises
over nodes, and the block's pivot rows (N x 14 x BLOCK numbers, 230 KB at N = 256 in float32)
stay in L2 instead of going through memory once per operation as in the torch version.

Backward: per block, x and w are recomputed, the transposed system gives lambda and
mu = T^{-T} P lambda, and every parameter's gradient is a sum over nodes of their products
(`kernels.resolvent` lists them): block sums in the loops' dtype, added per feature in float64.

Compiled for float32 and float64 (the dtype of the parameters); numba is optional and this
module is imported only for backend='numba' (`ops.backend`).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from ._numba import compile_loops, compile_sums, first_order_only, loop_input, match_threads

Tensor = torch.Tensor

# Nodes per block, a fixed trip count: the last block is padded with nodes a = 1, b = 0 (S = I).
BLOCK = 16
# Every (feature, block) works in a flat array of (N + 2) rows of NV x BLOCK: row n + 1 holds,
# for system row n, the pivot row after elimination (its entries in columns n, n+1, n+2 and
# right-hand side, re/im), the right-hand side, w and x; rows 0 and N + 1 stay zero (w_{-1} =
# w_N = 0). Vectorising over the block's nodes needs indices that LLVM can tell apart: offsets
# (ascending loop counter) * ROW + constants, or constants into a row's slice (the descending
# back substitution). An index numba cannot prove non-negative gets its negative-index
# wraparound, and the loop then runs scalar, 5-10x slower.
NV = 14
ROW = NV * BLOCK
PD, PU, P2, PR, RHS, W, X = 0, 2, 4, 6, 8, 10, 12
# The state (ST x BLOCK): the row being eliminated into (its entries in columns i, i+1 and its
# right-hand side) and the block's nodes a, b.
ST = 10
SD, SU, SR, SA, SB = 0, 2, 4, 6, 8


@numba.njit(inline="always")
def shifted_solve(work, st, dl, d, du, pl, pr, c, one, zero):
    """x, w of (a I + b M) x = r, w = T^{-1} Q x, for one feature and one block of nodes: a, b
    in `st` (SA, SB), r in `work` (RHS), results in `work` (X, W); the TriD rows dl, du (N-1,),
    d, pl, pr, c (N,). (`one`, `zero` in the loops' dtype: a literal would widen float32
    arithmetic to float64.)"""
    N = d.shape[0]
    pcq, pq, du0 = pl[0] * c[0] * pr[0], pl[0] * pr[0], du[0] if N > 1 else zero
    for k in range(BLOCK):
        ar, ai, br, bi = st[SA * BLOCK + k], st[(SA + 1) * BLOCK + k], st[SB * BLOCK + k], st[(SB + 1) * BLOCK + k]
        er, ei = ar + br * pcq, ai + bi * pcq
        st[SD * BLOCK + k], st[(SD + 1) * BLOCK + k] = er * d[0] + br * pq, ei * d[0] + bi * pq
        st[SU * BLOCK + k], st[(SU + 1) * BLOCK + k] = er * du0, ei * du0
        st[SR * BLOCK + k], st[(SR + 1) * BLOCK + k] = pr[0] * work[ROW + RHS * BLOCK + k], pr[0] * work[
            ROW + (RHS + 1) * BLOCK + k]
    for i in range(N - 1):
        n = i + 1
        pcq, pq = pl[n] * c[n] * pr[n], pl[n] * pr[n]
        dun = du[n] if n < N - 1 else zero
        dli, dn, prn = dl[i], d[n], pr[n]
        oi = i * ROW + ROW  # row i; row n = i + 1 at oi + ROW
        for k in range(BLOCK):
            ar, ai, br, bi = st[SA * BLOCK + k], st[(SA + 1) * BLOCK + k], st[SB * BLOCK + k], st[(SB + 1) * BLOCK + k]
            er, ei = ar + br * pcq, ai + bi * pcq
            lor, loi = er * dli, ei * dli  # row n, column i
            dnr, dni = er * dn + br * pq, ei * dn + bi * pq
            unr, uni = er * dun, ei * dun
            rnr, rni = prn * work[oi + ROW + RHS * BLOCK + k], prn * work[oi + ROW + (RHS + 1) * BLOCK + k]
            cdr, cdi = st[SD * BLOCK + k], st[(SD + 1) * BLOCK + k]
            cur, cui = st[SU * BLOCK + k], st[(SU + 1) * BLOCK + k]
            crr, cri = st[SR * BLOCK + k], st[(SR + 1) * BLOCK + k]
            # Pivot row: the larger entry in column i; the other row is eliminated with it.
            swap = lor * lor + loi * loi > cdr * cdr + cdi * cdi
            vdr = lor if swap else cdr
            vdi = loi if swap else cdi
            vur = dnr if swap else cur
            vui = dni if swap else cui
            v2r = unr if swap else zero
            v2i = uni if swap else zero
            vrr = rnr if swap else crr
            vri = rni if swap else cri
            osr = cdr if swap else lor
            osi = cdi if swap else loi
            odr = cur if swap else dnr
            odi = cui if swap else dni
            our = zero if swap else unr
            oui = zero if swap else uni
            orr = crr if swap else rnr
            ori = cri if swap else rni
            inv = one / (vdr * vdr + vdi * vdi)
            mr, mi = (osr * vdr + osi * vdi) * inv, (osi * vdr - osr * vdi) * inv
            work[oi + PD * BLOCK + k], work[oi + (PD + 1) * BLOCK + k] = vdr, vdi
            work[oi + PU * BLOCK + k], work[oi + (PU + 1) * BLOCK + k] = vur, vui
            work[oi + P2 * BLOCK + k], work[oi + (P2 + 1) * BLOCK + k] = v2r, v2i
            work[oi + PR * BLOCK + k], work[oi + (PR + 1) * BLOCK + k] = vrr, vri
            st[SD * BLOCK + k], st[(SD + 1) * BLOCK + k] = odr - (mr * vur - mi * vui), odi - (mr * vui + mi * vur)
            st[SU * BLOCK + k], st[(SU + 1) * BLOCK + k] = our - (mr * v2r - mi * v2i), oui - (mr * v2i + mi * v2r)
            st[SR * BLOCK + k], st[(SR + 1) * BLOCK + k] = orr - (mr * vrr - mi * vri), ori - (mr * vri + mi * vrr)
    rl = work[N * ROW:N * ROW + ROW]
    for k in range(BLOCK):
        cdr, cdi = st[SD * BLOCK + k], st[(SD + 1) * BLOCK + k]
        crr, cri = st[SR * BLOCK + k], st[(SR + 1) * BLOCK + k]
        inv = one / (cdr * cdr + cdi * cdi)
        rl[W * BLOCK + k] = (crr * cdr + cri * cdi) * inv
        rl[(W + 1) * BLOCK + k] = (cri * cdr - crr * cdi) * inv
    for i in range(N - 2, -1, -1):
        # The second superdiagonal reaches w_{i+2}, the zero row w_N at i = N - 2 (where its
        # entry is 0 anyway: the last row has no superdiagonal to swap up).
        ri, r1, r2 = work[i * ROW + ROW:i * ROW + 2 * ROW], work[i * ROW + 2 * ROW:i * ROW + 3 * ROW], work[
            i * ROW + 3 * ROW:i * ROW + 4 * ROW]
        for k in range(BLOCK):
            u2r, u2i = ri[P2 * BLOCK + k], ri[(P2 + 1) * BLOCK + k]
            w1r, w1i = r1[W * BLOCK + k], r1[(W + 1) * BLOCK + k]
            w2r, w2i = r2[W * BLOCK + k], r2[(W + 1) * BLOCK + k]
            pur, pui = ri[PU * BLOCK + k], ri[(PU + 1) * BLOCK + k]
            tr = ri[PR * BLOCK + k] - (pur * w1r - pui * w1i) - (u2r * w2r - u2i * w2i)
            ti = ri[(PR + 1) * BLOCK + k] - (pur * w1i + pui * w1r) - (u2r * w2i + u2i * w2r)
            pdr, pdi = ri[PD * BLOCK + k], ri[(PD + 1) * BLOCK + k]
            inv = one / (pdr * pdr + pdi * pdi)
            ri[W * BLOCK + k] = (tr * pdr + ti * pdi) * inv
            ri[(W + 1) * BLOCK + k] = (ti * pdr - tr * pdi) * inv
    # x_n from whichever of its two rows amplifies an error in w the least.
    for n in range(N):
        tl = dl[n - 1] if n > 0 else zero
        tu = du[n] if n < N - 1 else zero
        t_norm = abs(d[n]) + abs(tl) + abs(tu)
        pcq, q, dn, pn = pl[n] * c[n] * pr[n], pr[n], d[n], pl[n]
        o = n * ROW  # rows n - 1, n, n + 1 at o, o + ROW, o + 2 ROW
        for k in range(BLOCK):
            ar, ai, br, bi = st[SA * BLOCK + k], st[(SA + 1) * BLOCK + k], st[SB * BLOCK + k], st[(SB + 1) * BLOCK + k]
            er, ei = ar + br * pcq, ai + bi * pcq
            bpr, bpi = br * pn, bi * pn
            wr, wi = work[o + ROW + W * BLOCK + k], work[o + ROW + (W + 1) * BLOCK + k]
            e2 = er * er + ei * ei
            tr = work[o + ROW + RHS * BLOCK + k] - (bpr * wr - bpi * wi)
            ti = work[o + ROW + (RHS + 1) * BLOCK + k] - (bpr * wi + bpi * wr)
            inv = one / e2
            twr = dn * wr + tl * work[o + W * BLOCK + k] + tu * work[o + 2 * ROW + W * BLOCK + k]
            twi = dn * wi + tl * work[o + (W + 1) * BLOCK + k] + tu * work[o + 2 * ROW + (W + 1) * BLOCK + k]
            from_x_row = e2 * t_norm * t_norm >= (bpr * bpr + bpi * bpi) * q * q
            work[o + ROW + X * BLOCK + k] = (tr * er + ti * ei) * inv if from_x_row else twr / q
            work[o + ROW + (X + 1) * BLOCK + k] = (ti * er - tr * ei) * inv if from_x_row else twi / q


@numba.njit(inline="always")
def block_nodes(a, beta, dt, k0, kn, st, one, zero):
    """a_k and b_k = beta_k dt of the nodes k0 .. k0 + kn - 1 into `st`; the rest of the block
    padded with a = 1, b = 0. a, beta (K, 2)."""
    for k in range(BLOCK):
        inside = k < kn
        j = k0 + k if inside else k0
        st[SA * BLOCK + k] = a[j, 0] if inside else one
        st[(SA + 1) * BLOCK + k] = a[j, 1] if inside else zero
        st[SB * BLOCK + k] = beta[j, 0] * dt if inside else zero
        st[(SB + 1) * BLOCK + k] = beta[j, 1] * dt if inside else zero


@numba.njit(inline="always")
def fill_rhs(work, B, N, zero):
    """The right-hand side B (N,) real into a work array, for every node."""
    for n in range(N):
        o = n * ROW + ROW
        for k in range(BLOCK):
            work[o + RHS * BLOCK + k] = B[n]
            work[o + (RHS + 1) * BLOCK + k] = zero


@compile_loops
def resolvent_forward(a, beta, dt, dl, d, du, pl, pr, c, B, Ct, out):
    """out (C, H, K, 2) = y of the module docstring. a, beta (K, 2); dt (H,); dl, du (S, N-1);
    d, pl, pr, c (S, N), S = 1 or H; B (H, N); Ct (C, H, N)."""
    n_c, H, N = Ct.shape
    K = a.shape[0]
    S = d.shape[0]
    one, zero = d.dtype.type(1), d.dtype.type(0)
    for h in numba.prange(H):
        s = h if S > 1 else h - h  # (h - h, not 0: one integer type for both branches)
        work = np.zeros((N + 2) * ROW, dtype=d.dtype)
        st = np.empty(ST * BLOCK, dtype=d.dtype)
        acc = np.empty(2 * BLOCK, dtype=d.dtype)
        fill_rhs(work, B[h], N, zero)
        for k0 in range(0, K, BLOCK):
            kn = min(BLOCK, K - k0)
            block_nodes(a, beta, dt[h], k0, kn, st, one, zero)
            shifted_solve(work, st, dl[s], d[s], du[s], pl[s], pr[s], c[s], one, zero)
            for j in range(n_c):
                for k in range(2 * BLOCK):
                    acc[k] = zero
                for n in range(N):
                    w, o = Ct[j, h, n], n * ROW + ROW
                    for k in range(BLOCK):
                        acc[k] += w * work[o + X * BLOCK + k]
                        acc[BLOCK + k] += w * work[o + (X + 1) * BLOCK + k]
                for k in range(kn):
                    out[j, h, k0 + k, 0] = acc[k]
                    out[j, h, k0 + k, 1] = acc[BLOCK + k]


@compile_sums
def resolvent_backward(a, beta, dt, dl, d, du, pl, pr, c, B, Ct, g, g_b, g_par, g_Ct):
    """Gradients of Re sum conj(g) y: g (C, H, K, 2) upstream; out g_b (H, K, 2) (w.r.t. b_hk,
    conjugated as torch expects), g_par (7, H, N) float64 per feature for (dl, d, du, pl, pr, c, B)
    (dl, du in the first N-1 entries), g_Ct (C, H, N) float64."""
    n_c, H, N = Ct.shape
    K = a.shape[0]
    S = d.shape[0]
    one, zero = d.dtype.type(1), d.dtype.type(0)
    for h in numba.prange(H):
        s = h if S > 1 else h - h
        dls, ds, dus, pls, prs, cs = dl[s], d[s], du[s], pl[s], pr[s], c[s]
        fx = np.zeros((N + 2) * ROW, dtype=d.dtype)  # the system itself: x, w
        fl = np.zeros((N + 2) * ROW, dtype=d.dtype)  # the transposed one: lambda, mu
        st = np.empty(ST * BLOCK, dtype=d.dtype)
        gblk = np.empty(n_c * 2 * BLOCK, dtype=d.dtype)  # the block's upstream gradient, 0 past K
        gb = np.empty(2 * BLOCK, dtype=d.dtype)
        fill_rhs(fx, B[h], N, zero)
        for k0 in range(0, K, BLOCK):
            kn = min(BLOCK, K - k0)
            block_nodes(a, beta, dt[h], k0, kn, st, one, zero)
            shifted_solve(fx, st, dls, ds, dus, pls, prs, cs, one, zero)
            for j in range(n_c):
                for k in range(BLOCK):
                    gblk[(2 * j) * BLOCK + k] = g[j, h, k0 + k, 0] if k < kn else zero
                    gblk[(2 * j + 1) * BLOCK + k] = g[j, h, k0 + k, 1] if k < kn else zero
            # psi = sum_c conj(g_c) Ct_c; (a I + b M^T) lambda = psi: P and Q swapped, T transposed.
            for n in range(N):
                ln = fl[n * ROW + ROW:n * ROW + 2 * ROW]
                for k in range(BLOCK):
                    ln[RHS * BLOCK + k] = zero
                    ln[(RHS + 1) * BLOCK + k] = zero
                for j in range(n_c):
                    w = Ct[j, h, n]
                    for k in range(BLOCK):
                        ln[RHS * BLOCK + k] += w * gblk[(2 * j) * BLOCK + k]
                        ln[(RHS + 1) * BLOCK + k] -= w * gblk[(2 * j + 1) * BLOCK + k]
            shifted_solve(fl, st, dus, ds, dls, prs, pls, cs, one, zero)
            for j in range(n_c):
                for n in range(N):
                    xn = fx[n * ROW + ROW:n * ROW + 2 * ROW]
                    acc = zero
                    for k in range(BLOCK):
                        acc += gblk[(2 * j) * BLOCK + k] * xn[X * BLOCK + k] + gblk[(2 * j + 1) * BLOCK + k] * xn[
                            (X + 1) * BLOCK + k]
                    g_Ct[j, h, n] += acc
            for k in range(2 * BLOCK):
                gb[k] = zero
            for n in range(N):
                cq, cp, pq, p_n = cs[n] * prs[n], cs[n] * pls[n], pls[n] * prs[n], pls[n]
                # Row N + 1 is zeros: the off-diagonal sums of the last row get nothing.
                o = n * ROW + ROW
                xn, x1, ln, l1 = fx[o:o + ROW], fx[o + ROW:o + 2 * ROW], fl[o:o + ROW], fl[o + ROW:o + 2 * ROW]
                s_B, s_pl, s_pr, s_c, s_d, s_dl, s_du = zero, zero, zero, zero, zero, zero, zero
                for k in range(BLOCK):
                    br, bi = st[SB * BLOCK + k], st[(SB + 1) * BLOCK + k]
                    xr, xi = xn[X * BLOCK + k], xn[(X + 1) * BLOCK + k]
                    wr, wi = xn[W * BLOCK + k], xn[(W + 1) * BLOCK + k]
                    lr, li = ln[X * BLOCK + k], ln[(X + 1) * BLOCK + k]
                    mr, mi = ln[W * BLOCK + k], ln[(W + 1) * BLOCK + k]
                    # inner = (Dg + T^{-1}) Q x = c q x + w; b lambda; b mu.
                    inr, ini = cq * xr + wr, cq * xi + wi
                    blr, bli = br * lr - bi * li, br * li + bi * lr
                    bmr, bmi = br * mr - bi * mi, br * mi + bi * mr
                    # d Phi / d b_hk = -sum_n lambda_n p_n inner_n; torch wants its conjugate.
                    gb[k] -= p_n * (lr * inr - li * ini)
                    gb[BLOCK + k] += p_n * (lr * ini + li * inr)
                    s_B += lr
                    s_pl -= blr * inr - bli * ini
                    s_pr -= (cp * blr + bmr) * xr - (cp * bli + bmi) * xi
                    s_c -= pq * (blr * xr - bli * xi)
                    s_d += bmr * wr - bmi * wi
                    # T's off-diagonals: b mu_n w_{n+1} (du_n) and b mu_{n+1} w_n (dl_n).
                    w2r, w2i = x1[W * BLOCK + k], x1[(W + 1) * BLOCK + k]
                    m2r, m2i = l1[W * BLOCK + k], l1[(W + 1) * BLOCK + k]
                    s_du += bmr * w2r - bmi * w2i
                    s_dl += (br * m2r - bi * m2i) * wr - (br * m2i + bi * m2r) * wi
                g_par[1, h, n] += s_d
                g_par[3, h, n] += s_pl
                g_par[4, h, n] += s_pr
                g_par[5, h, n] += s_c
                g_par[6, h, n] += s_B
                if n < N - 1:
                    g_par[0, h, n] += s_dl
                    g_par[2, h, n] += s_du
            for k in range(kn):
                g_b[h, k0 + k, 0] = gb[k]
                g_b[h, k0 + k, 1] = gb[BLOCK + k]


def _pairs(z: Tensor, dtype: torch.dtype) -> np.ndarray:
    """(K,) complex -> (K, 2) real array of `dtype`."""
    return torch.view_as_real(z.resolve_conj()).to(dtype).contiguous().numpy()


class ResolventNumba(torch.autograd.Function):
    """`kernels.resolvent._Resolvent` with compiled loops; inputs a, beta (K,) complex (no
    gradient), dt (H,), dl, du (S, N-1), d, pl, pr, c (S, N), B (H, N), Ct (C, H, N), all real.
    Output y (C, H, K) complex."""

    @staticmethod
    def forward(ctx, a: Tensor, beta: Tensor, dt: Tensor, dl: Tensor, d: Tensor, du: Tensor, pl: Tensor,
                pr: Tensor, c: Tensor, B: Tensor, Ct: Tensor) -> Tensor:
        match_threads()
        real = [loop_input(t) for t in (dt, dl, d, du, pl, pr, c, B, Ct)]
        dtype = real[0].dtype
        nodes = (_pairs(a, dtype), _pairs(beta, dtype))
        n_c, H, _ = Ct.shape
        out = torch.empty(n_c, H, a.shape[0], 2, dtype=dtype)
        resolvent_forward(*nodes, *(t.numpy() for t in real), out.numpy())
        ctx.save_for_backward(*real)
        ctx.nodes, ctx.out_dtype = nodes, Ct.dtype
        return torch.view_as_complex(out).to(torch.complex128 if Ct.dtype == torch.float64 else torch.complex64)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, ...]:
        first_order_only()
        match_threads()
        dt, dl, d, du, pl, pr, c, B, Ct = ctx.saved_tensors
        n_c, H, N = Ct.shape
        K = g.shape[-1]
        g_real = torch.view_as_real(g.resolve_conj()).to(dt.dtype).contiguous()
        g_b = torch.empty(H, K, 2, dtype=dt.dtype)
        g_par = torch.zeros(7, H, N, dtype=torch.float64)
        g_Ct = torch.zeros(n_c, H, N, dtype=torch.float64)
        resolvent_backward(*ctx.nodes, *(t.numpy() for t in (dt, dl, d, du, pl, pr, c, B, Ct)), g_real.numpy(),
                           g_b.numpy(), g_par.numpy(), g_Ct.numpy())
        # d Phi / d dt_h = sum_k beta_k d Phi / d b_hk; conj(g_b) is d Phi / d b.
        g_b = torch.view_as_complex(g_b)
        beta = torch.view_as_complex(torch.from_numpy(ctx.nodes[1]))
        g_dt = (g_b.conj() * beta).real.sum(-1)

        def fit(grad: Tensor, like: Tensor) -> Tensor:
            grad = grad[:, : like.shape[-1]].to(ctx.out_dtype)
            return grad.sum(0, keepdim=True) if like.shape[0] == 1 and H > 1 else grad

        return (None, None, g_dt.to(ctx.out_dtype), fit(g_par[0], dl), fit(g_par[1], d), fit(g_par[2], du),
                fit(g_par[3], pl), fit(g_par[4], pr), fit(g_par[5], c), g_par[6].to(ctx.out_dtype),
                g_Ct.to(ctx.out_dtype))
