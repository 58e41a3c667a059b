"""Argument checks shared by the package: each raises a ValueError that names the argument
and says what was expected, so that bad input never surfaces as an error deep inside torch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def tracing() -> bool:
    """True while torch.compile, torch.export or torch.jit traces a graph: then checks of tensor
    values (finiteness, positivity) step aside, since a traced graph cannot branch on data and
    holds no values to check; the same checks run in eager mode, which a traced model was
    tested in."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def check_choice(name: str, value: str, choices: Mapping[str, Any] | tuple[str, ...]) -> None:
    """Raise unless `value` is one of `choices` (a dict's keys or a tuple of names)."""
    known = tuple(choices)
    if value not in known:
        raise ValueError(f"unknown {name} {value!r}; known: {', '.join(map(repr, known))}")


def check_positive(name: str, value: float | torch.Tensor) -> None:
    """Raise unless every entry of `value` is finite and strictly positive."""
    t = torch.as_tensor(value)
    if t.is_complex():
        raise ValueError(f"{name} must be real, got a complex tensor")
    if t.is_meta or tracing():  # shapes without values (deferred initialisation, tracing)
        return
    bad = ~(torch.isfinite(t) & (t > 0))
    if bad.any():
        first = t.flatten()[bad.flatten()][0].item()
        raise ValueError(f"{name} must be finite and > 0, got {first!r}")


def check_rate(rate: float | torch.Tensor) -> float:
    """`rate` (a sampling-rate factor) as a Python float: a real number or a 0-d real tensor,
    finite and > 0."""
    if isinstance(rate, torch.Tensor):
        if rate.dim() != 0 or rate.is_complex():
            raise ValueError(f"rate must be a number or a 0-d real tensor, got a tensor of shape {tuple(rate.shape)}")
        rate = rate.item()
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise ValueError(f"rate must be a number, got {type(rate).__name__}")
    check_positive("rate", rate)
    return float(rate)


def check_state(name: str, state: object, like: torch.Tensor, batch: int) -> None:
    """Raise unless `state` is a tensor fit to continue from: the shape (B, ...) of `like`
    (a default state of one sequence) with B = `batch`, its device, and complex exactly when it is."""
    expected = (batch, *like.shape[1:])
    if not isinstance(state, torch.Tensor):
        raise ValueError(f"{name} must be a tensor of shape (B, H, S) = {expected} (from default_state, step or "
                         f"return_state=True), got {type(state).__name__}")
    if tuple(state.shape) != expected:
        raise ValueError(f"{name} must have shape (B, H, S) = {expected} for this layer and batch, "
                         f"got {tuple(state.shape)}")
    if state.device != like.device or state.is_complex() != like.is_complex():
        raise ValueError(f"{name} must be a {like.dtype} tensor on {like.device} like the layer's, got {state.dtype} "
                         f"on {state.device}")


def check_unit_interval(name: str, value: float) -> None:
    """Raise unless `value` is a finite number in [0, 1]."""
    if not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def check_length(name: str, value: int) -> None:
    """Raise unless `value` is a positive Python integer (a sequence length)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_finite(name: str, t: torch.Tensor) -> None:
    """Raise if `t` holds NaN or Inf."""
    # Any NaN or Inf makes the sum NaN or Inf, so a finite sum clears the tensor in one cheap
    # reduction; only a non-finite sum (possibly overflow of finite values) needs the full check.
    if t.is_meta or tracing():  # shapes without values (deferred initialisation, tracing)
        return
    if not torch.isfinite(t.sum()) and not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")


def check_even(name: str, value: int, why: str) -> None:
    """Raise unless `value` is even, suggesting the two even neighbours."""
    if value % 2:
        options = " or ".join(f"{name}={n}" for n in (value - 1, value + 1) if n > 0)
        raise ValueError(f"{name} must be even ({why}), got {name}={value}; use {options}")


def check_divides(name: str, value: int, total_name: str, total: int) -> None:
    """Raise unless `value` is a positive int dividing `total`."""
    check_length(name, value)
    if total % value:
        raise ValueError(f"{name} must divide {total_name}={total}, got {name}={value}")
