"""The LSSL kernel: a HiPPO state matrix (fixed, or learned in the structured family of
`transition.py`), discretised densely per feature, and its Krylov kernel K_l = C A_bar^l B_bar
computed by blocked repeated squaring.

The official code builds the whole Krylov matrix [B_bar, A_bar B_bar, ..., A_bar^{L-1} B_bar]
(H, N, L) and then contracts it with C, so memory grows as H N L (2.1 GB per layer at
H = 256, N = 128, L = 16k, more with autograd). When only K is needed we split l = j T + i with
T ~ sqrt(L) and contract from both sides:

    K[j T + i] = (C A_bar^{j T}) (A_bar^i B_bar),

so only the T right vectors A_bar^i B_bar and the J = L / T left vectors C A_bar^{jT} are kept,
each built by doubling (spec A.5): O(H N^3 log L + H N^2 sqrt(L) + C H N L) time and
O(H N (N log L + sqrt(L))) memory instead of O(H N L).
"""

from __future__ import annotations

import torch

from .. import discretize
from .._checks import check_choice, check_length, tracing
from .base import DiscreteSSM, SSMKernel, block_split, doubling, krylov_columns, squarings
from .transition import TRANSITIONS, DenseTransition

Tensor = torch.Tensor


def krylov_basis(A: Tensor, B: Tensor, L: int) -> tuple[Tensor, list[Tensor]]:
    """The C-independent half of `krylov_kernel`: the T right vectors A^i B and the powers
    (A^T)^(2^k) that build the J left vectors C A^{jT} from any C.

    Args:
        A: (H, N, N) discrete state matrix. B: (H, N). L: kernel length.
    Returns:
        right (H, N, T) and the powers, each (H, N, N), of (A^T)^T (transposed for the left side).
    """
    T, J = block_split(L)
    right, A_T = doubling(A, B[..., None], T)  # (H, N, T), A^T
    # The last power of the left doubling is never used: drop it (one N^3 product).
    return right, squarings(A_T.mT, J)[:-1]


def krylov_contract(right: Tensor, powers: list[Tensor], C: Tensor, L: int) -> Tensor:
    """K (C, H, L) from `krylov_basis` and C (C, H, N): the left vectors (C A^{jT})^T by doubling
    on C, then K[j T + i] = (C A^{jT}) (A^i B)."""
    _, J = block_split(L)
    left = krylov_columns(powers, C[..., None], J)  # (C, H, N, J)
    return (left.mT @ right).flatten(-2)[..., :L]  # (C, H, J, T) -> (C, H, L)


def krylov_kernel(A: Tensor, B: Tensor, C: Tensor, L: int) -> Tensor:
    """K_l = C A^l B for l < L by blocked doubling.

    Args:
        A: (H, N, N) discrete state matrix. B: (H, N). C: (C, H, N). L: kernel length.
    Returns:
        K (C, H, L).
    """
    return krylov_contract(*krylov_basis(A, B, L), C, L)


DISCRETIZATIONS = tuple(discretize.DENSE)


def _versions(tensors: list[Tensor]) -> tuple:
    """What identifies the values of `tensors` for a memo: _version counts in-place updates
    (optimizer steps, copy_); data_ptr, dtype and device change when a tensor is replaced or
    converted."""
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)


class KrylovKernel(SSMKernel):
    """LSSL kernel with a dense or structured HiPPO transition (spec A.1–A.6).

    The paper's learn modes map to (learn_a, share_a) as:
        0 (LSSL-fixed): learn_a=False. A, B are the exact `hippo.transition` matrices, frozen
            (buffers of a shared `DenseTransition`; share_a is ignored since per-feature frozen
            copies would be identical);
        1: learn_a=True, share_a=True. One learnable transition shared by all features;
        2: learn_a=True, share_a=False. One learnable transition per feature.
    A learnable transition is the TriD family of LSSL App. E.2 for legs, legt and lagt (7N - 2
    numbers, `transition.TriDTransition`) and dense for fout; at init it is exactly the fixed
    HiPPO pair, so the learned and fixed kernels start equal.

    Frozen kernels are cached: when no parameter requires grad, or grad is disabled (eval /
    inference), the last K is memoised with its (L, rate) and recomputed as soon as any
    parameter or buffer changes (in place, by an optimizer or `load_state_dict`, or by `.to()`),
    unlike the official code, which reuses a stale kernel at evaluation (spec F5). Likewise,
    while A, B and dt are frozen (LSSL-fixed with learn_dt=False), the C-independent Krylov
    basis is memoised, so a training step only contracts it with C.

    Args:
        d_model: H features. d_state: N. channels: C output channels per feature (LSSL's M).
        measure: HiPPO measure of the initial A, one of `hippo.MEASURES`.
        disc: one of 'bilinear' (LSSL's choice), 'zoh', 'forward_euler', 'backward_euler'.
        learn_a: train the transition (A, B). share_a: one transition for all features (else
            one per feature).
        lr: learning-rate hint for the transition parameters (LSSL: 1e-4).
        dt_min, dt_max, dt_init, learn_dt, lr_dt: see `SSMKernel`.
    Shapes: transition.dense() gives A (N, N) and B (N,) shared or (H, N, N) and (H, N) per
    feature; C (C, H, N); log_dt (H,).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int,
        channels: int = 1,
        measure: str = "legs",
        disc: str = "bilinear",
        learn_a: bool = False,
        share_a: bool = True,
        lr: float | None = 1e-4,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init: str = "random",
        learn_dt: bool = True,
        lr_dt: float | None = 1e-3,
    ):
        super().__init__(d_model, channels, dt_min, dt_max, dt_init, learn_dt, lr_dt)
        check_length("d_state", d_state)
        check_choice("disc", disc, DISCRETIZATIONS)
        self.d_state, self.measure, self.disc = d_state, measure, disc
        if learn_a:
            check_choice("measure", measure, TRANSITIONS)
            H = None if share_a else d_model
            self.transition = TRANSITIONS[measure](d_state, measure, H=H, learn=True, lr=lr)
        else:
            self.transition = DenseTransition(d_state, measure, learn=False)
        self.C = torch.nn.Parameter(torch.randn(channels, d_model, d_state))
        self._cache: tuple[tuple, Tensor] | None = None
        self._basis_cache: tuple[tuple, tuple[Tensor, list[Tensor]]] | None = None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_state={self.d_state}, measure={self.measure!r}, disc={self.disc!r}"

    def _discretize(self, rate: float) -> tuple[Tensor, Tensor]:
        A, B = self.transition.dense()
        return discretize.DENSE[self.disc](A, B, self.dt * rate)

    def _system_tensors(self) -> list[Tensor]:
        """The tensors of A_bar, B_bar: the transition's and log dt (not C)."""
        return [*self.transition.parameters(), *self.transition.buffers(), self.log_dt]

    def _basis(self, L: int, rate: float) -> tuple[Tensor, list[Tensor]]:
        """`krylov_basis` of the discrete system; memoised while A, B and dt are frozen (LSSL-fixed
        with frozen dt trains only C, so its basis is built once, not at every step)."""
        tensors = self._system_tensors()
        if tracing() or torch.is_inference_mode_enabled():
            # A traced graph computes the basis (no cache keyed on tensor versions); inference
            # tensors could not be saved by a later training step's autograd.
            return krylov_basis(*self._discretize(rate), L)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            self._basis_cache = None
            return krylov_basis(*self._discretize(rate), L)
        key = (L, float(rate), *_versions(tensors))
        if self._basis_cache is None or self._basis_cache[0] != key:
            with torch.no_grad():
                self._basis_cache = (key, krylov_basis(*self._discretize(rate), L))
        return self._basis_cache[1]

    def _kernel(self, L: int, rate: float) -> Tensor:
        return krylov_contract(*self._basis(L, rate), self.C, L)

    def _cache_key(self, L: int, rate: float) -> tuple:
        return (L, float(rate), *_versions([*self.parameters(), *self.buffers()]))

    def forward(self, L: int, rate: float = 1.0) -> Tensor:
        """K (C, H, L) at step dt * rate; memoised while the kernel is frozen (class docstring)."""
        self._check_call(L, rate)
        if tracing():
            return self._kernel(L, rate)  # the kernel is part of a traced graph, not a memo
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            self._cache = None  # a training step: free the memo, which is stale after the update
            return self._kernel(L, rate)
        key = self._cache_key(L, rate)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._kernel(L, rate))
        # A copy (C H L floats, cheap next to the kernel): a caller's in-place edit cannot reach
        # the memo, and a memo made under inference_mode comes out as a normal tensor that
        # autograd may save.
        return self._cache[1].clone()

    def discrete(self, L: int, rate: float = 1.0) -> DiscreteSSM:
        """Dense (A_bar (H, N, N), B_bar (H, N), C (C, H, N)) at step dt * rate."""
        self._check_call(L, rate)
        A_bar, B_bar = self._discretize(rate)
        return DiscreteSSM(A_bar, B_bar, self.C)

    def irregular(self, u: Tensor, scale: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The SSM output with a step of its own at every sample, x_t = A_bar_t x_{t-1} +
        B_bar_t u_t, discretised (`disc`) at step dt * scale[b, t]: a Python loop over time
        that discretises the dense A for every sequence at every sample, O(B H N^3) per sample
        (one batched solve or matrix exponential) on top of the O(B H N^2) step. Regular
        sampling (`forward`, `rate`) is far cheaper.

        Args:
            u: (B, L, H) input. scale: (B, L) positive step factors (time gap before each
                sample, in units of dt). state: x_{-1} (B, H, N), or None (zeros).
        Returns:
            y (B, C, H, L) real, without the D term, and the final state (B, H, N).
        """
        A, B = self.transition.dense()
        C = self.discrete(1).C  # (C, H, N): the plain C, also where C~ is stored
        x = self.default_state(u.shape[0]) if state is None else state
        ys = []
        for t in range(u.shape[1]):
            A_bar, B_bar = discretize.DENSE[self.disc](A, B, scale[:, t, None] * self.dt)  # (B, H, N, N), (B, H, N)
            x = (A_bar @ x[..., None])[..., 0] + B_bar * u[:, t, :, None]
            ys.append(torch.einsum("chn,bhn->bch", C, x))
        return torch.stack(ys, dim=-1), x
