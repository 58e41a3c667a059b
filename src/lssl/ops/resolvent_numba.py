"""Compiled (numba) shifted TriD solves for LSSL's generating-function kernel on CPU tensors: the
function of `kernels.resolvent._Resolvent` as fused loops,

    y[c, h, k] = sum_n Ct[c, h, n] x[n],   (a_k I + b_hk M_h) x = B_h,   b_hk = beta_k dt_h,

with M = P (Dg + T^{-1}) Q solved through the tridiagonal J = diag(e) T + diag(b p q) by
Gaussian elimination with partial pivoting (`kernels.resolvent` derives it). Per feature h and
block of `BLOCK` nodes, the elimination runs down the N rows with every node of the block in
the innermost loop (contiguous, no branches: the pivot choice is a select), so LLVM vectorises
over nodes and the block's (N, BLOCK) pivot rows stay in L1/L2 instead of going through memory
once per operation as in the torch version.

Backward: per block, x and w are recomputed, the transposed system gives lambda and
mu = T^{-T} P lambda, and every parameter's gradient is a sum over nodes of their products
(`kernels.resolvent` lists them), added per feature in float64.

Compiled for float32 and float64 (the dtype of the parameters); numba is optional and this
module is imported only for backend='numba' (`ops.backend`).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from ._numba import compile_loops, first_order_only, loop_input, match_threads

Tensor = torch.Tensor

# Nodes per block: the elimination's eight (N, BLOCK) pivot arrays stay within L2 at N = 256.
BLOCK = 16


@numba.njit(inline="always")
def shifted_solve(kn, ar, ai, br, bi, dl, d, du, pl, pr, c, rr, ri, scratch, xr, xi, wr, wi, one):
    """x, w (N, BLOCK) re/im of (a I + b M) x = r, w = T^{-1} Q x, for one feature and the kn
    nodes of a block: a (ar, ai), b (br, bi) (BLOCK,); the TriD rows dl, du (N-1,), d, pl, pr,
    c (N,); r (rr, ri) (N, BLOCK). scratch (8, N, BLOCK). (`one` in the loops' dtype: a literal
    would widen float32 arithmetic to float64.)"""
    N = d.shape[0]
    pdr, pdi, pur, pui = scratch[0], scratch[1], scratch[2], scratch[3]
    p2r, p2i, prr, pri = scratch[4], scratch[5], scratch[6], scratch[7]
    # The current row: its entries in columns i, i+1 (cd, cu) and its right-hand side (cr).
    cdr, cdi = scratch[0, N - 1], scratch[1, N - 1]
    cur, cui = scratch[2, N - 1], scratch[3, N - 1]
    crr, cri = scratch[4, N - 1], scratch[5, N - 1]
    for k in range(kn):
        er, ei = ar[k] + br[k] * (pl[0] * c[0] * pr[0]), ai[k] + bi[k] * (pl[0] * c[0] * pr[0])
        cdr[k] = er * d[0] + br[k] * (pl[0] * pr[0])
        cdi[k] = ei * d[0] + bi[k] * (pl[0] * pr[0])
        cur[k] = er * du[0] if N > 1 else er * 0
        cui[k] = ei * du[0] if N > 1 else ei * 0
        crr[k] = pr[0] * rr[0, k]
        cri[k] = pr[0] * ri[0, k]
    for i in range(N - 1):
        n = i + 1
        pcq, pq = pl[n] * c[n] * pr[n], pl[n] * pr[n]
        last = n == N - 1
        dun = du[n] if not last else d[n] * 0
        for k in range(kn):
            er, ei = ar[k] + br[k] * pcq, ai[k] + bi[k] * pcq
            lor, loi = er * dl[i], ei * dl[i]  # row n, column i
            dnr, dni = er * d[n] + br[k] * pq, ei * d[n] + bi[k] * pq
            unr, uni = er * dun, ei * dun
            rnr, rni = pr[n] * rr[n, k], pr[n] * ri[n, k]
            swap = lor * lor + loi * loi > cdr[k] * cdr[k] + cdi[k] * cdi[k]
            # Pivot row: the larger entry in column i. Other row: what is eliminated.
            vdr, vdi = (lor, loi) if swap else (cdr[k], cdi[k])
            vur, vui = (dnr, dni) if swap else (cur[k], cui[k])
            v2r, v2i = (unr, uni) if swap else (er * 0, ei * 0)
            vrr, vri = (rnr, rni) if swap else (crr[k], cri[k])
            osr, osi = (cdr[k], cdi[k]) if swap else (lor, loi)
            odr, odi = (cur[k], cui[k]) if swap else (dnr, dni)
            our, oui = (er * 0, ei * 0) if swap else (unr, uni)
            orr, ori = (crr[k], cri[k]) if swap else (rnr, rni)
            inv = one / (vdr * vdr + vdi * vdi)
            mr, mi = (osr * vdr + osi * vdi) * inv, (osi * vdr - osr * vdi) * inv
            pdr[i, k], pdi[i, k], pur[i, k], pui[i, k] = vdr, vdi, vur, vui
            p2r[i, k], p2i[i, k], prr[i, k], pri[i, k] = v2r, v2i, vrr, vri
            cdr[k], cdi[k] = odr - (mr * vur - mi * vui), odi - (mr * vui + mi * vur)
            cur[k], cui[k] = our - (mr * v2r - mi * v2i), oui - (mr * v2i + mi * v2r)
            crr[k], cri[k] = orr - (mr * vrr - mi * vri), ori - (mr * vri + mi * vrr)
    for k in range(kn):
        inv = one / (cdr[k] * cdr[k] + cdi[k] * cdi[k])
        wr[N - 1, k] = (crr[k] * cdr[k] + cri[k] * cdi[k]) * inv
        wi[N - 1, k] = (cri[k] * cdr[k] - crr[k] * cdi[k]) * inv
    for i in range(N - 2, -1, -1):
        for k in range(kn):
            tr = prr[i, k] - (pur[i, k] * wr[i + 1, k] - pui[i, k] * wi[i + 1, k])
            ti = pri[i, k] - (pur[i, k] * wi[i + 1, k] + pui[i, k] * wr[i + 1, k])
            if i + 2 < N:
                tr -= p2r[i, k] * wr[i + 2, k] - p2i[i, k] * wi[i + 2, k]
                ti -= p2r[i, k] * wi[i + 2, k] + p2i[i, k] * wr[i + 2, k]
            inv = one / (pdr[i, k] * pdr[i, k] + pdi[i, k] * pdi[i, k])
            wr[i, k] = (tr * pdr[i, k] + ti * pdi[i, k]) * inv
            wi[i, k] = (ti * pdr[i, k] - tr * pdi[i, k]) * inv
    # x_n from whichever of its two rows amplifies an error in w the least.
    for n in range(N):
        t_norm = abs(d[n]) + (abs(dl[n - 1]) if n > 0 else d[n] * 0) + (abs(du[n]) if n < N - 1 else d[n] * 0)
        pcq = pl[n] * c[n] * pr[n]
        for k in range(kn):
            er, ei = ar[k] + br[k] * pcq, ai[k] + bi[k] * pcq
            bpr, bpi = br[k] * pl[n], bi[k] * pl[n]
            e2 = er * er + ei * ei
            if e2 * t_norm * t_norm >= (bpr * bpr + bpi * bpi) * pr[n] * pr[n]:
                tr = rr[n, k] - (bpr * wr[n, k] - bpi * wi[n, k])
                ti = ri[n, k] - (bpr * wi[n, k] + bpi * wr[n, k])
                inv = one / e2
                xr[n, k] = (tr * er + ti * ei) * inv
                xi[n, k] = (ti * er - tr * ei) * inv
            else:
                tr, ti = d[n] * wr[n, k], d[n] * wi[n, k]
                if n > 0:
                    tr += dl[n - 1] * wr[n - 1, k]
                    ti += dl[n - 1] * wi[n - 1, k]
                if n < N - 1:
                    tr += du[n] * wr[n + 1, k]
                    ti += du[n] * wi[n + 1, k]
                xr[n, k] = tr / pr[n]
                xi[n, k] = ti / pr[n]


@numba.njit(inline="always")
def block_nodes(a, beta, dt, k0, kn, ar, ai, br, bi):
    """a_k and b_k = beta_k dt of the block's nodes k0 .. k0 + kn - 1; a, beta (K, 2)."""
    for k in range(kn):
        ar[k], ai[k] = a[k0 + k, 0], a[k0 + k, 1]
        br[k], bi[k] = beta[k0 + k, 0] * dt, beta[k0 + k, 1] * dt


@compile_loops
def resolvent_forward(a, beta, dt, dl, d, du, pl, pr, c, B, Ct, out):
    """out (C, H, K, 2) = y of the module docstring. a, beta (K, 2); dt (H,); dl, du (S, N-1);
    d, pl, pr, c (S, N), S = 1 or H; B (H, N); Ct (C, H, N)."""
    n_c, H, N = Ct.shape
    K = a.shape[0]
    S = d.shape[0]
    one = d.dtype.type(1)
    for h in numba.prange(H):
        s = h if S > 1 else h - h  # (h - h, not 0: one integer type for both branches)
        scratch = np.empty((8, N, BLOCK), dtype=d.dtype)
        rr, ri = np.empty((N, BLOCK), dtype=d.dtype), np.zeros((N, BLOCK), dtype=d.dtype)
        xr, xi = np.empty((N, BLOCK), dtype=d.dtype), np.empty((N, BLOCK), dtype=d.dtype)
        wr, wi = np.empty((N, BLOCK), dtype=d.dtype), np.empty((N, BLOCK), dtype=d.dtype)
        nodes = np.empty((4, BLOCK), dtype=d.dtype)
        ar, ai, br, bi = nodes[0], nodes[1], nodes[2], nodes[3]
        for n in range(N):
            rr[n, :] = B[h, n]
        for k0 in range(0, K, BLOCK):
            kn = min(BLOCK, K - k0)
            block_nodes(a, beta, dt[h], k0, kn, ar, ai, br, bi)
            shifted_solve(kn, ar, ai, br, bi, dl[s], d[s], du[s], pl[s], pr[s], c[s], rr, ri, scratch, xr, xi, wr,
                          wi, one)
            for j in range(n_c):
                for k in range(kn):
                    out[j, h, k0 + k, 0] = 0
                    out[j, h, k0 + k, 1] = 0
                for n in range(N):
                    w = Ct[j, h, n]
                    for k in range(kn):
                        out[j, h, k0 + k, 0] += w * xr[n, k]
                        out[j, h, k0 + k, 1] += w * xi[n, k]


@compile_loops
def resolvent_backward(a, beta, dt, dl, d, du, pl, pr, c, B, Ct, g, g_b, g_par, g_Ct):
    """Gradients of Re sum conj(g) y: g (C, H, K, 2) upstream; out g_b (H, K, 2) (w.r.t. b_hk,
    conjugated as torch expects), g_par (7, H, N) float64 per feature for (dl, d, du, pl, pr, c, B)
    (dl, du in the first N-1 entries), g_Ct (C, H, N) float64."""
    n_c, H, N = Ct.shape
    K = a.shape[0]
    S = d.shape[0]
    one = d.dtype.type(1)
    for h in numba.prange(H):
        s = h if S > 1 else h - h  # (h - h, not 0: one integer type for both branches)
        dls, ds, dus, pls, prs, cs = dl[s], d[s], du[s], pl[s], pr[s], c[s]
        scratch = np.empty((8, N, BLOCK), dtype=d.dtype)
        rr, ri = np.empty((N, BLOCK), dtype=d.dtype), np.zeros((N, BLOCK), dtype=d.dtype)
        qr, qi = np.empty((N, BLOCK), dtype=d.dtype), np.empty((N, BLOCK), dtype=d.dtype)
        xr, xi = np.empty((N, BLOCK), dtype=d.dtype), np.empty((N, BLOCK), dtype=d.dtype)
        wr, wi = np.empty((N, BLOCK), dtype=d.dtype), np.empty((N, BLOCK), dtype=d.dtype)
        lr, li = np.empty((N, BLOCK), dtype=d.dtype), np.empty((N, BLOCK), dtype=d.dtype)
        mr, mi = np.empty((N, BLOCK), dtype=d.dtype), np.empty((N, BLOCK), dtype=d.dtype)
        nodes = np.empty((4, BLOCK), dtype=d.dtype)
        ar, ai, br, bi = nodes[0], nodes[1], nodes[2], nodes[3]
        for n in range(N):
            rr[n, :] = B[h, n]
        for k0 in range(0, K, BLOCK):
            kn = min(BLOCK, K - k0)
            block_nodes(a, beta, dt[h], k0, kn, ar, ai, br, bi)
            shifted_solve(kn, ar, ai, br, bi, dls, ds, dus, pls, prs, cs, rr, ri, scratch, xr, xi, wr, wi, one)
            # psi = sum_c conj(g_c) Ct_c, then (a I + b M^T) lambda = psi: P and Q swapped, T transposed.
            for n in range(N):
                for k in range(kn):
                    qr[n, k] = 0
                    qi[n, k] = 0
                for j in range(n_c):
                    w = Ct[j, h, n]
                    for k in range(kn):
                        qr[n, k] += w * g[j, h, k0 + k, 0]
                        qi[n, k] -= w * g[j, h, k0 + k, 1]
            shifted_solve(kn, ar, ai, br, bi, dus, ds, dls, prs, pls, cs, qr, qi, scratch, lr, li, mr, mi, one)
            for j in range(n_c):
                for n in range(N):
                    acc = 0.0
                    for k in range(kn):
                        acc += g[j, h, k0 + k, 0] * xr[n, k] + g[j, h, k0 + k, 1] * xi[n, k]
                    g_Ct[j, h, n] += acc
            for k in range(kn):
                g_b[h, k0 + k, 0] = 0
                g_b[h, k0 + k, 1] = 0
            for n in range(N):
                cq, cp, pq = cs[n] * prs[n], cs[n] * pls[n], pls[n] * prs[n]
                s_B, s_pl, s_pr, s_c, s_d, s_dl, s_du = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
                for k in range(kn):
                    # inner = (Dg + T^{-1}) Q x = c q x + w; b lambda, b mu.
                    inr, ini = cq * xr[n, k] + wr[n, k], cq * xi[n, k] + wi[n, k]
                    blr, bli = br[k] * lr[n, k] - bi[k] * li[n, k], br[k] * li[n, k] + bi[k] * lr[n, k]
                    bmr, bmi = br[k] * mr[n, k] - bi[k] * mi[n, k], br[k] * mi[n, k] + bi[k] * mr[n, k]
                    # d Phi / d b_hk = -sum_n lambda_n p_n inner_n; torch wants its conjugate.
                    lpr, lpi = lr[n, k] * pls[n], li[n, k] * pls[n]
                    g_b[h, k0 + k, 0] -= lpr * inr - lpi * ini
                    g_b[h, k0 + k, 1] += lpr * ini + lpi * inr
                    s_B += lr[n, k]
                    s_pl -= blr * inr - bli * ini
                    tr, ti = cp * blr + bmr, cp * bli + bmi
                    s_pr -= tr * xr[n, k] - ti * xi[n, k]
                    s_c -= pq * (blr * xr[n, k] - bli * xi[n, k])
                    s_d += bmr * wr[n, k] - bmi * wi[n, k]
                    if n < N - 1:
                        s_du += bmr * wr[n + 1, k] - bmi * wi[n + 1, k]
                        s_dl += (br[k] * mr[n + 1, k] - bi[k] * mi[n + 1, k]) * wr[n, k] - (
                            br[k] * mi[n + 1, k] + bi[k] * mr[n + 1, k]) * wi[n, k]
                g_par[0, h, n] += s_dl
                g_par[1, h, n] += s_d
                g_par[2, h, n] += s_du
                g_par[3, h, n] += s_pl
                g_par[4, h, n] += s_pr
                g_par[5, h, n] += s_c
                g_par[6, h, n] += s_B


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
