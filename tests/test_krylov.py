import pytest
import torch

from lssl import hippo
from lssl.kernels import reference
from lssl.kernels.krylov import KrylovKernel, krylov_kernel
from lssl.kernels.transition import TriD

from .helpers import assert_close, grads

F64 = torch.float64



def _stable(H, N):
    A = torch.randn(H, N, N, dtype=F64)
    return 0.9 * A / torch.linalg.matrix_norm(A, ord=2)[:, None, None]


@pytest.mark.parametrize("L", [1, 2, 3, 5, 16, 100, 257])
def test_blocked_doubling_equals_explicit_powers(L):
    """Spec E1, with the contraction by C."""
    H, N = 3, 16
    A = _stable(H, N)
    B = torch.randn(H, N, dtype=F64)
    C = torch.randn(2, H, N, dtype=F64)
    assert_close(krylov_kernel(A, B, C, L), reference.kernel(A, B, C, L))


def _params(k):
    return dict(k.named_parameters())


def _transition_names(measure):
    """Names of a learned transition's parameters: TriD for legs/legt/lagt, dense for fout."""
    fields = ("A", "B") if measure == "fout" else TriD._fields
    return {f"transition.{name}" for name in fields}


@pytest.mark.parametrize("measure", list(hippo.MEASURES))
@pytest.mark.parametrize("disc", ["bilinear", "zoh"])
@pytest.mark.parametrize("share_a", [True, False])
def test_kernel_equals_reference_values_and_grads(f64, measure, disc, share_a):
    k = KrylovKernel(4, 8, channels=2, measure=measure, disc=disc, learn_a=True, share_a=share_a, dt_min=1e-2, dt_max=0.5)
    L = 50
    G = torch.randn(2, 4, L)
    K = k(L)
    R = reference.kernel(*k.discrete(L), L)
    assert K.shape == (2, 4, L)
    assert_close(K, R)
    params = _params(k)
    assert set(params) == {"C", "log_dt"} | _transition_names(measure)
    g_fast = grads((K * G).sum(), params)
    g_ref = grads((R * G).sum(), params)
    for name in params:
        assert g_ref[name].abs().max() > 0, name
        assert_close(g_fast[name], g_ref[name])


@pytest.mark.parametrize("rate", [0.5, 2.0, 3.0])
def test_rate_scales_dt(f64, rate):
    k = KrylovKernel(3, 6, measure="lagt")
    A_bar, B_bar, C = k.discrete(40, rate)
    from lssl import discretize

    A, B = k.transition.dense()
    A_ref, B_ref = discretize.gbt(A, B, k.dt * rate)
    assert_close(A_bar, A_ref)
    assert_close(B_bar, B_ref)
    assert_close(k(40, rate), reference.kernel(A_bar, B_bar, C, 40))


@pytest.mark.parametrize("r", [2, 4])
def test_zoh_rate_change_is_block_sum(f64, r):
    """Spec E9 for the dense ZOH kernel: K^(r)_j = sum_{i<r} K^(1)_{rj+i}."""
    k = KrylovKernel(3, 8, channels=2, measure="legs", disc="zoh")
    L = 64
    K1 = k(L)
    Kr = k(L // r, rate=r)
    assert_close(Kr, K1.reshape(2, 3, L // r, r).sum(-1))


def test_fixed_transition_is_buffers_with_hints_on_learned():
    fixed = KrylovKernel(4, 8)
    assert set(_params(fixed)) == {"C", "log_dt"}
    assert {"transition.A", "transition.B"} <= set(dict(fixed.named_buffers()))
    learned = KrylovKernel(4, 8, learn_a=True, share_a=False)
    p = _params(learned)
    A, B = learned.transition.dense()
    assert A.shape == (4, 8, 8) and B.shape == (4, 8)
    for name in _transition_names("legs"):
        assert p[name]._optim == {"lr": 1e-4, "weight_decay": 0.0}, name
    dense = _params(KrylovKernel(4, 8, measure="fout", learn_a=True, share_a=False))
    assert dense["transition.A"].shape == (4, 8, 8) and dense["transition.B"].shape == (4, 8)
    assert dense["transition.A"]._optim == {"lr": 1e-4, "weight_decay": 0.0}
    assert dense["transition.B"]._optim == {"lr": 1e-4, "weight_decay": 0.0}
    assert p["log_dt"]._optim == {"lr": 1e-3, "weight_decay": 0.0}
    assert not hasattr(p["C"], "_optim")
    frozen_dt = KrylovKernel(4, 8, learn_dt=False)
    assert "log_dt" not in _params(frozen_dt)


def test_float32_matches_float64():
    k = KrylovKernel(8, 64, measure="legs", dt_min=1e-3, dt_max=1e-1)
    K32 = k(1024)
    K64 = k.double()(1024)
    assert_close(K32, K64, torch.float32)


def test_kernel_is_causal_conv_of_recurrence(f64):
    """Spec E2: convolution with the kernel plus D u equals the explicit recurrence."""
    from lssl.ops.fftconv import fftconv

    k = KrylovKernel(3, 8, channels=2, measure="legs")
    L = 60
    u = torch.randn(2, L, 3)
    D = torch.randn(2, 3)
    y_conv = fftconv(u.transpose(1, 2), k(L)) + D[None, :, :, None] * u.transpose(1, 2)[:, None]
    y_rec, _ = reference.recurrence(*k.discrete(L), D, u)
    assert_close(y_conv, y_rec.permute(0, 2, 3, 1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(measure="legx"), "unknown measure"),
        (dict(disc="euler"), "unknown disc"),
        (dict(d_state=0), "d_state must be a positive int"),
        (dict(d_model=-1), "d_model must be a positive int"),
        (dict(channels=0), "channels must be a positive int"),
        (dict(dt_min=0.0), "dt_min must be finite and > 0"),
        (dict(dt_min=0.5, dt_max=0.1), "dt_min must be <= dt_max"),
        (dict(dt_init="normal"), "unknown dt_init"),
    ],
)
def test_bad_construction(kwargs, match):
    args = dict(d_model=4, d_state=8) | kwargs
    with pytest.raises(ValueError, match=match):
        KrylovKernel(**args)


@pytest.mark.parametrize(
    "L, rate, match",
    [(0, 1.0, "L must be a positive int"), (3.5, 1.0, "L must be"), (8, 0.0, "rate must be"), (8, float("nan"), "rate must be"), (8, -2.0, "rate must be")],
)
def test_bad_call(L, rate, match):
    with pytest.raises(ValueError, match=match):
        KrylovKernel(4, 8)(L, rate)
