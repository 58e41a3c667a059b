"""Liquid-S4 correlation terms (Hasani et al., ICLR 2023; spec C): the input-correlation
("liquid") terms that Liquid-S4 adds to an S4 (DPLR) or S4D (diagonal) kernel.

The model. The linearised liquid time-constant SSM x' = (A + B u 1^T) x + B u, discretised as

    x_k = A_bar x_{k-1} + B_bar u_k (1 + 1^T x_{k-1}),   y_k = Re(C x_k) + D u_k,

(spec C.1-C.3; 1^T x sums the full conjugate-symmetric state in the kernel's own (diagonal)
basis) unrolls into the S4 convolution K * u, K_j = C A_bar^j B_bar, plus, for every index set
S = {i_1 < ... < i_p}, p >= 2, a term C A_bar^{k-i_p} B_bar prod_j (1^T A_bar^{i_j-i_{j-1}-1} B_bar)
times u_{i_1} ... u_{i_p}. `reference.liquid_recurrence` runs this recurrence and
`reference.liquid_enumeration` sums those subsets one by one; the two kernels of the paper
simplify the weights, with s = 1^T B_bar (H,) per feature:

* KB ("kernel times B"): the inner gaps use the identity, so the order-p weight is
  K_{k-i_p} s^{p-1}. All orders then share K: y = K * w + D u with the SSM input
  w_i = u_i (1 + sum_{p=2..P} s^{p-1} e_{p-1}(u_0 .. u_{i-1})), e_q the elementary symmetric
  polynomial, so KB is one FFT convolution of a modified input (`kb_signal`).
* PB ("powers of B", the paper's recommended kernel): A_bar = I in all correlation terms, so the
  order-p weight is the constant c_p = C B_bar s^{p-1} = K_0 s^{p-1} over a causal window of the
  last W_p samples: y = K * u + K_0 z + D u with z_k = sum_{p=2..P} s^{p-1} e_p(u_{k-W_p+1} .. u_k)
  (`pb_signal`). The default W_p is the smallest n with binom(n, p) >= l (l the sequence length
  the layer was set up for), the official code's window rule.

Both are causal and exact for their definitions, carry gradients to every SSM parameter (through
K, K_0 and s), honour `rate` (K and s at step dt * rate) and have a recurrent form: KB keeps the
running e_1 .. e_{P-1} of the past, PB the last max(W_p) - 1 inputs (the `memory`).

Elementary symmetric polynomials without a loop over time. Both signals come from power sums
p_j = sum x_i^j over a prefix or a window and Newton's identities
q e_q = sum_{j=1..q} (-1)^{j-1} e_{q-j} p_j (`newton`), O(P^2) elementwise work per sample. A
window's sums add the window's own samples only: prefix and suffix sums restart at every block
of W samples, and the window ending at k is the prefix of k's block up to k plus the suffix of
the block before (`block_sums`, `window_sums`). Differences of prefix sums over the whole
sequence, S_k - S_{k-W}, would carry the rounding of every earlier sample: an outlier x leaves
eps x^p in the order-p sums of every later window, which Newton's identities then pass on to e_p
(measured: a degree-6 layer's forward pass 1.5e-2 (relative) away from its recurrent steps after
an outlier of 1e3 had left every window). All of it runs in float64 (`WindowPolynomial`,
`PrefixPolynomial`, returning the input's dtype), because Newton's identities cancel: an outlier
x in a window contributes x^p to every term of e_p's formula and nothing like it to e_p itself,
so float32 power sums lose about log10(x^2 / e_{p-2}) digits (measured: 3.5e-5 relative error at
p = 3 for Student-t inputs at L = 16000). In float64 the error of a window's e_p is that of its
own power sums through Newton's identities, of the order of eps (sum over the window of
|x_i|)^p: an outlier costs digits in the windows that hold it and nowhere else. The tests hold
the float32 outputs to float64 sequential recurrences at L = 16000 for centred, positive, offset
and heavy-tailed inputs, and every window without an outlier of 1e3 or 1e4 (values and
gradients, p <= 6) to exact arithmetic. The gradient is analytic:
d e_q(S) / d x_i = e_{q-1}(S without i) = sum_j (-x_i)^{j-1} e_{q-j}(S) turns the backward into
a few adjoint (reverse) window or prefix sums combined by Horner's rule (`horner_gradient`); the
reverse windows are split at the same blocks (`reverse_window_sums`). Both directions run in
blocks of rows (`row_block`, 4 MB of float64 each on the CPU), so the float64 temporaries stay
in cache, and the backward recomputes a block's e's from x instead of keeping them: only the
input is saved. (A sliding-window recurrence e_p(k) = e_p(k-1) + ... would need a sequential
loop, and a log-depth scan of truncated polynomial products costs several times more passes.)

The published code (`liquid_compat="official"`, spec C.4) computes something else: it is
non-causal (correlations of the last n_p samples, time-reversed), uses a B_bar of the diagonal
part of A only, frozen initial parameters, an exponent 2^{p-1} - 1 on s for PB, and a KB
product of two mismatched frequency grids. `official_pb_term` and `official_kb_term` reproduce
it for comparison with published numbers; they are not recommended.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .._checks import check_choice, check_length, tracing
from ..ops.backend import check_backend, check_cpu, numba_module
from ..ops.fftconv import fftconv
from .base import get_int, register, register_int, set_int

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------------
# Elementary symmetric polynomials of prefixes and windows


def newton(power_sums: list[Tensor]) -> list[Tensor | float]:
    """Elementary symmetric polynomials from power sums by Newton's identities,
    q e_q = sum_{j=1..q} (-1)^{j-1} e_{q-j} p_j.

    Args:
        power_sums: [p_1, ..., p_P], tensors of one shape.
    Returns:
        [e_0, ..., e_P], e_0 = 1.0 (a number: no tensor of ones is built or multiplied). Each
        e_q is built in place on a fresh product and finished before anything reads it, so
        autograd can differentiate through it.
    """
    e: list[Tensor | float] = [1.0, power_sums[0]]
    for q in range(2, len(power_sums) + 1):
        acc = e[q - 1] * power_sums[0]
        for j in range(2, q):
            acc.addcmul_(e[q - j], power_sums[j - 1], value=(-1) ** (j - 1))
        acc.add_(power_sums[q - 1], alpha=(-1) ** (q - 1))
        e.append(acc.div_(q))
    return e


def powers(x: Tensor, degree: int) -> list[Tensor]:
    """[x, x^2, ..., x^degree] by repeated multiplication."""
    out = [x]
    for _ in range(degree - 1):
        out.append(out[-1] * x)
    return out


def block_sums(x: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """Prefix and suffix sums restarted at every block of W samples (zeros fill the last block):
    T[b, r] = sum_{j <= r} x_{bW+j} and U[b, r] = sum_{j >= r} x_{bW+j}, each accumulated from
    the block's own samples. A window of W samples is the suffix of one block and the prefix of
    the next (`window_sums`, `reverse_window_sums`).

    Args:
        x: (..., n). window: W >= 1.
    Returns:
        T, U (..., nb, W), nb = ceil(n / W).
    """
    n = x.shape[-1]
    nb = -(-n // window)
    blocks = nn.functional.pad(x, (0, nb * window - n)).unflatten(-1, (nb, window))
    return blocks.cumsum(-1), blocks.flip(-1).cumsum(-1).flip(-1)


def window_sums(x: Tensor, window: int) -> Tensor:
    """Sums over the causal window of the last W samples, y_k = sum_{k-W < i <= k} x_i (zeros
    before the start): for k = bW + r, the prefix T[b, r] of k's block plus the suffix
    U[b-1, r+1] of the block before (`block_sums`), so y_k adds the window's own samples only.

    Args:
        x: (..., n). window: W >= 1.
    Returns:
        (..., n).
    """
    T, U = block_sums(x, window)
    T[..., 1:, : window - 1] += U[..., :-1, 1:]
    return T.flatten(-2)[..., : x.shape[-1]]


def reverse_window_sums(G: Tensor, window: int) -> Tensor:
    """The adjoint of the causal window sums applied to G: R_i = sum_{k=i..min(i+W-1, n-1)} G_k,
    for i = bW + r the suffix U[b, r] of i's block plus the prefix T[b+1, r-1] of the next
    (`block_sums`), the window's own samples only.

    Args:
        G: (..., n). window: W >= 1.
    Returns:
        (..., n).
    """
    T, U = block_sums(G, window)
    U[..., :-1, 1:] += T[..., 1:, : window - 1]
    return U.flatten(-2)[..., : G.shape[-1]]


def reverse_exclusive_sums(G: Tensor) -> Tensor:
    """R_i = sum_{k > i} G_k. G: (..., n) -> (..., n)."""
    C = G.cumsum(-1)
    return C[..., -1:] - C


def combine(memory: list[Tensor], e: list[Tensor]) -> list[Tensor]:
    """e_q of the concatenation of two sequences from the e's of each:
    e_q(a ++ b) = sum_{i=0..q} e_i(a) e_{q-i}(b), q = 0 .. len(e) - 1.

    Args:
        memory: [e_1(a), ..., e_Q(a)] (e_0 = 1 implied), broadcastable against e.
        e: [e_0(b), ..., e_Q(b)].
    """
    m = [None, *memory]
    return [e[q] + sum(m[i] * e[q - i] for i in range(1, q + 1)) for q in range(len(e))]


def horner_gradient(x: Tensor, r: list[Tensor]) -> Tensor:
    """sum_{j=1..Q} (-x)^{j-1} r_j, by Horner's rule; r = [r_1, ..., r_Q].

    The gradient of an elementary symmetric polynomial: d e_q(S) / d x_i = e_{q-1}(S without i)
    = sum_{j=1..q} (-x_i)^{j-1} e_{q-j}(S), so gradients of sums of g_k e_q(S_k) over index sets
    S_k become such polynomials in x_i with coefficients r_j that are adjoint sums of g e_{q-j}.
    """
    acc = r[-1]
    for r_j in reversed(r[:-1]):
        acc = torch.addcmul(r_j, x, acc, value=-1)
    return acc


def row_blocks(count: int, length: int, device: torch.device) -> list[slice]:
    """The slices of `count` rows in blocks of `row_block` rows; a single slice while tracing, so
    that a traced graph has no loop over the (symbolic) number of rows."""
    if tracing():
        return [slice(None)]
    step = row_block(length, device)
    return [slice(i, i + step) for i in range(0, count, step)]


def row_block(length: int, device: torch.device) -> int:
    """Rows of length `length` per float64 block: 2^19 numbers (4 MB) on the CPU, 2^25 (256 MB)
    elsewhere. On the CPU the signals below run block by block so that every float64 temporary
    stays in cache and below glibc's mmap threshold; a whole (B, H, L) float64 temporary (65 MB
    at B = 4, H = 128, L = 16000) is page-faulted in afresh by every operation, which doubled
    their cost. A GPU has no such cost but pays a launch per operation and block, hence its
    larger blocks."""
    numbers = 1 << 19 if device.type == "cpu" else 1 << 25
    return max(1, numbers // max(length, 1))


def per_row(t: Tensor, batch: int) -> Tensor:
    """Coefficients (K, B or 1, H) -> (K, B H), one column per row of x.reshape(B H, n)."""
    return t.expand(t.shape[0], batch, t.shape[-1]).reshape(t.shape[0], -1)


def window_groups(windows: tuple[int, ...]) -> list[tuple[int, list[int]]]:
    """The orders p = 2, 3, ... grouped by their window W_p: [(W, [p, ...]), ...]."""
    groups: dict[int, list[int]] = {}
    for p, W in enumerate(windows, start=2):
        groups.setdefault(W, []).append(p)
    return list(groups.items())


def window_polynomials(x64: Tensor, groups: list[tuple[int, list[int]]]) -> list[list[Tensor | float]]:
    """For every window group, e_0 .. e_max(orders) of the causal windows of x64 (R, n)."""
    x_powers = powers(x64, max(max(orders) for _, orders in groups))
    return [newton([window_sums(x_j, W) for x_j in x_powers[: max(orders)]]) for W, orders in groups]


class WindowPolynomial(torch.autograd.Function):
    """z_k = sum_{p=2..P} a_p e_p(x_{k-W_p+1}, ..., x_k) (module docstring), computed in float64:
    power sums over each window (`window_sums`) and Newton's identities, one group per distinct
    window, in blocks of rows (`row_block`); the backward recomputes a block's e's and applies
    the analytic gradient (`horner_gradient` with adjoint window sums), so only x is kept.

    Args (of `apply`):
        x: (B, H, n). a: (P-1, H) the coefficients a_2 .. a_P. windows: (W_2, ..., W_P).
    Returns:
        z (B, H, n), of x's dtype.
    """

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, windows: tuple[int, ...]) -> Tensor:
        n = x.shape[-1]
        groups = window_groups(windows)
        rows = x.reshape(-1, n)
        coeff = per_row(a[:, None], x.shape[0])  # (P-1, R)
        z = torch.empty_like(rows)
        for block in row_blocks(rows.shape[0], n, x.device):
            a64 = coeff[:, block, None].double()
            out = None
            for (W, orders), e in zip(groups, window_polynomials(rows[block].double(), groups)):
                for p in orders:
                    out = a64[p - 2] * e[p] if out is None else out.addcmul_(a64[p - 2], e[p])
            z[block] = out
        ctx.groups = groups
        ctx.save_for_backward(x, a)
        return z.view_as(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_z: Tensor) -> tuple[Tensor, Tensor, None]:
        x, a = ctx.saved_tensors
        n = x.shape[-1]
        rows, grads = x.reshape(-1, n), grad_z.reshape(-1, n)
        coeff = per_row(a[:, None], x.shape[0])  # (P-1, R)
        grad_x = torch.empty_like(rows)
        grad_coeff = torch.empty(coeff.shape, dtype=torch.float64, device=x.device)
        for block in row_blocks(rows.shape[0], n, x.device):
            x64, g, a64 = rows[block].double(), grads[block].double(), coeff[:, block, None].double()
            total = None
            for (W, orders), e in zip(ctx.groups, window_polynomials(x64, ctx.groups)):
                top = max(orders)
                for p in orders:
                    grad_coeff[p - 2, block] = (g * e[p]).sum(-1)
                # r_j = R_W[g sum_{p >= j} a_p e_{p-j}] (e_0 = 1). With one order per window (the
                # default windows) a_p is constant in time and multiplies the Horner sum instead.
                if len(orders) == 1:
                    r = [reverse_window_sums(g * e[top - j], W) for j in range(1, top)]
                    r.append(reverse_window_sums(g, W))
                    part = horner_gradient(x64, r).mul_(a64[top - 2])
                else:
                    r = []
                    for j in range(1, top + 1):
                        c = sum(a64[p - 2] * e[p - j] for p in orders if p >= j)  # (R', 1) or (R', n)
                        r.append(reverse_window_sums(g * c, W))
                    part = horner_gradient(x64, r)
                total = part if total is None else total.add_(part)
            grad_x[block] = total
        grad_a = grad_coeff.view(a.shape[0], x.shape[0], -1).sum(1)  # (P-1, H)
        return grad_x.view_as(x), grad_a.to(a.dtype), None


def working_dtype(x: Tensor, Q: int) -> torch.dtype:
    """The dtype of the prefix e_q: float64 when Newton's identities cancel (Q >= 2) or off the
    CPU; for Q = 1 the only sum is e_1 = cumsum(x), which torch accumulates in double on the CPU
    and rounds once, so x's own dtype loses nothing there."""
    return x.dtype if Q == 1 and x.device.type == "cpu" else torch.float64


class PrefixPolynomial(torch.autograd.Function):
    """w_i = x_i (1 + sum_{q=0..Q} c_q E_q(i)), E_q(i) = e_q(x_0, ..., x_{i-1}) (E_0 = 1), and the
    e_q of the whole chunk, q = 1..Q; in float64 by prefix power sums and Newton's identities
    (`working_dtype`: Q = 1, KB at degree 2, has no Newton step to cancel and keeps x's dtype),
    in blocks of rows (`row_block`), with an analytic backward (adjoint prefix sums,
    `horner_gradient`) that recomputes a block's e's, so only x is kept.

    Args (of `apply`):
        x: (B, H, L). c: (Q+1, B or 1, H).
    Returns:
        w (B, H, L) of x's dtype, and e_1 .. e_Q of the whole chunk (Q, B, H) float64.
    """

    @staticmethod
    def prefix(xw: Tensor, Q: int) -> list[Tensor | float]:
        """e_0 .. e_Q of the inclusive prefixes x_0 .. x_i of xw (R, L), in xw's dtype."""
        return newton([x_j.cumsum(-1) for x_j in powers(xw, Q)])

    @staticmethod
    def gain(E: list[Tensor | float], cw: Tensor) -> Tensor:
        """1 + c_0 + sum_q c_q e_q(x_0 .. x_{i-1}) (R, L): the inclusive e's shifted by one.
        cw: (Q+1, R, 1), in the working dtype."""
        h = cw[1] * E[1]
        for q in range(2, len(E)):
            h.addcmul_(cw[q], E[q])
        gain = torch.empty_like(h)
        gain[..., :1] = 1 + cw[0]
        if tracing():  # a traced graph takes no strided out= (the same sums through a temporary)
            gain[..., 1:] = h[..., :-1] + (1 + cw[0])
        else:
            torch.add(h[..., :-1], 1 + cw[0], out=gain[..., 1:])
        return gain

    @staticmethod
    def forward(ctx, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        L, Q = x.shape[-1], c.shape[0] - 1
        work = working_dtype(x, Q)
        rows = x.reshape(-1, L)
        coeff = per_row(c, x.shape[0])  # (Q+1, R)
        w = torch.empty_like(rows)
        totals = torch.empty(Q, rows.shape[0], dtype=torch.float64, device=x.device)
        for block in row_blocks(rows.shape[0], L, x.device):
            xw = rows[block].to(work)
            E = PrefixPolynomial.prefix(xw, Q)
            totals[:, block] = torch.stack([e[..., -1] for e in E[1:]])
            w[block] = xw * PrefixPolynomial.gain(E, coeff[:, block, None].to(work))
        ctx.save_for_backward(x, c)
        return w.view_as(x), totals.view(Q, *x.shape[:2])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_w: Tensor, grad_totals: Tensor | None) -> tuple[Tensor, Tensor]:
        x, c = ctx.saved_tensors
        L, Q = x.shape[-1], c.shape[0] - 1
        work = working_dtype(x, Q)
        rows, grads = x.reshape(-1, L), grad_w.reshape(-1, L)
        coeff = per_row(c, x.shape[0])  # (Q+1, R)
        t_rows = None if grad_totals is None else grad_totals.reshape(Q, -1).to(work)  # (Q, R)
        grad_x = torch.empty_like(rows)
        grad_coeff = torch.empty(coeff.shape, dtype=work, device=x.device)
        for block in row_blocks(rows.shape[0], L, x.device):
            xw, g, cw = rows[block].to(work), grads[block].to(work), coeff[:, block, None].to(work)
            E = PrefixPolynomial.prefix(xw, Q)  # inclusive e_0 .. e_Q; the exclusive E_q(k) is E[q](k - 1)
            gx = g * xw
            # d w / d c_q = x E_q, with the exclusive E_q(k) = E[q](k - 1).
            grad_coeff[0, block] = gx.sum(-1)
            for q in range(1, Q + 1):
                grad_coeff[q, block] = (gx[..., 1:] * E[q][..., :-1]).sum(-1)
            # The chunk's e_q have d e_q / d x_i = sum_j (-x_i)^{j-1} e_{q-j}(chunk): constants
            # added to the Horner coefficients below.
            t = None if t_rows is None else t_rows[:, block, None]  # (Q, R', 1)
            # r_j = sum_{k > i} g_k x_k sum_{q >= j} c_q E_{q-j}(k) + sum_{q >= j} t_q e_{q-j}(chunk).
            r = []
            for j in range(1, Q + 1):
                T = gx * cw[j]
                if j < Q:
                    inner = cw[j + 1] * E[1]
                    for q in range(j + 2, Q + 1):
                        inner.addcmul_(cw[q], E[q - j])
                    T[..., 1:].addcmul_(gx[..., 1:], inner[..., :-1])
                C = T.cumsum(-1)
                top = C[..., -1:]
                if t is not None:
                    top = top + sum(t[q - 1] * (1.0 if q == j else E[q - j][..., -1:]) for q in range(j, Q + 1))
                r.append(top - C)
            gain = PrefixPolynomial.gain(E, cw)
            grad_x[block] = horner_gradient(xw, r).addcmul_(g, gain)
        grad_c = grad_coeff.view(Q + 1, x.shape[0], -1)
        if c.shape[1] == 1:
            grad_c = grad_c.sum(1, keepdim=True)
        return grad_x.view_as(x), grad_c.to(c.dtype)


# ----------------------------------------------------------------------------------------------
# Our causal signals


def default_window(length: int, order: int) -> int:
    """The official window rule: the smallest n >= order with binom(n, order) >= length."""
    n = order
    while math.comb(n, order) < length:
        n += 1
    return n


def order_coefficients(s: Tensor, degree: int, weights: Tensor | None = None) -> Tensor:
    """a_p = s^{p-1} (times weights[p-2] if given), p = 2..P: the coefficient of the order-p term.

    Args:
        s: (H,). degree: P >= 2. weights: (P-1, H) or (P-1, 1) per-order factors (the
            `LiquidTerm` gain and normalisation), None for ones.
    Returns:
        (P-1, H).
    """
    a = torch.stack([s ** (p - 1) for p in range(2, degree + 1)])
    return a if weights is None else a * weights


def kb_signal(
    u: Tensor,
    s: Tensor,
    degree: int,
    memory: Tensor | None = None,
    backend: str = "torch",
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The KB input of the SSM, w_i = u_i (1 + sum_{p=2..P} a_p e_{p-1}(past, u_0 .. u_{i-1})),
    a_p = s^{p-1} times an optional weight (`order_coefficients`).

    With the past's e_m (the memory, e_0 = 1), e_{p-1}(past ++ u_<i) = sum_m e_m E_{p-1-m}(i), so
    w_i = u_i (1 + sum_q c_q E_q(i)) with c_q = sum_p a_p e_{p-1-q}(past) (`PrefixPolynomial`).

    Args:
        u: (B, H, L). s: (H,) the input sums 1^T B_bar. degree: P >= 2.
        memory: (B, H, P-1) e_1 .. e_{P-1} of the inputs before u[..., 0] (None: no past).
        backend: 'torch' or 'numba' (`prefix_polynomial`).
        weights: (P-1, H) or (P-1, 1) factors of a_p (None: a_p = s^{p-1}).
    Returns:
        w (B, H, L) and the memory after u[..., -1] (B, H, P-1).
    """
    Q = degree - 1
    a = order_coefficients(s, degree, weights)  # (P-1, H)
    if memory is None:
        c = torch.cat([torch.zeros_like(a[:1]), a])[:, None]  # (Q+1, 1, H)
        w, e_end = prefix_polynomial(u, c, backend)
        e_end = [1.0, *e_end]
    else:
        past = [torch.ones_like(memory[..., 0]), *memory.unbind(-1)]  # e_0 .. e_Q of the past, (B, H)
        c = torch.stack([
            sum(a[p - 2] * past[p - 1 - q] for p in range(max(2, q + 1), degree + 1)) for q in range(Q + 1)
        ])  # (Q+1, B, H)
        w, e_end = prefix_polynomial(u, c, backend)
        e_end = combine([m.double() for m in past[1:]], [1.0, *e_end])
    return w, torch.stack(e_end[1:], -1).to(u.dtype)


def last_window_polynomial(x: Tensor, a: Tensor, windows: tuple[int, ...]) -> Tensor:
    """z at the last sample only, sum_p a_p e_p(x[..., -W_p:]), for one recurrent step: power
    sums over each window (no prefix sums over every position) and Newton's identities, in
    float64, differentiable by autograd.

    Args:
        x: (B, H, n), n >= max(windows). a: (P-1, H). windows: (W_2, ..., W_P).
    Returns:
        (B, H, 1) of x's dtype.
    """
    x64, a64 = x.double(), a.double()[..., None]  # (B, H, n), (P-1, H, 1)
    z = 0.0
    for W, orders in window_groups(windows):
        e = newton([x_j.sum(-1, keepdim=True) for x_j in powers(x64[..., -W:], max(orders))])
        for p in orders:
            z = z + a64[p - 2] * e[p]
    return z.to(x.dtype)


def window_polynomial(x: Tensor, a: Tensor, windows: tuple[int, ...], backend: str) -> Tensor:
    """`WindowPolynomial` (backend 'torch') or its compiled twin (backend 'numba', CPU tensors):
    x (B, H, n), a (P-1, H) -> z (B, H, n). The numba loops run in the (B, n, H) layout, of
    which the layer's x.transpose(1, 2) is already a view, and return z as such a view."""
    if backend == "torch":
        return WindowPolynomial.apply(x, a, windows)
    check_cpu(x)
    return numba_module("liquid_numba").WindowPolynomialNumba.apply(x.transpose(1, 2), a, windows).transpose(1, 2)


def prefix_polynomial(x: Tensor, c: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    """`PrefixPolynomial` (backend 'torch') or its compiled twin (backend 'numba', CPU tensors):
    x (B, H, L), c (Q+1, B or 1, H) -> w (B, H, L) (for 'numba' a view of (B, L, H), like the
    layer's input) and the chunk's e_1 .. e_Q (Q, B, H) float64."""
    if backend == "torch":
        return PrefixPolynomial.apply(x, c)
    check_cpu(x)
    w, totals = numba_module("liquid_numba").PrefixPolynomialNumba.apply(x.transpose(1, 2), c)
    return w.transpose(1, 2), totals


def pb_signal(
    u: Tensor,
    s: Tensor,
    windows: list[int],
    memory: Tensor | None = None,
    backend: str = "torch",
    k0: Tensor | None = None,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The PB correlation signal z_k = sum_{p=2..P} a_p e_p(last W_p samples up to k)
    (`window_polynomial`), a_p = s^{p-1} times an optional weight (`order_coefficients`), or
    K_0 z_k with k0 given.

    Args:
        u: (B, H, L). s: (H,). windows: [W_2, ..., W_P].
        memory: (B, H, M) the M = max(W_p) - 1 inputs before u[..., 0] (None: zeros).
        backend: 'torch' or 'numba' (`window_polynomial`; a single recurrent step always
            runs in torch).
        k0: K_0 (H,) of a one-channel kernel, folded into the coefficients (None: z alone).
        weights: (P-1, H) or (P-1, 1) factors of a_p (None: a_p = s^{p-1}).
    Returns:
        z (B, H, L) and the memory after u[..., -1] (B, H, M).
    """
    M = max(windows) - 1
    a = order_coefficients(s, len(windows) + 1, weights)  # (P-1, H)
    if k0 is not None:
        a = a * k0
    # Without a memory the past is zeros, which the window sums already assume.
    x = u if memory is None else torch.cat([memory, u], dim=-1)  # (B, H, M' + L)
    if memory is not None and u.shape[-1] == 1:  # a recurrent step: x is exactly the longest window
        z = last_window_polynomial(x, a, tuple(windows))
    else:
        z = window_polynomial(x, a, tuple(windows), backend)[..., x.shape[-1] - u.shape[-1] :]
    tail = x[..., max(0, x.shape[-1] - M) :]
    if tail.shape[-1] < M:
        tail = nn.functional.pad(tail, (M - tail.shape[-1], 0))
    return z, tail


# ----------------------------------------------------------------------------------------------
# The published code's terms (spec C.4)


def official_window(length: int, order: int) -> int:
    """n_p of the official code: the smallest n in [2, L) with binom(n, p) >= L; it has none
    (and the official forward pass crashes) for short sequences, e.g. L <= 4 at p = 2."""
    for n in range(2, length):
        if math.comb(n, order) >= length:
            return n
    raise ValueError(
        f"the official Liquid-S4 code has no correlation window for L={length} at order {order} "
        f"(no n < L with binom(n, {order}) >= L; its forward pass crashes there)"
    )


def official_indices(length: int, order: int, device: torch.device | None = None) -> Tensor:
    """The official index table (L, p): the last L of the p-subsets of the final n_p time steps,
    in lexicographic order."""
    n = official_window(length, order)
    steps = torch.arange(length - n, length, device=device)
    return torch.combinations(steps, r=order)[-length:]


def official_correlations(u: Tensor, order: int) -> Tensor:
    """v_p[j] = prod_q u[i_{j,q}] over the official index table. u (B, H, L) -> (B, H, L)."""
    idx = official_indices(u.shape[-1], order, u.device)  # (L, p)
    v = u[..., idx[:, 0]]
    for q in range(1, order):
        v = v * u[..., idx[:, q]]
    return v


def official_input(lam: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """The official B_bar on the full space, dt B / (1 - dt Lambda / 2) (the diagonal part of A
    only, no `rate`), and s = sum_n B_bar_n.

    Args:
        lam, B: (H, N/2) complex. dt: (H,).
    Returns:
        B_bar (H, N) complex and s (H,) complex (real up to rounding).
    """
    lam, B = torch.cat([lam, lam.conj()], -1), torch.cat([B, B.conj()], -1)
    B_bar = dt[:, None] * B / (1 - dt[:, None] * lam / 2)
    return B_bar, B_bar.sum(-1)


def official_pb_term(u: Tensor, C: Tensor, B_bar: Tensor, s: Tensor, degree: int, bidirectional: bool) -> Tensor:
    """The official PB term: for p = 2..P, c_p = Re sum_n C_n B_bar_n s^{2^{p-1}-1} (the exponent
    doubles each order) times the time-reversed correlations v_p[L-1-t]; pointwise, no
    convolution. Bidirectional layers add the backward channels' c_p times v_p[t].

    Args:
        u: (B, H, L). C: (C, H, N) complex, the output vector the published code pairs with
            B_bar: concat(conj C_k, C_k) for the kernel's C_k (its kernel wrapper keeps C_w and
            the kernel parameter is C_k = conj(C_w); the PB term reads concat(C_w, conj C_w),
            spec G.1); split as forward, backward halves if bidirectional. B_bar: (H, N)
            complex. s: (H,) complex. degree: P.
    Returns:
        (B, C', H, L), C' = C / 2 if bidirectional else C.
    """
    out = 0
    for p in range(2, degree + 1):
        c = (C * B_bar * s[:, None] ** (2 ** (p - 1) - 1)).sum(-1).real  # (C, H)
        v = official_correlations(u, p)  # (B, H, L)
        if bidirectional:
            forward, backward = c.chunk(2, dim=0)
            out = out + forward[..., None] * v.flip(-1)[:, None] + backward[..., None] * v[:, None]
        else:
            out = out + c[..., None] * v.flip(-1)[:, None]
    return out


def official_two_sided(K: Tensor, length: int) -> Tensor:
    """The published code's two-sided kernel of a bidirectional layer, pad(k0, (0, L)) +
    pad(k1.flip(-1), (L, 0)): the forward half k0 at lags 0 .. L-1, the backward half k1
    reversed at the end, so that in a circular convolution of length 2L its tap j meets the
    sample j + 1 steps ahead (strictly future samples; spec F17).

    Args:
        K: (2C, H, L) the forward, then the backward channels. length: L.
    Returns:
        (C, H, 2L).
    """
    forward, backward = K.chunk(2, dim=0)
    return nn.functional.pad(forward, (0, length)) + nn.functional.pad(backward.flip(-1), (length, 0))


def official_conv(u: Tensor, K: Tensor, bidirectional: bool) -> Tensor:
    """The published code's S4 convolution: K * u, or for a bidirectional layer the circular
    convolution of length 2L with `official_two_sided`,
    y_t = sum_{i <= t} k0_{t-i} u_i + sum_{i > t} k1_{i-t-1} u_i: the backward half one step
    later than in our layers (`bidirectional_conv`, lag 0).

    Args:
        u: (B, H, L). K: (C, H, L), or (2C, H, L) if bidirectional.
    Returns:
        (B, C, H, L).
    """
    if not bidirectional:
        return fftconv(u, K)
    L = u.shape[-1]
    n = 2 * L
    k_f = torch.fft.rfft(official_two_sided(K, L), n=n)  # (C, H, L+1)
    return torch.fft.irfft(torch.fft.rfft(u, n=n)[:, None] * k_f, n=n)[..., :L]


def official_kb_term(u: Tensor, K: Tensor, s: Tensor, degree: int) -> Tensor:
    """The official KB term, added in the frequency domain with n = 2L:
    irfft_n(sum_p rfft_n(flip v_p) * fft_{n/2+1}(K s^{p-1}))[:L]. The second factor is a complex
    DFT of length L + 1 multiplied bin by bin with an rFFT of length 2L: the grids differ, so this
    is not the convolution (K s^{p-1}) * flip(v_p).

    Args:
        u: (B, H, L). K: (C, H, Lk) the convolution kernel of the pass (for a bidirectional
            layer, the official two-sided kernel of length 2L). s: (H,) complex. degree: P.
    Returns:
        (B, C, H, L).
    """
    L = u.shape[-1]
    n = 2 * L
    kappa = K.to(s.dtype)
    Y = 0
    for p in range(2, degree + 1):
        kappa = kappa * s[:, None]
        v = official_correlations(u, p).flip(-1)
        Y = Y + torch.fft.rfft(v, n=n)[:, None] * torch.fft.fft(kappa, n=n // 2 + 1)
    return torch.fft.irfft(Y, n=n)[..., :L]


# ----------------------------------------------------------------------------------------------
# Modules: one per term, chosen through the dicts at the end


def check_degree(degree: int) -> None:
    """Raise unless `degree` is an int >= 1."""
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ValueError(f"degree must be an int >= 1 (1: plain S4), got {degree!r}")


def bidirectional_conv(w: Tensor, w_reversed: Tensor, K: Tensor) -> Tensor:
    """The two-sided convolution of `SSMLayer`: the forward half of K (2C, H, L) convolves w,
    the backward half convolves w_reversed (the input in reversed time), flipped back. Both
    include lag 0, our choice: the published code's backward half starts one step later
    (`official_conv`). Returns (B, C, H, L)."""
    forward, backward = K.chunk(2, dim=0)
    return fftconv(w, forward) + fftconv(w_reversed, backward).flip(-1)


GAINS = ("zero", "none")
SCALES = ("normalized",)


class LiquidTerm(nn.Module):
    """A liquid term of order up to `degree` on top of an SSM kernel.

    `forward(u, K, s, memory, bidirectional)` returns the convolution's output (B, C, H, L), the
    pointwise term K_0 z in the layer's (B, L, C, H) layout (None without one), which the layer
    adds with its D term, the SSM input w (B, H, L) whose final state the layer carries, and the
    new memory. `signals(u, s, memory, k0)` returns (w, z, memory) for one causal direction, with
    the layer output K * w + K_0 z (z None: no pointwise term; with k0 given, z is K_0 z); the
    recurrent view steps it with L = 1.

    The order-p coefficient is a_p = g f_p s^{p-1} (`weights`): g the optional gain, f_p the
    optional normalisation. Both enter the coefficients that every view (convolution, chunks,
    steps, either backend) reads, so all views apply them alike.

    Args:
        degree: P. backend: 'torch' or 'numba', how the signals are computed (`window_polynomial`,
            `prefix_polynomial`).
        gain: None or 'none' (g = 1), or 'zero': a learnable per-feature gain g (H,) initialised
            at 0, so the layer starts as its S4 part exactly. g is per feature, not per channel, because
            the liquid signal is one per feature (the channels differ only in K and K_0).
        scale: None (f_p = 1), or 'normalized': f_p = 1 / sqrt(n_p), n_p the largest number of
            products in the order-p sum (`order_scales`), so that for zero-mean, unit-variance,
            independent inputs each order's signal has variance at most 1 whatever the window,
            length and degree.
        d_model: H, the gain's size (needed with gain only).
        lr: the gain's learning-rate hint (None: the global one); it has no weight decay.
    """

    causal = True

    def __init__(
        self,
        degree: int,
        backend: str = "torch",
        gain: str | None = None,
        scale: str | None = None,
        d_model: int | None = None,
        lr: float | None = None,
    ):
        super().__init__()
        check_degree(degree)
        check_backend(backend)
        self._degree, self.backend = degree, backend
        if scale is not None:
            check_choice("liquid_scale", scale, SCALES)
        self.scale = scale
        if gain is not None:
            check_choice("liquid_gain", gain, GAINS)
        if gain in (None, "none"):
            self.register_parameter("gain", None)
        else:
            if d_model is None:
                raise ValueError("a liquid gain needs d_model, its size")
            # No weight decay: decay would pull g back to 0, i.e. towards plain S4, a prior
            # that the comparison with S4 must not carry; like the SSM tensors whose term it
            # scales, it takes the SSM learning-rate hint.
            register(self, "gain", torch.zeros(d_model), lr=lr)

    def extra_repr(self) -> str:
        return f"degree={self.degree}, backend={self.backend!r}, scale={self.scale!r}"

    def set_length(self, length: int) -> None:
        """Record the sequence length the layer is set up for (used by PB's default windows and
        KB's normalisation)."""

    def order_scales(self) -> list[float]:  # pragma: no cover - abstract
        """[f_2, ..., f_P] of scale='normalized'."""
        raise NotImplementedError

    def weights(self, s: Tensor) -> Tensor | None:
        """The factors g f_p of a_p = g f_p s^{p-1} (`order_coefficients`): (P-1, H) or (P-1, 1),
        of s's dtype, or None when both are 1."""
        if self.gain is None and self.scale is None:
            return None
        f = torch.ones(self.degree - 1, 1, dtype=s.dtype, device=s.device)
        if self.scale is not None:
            f = f.new_tensor(self.order_scales())[:, None]
        return f if self.gain is None else f * self.gain.to(s.dtype)

    @property
    def degree(self) -> int:
        return self._degree

    @degree.setter
    def degree(self, degree: int) -> None:
        check_degree(degree)
        self._degree = degree

    def memory_size(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def signals(
        self, u: Tensor, s: Tensor, memory: Tensor | None, k0: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(
        self, u: Tensor, K: Tensor, s: Tensor, memory: Tensor | None, bidirectional: bool
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        # A single channel's K_0 is folded into z's coefficients (`pb_signal`'s k0): the
        # pointwise term is then z itself, with no product over (B, L, H) nor its backward.
        folded = K.shape[0] == (2 if bidirectional else 1)
        if bidirectional:
            forward, backward = K[..., 0].chunk(2, dim=0)  # K_0 of each direction, (C, H)
            w, z, _ = self.signals(u, s, None, forward[0] if folded else None)
            w_rev, z_rev, _ = self.signals(u.flip(-1), s, None, backward[0] if folded else None)
            y = bidirectional_conv(w, w_rev, K)
            pointwise = None
            if z is not None:
                pointwise = pointwise_term(z, forward, folded) + pointwise_term(z_rev.flip(-1), backward, folded)
            return y, pointwise, w, None
        K0 = K[..., 0]  # (C, H)
        w, z, memory = self.signals(u, s, memory, K0[0] if folded else None)
        pointwise = None if z is None else pointwise_term(z, K0, folded)
        return fftconv(w, K), pointwise, w, memory


def pointwise_term(z: Tensor, K0: Tensor, folded: bool) -> Tensor:
    """The pointwise term K_0 z in the layer's (B, L, C, H) layout, from z (B, H, L), the (B, L, H)
    view that the numba backend computes contiguously: added there, neither it nor its gradient
    is transposed. folded: z already carries K0 (C = 1)."""
    z = z.transpose(1, 2)[:, :, None]  # (B, L, 1, H)
    return z if folded else K0 * z


def normalizing_scales(counts: list[int]) -> list[float]:
    """f_p = 1 / sqrt(n_p) for the numbers n_p of products in each order's sum (at least 1)."""
    return [1 / math.sqrt(max(n, 1)) for n in counts]


class KernelB(LiquidTerm):
    """KB: y = K * w + D u with w_i = u_i (1 + sum_p a_p e_{p-1}(u_<i)) (module docstring);
    memory: the running e_1 .. e_{P-1} of the past (B, H, P-1). Args as in `LiquidTerm`.

    scale='normalized': the order-p SSM input u_i e_{p-1}(u_0 .. u_{i-1}) has variance
    binom(i, p-1) for zero-mean, unit-variance, independent u, growing along the sequence, and
    the inputs at different i are uncorrelated, so K * (that) has at most the variance of K * u
    once it is divided by sqrt(binom(l-1, p-1)), l the length the layer is set up for
    (`set_length`, as PB's default windows): variance 1 at the sequence's last sample, less
    before. A divisor per position would keep it at 1 everywhere but makes the term depend on
    absolute time, which neither a chunk nor a recurrent step knows.
    """

    def __init__(self, degree: int, backend: str = "torch", gain: str | None = None, scale: str | None = None,
                 d_model: int | None = None, lr: float | None = None):
        super().__init__(degree, backend, gain, scale, d_model, lr)
        if scale is not None:
            # The length l of the normalisation; 0 until set. Only with a scale, so that plain KB
            # state dicts keep their keys.
            register_int(self, "length")

    def set_length(self, length: int) -> None:
        """Fix the normalisation's length l, unless already fixed (no-op without a scale)."""
        if self.scale is not None and get_int(self, "length") == 0:
            set_int(self, "length", length)

    def order_scales(self) -> list[float]:
        length = get_int(self, "length")
        if length == 0:
            raise ValueError(
                "a KB layer with liquid_scale takes its length from l_max or its first input's length; "
                "give l_max, or run the layer on a sequence first"
            )
        return normalizing_scales([math.comb(length - 1, p - 1) for p in range(2, self.degree + 1)])

    def memory_size(self) -> int:
        return self.degree - 1

    def signals(
        self, u: Tensor, s: Tensor, memory: Tensor | None, k0: Tensor | None = None
    ) -> tuple[Tensor, None, Tensor]:
        w, memory = kb_signal(u, s, self.degree, memory, self.backend, self.weights(s))
        return w, None, memory


class PolyB(LiquidTerm):
    """PB: y = K * u + K_0 z + D u with z_k = sum_p s^{p-1} e_p(last W_p samples) (module
    docstring); memory: the last max(W_p) - 1 inputs (B, H, M).

    scale='normalized': e_p of W_p zero-mean, unit-variance, independent samples is a sum of
    binom(W_p, p) uncorrelated unit-variance products, so f_p = 1 / sqrt(binom(W_p, p)) gives
    each order's z unit variance in every full window.

    Args:
        degree: P. window: one W for every order, or None for the official rule
            W_p = min{n : binom(n, p) >= l}, with l set by `set_length` (the layer's l_max or
            first input length) and kept so that chunks, steps and the whole sequence agree.
        backend: 'torch' or 'numba' (`window_polynomial`).
        gain, scale, d_model, lr: as in `LiquidTerm`.
    """

    def __init__(self, degree: int, window: int | None = None, backend: str = "torch", gain: str | None = None,
                 scale: str | None = None, d_model: int | None = None, lr: float | None = None):
        super().__init__(degree, backend, gain, scale, d_model, lr)
        if window is not None:
            check_length("window", window)
        self.window = window
        self._check_window(degree)
        # The length l of the default window rule; 0 until set.
        register_int(self, "length")

    def _check_window(self, degree: int) -> None:
        if self.window is not None and self.window < degree:
            raise ValueError(
                "window must be >= degree (an order-p product needs p samples), "
                f"got window={self.window}, degree={degree}"
            )

    @LiquidTerm.degree.setter
    def degree(self, degree: int) -> None:
        check_degree(degree)
        self._check_window(degree)
        self._degree = degree

    def set_length(self, length: int) -> None:
        """Fix the length l of the default window rule, unless already fixed."""
        if get_int(self, "length") == 0:
            set_int(self, "length", length)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}"

    def windows(self) -> list[int]:
        """[W_2, ..., W_P] ([] for P = 1)."""
        if self.degree == 1:
            return []
        if self.window is not None:
            return [self.window] * (self.degree - 1)
        length = get_int(self, "length")
        if length == 0:
            raise ValueError(
                "a PB layer with window=None takes its windows from l_max or its first input's length; "
                "give l_max or window, or run the layer on a sequence first"
            )
        return [default_window(length, p) for p in range(2, self.degree + 1)]

    def order_scales(self) -> list[float]:
        return normalizing_scales([math.comb(W, p) for p, W in enumerate(self.windows(), start=2)])

    def memory_size(self) -> int:
        return max(self.windows(), default=1) - 1

    def signals(
        self, u: Tensor, s: Tensor, memory: Tensor | None, k0: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        z, memory = pb_signal(u, s, self.windows(), memory, self.backend, k0, self.weights(s))
        return u, z, memory


class Official(LiquidTerm):
    """Base of the published code's terms: frozen copies of the initial Lambda, B (H, N/2), C
    (C, H, N/2) and log dt (H,) as buffers (the official layer reads stale, detached tensors: on
    GPU the initial values for the whole of training; spec F18). Non-causal: no memory, no
    recurrent view."""

    causal = False

    def __init__(self, degree: int, lam: Tensor, B: Tensor, C: Tensor, log_dt: Tensor):
        super().__init__(degree)
        for name, t in (("lam", lam), ("B", B), ("C", C)):
            self.register_buffer(name, torch.view_as_real(t.detach().clone()))
        self.register_buffer("log_dt", log_dt.detach().clone())

    def official_input(self) -> tuple[Tensor, Tensor]:
        """(B_bar (H, N), s (H,)), complex, of the frozen parameters (`official_input`)."""
        lam, B = torch.view_as_complex(self.lam), torch.view_as_complex(self.B)
        return official_input(lam, B, self.log_dt.exp())

    def memory_size(self) -> int:
        return 0


class OfficialPolyB(Official):
    """The published PB term (`official_pb_term`) on top of the published S4 convolution
    (`official_conv`)."""

    def forward(
        self, u: Tensor, K: Tensor, s: Tensor, memory: Tensor | None, bidirectional: bool
    ) -> tuple[Tensor, None, Tensor, None]:
        y = official_conv(u, K, bidirectional)
        if self.degree == 1:
            return y, None, u, None
        B_bar, s_official = self.official_input()
        # The published term pairs B_bar with the conjugate of the kernel's C (`official_pb_term`).
        C = torch.view_as_complex(self.C)
        C = torch.cat([C.conj(), C], -1)
        return y + official_pb_term(u, C, B_bar, s_official, self.degree, bidirectional).to(y.dtype), None, u, None


class OfficialKernelB(Official):
    """The published KB term (`official_kb_term`) on top of the published S4 convolution
    (`official_conv`), with the published two-sided kernel for bidirectional layers in both."""

    def forward(
        self, u: Tensor, K: Tensor, s: Tensor, memory: Tensor | None, bidirectional: bool
    ) -> tuple[Tensor, None, Tensor, None]:
        y = official_conv(u, K, bidirectional)
        if self.degree == 1:
            return y, None, u, None
        if bidirectional:
            K = official_two_sided(K, u.shape[-1])
        _, s_official = self.official_input()
        return y + official_kb_term(u, K, s_official, self.degree), None, u, None


TERMS: dict[str, type[LiquidTerm]] = {"pb": PolyB, "kb": KernelB}
OFFICIAL_TERMS: dict[str, type[Official]] = {"pb": OfficialPolyB, "kb": OfficialKernelB}
