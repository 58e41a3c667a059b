"""The first-order linear recurrence x_t = a_t x_{t-1} + b_t (x_{-1} = 0) along the last dim,
without a Python loop over time: the time-varying diagonal SSM of irregular sampling.

`linear_scan` composes the affine maps x -> a x + b pairwise (Hillis–Steele): after round k
every position holds the composition of the 2^k maps ending there, so log2(L) rounds of
elementwise products finish the scan, O(L log L) work. Its backward is the adjoint
recurrence, itself a reverse scan,

    lambda_t = g_t + conj(a_{t+1}) lambda_{t+1},   dL/db_t = lambda_t,
    dL/da_t = lambda_t conj(x_{t-1}),

(PyTorch's conjugate-Wirtinger convention for complex tensors), so autograd keeps only a and
x, O(L) memory, instead of every round's intermediates. `linear_scan_naive` is the loop the
tests compare both against.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _hillis_steele(a: Tensor, b: Tensor) -> Tensor:
    """x with x_t = a_t x_{t-1} + b_t along the last dim, by pairwise composition."""
    A, X = a, b
    L, shift = a.shape[-1], 1
    while shift < L:
        # Position t composes its map with the one ending at t - shift (which acts first).
        X = torch.cat([X[..., :shift], X[..., shift:] + A[..., shift:] * X[..., :-shift]], dim=-1)
        if 2 * shift < L:
            A = torch.cat([A[..., :shift], A[..., shift:] * A[..., :-shift]], dim=-1)
        shift *= 2
    return X


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        x = _hillis_steele(a, b)
        ctx.save_for_backward(a, x)
        return x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        a, x = ctx.saved_tensors
        # Reverse scan: lambda_t = g_t + conj(a_{t+1}) lambda_{t+1}, run forward on flipped time.
        a_next = torch.cat([a[..., 1:], torch.zeros_like(a[..., :1])], dim=-1).conj()
        lam = _hillis_steele(a_next.flip(-1), grad.flip(-1)).flip(-1)
        x_prev = torch.cat([torch.zeros_like(x[..., :1]), x[..., :-1]], dim=-1)
        return lam * x_prev.conj(), lam


def linear_scan(a: Tensor, b: Tensor) -> Tensor:
    """x_t = a_t x_{t-1} + b_t, x_{-1} = 0, along the last dim (fold an initial state x0 into
    b_0 += a_0 x0).

    Args:
        a, b: (..., L), real or complex, same shape and dtype.
    Returns:
        x (..., L). Time O(L log L) elementwise, memory O(L) (plus one round's temporaries).
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"a and b must match in shape and dtype, got {tuple(a.shape)} {a.dtype} and {tuple(b.shape)} {b.dtype}")
    return _LinearScan.apply(a, b)


def linear_scan_naive(a: Tensor, b: Tensor) -> Tensor:
    """The oracle of `linear_scan`: the explicit loop over time."""
    x = torch.zeros_like(b[..., 0])
    out = []
    for t in range(a.shape[-1]):
        x = a[..., t] * x + b[..., t]
        out.append(x)
    return torch.stack(out, dim=-1)
