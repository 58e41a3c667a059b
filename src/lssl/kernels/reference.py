"""The oracles: slow, obvious computations that every fast path is tested against.

* `kernel`: K_l = Re(C A_bar^l B_bar) by explicit repeated multiplication.
* `recurrence`: the explicit loop x_t = A_bar x_{t-1} + B_bar u_t, y_t = Re(C x_t) + D u_t.
* `varying_recurrence`: the same loop with a system of its own at every sample (irregular
  sampling).
* `causal_conv`: y_t = sum_{i <= t} K_i u_{t-i} by a double loop over time.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def kernel(A: Tensor, B: Tensor, C: Tensor, L: int) -> Tensor:
    """Krylov kernel by explicit powers.

    Args:
        A: (H, N, N) discrete state matrix. B: (H, N). C: (C, H, N). L: length.
    Returns:
        K (C, H, L) real, K[c, h, l] = Re(C[c, h] A[h]^l B[h]).
    """
    x = B
    out = []
    for _ in range(L):
        out.append(torch.einsum("chn,hn->ch", C, x).real)
        x = torch.einsum("hnm,hm->hn", A, x)
    return torch.stack(out, dim=-1)


def recurrence(
    A: Tensor, B: Tensor, C: Tensor, D: Tensor, u: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Run the discrete SSM step by step.

    Args:
        A: (H, N, N). B: (H, N). C: (C, H, N). D: (C, H). u: (B, L, H) input.
        state: (B, H, N) initial state x_{-1} (zeros if None).
    Returns:
        y (B, L, C, H) real output and the final state x_{L-1} (B, H, N).
    """
    batch, L, H = u.shape
    x = torch.zeros(batch, H, A.shape[-1], dtype=A.dtype, device=u.device) if state is None else state
    ys = []
    for t in range(L):
        x = torch.einsum("hnm,bhm->bhn", A, x) + B * u[:, t, :, None]
        ys.append(torch.einsum("chn,bhn->bch", C, x).real + D * u[:, t, None, :])
    return torch.stack(ys, dim=1), x


def varying_recurrence(
    A: Tensor, B: Tensor, C: Tensor, u: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Run x_t = A_t x_{t-1} + B_t u_t, y_t = Re(C x_t) with a discrete system per sequence
    and sample, sequence by sequence and step by step.

    Args:
        A: (B, L, H, N, N). B: (B, L, H, N). C: (C, H, N). u: (B, L, H).
        state: (B, H, N) initial state x_{-1} (zeros if None).
    Returns:
        y (B, C, H, L) real and the final state x_{L-1} (B, H, N).
    """
    batch, L, H = u.shape
    y = torch.zeros(batch, C.shape[0], H, L, dtype=A.real.dtype, device=u.device)
    finals = []
    for b in range(batch):
        x = torch.zeros(H, A.shape[-1], dtype=A.dtype, device=u.device) if state is None else state[b]
        for t in range(L):
            x = torch.einsum("hnm,hm->hn", A[b, t], x) + B[b, t] * u[b, t, :, None]
            y[b, :, :, t] = torch.einsum("chn,hn->ch", C, x).real
        finals.append(x)
    return y, torch.stack(finals)


def causal_conv(u: Tensor, K: Tensor) -> Tensor:
    """Direct causal convolution.

    Args:
        u: (B, H, L) input. K: (C, H, Lk) kernel.
    Returns:
        y (B, C, H, L) with y[..., t] = sum_{i <= t, i < Lk} K[..., i] u[..., t - i].
    """
    L = u.shape[-1]
    y = torch.zeros(u.shape[0], K.shape[0], u.shape[1], L, dtype=u.dtype, device=u.device)
    for t in range(L):
        for i in range(min(t + 1, K.shape[-1])):
            y[..., t] += K[None, :, :, i] * u[:, None, :, t - i]
    return y
