import copy
import math

import pytest
import torch

from lssl import hippo
from lssl.kernels import reference
from lssl.kernels.base import full
from lssl.kernels.dplr import (
    DPLRKernel,
    bilinear_dense,
    generating_function,
    roots_of_unity,
    small_inverse,
)

from .helpers import assert_close, grads, needs_numba

F64 = torch.float64
SSM_PARAMS = ("log_dt", "log_neg_re", "lam_im", "P", "B")



def _kernel(**kw):
    args = dict(d_model=4, d_state=8, channels=2, dt_min=1e-2, dt_max=1e-1)
    k = DPLRKernel(**{**args, **kw})
    if k.measure == "fout":
        # FouT's zero-frequency mode is undamped (Re Lambda clamped to -1e-4), so the reference's
        # recovery of C solves with cond(I - A_bar^L) ~ 1e4; damp it so the oracle is accurate.
        with torch.no_grad():
            k.log_neg_re.fill_(math.log(0.5))
    return k


def _check_against_reference(k, L, rate=1.0):
    """Spec E12: the Cauchy/Woodbury kernel equals explicit powers of the dense bilinear system,
    in values and in the gradient of a random weighting w.r.t. every parameter."""
    K = k(L, rate)
    R = reference.kernel(*k.discrete(L, rate), L)
    assert K.shape == R.shape == (k.channels, k.d_model, L)
    assert_close(K, R)
    params = dict(k.named_parameters())
    assert set(params) == {*SSM_PARAMS, "C"}
    G = torch.randn_like(K)
    g_fast = grads((K * G).sum(), params)
    g_ref = grads((R * G).sum(), params)
    for name in params:
        assert g_ref[name].abs().max() > 0, name
        assert_close(g_fast[name], g_ref[name])


@pytest.mark.parametrize("measure", list(hippo.MEASURES))
@pytest.mark.parametrize("n_ssm", [1, 2, 4])
def test_kernel_equals_reference(f64, measure, n_ssm):
    k = _kernel(measure=measure, n_ssm=n_ssm)
    assert k.P.shape[0] == hippo.rank_correction(measure, 8).shape[0]
    _check_against_reference(k, 40)


@pytest.mark.parametrize("measure", ["legs", "legt"])
def test_after_doubling(f64, measure):
    k = _kernel(measure=measure)
    C0 = k.complex("C").detach().clone()
    K_short = k(24).detach()
    assert k.l_kernel.item() == 24
    _check_against_reference(k, 96)
    assert k.l_kernel.item() == 96
    # The doubled C~ still belongs to the original C, so the truncated kernel is unchanged.
    assert_close(k.discrete(96).C[..., :4], C0)
    assert_close(k(24), K_short)


@pytest.mark.parametrize("measure", ["legs", "legt", "fout"])
@pytest.mark.parametrize("rate", [2.0, 0.5, 1.5])
def test_rate(f64, measure, rate):
    k = _kernel(measure=measure)
    k(40)
    _check_against_reference(k, 40 if rate <= 1 else 20, rate)


@pytest.mark.parametrize("L, rate", [(37, 1.0), (50, 2.0), (19, 1.0)])
def test_odd_number_of_nodes(f64, L, rate):
    k = _kernel(measure="legs", l_max=L)
    assert round(L / rate) % 2 == 1
    _check_against_reference(k, min(L, round(L / rate)), rate)


def test_first_call_uses_the_plain_C(f64):
    k = _kernel(measure="lagt")
    C0 = full(k.complex("C").detach().clone())
    K = k(30)
    A_bar, B_bar, _ = k.discrete(30)
    assert_close(K, reference.kernel(A_bar, B_bar, C0, 30))


def test_l_max_sets_the_first_length(f64):
    k = _kernel(l_max=64)
    plain = copy.deepcopy(k)
    plain.l_max = None
    K = k(10)
    assert k.l_kernel.item() == 64
    assert_close(K, plain(10))
    assert plain.l_kernel.item() == 10


@pytest.mark.parametrize("measure", ["legs", "legt"])
def test_kernel_is_real(f64, measure):
    """Spec E16: K_hat at all L roots of unity is conjugate-symmetric, so its complex inverse
    FFT is real (before any imaginary part is discarded), and the dense path is real too."""
    k = _kernel(measure=measure)
    L = 30
    K = k(L)
    lam, P, B = k._ssm()
    omega = torch.exp(-2j * math.pi * torch.arange(L, dtype=F64) / L)
    K_hat = generating_function(lam, P, B, k.complex("C"), k.dt, 1 - omega, (1 + omega) / 2)
    K_full = torch.fft.ifft(K_hat)
    assert K_full.imag.abs().max() <= 1e-12 * K_full.real.abs().max()
    assert_close(K_full.real, K)
    A_bar, B_bar, C = k.discrete(L)
    x, terms = B_bar, []
    for _ in range(L):
        terms.append(torch.einsum("chn,hn->ch", C, x))
        x = torch.einsum("hnm,hm->hn", A_bar, x)
    terms = torch.stack(terms, dim=-1)
    assert terms.imag.abs().max() <= 1e-12 * terms.real.abs().max()


def test_float32_matches_float64():
    """Spec E12 in float32 at N = 64, L = 1024."""
    k64 = DPLRKernel(d_model=4, d_state=64, channels=2).double()
    k32 = copy.deepcopy(k64).float()
    K64, K32 = k64(1024), k32(1024)
    assert K32.dtype == torch.float32
    assert_close(K32.double(), K64.detach(), dtype=torch.float32)


@needs_numba
@pytest.mark.parametrize("measure", list(hippo.MEASURES))
def test_numba_backend_equals_torch_backend(f64, measure):
    """The compiled Cauchy sums give the torch backend's kernel and gradients, at every measure
    (rank 1 and 2), at rate 1 and 2, with fixed and learned SSM parameters."""
    fast = _kernel(measure=measure, backend="numba")
    slow = _kernel(measure=measure)
    slow.load_state_dict(fast.state_dict())
    for L, rate in ((40, 1.0), (70, 2.0)):
        K_fast, K_slow = fast(L, rate), slow(L, rate)
        assert_close(K_fast, K_slow)
        G = torch.randn_like(K_fast)
        g_fast = grads((K_fast * G).sum(), dict(fast.named_parameters()))
        g_slow = grads((K_slow * G).sum(), dict(slow.named_parameters()))
        for name in g_slow:
            assert_close(g_fast[name], g_slow[name])
    fixed = _kernel(measure=measure, backend="numba", learn=False)
    fixed.load_state_dict(fast.state_dict(), strict=False)
    G = G[..., :40]
    got = torch.autograd.grad((fixed(40) * G).sum(), fixed.C)[0]
    assert_close(got, torch.autograd.grad((slow(40) * G).sum(), slow.C)[0])


@needs_numba
def test_numba_backend_float32_matches_float64():
    """Spec E12 in float32 at N = 64, L = 1024 with the compiled Cauchy sums."""
    k64 = DPLRKernel(d_model=4, d_state=64, channels=2, backend="numba").double()
    k32 = copy.deepcopy(k64).float()
    assert_close(k32(1024).double(), k64(1024).detach(), dtype=torch.float32)


@pytest.mark.parametrize("measure", ["legs", "legt"])
def test_dense_woodbury_discretisation_equals_single_matrix_solve(f64, measure):
    """Catches a wrong batched solve (pytorch#142815) at N = 256 (full space)."""
    k = DPLRKernel(d_model=2, d_state=256, measure=measure, dt_min=1e-2, dt_max=1e-1)
    lam, P, _ = k._ssm()
    A_bar = bilinear_dense(lam, P, k.dt)
    P_full = full(P)
    eye = torch.eye(256, dtype=torch.complex128)
    for h in range(2):
        A = torch.diag(full(lam[h])) - P_full[:, h].T @ P_full[:, h].conj()
        half = k.dt[h] / 2
        expected = torch.linalg.solve(eye - half * A, eye + half * A)
        assert_close(A_bar[h], expected)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_small_inverse(f64, r):
    M = torch.randn(r, r, 5, 7, dtype=torch.complex128) + 3 * torch.eye(r)[..., None, None]
    expected = torch.linalg.inv(M.permute(2, 3, 0, 1)).permute(2, 3, 0, 1)
    assert_close(small_inverse(M), expected)


@pytest.mark.parametrize("L", [8, 9])
def test_roots_of_unity(L):
    a, c = roots_of_unity(L, torch.complex128)
    omega = torch.exp(-2j * math.pi * torch.arange(L // 2 + 1, dtype=F64) / L)
    assert_close(a, 1 - omega)
    assert_close(c, (1 + omega) / 2)
    if L % 2 == 0:
        assert (a[-1] - 2).abs() < 1e-15 and c[-1].abs() < 1e-15


def test_state_dict_round_trip(f64):
    k = _kernel(measure="legt")
    K = k(32)
    k2 = _kernel(measure="legt")
    k2.load_state_dict(k.state_dict())
    assert k2.l_kernel.item() == 32
    assert torch.equal(k2(32), K)


def test_parameters_and_optimizer_hints():
    k = DPLRKernel(d_model=6, d_state=8, channels=3, n_ssm=2, measure="legt", lr=1e-3, lr_dt=None)
    for name in SSM_PARAMS:
        p = getattr(k, name)
        assert p._optim == {"lr": None if name == "log_dt" else 1e-3, "weight_decay": 0.0}, name
    assert not hasattr(k.C, "_optim")
    shapes = {"P": (2, 2, 4, 2), "B": (2, 4, 2), "C": (3, 6, 4, 2), "log_neg_re": (2, 4), "lam_im": (2, 4)}
    for name, shape in shapes.items():
        p = getattr(k, name)
        assert p.shape == shape and not p.is_complex(), name
    assert k.complex("P").dtype == torch.complex64
    assert k.l_kernel.dtype == torch.int64 and k.l_kernel.item() == 0


def test_init_is_hippo(f64):
    """The initial (A, B) is exactly HiPPO (no B clipping) for LegS, where Re(Lambda) = -1/2."""
    k = DPLRKernel(d_model=2, d_state=16, measure="legs")
    f = hippo.nplr("legs", 16)
    lam, P, B = k._ssm()
    assert_close(lam[1], f.Lambda)
    assert_close(P[:, 1], f.P)
    assert_close(B[1], f.B)


def test_fixed_ssm_parameters_are_buffers():
    k = DPLRKernel(d_model=2, d_state=4, learn=False, learn_dt=False)
    assert {name for name, _ in k.named_parameters()} == {"C"}
    assert k(10).shape == (1, 2, 10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d_state=7), "d_state.*d_state=6 or d_state=8"),
        (dict(d_state=0), "d_state"),
        (dict(n_ssm=3), "n_ssm"),
        (dict(n_ssm=0), "n_ssm"),
        (dict(measure="nope"), "measure"),
        (dict(l_max=0), "l_max"),
        (dict(channels=0), "channels"),
        (dict(backend="keops"), "unknown backend 'keops'; known: 'torch', 'numba'"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPLRKernel(**{"d_model": 4, "d_state": 8, **kwargs})


@pytest.mark.parametrize(
    "L, rate, match",
    [(0, 1.0, "L"), (-3, 1.0, "L"), (2.5, 1.0, "L"), (8, 0.0, "rate"), (8, -1.0, "rate"), (8, float("nan"), "rate")],
)
def test_bad_call(L, rate, match):
    k = DPLRKernel(d_model=2, d_state=4)
    with pytest.raises(ValueError, match=match):
        k(L, rate)
    with pytest.raises(ValueError, match=match):
        k.discrete(L, rate)
