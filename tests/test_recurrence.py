"""The recurrent view and the state passing of every kernel (spec A.4, B.4, B.5, E13): stepping,
the zero-input response and the final state against the explicit loop of `reference.recurrence`
on the dense `discrete` system, in values and gradients."""

import copy
import math

import pytest
import torch

from lssl import discretize, hippo
from lssl.kernels import reference
from lssl.kernels.base import DenseRecurrence, dense_final_state, dense_response, full
from lssl.kernels.diag import DiagKernel
from lssl.kernels.dplr import DPLRKernel, bilinear_dense, bilinear_dplr, dplr_dense
from lssl.kernels.krylov import KrylovKernel
from lssl.kernels.resolvent import ResolventKernel
from lssl.ops.fftconv import fftconv
from lssl.ops.vandermonde import vandermonde_transpose, vandermonde_transpose_naive

from .helpers import assert_close, grads, rel_err

F64 = torch.float64
H, N, CHANNELS = 3, 8, 2
SIZES = dict(d_model=H, d_state=N, channels=CHANNELS, dt_min=1e-2, dt_max=1e-1)

KERNELS = {
    **{f"krylov-{m}-fixed": (KrylovKernel, dict(measure=m, learn_a=False)) for m in hippo.MEASURES},
    **{f"krylov-{m}-shared": (KrylovKernel, dict(measure=m, learn_a=True, share_a=True)) for m in hippo.MEASURES},
    **{f"krylov-{m}-feature": (KrylovKernel, dict(measure=m, learn_a=True, share_a=False)) for m in hippo.MEASURES},
    **{f"resolvent-{m}-shared": (ResolventKernel, dict(measure=m, learn_a=True, share_a=True)) for m in ("legs", "legt", "lagt")},
    "resolvent-legs-feature": (ResolventKernel, dict(measure="legs", learn_a=True, share_a=False)),
    "resolvent-lagt-fixed": (ResolventKernel, dict(measure="lagt", learn_a=False)),
    "dplr-legs": (DPLRKernel, dict(measure="legs")),
    "dplr-legt": (DPLRKernel, dict(measure="legt")),
    "diag-zoh": (DiagKernel, dict(disc="zoh")),
    "diag-bilinear": (DiagKernel, dict(disc="bilinear", init="lin")),
}



def _kernel(name, L, rate):
    """A kernel whose forward has run at (L, rate), so a DPLR kernel's C~ is set up for it."""
    cls, kwargs = KERNELS[name]
    k = cls(**SIZES, **kwargs)
    k(L, rate)
    return k


def _half(k) -> bool:
    """Conjugate-pair kernels keep the half state (B, H, N/2) complex."""
    return isinstance(k, (DPLRKernel, DiagKernel))


def _to_full(k, x):
    """A kernel's state as the full-space state of `discrete`."""
    return full(x) if _half(k) else x


def _random_state(k, batch):
    x = k.default_state(batch)
    return torch.randn_like(x)


def _loop(k, u, rate, state=None):
    """Explicit loop on the dense system: y (B, C, H, L), final state in the kernel's layout."""
    L = u.shape[1]
    A, B, C = k.discrete(L, rate)
    D = torch.zeros(k.channels, k.d_model)
    y, x = reference.recurrence(A, B, C, D, u, None if state is None else _to_full(k, state))
    return y.permute(0, 2, 3, 1), x[..., : state_size(k)]


def state_size(k):
    return k.d_state // 2 if _half(k) else k.d_state


def _step(k, u, rate, state=None):
    rec = k.recurrence(rate)
    x = k.default_state(u.shape[0]) if state is None else state
    ys = []
    for t in range(u.shape[1]):
        y_t, x = rec.step(u[:, t], x)
        ys.append(y_t)
    return torch.stack(ys, dim=-1), x


@pytest.mark.parametrize("name", list(KERNELS))
def test_default_state(name):
    k = _kernel(name, 8, 1.0)
    x = k.default_state(5)
    assert x.shape == (5, H, state_size(k)) and not x.any()
    assert x.is_complex() == _half(k)
    assert (x.real.dtype if x.is_complex() else x.dtype) == torch.float32
    with pytest.raises(ValueError, match="batch"):
        k.default_state(0)


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("rate", [1.0, 2.0])
def test_step_equals_loop_and_convolution(f64, name, rate):
    """Spec E13: L steps from the zero state equal the explicit loop and the FFT convolution
    with the kernel k(L, rate)."""
    L = 24
    k = _kernel(name, L, rate)
    u = torch.randn(2, L, H)
    y, x = _step(k, u, rate)
    y_ref, x_ref = _loop(k, u, rate)
    assert y.shape == (2, CHANNELS, H, L) and y.dtype == F64
    assert_close(y, y_ref)
    assert_close(x, x_ref)
    assert_close(y, fftconv(u.transpose(1, 2), k(L, rate)))


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("rate", [1.0, 2.0])
def test_chunked_equals_whole(f64, name, rate):
    """[K * u2 + state_response(final_state(u1))] continues K * u1 exactly, and final_state
    equals the state after stepping."""
    L, L1 = 30, 11
    k = _kernel(name, L, rate)
    u = torch.randn(2, L, H)
    u1, u2 = u[:, :L1], u[:, L1:]
    K = k(L, rate)
    y = fftconv(u.transpose(1, 2), K)
    s = k.final_state(u1, None, rate)
    y2 = fftconv(u2.transpose(1, 2), K) + k.state_response(s, L - L1, rate)
    assert_close(y2, y[..., L1:])
    final = k.final_state(u, None, rate)
    assert_close(k.final_state(u2, s, rate), final)
    _, x_step = _step(k, u, rate)
    assert_close(final, x_step)
    _, s_step = _step(k, u1, rate)
    assert_close(s, s_step)


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("rate", [1.0, 2.0])
@pytest.mark.parametrize("L", [1, 27])
def test_state_passing_equals_loop_values_and_grads(f64, name, rate, L):
    """From a random nonzero x0: state_response is the loop's zero-input output and final_state
    its final state, in values and in gradients w.r.t. every parameter and x0."""
    k = _kernel(name, L, rate)
    x0 = _random_state(k, 2).requires_grad_(True)
    u = torch.randn(2, L, H)
    params = {**dict(k.named_parameters()), "x0": x0}

    response = k.state_response(x0, L, rate)
    response_ref, _ = _loop(k, torch.zeros_like(u), rate, x0)
    assert response.shape == (2, CHANNELS, H, L) and not response.is_complex()
    assert_close(response, response_ref)
    G = torch.randn_like(response)
    g_fast = grads((response * G).sum(), params)
    g_ref = grads((response_ref * G).sum(), params)
    assert g_ref["x0"].abs().max() > 0
    for pname in params:
        assert_close(g_fast[pname], g_ref[pname])

    final = k.final_state(u, x0, rate)
    _, final_ref = _loop(k, u, rate, x0)
    assert final.shape == x0.shape
    assert_close(final, final_ref)
    G = torch.randn_like(final)
    g_fast = grads((final * G).real.sum(), params)
    g_ref = grads((final_ref * G).real.sum(), params)
    assert g_ref["x0"].abs().max() > 0
    for pname in params:
        assert_close(g_fast[pname], g_ref[pname])


@pytest.mark.parametrize("name", ["krylov-legs-shared", "dplr-legt", "diag-zoh"])
def test_step_gradients_equal_loop(f64, name):
    """A recurrence built with grad enabled backpropagates to every parameter."""
    L = 12
    k = _kernel(name, L, 1.0)
    u = torch.randn(2, L, H)
    params = dict(k.named_parameters())
    G = torch.randn(2, CHANNELS, H, L)
    g_fast = grads((_step(k, u, 1.0)[0] * G).sum(), params)
    g_ref = grads((_loop(k, u, 1.0)[0] * G).sum(), params)
    for pname in params:
        assert g_ref[pname].abs().max() > 0, pname
        assert_close(g_fast[pname], g_ref[pname])


@pytest.mark.parametrize("name", ["krylov-legs-fixed", "dplr-legs", "diag-bilinear"])
def test_inference_mode_float32(name):
    """Stepping under inference_mode in the default float32 matches the convolution."""
    L = 20
    k = _kernel(name, L, 1.0)
    u = torch.randn(2, L, H)
    with torch.inference_mode():
        y, _ = _step(k, u, 1.0)
        assert_close(y, fftconv(u.transpose(1, 2), k(L)), factor=5)


def test_dplr_step_before_any_forward_uses_plain_C(f64):
    """With no C~ yet (l_kernel = 0) the step uses C itself, and a later forward (which turns C
    into C~ for its length) describes the same system."""
    k = DPLRKernel(**SIZES)
    u = torch.randn(2, 16, H)
    y, _ = _step(k, u, 1.0)
    assert k.l_kernel.item() == 0
    assert_close(y, fftconv(u.transpose(1, 2), k(16)))


def test_dplr_step_float32_accuracy():
    """Spec E13 at scale: the float32 O(N) step of a float32 kernel (C~ set up in float32, C
    recovered in complex64) over L = 1000 samples, N = 64, against the float64 convolution of
    the same system. Spec: 6.1e-5 for S4's own linear step; tolerance 2e-4."""
    L = 1000
    k32 = DPLRKernel(4, 64, channels=1, measure="legs")
    k32(L)
    k64 = copy.deepcopy(k32).double()
    u = torch.randn(2, L, 4, dtype=F64)
    with torch.inference_mode():
        y64 = fftconv(u.transpose(1, 2), k64(L))
        y32, _ = _step(k32, u.float(), 1.0)
        conv32 = fftconv(u.float().transpose(1, 2), k32(L))
    err, err_conv = rel_err(y32.double(), y64), rel_err(conv32.double(), y64)
    print(f"DPLR float32 step error {err:.2e} (float32 convolution {err_conv:.2e})")
    assert err <= 2e-4


@pytest.mark.parametrize("measure", ["legs", "legt"])
def test_bilinear_dplr_equals_dense(f64, measure):
    """The diagonal-plus-low-rank A_bar, B_bar of the step equal the dense bilinear ones."""
    f = hippo.nplr(measure, N)
    lam, P, B = f.Lambda.expand(H, -1), f.P[:, None].expand(-1, H, -1), f.B.expand(H, -1)
    dt = torch.tensor([1e-3, 0.1, 1.0], dtype=F64)
    a, b, U, V = bilinear_dplr(lam, P, B, dt)
    A = torch.diag_embed(full(lam)) - torch.einsum("rhn,rhm->hnm", full(P), full(P).conj())
    A_bar, B_bar = discretize.gbt(A, full(B), dt, 0.5)
    assert_close(dplr_dense(a, U, V), A_bar)
    assert_close(dplr_dense(a, U, V), bilinear_dense(lam, P, dt))
    assert_close(full(b), B_bar)


def _stable(H, N):
    A = torch.randn(H, N, N, dtype=F64)
    return 0.95 * A / torch.linalg.matrix_norm(A, ord=2)[:, None, None]


@pytest.mark.parametrize("L", [1, 2, 3, 5, 16, 100, 257])
def test_dense_state_passing_equals_loop(L):
    """The blocked dense helpers against the loop, for lengths with a partial last block and
    odd block counts."""
    A, B, C = _stable(H, 6), torch.randn(H, 6, dtype=F64), torch.randn(2, H, 6, dtype=F64)
    x0, u = torch.randn(4, H, 6, dtype=F64), torch.randn(4, L, H, dtype=F64)
    D = torch.zeros(2, H, dtype=F64)
    y_ref, _ = reference.recurrence(A, B, C, D, torch.zeros_like(u), x0)
    assert_close(dense_response(A, C, x0, L), y_ref.permute(0, 2, 3, 1))
    _, x_ref = reference.recurrence(A, B, C, D, u, x0)
    assert_close(dense_final_state(A, B, u, x0), x_ref)
    _, x_ref = reference.recurrence(A, B, C, D, u)
    assert_close(dense_final_state(A, B, u), x_ref)


@pytest.mark.parametrize("L", [1, 2, 3, 64, 100, 257])
def test_vandermonde_transpose_equals_naive_values_and_grads(L):
    u = torch.randn(2, 3, L, dtype=F64, requires_grad=True)
    re = -0.05 * torch.rand(3, 5, dtype=F64)
    im = math.pi * (2 * torch.rand(3, 5, dtype=F64) - 1)
    log_z = torch.complex(re, im).requires_grad_(True)
    out, ref = vandermonde_transpose(u, log_z), vandermonde_transpose_naive(u, log_z)
    assert out.shape == (2, 3, 5)
    assert_close(out, ref)
    G = torch.randn(2, 3, 5, dtype=torch.complex128)
    params = {"u": u, "log_z": log_z}
    g_fast = grads((out * G).real.sum(), params)
    g_ref = grads((ref * G).real.sum(), params)
    for name in params:
        assert_close(g_fast[name], g_ref[name])


@pytest.mark.parametrize("name", ["krylov-lagt-fixed", "dplr-legs", "diag-zoh"])
def test_bad_rate(name):
    k = _kernel(name, 8, 1.0)
    with pytest.raises(ValueError, match="rate"):
        k.recurrence(0.0)
    with pytest.raises(ValueError, match="rate"):
        k.final_state(torch.randn(1, 4, H), None, -1.0)
    with pytest.raises(ValueError, match="rate"):
        k.state_response(k.default_state(1), 4, 0.0)


def test_dense_recurrence_complex_full_space(f64):
    """The dense default step also runs a complex full-space system (the real part is output)."""
    k = _kernel("dplr-legs", 16, 1.0)
    u = torch.randn(2, 16, H)
    A, B, C = k.discrete(16)
    rec = DenseRecurrence(A, B, C)
    x = torch.zeros(2, H, N, dtype=A.dtype)
    ys = []
    for t in range(16):
        y_t, x = rec.step(u[:, t], x)
        ys.append(y_t)
    y_ref, x_ref = _loop(k, u, 1.0)
    assert_close(torch.stack(ys, -1), y_ref)
    assert_close(x[..., : N // 2], x_ref)
