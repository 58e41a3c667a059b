"""Batched tridiagonal solves by Gaussian elimination with partial pivoting (LAPACK's gtsv).

Every system is stored by rows first: the sub-, main and superdiagonals sub (N-1, ...),
diag (N, ...), sup (N-1, ...) and the right-hand side rhs (N, ...), any common (broadcast)
trailing batch shape (...), real or complex. Row i reads sub[i-1] x_{i-1} + diag[i] x_i +
sup[i] x_{i+1} = rhs[i].

Elimination runs down the rows in a Python loop, each step one set of elementwise operations
on the whole batch, so the cost is O(N) small tensor operations on (...)-shaped slices: meant
for wide batches (a system per feature and frequency node) and moderate N. At step i the row
with the larger |entry| in column i becomes the pivot row (rows i and i+1 are the only
candidates in a tridiagonal matrix); a swap fills one entry of a second superdiagonal, so the
upper factor has three diagonals. Partial pivoting on a tridiagonal matrix is backward stable:
its growth factor is at most 2 (Higham, Accuracy and Stability of Numerical Algorithms, 9.6),
so nothing is assumed of the matrix beyond being nonsingular. A singular matrix gives inf/nan.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def gtsv(sub: Tensor, diag: Tensor, sup: Tensor, rhs: Tensor) -> Tensor:
    """Solve tridiagonal systems with partial pivoting (module docstring).

    Args:
        sub: (N-1, ...) subdiagonal, sub[i] = M[i+1, i]. diag: (N, ...). sup: (N-1, ...),
            sup[i] = M[i, i+1]. rhs: (N, ...). Broadcast over the trailing batch shape.
    Returns:
        x (N, ...) with M x = rhs.
    """
    N = diag.shape[0]
    # The row being eliminated into: entries in its columns i, i+1 and its right-hand side.
    d, u, r = diag[0], (sup[0] if N > 1 else None), rhs[0]
    pivots: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # final row i: cols i, i+1, i+2, rhs
    for i in range(N - 1):
        lo, dn, rn = sub[i], diag[i + 1], rhs[i + 1]
        un = sup[i + 1] if i + 1 < N - 1 else torch.zeros_like(dn)
        swap = lo.abs() > d.abs()
        piv_d, piv_u, piv_r = torch.where(swap, lo, d), torch.where(swap, dn, u), torch.where(swap, rn, r)
        piv_u2 = torch.where(swap, un, torch.zeros_like(un))
        m = torch.where(swap, d, lo) / piv_d
        # The other row minus m times the pivot row: column i cancels; it moves one row down.
        d = torch.where(swap, u, dn) - m * piv_u
        u = torch.where(swap, torch.zeros_like(un), un) - m * piv_u2
        r = torch.where(swap, r, rn) - m * piv_r
        pivots.append((piv_d, piv_u, piv_u2, piv_r))
    x = [r / d]
    x_next2 = None
    for piv_d, piv_u, piv_u2, piv_r in reversed(pivots):
        acc = piv_r - piv_u * x[-1]
        if x_next2 is not None:
            acc = acc - piv_u2 * x_next2
        x_next2 = x[-1]
        x.append(acc / piv_d)
    return torch.stack(x[::-1])


def tridiagonal_matvec(sub: Tensor, diag: Tensor, sup: Tensor, x: Tensor) -> Tensor:
    """M x for the tridiagonal M of `gtsv`'s layout: (N, ...) from x (N, ...)."""
    y = diag * x
    if diag.shape[0] > 1:
        y[1:] += sub * x[:-1]
        y[:-1] += sup * x[1:]
    return y
