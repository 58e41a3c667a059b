"""Shared test utilities: one tolerance table keyed by dtype; a toy DataSpec for training tests."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from lssl.data import DataSpec

needs_numba = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")
# Every backend, for parametrize: 'numba' skips where numba is not installed.
BACKENDS = ["torch", pytest.param("numba", marks=needs_numba)]
# The modules of lssl.ops that import numba.
NUMBA_MODULES = ("_numba", "liquid_numba", "cauchy_numba")


def hide_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make numba, and lssl's modules that import it, unimportable for the rest of a test."""
    import lssl.ops

    monkeypatch.setitem(sys.modules, "numba", None)  # import numba now raises ImportError
    for name in NUMBA_MODULES:
        monkeypatch.delitem(sys.modules, f"lssl.ops.{name}", raising=False)
        monkeypatch.delattr(lssl.ops, name, raising=False)

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




def toy_spec(n_train: int = 48, n_val: int = 16, n_test: int = 16, length: int = 32, task: str = "classification",
             seed: int = 0) -> DataSpec:
    """Sequences (L, 1) of noise with a bump in one of three thirds; the class is the third
    (classification) or the targets are (bump position, bump height) (regression). Lengths vary
    by up to a quarter. An extra split 'test_half' is the test split decimated by 2 (rate 2)."""
    g = torch.Generator().manual_seed(seed)

    def make(n: int) -> list:
        items = []
        for _ in range(n):
            L = length - int(torch.randint(0, length // 4 + 1, (), generator=g))
            cls = int(torch.randint(0, 3, (), generator=g))
            height = 1.0 + torch.rand((), generator=g).item()
            x = 0.1 * torch.randn(L, 1, generator=g)
            third = L // 3
            x[cls * third : (cls + 1) * third] += height
            y = torch.tensor(cls) if task == "classification" else torch.tensor([float(cls), height])
            items.append((x, y))
        return items

    test = make(n_test)
    return DataSpec(
        name="toy", train=make(n_train), val=make(n_val), test=test, d_input=1,
        d_output=3 if task == "classification" else 2, length=length, task=task,
        labels=("first", "second", "third") if task == "classification" else ("position", "height"),
        extra={"test_half": [(x[::2], y) for x, y in test]}, rates={"test_half": 2.0},
        source="generated in tests", real=False, stands_in_for="nothing",
    )


def layer_kinds(H: int, N: int, L: int) -> dict:
    """name -> a factory of every layer kind at width H, state size N (Liquid-S4 with the
    paper's plain term, its windows set for length L): the set the API, compile and export
    tests run over."""
    import lssl

    return {
        "s4d": lambda: lssl.S4D(H, N),
        "s4": lambda: lssl.S4(H, N),
        "lssl": lambda: lssl.LSSL(H, N),
        "lssl-resolvent": lambda: lssl.LSSL(H, N, kernel="resolvent"),
        "liquid-pb": lambda: lssl.LiquidS4(H, N, liquid="pb", l_max=L, liquid_gain="none"),
        "liquid-kb": lambda: lssl.LiquidS4(H, N, liquid="kb", l_max=L, liquid_gain="none"),
    }
