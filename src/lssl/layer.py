"""SSM layers: one set of SSM parameters, three views.

* convolution: ``layer(x)`` computes y = K * u + D u with the kernel K (C, H, L) by FFT;
* recurrence: ``layer.step(x_t, state)`` advances x_t = A_bar x_{t-1} + B_bar u_t one sample;
* continuous time: ``layer(x, rate=r)`` reads data sampled r times more sparsely (step dt * r).

After the SSM come the activation (GELU by default), dropout and a position-wise output mix of
the C channels of every feature back to H features (Linear(C H -> H), or GLU as in S4).
Inputs and outputs are (B, L, H); (B, H, L) exists only around the FFT convolution.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._checks import check_choice, check_finite, check_positive
from .kernels.base import SSMKernel
from .kernels.diag import DiagKernel
from .kernels.dplr import DPLRKernel
from .kernels.krylov import KrylovKernel
from .ops.fftconv import fftconv

Tensor = torch.Tensor

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "identity": nn.Identity}
MIXES = ("linear", "glu", "none")


def check_input(name: str, x: Tensor, width: int, rank: int) -> None:
    """Raise unless `x` is a finite floating tensor of the given rank with last dim `width`."""
    layout = "(B, L, H)" if rank == 3 else "(B, H)"
    if not isinstance(x, Tensor) or x.dim() != rank:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must have shape {layout} with H={width}, got {got}")
    if x.shape[-1] != width:
        raise ValueError(f"{name} must have shape {layout} with H={width}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    check_finite(name, x)


class SSMLayer(nn.Module):
    """An SSM layer over any kernel.

    Args:
        kernel: the SSM kernel (owns A, B, C, dt); its `channels` is C per direction.
        activation: one of `ACTIVATIONS` ('gelu' default).
        dropout: dropout probability after the activation.
        mix: 'linear' (Linear(C H -> H), LSSL), 'glu' (Linear(C H -> 2H) then GLU, S4) or 'none'
            (no mixing: output (B, L, C H)).
        bidirectional: the kernel's channels are split in a forward (causal) half and a backward
            (anti-causal) half; such a layer has no recurrent view.
    Shapes: D (C, H); input x (B, L, H); output (B, L, H) (or (B, L, C H) with mix='none').
    """

    def __init__(
        self,
        kernel: SSMKernel,
        activation: str = "gelu",
        dropout: float = 0.0,
        mix: str = "linear",
        bidirectional: bool = False,
    ):
        super().__init__()
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("mix", mix, MIXES)
        if bidirectional and kernel.channels % 2:
            raise ValueError(f"a bidirectional layer needs an even number of kernel channels, got {kernel.channels}")
        self.kernel = kernel
        self.d_model = kernel.d_model
        self.bidirectional = bidirectional
        self.channels = kernel.channels // 2 if bidirectional else kernel.channels
        self.D = nn.Parameter(torch.randn(self.channels, self.d_model))
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        width = self.channels * self.d_model
        self.mix_kind = mix
        self.mix = {
            "linear": lambda: nn.Linear(width, self.d_model),
            "glu": lambda: nn.Sequential(nn.Linear(width, 2 * self.d_model), nn.GLU(dim=-1)),
            "none": nn.Identity,
        }[mix]()
        self._recurrence_cache: tuple[Any, Any] | None = None

    def _output(self, y: Tensor) -> Tensor:
        """(B, L, C, H) or (B, C, H) SSM output + D u -> activation, dropout, mix."""
        return self.mix(self.dropout(self.activation(y.flatten(-2))))

    def forward(
        self,
        x: Tensor,
        state: Tensor | None = None,
        return_state: bool = False,
        rate: float = 1.0,
        dt_scale: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Convolutional view (or, with `dt_scale`, the irregular-sampling recurrence).

        Args:
            x: (B, L, H) input.
            state: (B, H, S) state before x[:, 0] (from `default_state`, `step` or a previous
                call with return_state=True); None for the zero state.
            return_state: also return the state after x[:, -1].
            rate: sampling-rate factor; the SSM runs with step dt * rate (rate = 2: x is
                sampled half as often as the training data).
            dt_scale: (B, L) positive time gaps for irregular sampling: sample t follows
                sample t - 1 after dt_scale[b, t] training steps, so the SSM steps by
                dt * rate * dt_scale[b, t] there (the first entry is the gap from the state's
                time). All ones is the plain forward. Cost: see the kernel's `irregular`
                (S4D a parallel scan; S4 and LSSL a loop over time).
        Returns:
            y (B, L, H), and the final state (B, H, S) if return_state.
        """
        check_input("x", x, self.d_model, 3)
        check_positive("rate", rate)
        if self.bidirectional and (state is not None or return_state):
            raise ValueError("a bidirectional layer has no state: it sees the future of every step")
        if dt_scale is not None:
            return self._irregular(x, state, return_state, rate, dt_scale)
        L = x.shape[1]
        u = x.transpose(1, 2)  # (B, H, L)
        K = self.kernel(L, rate)  # (C or 2C, H, L)
        if self.bidirectional:
            forward, backward = K.chunk(2, dim=0)  # (C, H, L) each
            # The backward kernel convolves the reversed sequence; both halves include the
            # current sample (lag 0), as in the S4 code's two-sided kernel.
            y = fftconv(u, forward) + fftconv(u.flip(-1), backward).flip(-1)  # (B, C, H, L)
        else:
            y = fftconv(u, K)  # (B, C, H, L)
        if state is not None:
            y = y + self.kernel.state_response(state, L, rate)
        y = y + self.D[..., None] * u[:, None]  # (B, C, H, L)
        out = self._output(y.permute(0, 3, 1, 2))  # (B, L, H)
        if return_state:
            return out, self.kernel.final_state(x, state, rate)
        return out

    def _irregular(
        self, x: Tensor, state: Tensor | None, return_state: bool, rate: float, dt_scale: Tensor
    ) -> Tensor | tuple[Tensor, Tensor]:
        """`forward` with per-sample time gaps dt_scale (B, L)."""
        if not isinstance(dt_scale, Tensor) or dt_scale.shape != x.shape[:2]:
            got = tuple(dt_scale.shape) if isinstance(dt_scale, Tensor) else type(dt_scale).__name__
            raise ValueError(f"dt_scale must have shape (B, L) = {tuple(x.shape[:2])}, got {got}")
        check_positive("dt_scale", dt_scale)
        scale = dt_scale.to(x.dtype) * rate  # (B, L)
        y, final = self.kernel.irregular(x, scale, state)  # (B, C', H, L)
        if self.bidirectional:
            # The backward half reads the reversed sequence, where the gap before sample t is
            # the one after it in forward time (the last sample keeps its own gap).
            back_scale = torch.cat([scale[:, 1:], scale[:, -1:]], dim=1).flip(1)
            y_back, _ = self.kernel.irregular(x.flip(1), back_scale)
            y = y.chunk(2, dim=1)[0] + y_back.chunk(2, dim=1)[1].flip(-1)  # (B, C, H, L)
        y = y + self.D[..., None] * x.transpose(1, 2)[:, None]  # (B, C, H, L)
        out = self._output(y.permute(0, 3, 1, 2))  # (B, L, H)
        return (out, final) if return_state else out

    def default_state(self, batch: int) -> Tensor:
        """The zero state (B, H, S)."""
        return self.kernel.default_state(batch)

    def _recurrence(self, rate: float):
        """The kernel's discrete system for stepping, rebuilt when any SSM tensor changed."""
        tensors = [*self.kernel.parameters(), *self.kernel.buffers()]
        key = (rate, torch.is_grad_enabled(), *((t.data_ptr(), t._version) for t in tensors))
        if self._recurrence_cache is None or self._recurrence_cache[0] != key:
            self._recurrence_cache = (key, self.kernel.recurrence(rate))
        return self._recurrence_cache[1]

    def step(
        self, x: Tensor, state: Tensor, rate: float = 1.0, dt_scale: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Recurrent view: one sample.

        Args:
            x: (B, H) input at one time step. state: (B, H, S). rate: as in `forward`.
            dt_scale: (B,) time gap before this sample, in training steps, for irregularly
                sampled streams (None: 1); each call then discretises afresh.
        Returns:
            y (B, H) and the new state (B, H, S).
        """
        if self.bidirectional:
            raise ValueError("a bidirectional layer has no recurrent view: it sees the future of every step")
        check_input("x", x, self.d_model, 2)
        if dt_scale is not None:
            if not isinstance(dt_scale, Tensor) or dt_scale.shape != x.shape[:1]:
                got = tuple(dt_scale.shape) if isinstance(dt_scale, Tensor) else type(dt_scale).__name__
                raise ValueError(f"dt_scale must have shape (B,) = {tuple(x.shape[:1])}, got {got}")
            y, state = self.forward(x[:, None], state, True, rate, dt_scale[:, None])
            return y[:, 0], state
        y, state = self._recurrence(rate).step(x, state)  # (B, C, H)
        return self._output(y + self.D * x[:, None]), state


class LSSL(SSMLayer):
    """The Linear State-Space Layer (Gu et al. 2021): a HiPPO transition A, learned or fixed,
    with per-feature timescales dt and C output channels mixed back by a Linear layer.

    Args:
        d_model: H. d_state: N. measure: 'legs', 'legt', 'lagt' or 'fout'.
        channels: M output channels per feature.
        learn_a, share_a: the paper's learn modes: 0 = learn_a False (LSSL-fixed), 1 = learned
            A shared across features, 2 = learned A per feature (share_a False).
        learn_dt: train the timescales. dt_min, dt_max: their initial range.
        lr, lr_dt: learning-rate hints (1e-4 for A and B, 1e-3 for dt; no weight decay).
        disc: discretisation ('bilinear' as in the paper, or 'zoh', ...).
        activation, dropout, mix, bidirectional: see `SSMLayer`.
    Input and output (B, L, H).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        measure: str = "legs",
        channels: int = 1,
        learn_a: bool = True,
        share_a: bool = True,
        learn_dt: bool = True,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        lr: float | None = 1e-4,
        lr_dt: float | None = 1e-3,
        disc: str = "bilinear",
        activation: str = "gelu",
        dropout: float = 0.0,
        mix: str = "linear",
        bidirectional: bool = False,
    ):
        kernel = KrylovKernel(
            d_model, d_state, channels=channels * (2 if bidirectional else 1), measure=measure, disc=disc,
            learn_a=learn_a, share_a=share_a, lr=lr, dt_min=dt_min, dt_max=dt_max, learn_dt=learn_dt, lr_dt=lr_dt,
        )
        super().__init__(kernel, activation=activation, dropout=dropout, mix=mix, bidirectional=bidirectional)


class S4(SSMLayer):
    """S4 (Gu et al. 2022): DPLR state matrix A = Lambda - P P^* from HiPPO's NPLR form, kernel by
    Cauchy sums and Woodbury, bilinear discretisation, GLU output mix.

    Args:
        d_model: H. d_state: N (even). measure: initial HiPPO measure. channels: C.
        n_ssm: distinct (Lambda, P, B) copies (None: one per feature).
        learn: train Lambda, P, B. lr: their learning-rate hint. learn_dt, lr_dt, dt_min,
        dt_max: timescales. l_max: the first kernel length (None: the first input's).
        activation, dropout, mix, bidirectional: see `SSMLayer`.
    Input and output (B, L, H).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        measure: str = "legs",
        channels: int = 1,
        n_ssm: int | None = None,
        learn: bool = True,
        lr: float | None = 1e-3,
        learn_dt: bool = True,
        lr_dt: float | None = 1e-3,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        l_max: int | None = None,
        activation: str = "gelu",
        dropout: float = 0.0,
        mix: str = "glu",
        bidirectional: bool = False,
    ):
        kernel = DPLRKernel(
            d_model, d_state, channels=channels * (2 if bidirectional else 1), measure=measure, n_ssm=n_ssm,
            dt_min=dt_min, dt_max=dt_max, learn_dt=learn_dt, lr_dt=lr_dt, learn=learn, lr=lr, l_max=l_max,
        )
        super().__init__(kernel, activation=activation, dropout=dropout, mix=mix, bidirectional=bidirectional)


class S4D(SSMLayer):
    """S4D (Gu et al. 2022): diagonal complex state matrix, kernel by a Vandermonde product.

    Args:
        d_model: H. d_state: N (even). init: 'legs', 'inv', 'lin' or 'real'.
        disc: 'zoh' or 'bilinear'. channels: C. n_ssm: distinct (Lambda, B) copies.
        learn, lr, learn_dt, lr_dt, dt_min, dt_max: as in `S4`.
        activation, dropout, mix, bidirectional: see `SSMLayer`.
    Input and output (B, L, H).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        init: str = "legs",
        disc: str = "zoh",
        channels: int = 1,
        n_ssm: int | None = None,
        learn: bool = True,
        lr: float | None = 1e-3,
        learn_dt: bool = True,
        lr_dt: float | None = 1e-3,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        activation: str = "gelu",
        dropout: float = 0.0,
        mix: str = "glu",
        bidirectional: bool = False,
    ):
        kernel = DiagKernel(
            d_model, d_state, channels=channels * (2 if bidirectional else 1), init=init, disc=disc, n_ssm=n_ssm,
            dt_min=dt_min, dt_max=dt_max, learn_dt=learn_dt, lr_dt=lr_dt, learn=learn, lr=lr,
        )
        super().__init__(kernel, activation=activation, dropout=dropout, mix=mix, bidirectional=bidirectional)


LAYERS: dict[str, type[SSMLayer]] = {"lssl": LSSL, "s4": S4, "s4d": S4D}
