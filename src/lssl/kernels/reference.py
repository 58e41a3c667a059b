"""The oracles: slow, obvious computations that every fast path is tested against.

* `kernel`: K_l = Re(C A_bar^l B_bar) by explicit repeated multiplication.
* `recurrence`: the explicit loop x_t = A_bar x_{t-1} + B_bar u_t, y_t = Re(C x_t) + D u_t.
* `varying_recurrence`: the same loop with a system of its own at every sample (irregular
  sampling).
* `causal_conv`: y_t = sum_{i <= t} K_i u_{t-i} by a double loop over time.
* `liquid_recurrence`: the Liquid-S4 recurrence x_t = A_bar x_{t-1} + B_bar u_t (1 + 1^T x_{t-1}).
* `liquid_enumeration`: its correlation terms (and the KB / PB simplifications of their weights),
  summed over every index subset.
* `elementary`: elementary symmetric polynomials by the sequential recurrence
  e_q <- e_q + x e_{q-1}.
"""

from __future__ import annotations

import itertools
import math

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


def liquid_recurrence(
    A: Tensor, B: Tensor, C: Tensor, D: Tensor, u: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Run the liquid (linearised LTC) recurrence of Liquid-S4 step by step (spec C.2):
    x_k = A x_{k-1} + B u_k (1 + 1^T x_{k-1}), y_k = Re(C x_k) + D u_k.

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
        gain = 1 + x.sum(-1, keepdim=True)  # (B, H, 1)
        x = torch.einsum("hnm,bhm->bhn", A, x) + B * (u[:, t, :, None] * gain)
        ys.append(torch.einsum("chn,bhn->bch", C, x).real + D * u[:, t, None, :])
    return torch.stack(ys, dim=1), x


LIQUID_WEIGHTS = ("exact", "kb", "pb")


def liquid_enumeration(
    A: Tensor, B: Tensor, C: Tensor, u: Tensor, degree: int, weights: str, window: list[int] | None = None
) -> Tensor:
    """The correlation terms of orders 2..degree of the liquid recurrence, one index subset at a
    time (spec C.3): for every output time k and every S = {i_1 < ... < i_p} in {0..k},
    2 <= p <= degree, add weight(k, S) * u_{i_1} ... u_{i_p}, with

    * 'exact': C A^{k-i_p} B prod_{j>=2} (1^T A^{i_j - i_{j-1} - 1} B) (the recurrence itself);
    * 'kb': C A^{k-i_p} B s^{p-1}, s = 1^T B (inner gaps set to the identity);
    * 'pb': C B s^{p-1} if S lies in the window {k - W_p + 1, ..., k}, else 0 (A = I throughout).

    Exponential in L: for small L only (L <= 12).

    Args:
        A: (H, N, N). B: (H, N). C: (C, H, N). u: (B, L, H). degree: P.
        weights: one of LIQUID_WEIGHTS. window: [W_2, ..., W_P] for 'pb'.
    Returns:
        (B, L, C, H) real: the output minus the order-1 (S4) and D terms.
    """
    if weights not in LIQUID_WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; known: {LIQUID_WEIGHTS}")
    batch, L, H = u.shape
    powers_B = [B]  # A^j B, (H, N)
    for _ in range(L):
        powers_B.append(torch.einsum("hnm,hm->hn", A, powers_B[-1]))
    out_w = [torch.einsum("chn,hn->ch", C, x) for x in powers_B]  # C A^j B, (C, H)
    gap_w = [x.sum(-1) for x in powers_B]  # 1^T A^j B, (H,)
    s = gap_w[0]
    y = torch.zeros(batch, L, C.shape[0], H, dtype=u.dtype, device=u.device)
    for k in range(L):
        for p in range(2, degree + 1):
            for S in itertools.combinations(range(k + 1), p):
                if weights == "exact":
                    w = out_w[k - S[-1]] * math.prod(gap_w[b - a - 1] for a, b in zip(S, S[1:]))
                elif weights == "kb":
                    w = out_w[k - S[-1]] * s ** (p - 1)
                else:
                    if S[0] <= k - window[p - 2]:
                        continue
                    w = out_w[0] * s ** (p - 1)
                product = math.prod(u[:, i] for i in S)  # (B, H)
                y[:, k] += (w * product[:, None]).real
    return y


def elementary(x: Tensor, degree: int) -> Tensor:
    """e_0 .. e_degree of the entries of x's last dim, by the sequential recurrence
    e_q <- e_q + x_i e_{q-1} (q from high to low) over i.

    Args:
        x: (..., n).
    Returns:
        (degree + 1, ...).
    """
    e = [torch.ones_like(x[..., 0])] + [torch.zeros_like(x[..., 0]) for _ in range(degree)]
    for i in range(x.shape[-1]):
        for q in range(degree, 0, -1):
            e[q] = e[q] + x[..., i] * e[q - 1]
    return torch.stack(e)
