"""The SSM kernel base class: per-feature timescale dt, optimizer hints, complex parameters.

A kernel owns the SSM parameters (A, B, C, dt) of H independent state-space models and turns
them into a real convolution kernel K (C, H, L) for any length L and sampling-rate factor
`rate` (the system is discretised with step dt * rate: rate = 2 reads data sampled twice as
sparsely as in training). It also exposes the same system in discrete, dense form (`discrete`)
for the recurrent view and for the oracles in `kernels/reference.py`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from .._checks import check_choice, check_length, check_positive

Tensor = torch.Tensor

DT_INITS = ("random", "uniform")


class DiscreteSSM(NamedTuple):
    """A discretised SSM in dense form, with K_l = Re(C A_bar^l B_bar) and
    x_k = A_bar x_{k-1} + B_bar u_k, y_k = Re(C x_k). Complex for conjugate-pair kernels, where
    the state is the full conjugate-symmetric one (so Re(...) is exact, not an approximation)."""

    A: Tensor  # (H, N, N)
    B: Tensor  # (H, N)
    C: Tensor  # (C, H, N)


def full(x: Tensor) -> Tensor:
    """The full conjugate-symmetric vector concat(x, conj(x)) along the last dim, (..., N/2) ->
    (..., N), from the N/2 stored modes of a conjugate-pair kernel."""
    return torch.cat([x, x.conj()], dim=-1)


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype whose real and imaginary parts are `dtype`."""
    return torch.complex(torch.zeros((), dtype=dtype), torch.zeros((), dtype=dtype)).dtype


def init_log_dt(
    H: int, dt_min: float, dt_max: float, init: str = "random", generator: torch.Generator | None = None
) -> Tensor:
    """log(dt) (H,) float64 for H features, log-uniform in [dt_min, dt_max] ('random') or
    evenly spaced in log space ('uniform')."""
    check_positive("dt_min", dt_min)
    check_positive("dt_max", dt_max)
    if dt_min > dt_max:
        raise ValueError(f"dt_min must be <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    check_choice("dt_init", init, DT_INITS)
    lo, hi = math.log(dt_min), math.log(dt_max)
    if init == "uniform":
        return torch.linspace(lo, hi, H, dtype=torch.float64)
    return lo + torch.rand(H, dtype=torch.float64, generator=generator) * (hi - lo)


class SSMKernel(nn.Module):
    """Base class of the SSM kernels.

    Subclasses implement `forward(L, rate=1.0) -> K (C, H, L)` and
    `discrete(L, rate=1.0) -> DiscreteSSM`.

    Args:
        d_model: H, the number of independent SSMs (features).
        channels: C, output channels per feature (LSSL's M).
        dt_min, dt_max: range of the initial timescale dt (per feature).
        dt_init: 'random' (log-uniform) or 'uniform' (log-spaced).
        learn_dt: train log(dt).
        lr_dt: learning-rate hint for log(dt) (None: the optimizer's global rate).
    """

    def __init__(
        self,
        d_model: int,
        channels: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init: str = "random",
        learn_dt: bool = True,
        lr_dt: float | None = 1e-3,
    ):
        super().__init__()
        check_length("d_model", d_model)
        check_length("channels", channels)
        self.d_model = d_model
        self.channels = channels
        log_dt = init_log_dt(d_model, dt_min, dt_max, dt_init).to(torch.get_default_dtype())
        self.register("log_dt", log_dt, learn=learn_dt, lr=lr_dt)

    def register(self, name: str, tensor: Tensor, learn: bool = True, lr: float | None = None) -> None:
        """Register an SSM tensor: a parameter with optimizer hints `_optim` (its own learning
        rate `lr`, None for the global one, and no weight decay), or a buffer if not `learn`.
        Complex tensors are stored as real views (..., 2); read them with `self.complex(name)`."""
        if tensor.is_complex():
            tensor = torch.view_as_real(tensor)
        tensor = tensor.detach().clone().contiguous()
        if learn:
            param = nn.Parameter(tensor)
            param._optim = {"lr": lr, "weight_decay": 0.0}
            self.register_parameter(name, param)
        else:
            self.register_buffer(name, tensor)

    def complex(self, name: str) -> Tensor:
        """A complex tensor stored as a real view by `register`."""
        return torch.view_as_complex(getattr(self, name))

    @property
    def dt(self) -> Tensor:
        """The per-feature step dt (H,)."""
        return self.log_dt.exp()

    def _check_call(self, L: int, rate: float) -> None:
        check_length("L", L)
        check_positive("rate", rate)

    def forward(self, L: int, rate: float = 1.0) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def discrete(self, L: int, rate: float = 1.0) -> DiscreteSSM:  # pragma: no cover - abstract
        raise NotImplementedError
