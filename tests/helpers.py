"""Shared test utilities: one tolerance table keyed by dtype."""

from __future__ import annotations

import torch

# Max-abs error relative to max|expected| (spec section E convention).
RTOL = {torch.float64: 1e-10, torch.complex128: 1e-10, torch.float32: 2e-4, torch.complex64: 2e-4}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max|actual - expected| / max|expected| (absolute error when expected is all zeros)."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), "actual has NaN/Inf"
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    return err / scale if scale > 0 else err


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, factor: float = 1.0):
    """Assert rel_err(actual, expected) <= factor * RTOL[dtype] (dtype defaults to expected's)."""
    dtype = dtype or torch.as_tensor(expected).dtype
    tol = factor * RTOL[dtype]
    err = rel_err(actual, expected)
    assert err <= tol, f"relative error {err:.3e} > tolerance {tol:.1e}"


def grads(loss: torch.Tensor, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gradients of `loss` w.r.t. each named tensor (zeros where it does not depend on it)."""
    out = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {k: (torch.zeros_like(p) if g is None else g) for (k, p), g in zip(params.items(), out)}
