import math

import pytest
import scipy.stats
import torch

from lssl import discretize, hippo
from lssl.kernels import reference
from lssl.kernels.base import init_log_dt
from lssl.kernels.diag import INITS, DiagKernel, bilinear_log

from .helpers import assert_close, grads, rel_err

F64 = torch.float64



def _set_dt(k, dt):
    with torch.no_grad():
        k.log_dt.fill_(math.log(dt))


@pytest.mark.parametrize("init", list(INITS))
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("n_ssm", [1, 4])
@pytest.mark.parametrize("rate", [2.0, 0.5])
def test_kernel_equals_reference_values_and_grads(f64, init, disc, n_ssm, rate):
    k = DiagKernel(4, 8, channels=2, init=init, disc=disc, n_ssm=n_ssm, dt_min=1e-2, dt_max=0.5)
    L = 40
    K = k(L, rate)
    R = reference.kernel(*k.discrete(L, rate), L)
    assert K.shape == (2, 4, L) and K.dtype == F64
    assert_close(K, R)
    params = dict(k.named_parameters())
    assert set(params) == {"log_dt", "log_neg_re", "lam_im", "B", "C"}
    G = torch.randn(2, 4, L)
    g_fast = grads((K * G).sum(), params)
    g_ref = grads((R * G).sum(), params)
    for name in params:
        assert g_ref[name].abs().max() > 0, name
        assert_close(g_fast[name], g_ref[name])


def test_feature_uses_copy_h_mod_n_ssm(f64):
    k = DiagKernel(6, 4, n_ssm=3, init="lin", dt_min=0.1, dt_max=0.1)
    with torch.no_grad():
        k.lam_im.copy_(torch.randn(3, 2))
        k.log_neg_re.copy_(torch.randn(3, 2))
    A_bar = torch.diagonal(k.discrete(1).A, dim1=-2, dim2=-1)[:, :2]  # (H, N/2)
    for h in range(6):
        assert_close(A_bar[h], torch.exp(k.dt[h] * k.Lambda[h % 3]))


def test_full_space_kernel_is_real(f64):
    """Spec E16: the conjugate pairs cancel the imaginary part exactly."""
    k = DiagKernel(3, 8, channels=2, init="legs", disc="bilinear", dt_min=1e-2, dt_max=0.5)
    A, B, C = k.discrete(30)
    x, s = B, []
    for _ in range(30):
        s.append(torch.einsum("chn,hn->ch", C, x))
        x = torch.einsum("hnm,hm->hn", A, x)
    s = torch.stack(s, dim=-1)
    assert s.imag.abs().max() <= 1e-12 * s.real.abs().max()


@pytest.mark.parametrize("init", ["legs", "lin"])
@pytest.mark.parametrize("r", [2, 4])
def test_zoh_rate_change_is_block_sum(f64, init, r):
    """Spec E9: exp(r dt Lambda) = exp(dt Lambda)^r and the B_bar terms telescope."""
    k = DiagKernel(3, 16, channels=2, init=init, disc="zoh", dt_min=1e-2, dt_max=0.2)
    L = 96
    K1 = k(L)
    Kr = k(L // r, rate=float(r))
    assert_close(Kr, K1.reshape(2, 3, L // r, r).sum(-1))


def test_bilinear_converges_to_zoh_at_second_order(f64):
    """Spec E8: S4D-Lin N = 64 at a fixed horizon T = L dt = 1."""
    zoh = DiagKernel(1, 64, init="lin", disc="zoh")
    bil = DiagKernel(1, 64, init="lin", disc="bilinear")
    bil.load_state_dict(zoh.state_dict())
    errs = []
    for dt in (1e-2, 1e-3, 1e-4):
        _set_dt(zoh, dt)
        _set_dt(bil, dt)
        L = round(1 / dt)
        with torch.no_grad():
            errs.append(rel_err(bil(L), zoh(L)))
    assert errs[0] > errs[1] > errs[2]
    assert errs[0] / errs[1] >= 40 and errs[1] / errs[2] >= 40, errs


@pytest.mark.parametrize("dt", [1e-4, 1.0, 1e4])
def test_bilinear_legs_is_stable_for_any_dt(f64, dt):
    """Spec E20, for the S4D-LegS modes and for the dense LegS matrix."""
    k = DiagKernel(1, 16, init="legs", disc="bilinear")
    _set_dt(k, dt)
    A_bar = torch.diagonal(k.discrete(1).A, dim1=-2, dim2=-1)
    assert (A_bar.abs() < 1).all()
    assert torch.isfinite(k(100)).all()

    N = 8
    A, B = hippo.transition("legs", N)
    A_bar, _ = discretize.gbt(A, B, dt)
    eig = torch.linalg.eigvals(A_bar)
    assert eig.imag.abs().max() <= 1e-8
    n = torch.arange(N, dtype=F64)
    expected = (1 - dt * (n + 1) / 2) / (1 + dt * (n + 1) / 2)
    assert_close(eig.real.sort().values, expected.sort().values, factor=10)
    assert (expected.abs() < 1).all()


def test_bilinear_with_a_bar_zero_is_finite(f64):
    """dt Lambda = -2 makes A_bar = 0: the kernel is B_bar C at l = 0 and 0 after, no NaN."""
    k = DiagKernel(1, 2, init="real", disc="bilinear")
    with torch.no_grad():
        k.log_dt.zero_()
    K = k(8, rate=2.0)
    assert_close(K, reference.kernel(*k.discrete(8, rate=2.0), 8))
    assert K[..., 1:].abs().max() <= 1e-300
    K.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in k.parameters())


def test_bilinear_log_is_a_log_of_a_bar(f64):
    dt_lam = torch.complex(-torch.rand(50) * 3, torch.randn(50) * 10)
    A_bar, _ = discretize.gbt_diag(dt_lam, torch.ones(50, dtype=dt_lam.dtype), 1.0)
    assert_close(torch.exp(bilinear_log(dt_lam)), A_bar)
    small = torch.complex(torch.tensor(-1e-9), torch.tensor(3e-9))
    assert_close(bilinear_log(small), small)


def test_bilinear_log_keeps_float32_precision_at_small_dt():
    """log1p(x) - log1p(-x) has ~1 ulp relative error where log(A_bar) of a rounded A_bar ~ 1
    has ~1e-4 (S4D-Lin, N = 64, dt = 1e-4)."""
    n = torch.arange(32, dtype=F64)
    dt_lam = (1e-4 * torch.complex(-0.5 + 0 * n, -math.pi * n)).to(torch.complex64)
    ref = bilinear_log(dt_lam.to(torch.complex128))
    out = bilinear_log(dt_lam).to(torch.complex128)
    assert ((out - ref).abs() / ref.abs()).max() <= 1e-6


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_float32_matches_float64(disc):
    k = DiagKernel(4, 16, channels=2, disc=disc, dt_min=1e-4, dt_max=1e-1)
    K32 = k(4000)
    assert K32.dtype == torch.float32
    assert_close(K32, k.double()(4000), dtype=torch.float32, factor=0.1)


def test_dt_init_log_uniform_within_bounds():
    """Spec E17 (tests kernels/base.py's init_log_dt through the kernel)."""
    dt_min, dt_max = 1e-3, 1e-1
    k = DiagKernel(1024, 2, dt_min=dt_min, dt_max=dt_max)
    dt = k.dt.detach()
    assert (dt >= dt_min).all() and (dt <= dt_max).all()
    u = (k.log_dt.detach().double() - math.log(dt_min)) / (math.log(dt_max) - math.log(dt_min))
    assert scipy.stats.kstest(u.numpy(), "uniform").pvalue > 1e-3


def test_dt_init_uniform_is_log_linspace():
    log_dt = init_log_dt(64, 1e-3, 1e-1, "uniform")
    assert_close(log_dt, torch.linspace(math.log(1e-3), math.log(1e-1), 64, dtype=F64))
    assert log_dt.exp().min() >= 1e-3 * (1 - 1e-15) and log_dt.exp().max() <= 1e-1 * (1 + 1e-15)
    k = DiagKernel(64, 2, dt_init="uniform")
    assert_close(k.log_dt.double(), log_dt, dtype=torch.float32)


def test_init_values():
    N = 8
    n = torch.arange(N // 2, dtype=F64)
    lam = {name: DiagKernel(1, N, init=name).double().Lambda[0] for name in INITS}
    assert_close(lam["lin"], torch.complex(-0.5 + 0 * n, -math.pi * n), dtype=torch.float32)
    inv = torch.complex(-0.5 + 0 * n, -(N / math.pi) * (N / (2 * n + 1) - 1))
    assert_close(lam["inv"], inv, dtype=torch.float32)
    assert_close(lam["real"], torch.complex(-(n + 1), 0 * n), dtype=torch.float32)
    f = hippo.nplr("legs", N)
    k = DiagKernel(2, N, init="legs").double()
    assert_close(k.Lambda, f.Lambda.expand(2, -1), dtype=torch.float32)
    assert_close(k.complex("B"), f.B.expand(2, -1), dtype=torch.float32)
    assert (DiagKernel(1, N, init="lin").complex("B") == 1).all()


def test_optimizer_hints():
    k = DiagKernel(4, 8, lr=2e-3, lr_dt=1e-2)
    for name, lr in [("log_dt", 1e-2), ("log_neg_re", 2e-3), ("lam_im", 2e-3), ("B", 2e-3)]:
        assert getattr(k, name)._optim == {"lr": lr, "weight_decay": 0.0}, name
    assert not hasattr(k.C, "_optim")
    frozen = DiagKernel(4, 8, learn=False, learn_dt=False)
    assert {n for n, _ in frozen.named_parameters()} == {"C"}
    assert {n for n, _ in frozen.named_buffers()} == {"log_dt", "log_neg_re", "lam_im", "B"}
    assert torch.isfinite(frozen(10)).all()


def test_c_is_complex_normal():
    C = torch.view_as_complex(DiagKernel(64, 64, channels=2).C.detach())
    assert C.shape == (2, 64, 32)
    assert abs(C.abs().pow(2).mean().item() - 1) < 0.05


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"d_state": 7}, "d_state"),
        ({"init": "hippo"}, "init"),
        ({"disc": "forward"}, "disc"),
        ({"n_ssm": 3}, "n_ssm"),
        ({"n_ssm": 0}, "n_ssm"),
    ],
)
def test_bad_constructor_arguments(kwargs, name):
    args = {"d_model": 4, "d_state": 8, **kwargs}
    with pytest.raises(ValueError, match=name):
        DiagKernel(**args)


def test_odd_d_state_message_suggests_neighbours():
    with pytest.raises(ValueError, match="d_state=6 or d_state=8"):
        DiagKernel(4, 7)


@pytest.mark.parametrize(
    "L, rate, name",
    [(0, 1.0, "L"), (-2, 1.0, "L"), (10, 0.0, "rate"), (10, -1.0, "rate"), (10, float("nan"), "rate")],
)
def test_bad_call_arguments(L, rate, name):
    k = DiagKernel(2, 4)
    with pytest.raises(ValueError, match=name):
        k(L, rate)
    with pytest.raises(ValueError, match=name):
        k.discrete(L, rate)
