"""SSM layers: one set of SSM parameters, three views.

* convolution: ``layer(x)`` computes y = K * u + D u with the kernel K (C, H, L) by FFT;
* recurrence: ``layer.step(x_t, state)`` advances x_t = A_bar x_{t-1} + B_bar u_t one sample;
* continuous time: ``layer(x, rate=r)`` reads data sampled r times more sparsely (step dt * r).

After the SSM come the activation (GELU by default), dropout and a position-wise output mix of
the C channels of every feature back to H features (Linear(C H -> H), or GLU as in S4).
Inputs and outputs are (B, L, H); (B, H, L) exists only around the FFT convolution.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from ._checks import check_choice, check_finite, check_positive, check_rate, check_state, tracing
from .kernels.base import SSMKernel
from .kernels.diag import INITS as DIAG_INITS
from .kernels.diag import DiagKernel
from .kernels.dplr import DPLRKernel
from .kernels.krylov import KrylovKernel
from .kernels.liquid import OFFICIAL_TERMS, TERMS, KernelB, PolyB, check_degree
from .kernels.resolvent import ResolventKernel
from .ops.backend import check_backend
from .ops.fftconv import fftconv

Tensor = torch.Tensor

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "identity": nn.Identity}
MIXES = ("linear", "glu", "none")
# LSSL's kernels: one set of parameters (`LSSL`'s docstring says when to use which).
LSSL_KERNELS: dict[str, type[KrylovKernel]] = {"krylov": KrylovKernel, "resolvent": ResolventKernel}


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


# Parameter dtypes the layers run in: their kernels use complex arithmetic (FFTs, Cauchy and
# Vandermonde sums), which torch lacks for float16 and bfloat16 on most devices.
PARAMETER_DTYPES = (torch.float32, torch.float64)


def refuse_low_precision(fn: Any, what: str) -> None:
    """Raise if the module conversion `fn` (as given to `nn.Module._apply`) turns float32
    parameters into a dtype outside `PARAMETER_DTYPES`, before anything is converted."""
    dtype = fn(torch.zeros(())).dtype
    if dtype.is_floating_point and dtype not in PARAMETER_DTYPES:
        raise ValueError(
            f"{what} keeps its parameters in float32 or float64, not {dtype}: its kernels need complex arithmetic "
            "that torch lacks in half precision. For mixed precision keep float32 parameters and run under "
            "torch.autocast(device_type, dtype=torch.bfloat16) (or float16 on CUDA): the layers' SSM maths then "
            "stay in float32 and only their output mix follows autocast"
        )


def check_gaps(dt_scale: Any, shape: tuple[int, ...], layout: str) -> None:
    """Raise unless `dt_scale` is a tensor of `shape` ((B, L) or (B,)) of finite positive gaps."""
    if not isinstance(dt_scale, Tensor) or dt_scale.shape != shape:
        got = tuple(dt_scale.shape) if isinstance(dt_scale, Tensor) else type(dt_scale).__name__
        raise ValueError(f"dt_scale must have shape {layout} = {shape}, got {got}")
    check_positive("dt_scale", dt_scale)


class SSMLayer(nn.Module):
    """An SSM layer over any kernel.

    Args:
        kernel: the SSM kernel (owns A, B, C, dt); its `channels` is C per direction.
        activation: one of `ACTIVATIONS` ('gelu' default).
        dropout: dropout probability after the activation.
        mix: 'linear' (Linear(C H -> H), LSSL), 'glu' (Linear(C H -> 2H) then GLU, S4) or 'none'
            (no mixing: output (B, L, C H)).
        bidirectional: the kernel's channels are split in a forward (causal) half and a backward
            (anti-causal) half, both including the current sample; such a layer has no
            recurrent view.
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
        self._state_cache: tuple[Any, Tensor] | None = None

    def _apply(self, fn: Any, recurse: bool = True) -> SSMLayer:
        refuse_low_precision(fn, type(self).__name__)
        return super()._apply(fn, recurse)

    def _state_like(self) -> Tensor:
        """The kernel's zero state for one sequence (1, H, S), kept while the layer's device and
        dtype stay the same (steps check every state against it)."""
        key = (self.D.device, self.D.dtype)
        if self._state_cache is None or self._state_cache[0] != key:
            self._state_cache = (key, self.kernel.default_state(1))
        return self._state_cache[1]

    def _check_state(self, state: Any, batch: int) -> None:
        """Raise unless `state` can continue this layer for a batch of `batch` sequences."""
        check_state("state", state, self._state_like(), batch)

    def _output(self, y: Tensor) -> Tensor:
        """(B, L, C, H) or (B, C, H) SSM output + D u -> activation, dropout, mix."""
        return self.mix(self.dropout(self.activation(y.flatten(-2))))

    def _skip(self, y: Tensor, x: Tensor, pointwise: Tensor | None = None) -> Tensor:
        """The convolution's output y (B, C, H, L) plus D x, for x (B, L, H), plus an optional
        pointwise term (B, L, C, H): (B, L, C, H), contiguous, so that the activation's backward
        and the mix read one memory layout (a permuted view there costs the GELU backward ten
        times its contiguous time)."""
        skip = self.D * x[:, :, None]
        if pointwise is not None:
            skip.add_(pointwise)
        return skip.add_(y.permute(0, 3, 1, 2))

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
        rate = check_rate(rate)
        if self.bidirectional and (state is not None or return_state):
            raise ValueError("a bidirectional layer has no state: it sees the future of every step")
        if state is not None:
            self._check_state(state, x.shape[0])
        # The SSM maths run in the parameters' dtype even under autocast (mixed precision):
        # kernels and FFT convolutions are where half precision loses the long-range taps.
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(self.D.dtype)
            if dt_scale is not None:
                return self._irregular(x, state, return_state, rate, dt_scale)
            y, pointwise, final = self._convolve(x, state, return_state, rate)
            y = self._skip(y, x, pointwise)
        out = self._output(y)  # (B, L, H); the mix under autocast if it is on
        return (out, final) if return_state else out

    def _convolve(self, x: Tensor, state: Any, return_state: bool, rate: float) -> tuple[Tensor, Tensor | None, Any]:
        """The SSM part of `forward`: its convolution output (B, C, H, L) before the D skip, a
        pointwise term (B, L, C, H) for `_skip` (None here), and the final state if return_state
        (else None)."""
        L = x.shape[1]
        u = x.transpose(1, 2)  # (B, H, L)
        K = self.kernel(L, rate)  # (C or 2C, H, L)
        if self.bidirectional:
            forward, backward = K.chunk(2, dim=0)  # (C, H, L) each
            # The backward kernel convolves the reversed sequence; both halves include the
            # current sample (lag 0). This is our choice: the S4 code's two-sided kernel applies
            # the backward half one step later, to strictly future samples (spec F17), which
            # only LiquidS4(liquid_compat="official") reproduces (`liquid.official_conv`).
            y = fftconv(u, forward) + fftconv(u.flip(-1), backward).flip(-1)  # (B, C, H, L)
        else:
            y = fftconv(u, K)  # (B, C, H, L)
        if state is not None:
            y = y + self.kernel.state_response(state, L, rate)
        return y, None, self.kernel.final_state(x, state, rate) if return_state else None

    def _irregular(
        self, x: Tensor, state: Tensor | None, return_state: bool, rate: float, dt_scale: Tensor
    ) -> Tensor | tuple[Tensor, Tensor]:
        """`forward` with per-sample time gaps dt_scale (B, L)."""
        check_gaps(dt_scale, tuple(x.shape[:2]), "(B, L)")
        scale = dt_scale.to(x.dtype) * rate  # (B, L)
        y, final = self.kernel.irregular(x, scale, state)  # (B, C', H, L)
        if self.bidirectional:
            # The backward half reads the reversed sequence, where the gap before sample t is
            # the one after it in forward time (the last sample keeps its own gap).
            back_scale = torch.cat([scale[:, 1:], scale[:, -1:]], dim=1).flip(1)
            y_back, _ = self.kernel.irregular(x.flip(1), back_scale)
            y = y.chunk(2, dim=1)[0] + y_back.chunk(2, dim=1)[1].flip(-1)  # (B, C, H, L)
        out = self._output(self._skip(y, x))  # (B, L, H)
        return (out, final) if return_state else out

    def _step_with_gap(self, x: Tensor, state: Any, rate: float, dt_scale: Tensor) -> tuple[Tensor, Any]:
        """`step` after a gap dt_scale (B,): the irregular `forward` on one sample."""
        check_gaps(dt_scale, tuple(x.shape[:1]), "(B,)")
        y, state = self.forward(x[:, None], state, True, rate, dt_scale[:, None])
        return y[:, 0], state

    def default_state(self, batch: int) -> Tensor:
        """The zero state (B, H, S)."""
        return self.kernel.default_state(batch)

    def _recurrence(self, rate: float):
        """The system for stepping (`_build_recurrence`), rebuilt when any SSM tensor changed."""
        if tracing():
            # A traced graph holds the discretisation itself (it cannot look up a cache keyed on
            # storage addresses); compile or export `step` to get one graph for the whole step.
            return self._build_recurrence(rate)
        tensors = [*self.kernel.parameters(), *self.kernel.buffers()]
        if any(t.is_inference() for t in tensors):
            # Parameters made under torch.inference_mode have no version counter, so an in-place
            # change (load_state_dict) could not be seen: build the system afresh every call.
            return self._build_recurrence(rate)
        key = (rate, torch.is_grad_enabled(), *((t.data_ptr(), t._version) for t in tensors))
        if self._recurrence_cache is None or self._recurrence_cache[0] != key:
            self._recurrence_cache = (key, self._build_recurrence(rate))
        return self._recurrence_cache[1]

    def _build_recurrence(self, rate: float) -> Any:
        """The kernel's discrete system at step dt * rate (`SSMKernel.recurrence`)."""
        return self.kernel.recurrence(rate)

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
        rate = check_rate(rate)
        self._check_state(state, x.shape[0])
        if dt_scale is not None:
            return self._step_with_gap(x, state, rate, dt_scale)
        with torch.autocast(x.device.type, enabled=False):  # as in `forward`
            x = x.to(self.D.dtype)
            y, state = self._recurrence(rate).step(x, state)  # (B, C, H)
            y = y + self.D * x[:, None]
        return self._output(y), state


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
        kernel: how K is computed from the same parameters. 'krylov' (`KrylovKernel`): dense
            A_bar squared, O(H N^3 log L), any measure and disc; the one to use when A, B and dt
            are all frozen (its C-independent basis is then built once). 'resolvent'
            (`ResolventKernel`): the generating function through the TriD structure, O(H N L)
            with no N^3 term, for legs/legt/lagt and the GBT discretisations (not 'zoh'); it
            stores C~ = (I - A_bar^L)^T C in place of C (as S4 does). Measured on 2 CPU cores
            with backend='numba': the faster one from N = 128 up and at short sequences; at
            N = 64 and L = 16000 the dense kernel is (README, Benchmarks).
        backend: the resolvent kernel's solves: 'torch' (every device) or 'numba' (CPU
            tensors, compiled loops, same values; `pip install 'lssl[numba]'`).
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
        kernel: str = "krylov",
        backend: str = "torch",
        activation: str = "gelu",
        dropout: float = 0.0,
        mix: str = "linear",
        bidirectional: bool = False,
    ):
        check_choice("kernel", kernel, LSSL_KERNELS)
        check_backend(backend)
        if kernel == "krylov" and backend != "torch":
            raise ValueError(f"backend={backend!r} runs the resolvent kernel's solves; use kernel='resolvent'")
        extra = {"backend": backend} if kernel == "resolvent" else {}
        ssm = LSSL_KERNELS[kernel](
            d_model, d_state, channels=channels * (2 if bidirectional else 1), measure=measure, disc=disc,
            learn_a=learn_a, share_a=share_a, lr=lr, dt_min=dt_min, dt_max=dt_max, learn_dt=learn_dt, lr_dt=lr_dt,
            **extra,
        )
        super().__init__(ssm, activation=activation, dropout=dropout, mix=mix, bidirectional=bidirectional)


class S4(SSMLayer):
    """S4 (Gu et al. 2022): DPLR state matrix A = Lambda - P P^* from HiPPO's NPLR form, kernel by
    Cauchy sums and Woodbury, bilinear discretisation, GLU output mix.

    Args:
        d_model: H. d_state: N (even). measure: initial HiPPO measure. channels: C.
        n_ssm: distinct (Lambda, P, B) copies (None: one per feature).
        learn: train Lambda, P, B. lr: their learning-rate hint. learn_dt, lr_dt, dt_min,
        dt_max: timescales. l_max: the first kernel length (None: the first input's).
        backend: 'torch' (every device) or 'numba' (CPU tensors: the kernel's Cauchy sums as
            fused compiled loops, same values, about 2x faster; needs
            `pip install 'lssl[numba]'`).
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
        backend: str = "torch",
        activation: str = "gelu",
        dropout: float = 0.0,
        mix: str = "glu",
        bidirectional: bool = False,
    ):
        kernel = DPLRKernel(
            d_model, d_state, channels=channels * (2 if bidirectional else 1), measure=measure, n_ssm=n_ssm,
            dt_min=dt_min, dt_max=dt_max, learn_dt=learn_dt, lr_dt=lr_dt, learn=learn, lr=lr, l_max=l_max,
            backend=backend,
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


class LiquidState(NamedTuple):
    """The state of a Liquid-S4 layer: the SSM state (B, H, S) and the liquid memory (B, H, M)
    (KB: the running e_1 .. e_{P-1} of the past inputs; PB: the last max(W_p) - 1 inputs)."""

    ssm: Tensor
    memory: Tensor


class LiquidRecurrence(NamedTuple):
    """What a Liquid-S4 step needs: the kernel's recurrence, s = 1^T B_bar (H,) and
    K_0 = Re(C B_bar) (1, C, H)."""

    ssm: Any
    s: Tensor
    K0: Tensor


LIQUID_KERNELS = ("dplr", "diag")
LIQUID_COMPAT = ("official",)


class LiquidS4(SSMLayer):
    """Liquid-S4 (Hasani et al., ICLR 2023): an S4 layer plus the input-correlation terms of the
    linearised liquid time-constant SSM x_k = A_bar x_{k-1} + B_bar u_k (1 + 1^T x_{k-1}) up to
    order `degree`, in the paper's simplified KB or PB form (`kernels/liquid.py`): causal,
    differentiable in every SSM parameter, with rate, state passing and a recurrent step.

    Args:
        d_model: H. d_state: N (even).
        degree: P >= 1, the highest order of input products; 1 is plain S4, bit for bit.
            Settable after construction (`layer.degree = 3`); make new states then.
        liquid: 'pb' (powers of B over a causal window; the paper's recommended kernel) or 'kb'
            (the S4 kernel times powers of s over the whole past).
        window: PB only: the window W in samples for every order, or None for the official rule
            W_p = min{n : binom(n, p) >= l}, l = l_max or else the first input's length (then
            fixed, so chunks, steps and whole sequences agree).
        liquid_gain: 'zero' (the default): a learnable per-feature gain g (H,) multiplies the
            liquid term (PB: K_0 z; KB: K * (w - u), through its SSM input), initialised at 0
            so that training starts from the S4 part exactly; it takes the `lr` hint and no
            weight decay (decay would pull it back towards S4). 'none' (or None): the liquid
            term as the paper defines it, at full size from the start. The default follows the
            README's quality study, where the plain PB term failed to train on one seed of
            three and the gained one never trailed S4 by more than noise. liquid_compat
            ignores it.
        liquid_scale: None, or 'normalized': each order's term is divided by the square root of
            its (largest) number of input products, sqrt(binom(W_p, p)) for PB and
            sqrt(binom(l-1, p-1)) for KB (l as for PB's default windows), so that for
            unit-variance inputs it has unit-order variance whatever the window, length and
            degree (`PolyB`, `KernelB`). Either option changes only the liquid term; the
            README's Liquid-S4 section has the diagnosis behind them.
        liquid_compat: None, or 'official' to reproduce the published code's non-causal terms
            (spec C.4: frozen initial parameters, time-reversed correlations of the last n_p
            steps, s^(2^(p-1) - 1), the mismatched KB frequency grids, and for bidirectional
            layers the backward half one step later than ours, at every degree), for comparison
            with published numbers only: no state, no step, no gradient to the SSM from PB.
        kernel: 'dplr' (S4, A = Lambda - P P^*) or 'diag' (S4D, bilinear).
        backend: 'torch' (every device) or 'numba' (CPU tensors: the PB window polynomials or
            the KB prefix recurrence, and for kernel='dplr' the Cauchy sums as in `S4`, as
            compiled loops, same values; needs `pip install 'lssl[numba]'`).
        measure: the initial A: a HiPPO measure for 'dplr', an S4D init ('legs', 'inv', 'lin',
            'real') for 'diag'.
        channels, n_ssm, learn, lr, learn_dt, lr_dt, dt_min, dt_max, l_max, activation, dropout,
        mix, bidirectional: as in `S4` (l_max also sets the default PB window length).
    Input and output (B, L, H); the state is a `LiquidState`.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        degree: int = 2,
        liquid: str = "pb",
        window: int | None = None,
        liquid_gain: str | None = "zero",
        liquid_scale: str | None = None,
        liquid_compat: str | None = None,
        kernel: str = "dplr",
        backend: str = "torch",
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
        check_degree(degree)
        check_choice("liquid", liquid, TERMS)
        check_choice("kernel", kernel, LIQUID_KERNELS)
        if liquid_compat is not None:
            check_choice("liquid_compat", liquid_compat, LIQUID_COMPAT)
        if window is not None and (liquid != "pb" or liquid_compat is not None):
            raise ValueError("window applies to the causal PB term only (liquid='pb', liquid_compat=None)")
        if liquid_compat is not None and liquid_scale is not None:
            raise ValueError("liquid_scale applies to our causal terms, not liquid_compat")
        check_backend(backend)
        if backend != "torch" and liquid_compat is not None:
            raise ValueError(f"backend={backend!r} computes our causal terms, not liquid_compat={liquid_compat!r}")
        common = dict(
            channels=channels * (2 if bidirectional else 1), n_ssm=n_ssm, dt_min=dt_min, dt_max=dt_max,
            learn_dt=learn_dt, lr_dt=lr_dt, learn=learn, lr=lr,
        )
        if kernel == "dplr":
            ssm = DPLRKernel(d_model, d_state, measure=measure, l_max=l_max, backend=backend, **common)
        else:
            check_choice("measure", measure, DIAG_INITS)
            ssm = DiagKernel(d_model, d_state, init=measure, disc="bilinear", **common)
        super().__init__(ssm, activation=activation, dropout=dropout, mix=mix, bidirectional=bidirectional)
        if liquid_compat is not None:
            lam, B = ssm.modes()
            self.liquid = OFFICIAL_TERMS[liquid](degree, lam, B, ssm.complex("C"), ssm.log_dt)
        else:
            options = dict(backend=backend, gain=liquid_gain, scale=liquid_scale, d_model=d_model, lr=lr)
            self.liquid = PolyB(degree, window, **options) if liquid == "pb" else KernelB(degree, **options)
            if l_max is not None:
                self.liquid.set_length(l_max)

    @property
    def degree(self) -> int:
        """P, the highest order of input products (1: plain S4)."""
        return self.liquid.degree

    @degree.setter
    def degree(self, degree: int) -> None:
        self.liquid.degree = degree

    def _check_state(self, state: Any, batch: int) -> None:
        if not isinstance(state, LiquidState):
            raise ValueError(
                "state must be a LiquidState (from default_state, step or return_state=True), "
                f"got {type(state).__name__}"
            )
        check_state("state.ssm", state.ssm, self._state_like(), batch)
        M = self.liquid.memory_size()
        expected = (batch, self.d_model, M)
        if tuple(state.memory.shape) != expected:
            raise ValueError(
                f"state.memory must have shape (B, H, M) = {expected} for degree {self.degree}, got "
                f"{tuple(state.memory.shape)}; make a new state with default_state after changing degree"
            )

    def _check_causal(self) -> None:
        if not self.liquid.causal:
            raise ValueError(
                "liquid_compat='official' has no recurrent view or state: the published code's liquid "
                "terms are non-causal (its step drops them); use liquid_compat=None for a causal Liquid-S4"
            )

    def _check_dt_scale(self, dt_scale: Tensor | None) -> None:
        if dt_scale is not None and self.degree > 1:
            raise ValueError(
                "LiquidS4 with degree > 1 does not take dt_scale: its liquid terms are products of "
                "samples on a regular grid (irregular sampling works at degree 1, plain S4)"
            )

    def forward(
        self,
        x: Tensor,
        state: LiquidState | None = None,
        return_state: bool = False,
        rate: float = 1.0,
        dt_scale: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, LiquidState]:
        """Convolutional view; arguments and shapes as in `SSMLayer.forward`, with a `LiquidState`
        (dt_scale only at degree 1)."""
        check_input("x", x, self.d_model, 3)
        self._check_dt_scale(dt_scale)
        if state is not None or return_state:
            self._check_causal()
        self.liquid.set_length(x.shape[1])
        return super().forward(x, state, return_state, rate, dt_scale)

    def _plain_state(self, ssm: Tensor) -> LiquidState:
        """The `LiquidState` of a degree-1 layer: the SSM state and an empty memory."""
        return LiquidState(ssm, ssm.new_zeros(ssm.shape[0], self.d_model, 0, dtype=self.kernel.log_dt.dtype))

    def _convolve(
        self, x: Tensor, state: LiquidState | None, return_state: bool, rate: float
    ) -> tuple[Tensor, Tensor | None, LiquidState | None]:
        """`SSMLayer._convolve` with the liquid terms (plain S4 at degree 1)."""
        ssm = None if state is None else state.ssm
        # The published code's terms compute its S4 convolution too (bidirectional offset).
        if self.degree == 1 and self.liquid.causal:
            y, pointwise, final = super()._convolve(x, ssm, return_state, rate)
            return y, pointwise, None if final is None else self._plain_state(final)
        L = x.shape[1]
        u = x.transpose(1, 2)  # (B, H, L)
        K = self.kernel(L, rate)  # (C or 2C, H, L)
        s = self.kernel.input_sum(rate)  # (H,)
        y, pointwise, w, memory = self.liquid(u, K, s, None if state is None else state.memory, self.bidirectional)
        if state is not None:
            y = y + self.kernel.state_response(ssm, L, rate)
        if not return_state:
            return y, pointwise, None
        return y, pointwise, LiquidState(self.kernel.final_state(w.transpose(1, 2), ssm, rate), memory)

    def _irregular(
        self, x: Tensor, state: LiquidState | None, return_state: bool, rate: float, dt_scale: Tensor
    ) -> Tensor | tuple[Tensor, LiquidState]:
        """`SSMLayer._irregular` (degree 1 only) on the SSM part of a `LiquidState`."""
        out = super()._irregular(x, None if state is None else state.ssm, return_state, rate, dt_scale)
        return (out[0], self._plain_state(out[1])) if return_state else out

    def default_state(self, batch: int) -> LiquidState:
        """The zero state: zero SSM state and an empty past."""
        self._check_causal()
        ssm = self.kernel.default_state(batch)
        memory = self.kernel.log_dt.new_zeros(batch, self.d_model, self.liquid.memory_size())
        return LiquidState(ssm, memory)

    def _build_recurrence(self, rate: float) -> LiquidRecurrence:
        """The kernel's recurrence with s and K_0 = Re(C B_bar), the output of one unit input from
        the zero state, so that the PB term uses exactly the step's own C and B_bar."""
        ssm = self.kernel.recurrence(rate)
        ones = torch.ones(1, self.d_model, dtype=self.kernel.log_dt.dtype, device=self.kernel.log_dt.device)
        K0, _ = ssm.step(ones, self.kernel.default_state(1))  # (1, C, H)
        return LiquidRecurrence(ssm, self.kernel.input_sum(rate), K0)

    def step(
        self, x: Tensor, state: LiquidState, rate: float = 1.0, dt_scale: Tensor | None = None
    ) -> tuple[Tensor, LiquidState]:
        """Recurrent view: one sample, x (B, H) -> y (B, H), with the `LiquidState` before and after
        (dt_scale only at degree 1)."""
        if self.bidirectional:
            raise ValueError("a bidirectional layer has no recurrent view: it sees the future of every step")
        self._check_causal()
        check_input("x", x, self.d_model, 2)
        rate = check_rate(rate)
        self._check_dt_scale(dt_scale)
        self._check_state(state, x.shape[0])
        if dt_scale is not None:
            return self._step_with_gap(x, state, rate, dt_scale)
        with torch.autocast(x.device.type, enabled=False):  # as in `SSMLayer.forward`
            x = x.to(self.D.dtype)
            system = self._recurrence(rate)
            if self.degree == 1:
                y, ssm = system.ssm.step(x, state.ssm)  # (B, C, H)
                memory = state.memory
            else:
                w, z, memory = self.liquid.signals(x[..., None], system.s, state.memory)  # (B, H, 1) each
                y, ssm = system.ssm.step(w[..., 0], state.ssm)  # (B, C, H)
                if z is not None:
                    y = y + system.K0 * z[:, None, :, 0]
            y = y + self.D * x[:, None]
        return self._output(y), LiquidState(ssm, memory)


LAYERS: dict[str, type[SSMLayer]] = {"lssl": LSSL, "s4": S4, "s4d": S4D, "liquid-s4": LiquidS4}
