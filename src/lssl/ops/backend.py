"""The `backend=` argument of the layers with compiled CPU loops (S4's Cauchy sums, Liquid-S4's
correlation signals): 'torch' (every device, the reference) or 'numba' (CPU tensors only, same
values). Chosen explicitly, never by silent fallback; numba is an optional dependency
(`pip install 'lssl[numba]'`), imported on first use."""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from .._checks import check_choice

BACKENDS = ("torch", "numba")


def check_backend(backend: str) -> None:
    """Raise unless `backend` is one of `BACKENDS` (for 'numba': unless numba is importable)."""
    check_choice("backend", backend, BACKENDS)
    if backend == "numba":
        numba_module("_numba")


def numba_module(name: str) -> ModuleType:
    """The module `lssl.ops.<name>` of numba loops, imported on first use."""
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError as err:
        raise ImportError("backend='numba' needs the numba package: pip install 'lssl[numba]'") from err


def check_cpu(x: torch.Tensor) -> None:
    """Raise unless x is on the CPU (the numba loops read its memory directly)."""
    if x.device.type != "cpu":
        raise ValueError(f"backend='numba' runs on CPU tensors, got the input on {x.device}; use backend='torch'")
