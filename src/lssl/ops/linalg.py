"""Linear solves that stay correct on CPU.

torch's CPU build (seen with torch 2.13 and 2 threads) returns wrong results or raises MKL
"SLASWP" errors in batched LU solves of matrices larger than about 130 x 130
(pytorch/pytorch#142815). Above `BATCHED_MAX_N` we therefore solve one matrix at a time, which
also keeps the backward pass (itself a solve with the adjoint) on the single-matrix path.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

BATCHED_MAX_N = 128


def solve(A: Tensor, B: Tensor) -> Tensor:
    """torch.linalg.solve for A (..., N, N) and B (..., N, K), with broadcast batch dimensions."""
    N = A.shape[-1]
    if A.device.type != "cpu" or N <= BATCHED_MAX_N or (A.dim() == 2 and B.dim() == 2):
        return torch.linalg.solve(A, B)
    batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    A = A.expand(*batch, *A.shape[-2:]).reshape(-1, N, N)
    B = B.expand(*batch, *B.shape[-2:]).reshape(-1, *B.shape[-2:])
    out = torch.stack([torch.linalg.solve(a, b) for a, b in zip(A, B)])
    return out.reshape(*batch, *out.shape[-2:])
