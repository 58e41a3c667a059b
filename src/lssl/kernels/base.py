"""The SSM kernel base class: per-feature timescale dt, optimizer hints, complex parameters.

A kernel owns the SSM parameters (A, B, C, dt) of H independent state-space models and turns
them into a real convolution kernel K (C, H, L) for any length L and sampling-rate factor
`rate` (the system is discretised with step dt * rate: rate = 2 reads data sampled twice as
sparsely as in training). It also exposes the same system in discrete, dense form (`discrete`)
for the recurrent view and for the oracles in `kernels/reference.py`.

Recurrent view and state passing (spec A.4, B.4, B.5). Every kernel also offers

* `default_state(batch)`: the zero state x_{-1} (B, H, S), S the kernel's state size;
* `recurrence(rate)`: its discrete system precomputed for stepping, an object whose
  `step(u_t, state)` returns y_t = Re(C x_t) (B, C, H) and x_t = A_bar x_{t-1} + B_bar u_t;
* `state_response(state, L, rate)`: the zero-input response Re(C A_bar^{t+1} x0), t < L, which
  the convolutional view adds to K * u to start from a state x0 = x_{-1};
* `final_state(u, state, rate)`: x_{L-1} = A_bar^L x0 + sum_l A_bar^{L-1-l} B_bar u_l.

The state is opaque to callers: a real (B, H, N) full state here, a complex (B, H, N/2) half
state for the conjugate-pair kernels. The defaults below work on the dense `discrete` system in
O(N^2) per step; structured kernels override them.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import torch
from torch import nn

from .._checks import check_choice, check_length, check_positive, tracing
from ..ops.linalg import solve

Tensor = torch.Tensor

DT_INITS = ("random", "uniform")


class DiscreteSSM(NamedTuple):
    """A discretised SSM in dense form, with K_l = Re(C A_bar^l B_bar) and
    x_k = A_bar x_{k-1} + B_bar u_k, y_k = Re(C x_k). Complex for conjugate-pair kernels, where
    the state is the full conjugate-symmetric one (so Re(...) is exact, not an approximation)."""

    A: Tensor  # (H, N, N)
    B: Tensor  # (H, N)
    C: Tensor  # (C, H, N)


def register(module: nn.Module, name: str, tensor: Tensor, learn: bool = True, lr: float | None = None) -> None:
    """Register an SSM tensor on `module`: a parameter with optimizer hints `_optim` (its own
    learning rate `lr`, None for the global one, and no weight decay), or a buffer if not
    `learn`. Complex tensors are stored as real views (..., 2). The tensor is copied, so
    expanded inputs become independent entries."""
    if tensor.is_complex():
        tensor = torch.view_as_real(tensor)
    tensor = tensor.detach().clone().contiguous()
    if learn:
        param = nn.Parameter(tensor)
        param._optim = {"lr": lr, "weight_decay": 0.0}
        module.register_parameter(name, param)
    else:
        module.register_buffer(name, tensor)


def full(x: Tensor) -> Tensor:
    """The full conjugate-symmetric vector concat(x, conj(x)) along the last dim, (..., N/2) ->
    (..., N), from the N/2 stored modes of a conjugate-pair kernel."""
    return torch.cat([x, x.conj()], dim=-1)


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype whose real and imaginary parts are `dtype`."""
    return torch.complex(torch.zeros((), dtype=dtype), torch.zeros((), dtype=dtype)).dtype


class Recurrence(Protocol):
    """A kernel's discrete system, precomputed for stepping (`SSMKernel.recurrence`)."""

    def step(self, u: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One sample: u (B, H) and x_{t-1} (B, H, S) -> y_t (B, C, H) real and x_t (B, H, S)."""
        ...  # pragma: no cover - protocol


def _real(z: Tensor) -> Tensor:
    """(..., K) complex as its (..., 2K) real view, real and imaginary parts interleaved."""
    return torch.view_as_real(z).flatten(-2)


def _complex(x: Tensor) -> Tensor:
    """Inverse of `_real`: (..., 2K) real as (..., K) complex."""
    return torch.view_as_complex(x.unflatten(-1, (-1, 2)))


def _functional(F: Tensor) -> Tensor:
    """The real matrix of the functionals x -> 2 Re(sum_n F_k,n x_n) on half states, so that
    `_real(x) @ _functional(F)` evaluates them all: 2 Re(F x) = 2 Re F Re x - 2 Im F Im x.

    Args:
        F: (K, H, N/2) complex.
    Returns:
        (H, N, K) real.
    """
    return _real(2 * F.conj()).permute(1, 2, 0)


class DenseRecurrence:
    """Dense step x_t = A_bar x_{t-1} + B_bar u_t, y_t = Re(C x_t): O(H N^2) per sample.

    Internally the state is laid out (H, B, N), so that both products are one batched matmul
    over the features; the state handed back is the (B, H, N) view of that tensor, which the
    next step reads without a copy.

    Args:
        A: (H, N, N). B: (H, N). C: (C, H, N). Real, or complex on a full conjugate-symmetric
            space (the output is then the real part).
    """

    def __init__(self, A: Tensor, B: Tensor, C: Tensor):
        # Contiguous copies, made once: bmm with transposed operands measured slower.
        self.A_T = A.mT.contiguous()  # (H, N, N)
        self.B = B[:, None, :]  # (H, 1, N)
        self.C_T = C.permute(1, 2, 0).contiguous()  # (H, N, C)
        self.is_complex = C.is_complex()

    def step(self, u: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """u (B, H), state (B, H, N) -> y (B, C, H) real, new state (B, H, N)."""
        # bmm then an in-place addcmul_ rather than one baddbmm, whose input term costs ~40 us
        # more at B = 1 on CPU.
        x = torch.bmm(state.transpose(0, 1), self.A_T)  # (H, B, N)
        x.addcmul_(u.T[..., None], self.B)
        y = torch.bmm(x, self.C_T)  # (H, B, C)
        if self.is_complex:
            y = y.real
        return y.permute(1, 2, 0), x.transpose(0, 1)


class DiagonalRecurrence:
    """Diagonal-plus-low-rank step on the half state of a conjugate-pair kernel, O(H N r):

        x_t = a * x_{t-1} + b u_t - sum_k U_k s_k,   s_k = 2 Re(sum_n V_k,n x_{t-1,n}),
        y_t = 2 Re(sum_n C_n x_t,n),

    for x_t (B, H, N/2) complex, the first half of the full conjugate-symmetric state
    (x, conj x), on which A_bar = diag(a, conj a) - sum_k (U_k, conj U_k)^T (V_k, conj V_k) and
    y = Re(C_full x_full) (spec E16). r = 0 (no U, V) is the diagonal S4D step.

    The input and low-rank terms are real multiples of complex vectors, so they are added in
    place (`addcmul_`) to the interleaved real view of a * x; the functionals s and y are
    batched matmuls over the features on that view. Every step costs a handful of kernel
    launches, independent of r beyond one `addcmul_` per rank.

    Args:
        a: (H, N/2) complex. b: (H, N/2) complex. C: (C, H, N/2) complex.
        U, V: (r, H, N/2) complex, or None for r = 0.
    """

    def __init__(self, a: Tensor, b: Tensor, C: Tensor, U: Tensor | None = None, V: Tensor | None = None):
        self.a = a  # (H, N/2)
        self.b = _real(b)  # (H, N)
        self.C = _functional(C).contiguous()  # (H, N, C)
        self.U = None if U is None else _real(-U)  # (r, H, N)
        self.V = None if V is None else _functional(V).contiguous()  # (H, N, r)

    def step(self, u: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """u (B, H), state (B, H, N/2) complex -> y (B, C, H) real, new state (B, H, N/2)."""
        x = _real(self.a * state)  # (B, H, N)
        x.addcmul_(u[..., None], self.b)
        if self.V is not None:
            s = torch.bmm(_real(state).transpose(0, 1), self.V)  # (H, B, r)
            for k, U_k in enumerate(self.U):
                x.addcmul_(s[..., k].T[..., None], U_k)
        y = torch.bmm(x.transpose(0, 1), self.C)  # (H, B, C)
        return y.permute(1, 2, 0), _complex(x)


def block_split(L: int) -> tuple[int, int]:
    """Block length T (the power of two nearest sqrt(L)) and block count J = ceil(L / T)."""
    T = 2 ** max(0, round(math.log2(math.sqrt(L))))
    return T, -(-L // T)


def squarings(M: Tensor, count: int) -> list[Tensor]:
    """The powers M^(2^k), k = 0..K, up to the first 2^K >= count: the factors of `doubling`
    (all but the last) and the power it returns (the last).

    Args:
        M: (..., N, N).
    Returns:
        K + 1 tensors (..., N, N).
    """
    powers = [M]
    while 2 ** (len(powers) - 1) < count:
        powers.append(powers[-1] @ powers[-1])
    return powers


def krylov_columns(powers: list[Tensor], X: Tensor, count: int) -> Tensor:
    """The columns M^i x, i < count, from x (..., N, 1) and the powers M^(2^k) of `squarings`:
    each round appends M^(2^k) times the columns so far (spec A.5)."""
    for P in powers:
        if X.shape[-1] >= count:
            break
        X = torch.cat([X, P @ X[..., : count - X.shape[-1]]], dim=-1)
    return X


def doubling(M: Tensor, X: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The columns M^i x, i < count, by repeated squaring (spec A.5).

    Args:
        M: (H, N, N). X: (..., H, N, 1).
    Returns:
        (..., H, N, count), and M^(2^k) for the first 2^k >= count.
    """
    powers = squarings(M, count)
    return krylov_columns(powers, X, count), powers[-1]


def dense_response(A: Tensor, C: Tensor, x0: Tensor, L: int) -> Tensor:
    """Zero-input response y_t = Re(C A^{t+1} x0) of a dense system, t < L, blocked as
    t = j T + i: (C A^{jT}) (A^{i+1} x0), with both sides built by doubling. Memory
    O(B H N T + C H N J + B C H L), T J ~ L; time O(H N^3 log L + (B + C) H N^2 sqrt(L)
    + B C H N L).

    Args:
        A: (H, N, N). C: (C, H, N). x0: (B, H, N). Complex for a full conjugate-symmetric space.
        L: length.
    Returns:
        (B, C, H, L) real.
    """
    T, J = block_split(L)
    right, A_T = doubling(A, A @ x0[..., None], T)  # (B, H, N, T), A^T
    # The last squaring inside the left doubling is never used; it costs one N^3 product.
    left, _ = doubling(A_T.mT, C[..., None], J)  # (C, H, N, J): columns (C A^{jT})^T
    y = (left.mT[None] @ right[:, None]).flatten(-2)[..., :L]  # (B, C, H, L)
    return y.real if y.is_complex() else y


def register_int(module: nn.Module, name: str) -> None:
    """Give `module` an integer buffer `name` (0 until set), saved with the state dict, and a
    Python-int copy `_name` for traced graphs, which cannot read a tensor's value (`get_int`).
    Change it with `set_int`; loading a state dict refreshes the copy."""
    module.register_buffer(name, torch.tensor(0))
    setattr(module, f"_{name}", 0)

    def refresh(mod: nn.Module, incompatible: object) -> None:
        buffer = getattr(mod, name)
        if not buffer.is_meta:
            setattr(mod, f"_{name}", int(buffer))

    module.register_load_state_dict_post_hook(refresh)


def get_int(module: nn.Module, name: str) -> int:
    """The integer buffer `name` of `register_int`: read from the buffer in eager mode (the
    truth, even if another module shares its storage), the Python copy while tracing or on the
    meta device."""
    buffer = getattr(module, name)
    if tracing() or buffer.is_meta:
        return getattr(module, f"_{name}")
    value = int(buffer)
    setattr(module, f"_{name}", value)
    return value


def set_int(module: nn.Module, name: str, value: int) -> None:
    """Set the integer buffer `name` of `register_int` (buffer and Python copy)."""
    getattr(module, name).fill_(value)
    setattr(module, f"_{name}", value)


def untruncated_C(A_bar: Tensor, C_tilde: Tensor, L: int) -> Tensor:
    """The plain C of a kernel that stores C~ = (I - A_bar^L)^T C (S4's truncated generating
    function): the solution of (I - A_bar^L)^T C = C~, L at least 1.

    Args:
        A_bar: (H, N, N). C_tilde: (C, H, N). L: the length C~ belongs to at this step.
    Returns:
        C (C, H, N), of C_tilde's dtype.
    """
    eye = torch.eye(A_bar.shape[-1], dtype=A_bar.dtype, device=A_bar.device)
    lhs = (eye - torch.linalg.matrix_power(A_bar, max(1, L))).mT  # (H, N, N)
    return solve(lhs, C_tilde[..., None])[..., 0]


def dense_final_state(A: Tensor, B: Tensor, u: Tensor, x0: Tensor | None = None) -> Tensor:
    """x_{L-1} = A^L x0 + sum_{k<L} A^k B u_{L-1-k} of a dense system.

    Blocked as k = j T + i: the block sums W_j = sum_i A^i B u_{L-1-jT-i} are one contraction
    with the T Krylov vectors A^i B, and sum_j A^{jT} W_j is reduced pairwise,
    W_j <- W_{2j} + A^{T 2^m} W_{2j+1}, in log J rounds. Memory O(H N T + B H N J);
    time O(H N^3 log L + B H N L + B H N^2 J).

    Args:
        A: (H, N, N). B: (H, N). u: (B, L, H) real. x0: (B, H, N) or None (zero state).
    Returns:
        (B, H, N), of A's dtype.
    """
    L = u.shape[1]
    T, J = block_split(L)
    u_rev = torch.nn.functional.pad(u.flip(1).transpose(1, 2), (0, J * T - L))  # (B, H, J T)
    right, M = doubling(A, B[..., None], T)  # (H, N, T), A^T
    W = torch.einsum("hnt,bhjt->bhjn", right, u_rev.unflatten(-1, (J, T)).to(right.dtype))  # (B, H, J, N)
    while W.shape[2] > 1:
        if W.shape[2] % 2:
            W = torch.cat([W, torch.zeros_like(W[:, :, :1])], dim=2)
        W = W[:, :, 0::2] + torch.einsum("hnm,bhjm->bhjn", M, W[:, :, 1::2])  # (B, H, J/2, N)
        if W.shape[2] > 1:
            M = M @ M
    x = W[:, :, 0]  # (B, H, N)
    if x0 is not None:
        x = x + (torch.linalg.matrix_power(A, L) @ x0[..., None])[..., 0]
    return x


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
    `discrete(L, rate=1.0) -> DiscreteSSM`, and set `d_state` (N). The recurrent view and the
    state passing (module docstring) default to the dense `discrete` system on a real (B, H, N)
    state; conjugate-pair kernels override them.

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

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, channels={self.channels}"

    def register(self, name: str, tensor: Tensor, learn: bool = True, lr: float | None = None) -> None:
        """`register` on this kernel; read complex tensors back with `self.complex(name)`."""
        register(self, name, tensor, learn, lr)

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

    def input_sum(self, rate: float = 1.0) -> Tensor:
        """s = 1^T B_bar (H,) real, the sum of the discrete input vector over the full state at
        step dt * rate (Liquid-S4's gain; `kernels/liquid.py`). Differentiable."""
        _, B, _ = self.discrete(1, rate)
        s = B.sum(-1)
        return s.real if s.is_complex() else s

    def irregular(
        self, u: Tensor, scale: Tensor, state: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """Irregular sampling: the SSM run with a step of its own, dt * scale[b, t], at every
        sample (the time gap before it), from `state` x_{-1} (None: zeros).

        Args:
            u: (B, L, H) input. scale: (B, L) positive. state: (B, H, S) or None.
        Returns:
            y (B, C, H, L) real, without the D term, and the final state (B, H, S).
        """
        raise NotImplementedError

    def default_state(self, batch: int) -> Tensor:
        """The zero state x_{-1} (B, H, S): here S = N, real, of the parameters' dtype."""
        check_length("batch", batch)
        return torch.zeros(batch, self.d_model, self.d_state, dtype=self.log_dt.dtype, device=self.log_dt.device)

    def recurrence(self, rate: float = 1.0) -> Recurrence:
        """The dense step (`DenseRecurrence`) of `discrete` at step dt * rate: O(H N^2) per
        sample. Differentiable when built with grad enabled."""
        return DenseRecurrence(*self.discrete(1, rate))

    def state_response(self, state: Tensor, L: int, rate: float = 1.0) -> Tensor:
        """Zero-input response Re(C A_bar^{t+1} x0), t < L, of x0 = `state` (B, H, S); the
        convolutional view adds it to K * u. Returns (B, C, H, L) real (see `dense_response`
        for its cost)."""
        A, _, C = self.discrete(L, rate)
        return dense_response(A, C, state, L)

    def final_state(self, u: Tensor, state: Tensor | None = None, rate: float = 1.0) -> Tensor:
        """The state x_{L-1} (B, H, S) after the input u (B, L, H), starting from `state`
        x_{-1} (None: zeros); see `dense_final_state` for its cost."""
        A, B, _ = self.discrete(1, rate)
        return dense_final_state(A, B, u, state)
