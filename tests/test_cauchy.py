import math

import pytest
import torch

from lssl import hippo
from lssl.kernels.dplr import roots_of_unity
from lssl.ops.cauchy import cauchy, cauchy_conj, cauchy_naive

from .helpers import BACKENDS, assert_close, grads, needs_numba, rel_err

C128 = torch.complex128


def _nodes(K: int, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """a = 1 - omega, c = (1 + omega) / 2 at the first K L-th roots of unity."""
    omega = torch.exp(-2j * math.pi * torch.arange(K, dtype=torch.float64) / L)
    return 1 - omega, (1 + omega) / 2


def _inputs(S=3, H=4, N=6, K=9, L=16):
    v = torch.randn(S, H, N, dtype=C128, requires_grad=True)
    # Stable poles (Re < 0): no denominator vanishes on the unit circle.
    mu = torch.complex(-torch.rand(H, N, dtype=torch.float64) - 0.1, 3 * torch.randn(H, N, dtype=torch.float64))
    a, c = _nodes(K, L)
    return v, mu.requires_grad_(), a, c


def _full(x):
    return torch.cat([x, x.conj()], dim=-1)


def _compare(fast, naive, v, mu):
    out, ref = fast(v, mu), naive(v, mu)
    assert out.shape == ref.shape
    assert_close(out, ref)
    G = torch.randn_like(ref)
    g_fast = grads((out * G).real.sum(), {"v": v, "mu": mu})
    g_ref = grads((ref * G).real.sum(), {"v": v, "mu": mu})
    for name in g_ref:
        assert g_ref[name].abs().max() > 0, name
        assert_close(g_fast[name], g_ref[name])


@pytest.mark.parametrize("chunk", [None, 1, 4, 9, 100])
def test_cauchy_equals_naive(chunk):
    v, mu, a, c = _inputs()
    _compare(lambda v, mu: cauchy(v, mu, a, c, chunk), lambda v, mu: cauchy_naive(v, mu, a, c), v, mu)


@pytest.mark.parametrize("chunk", [None, 1, 4, 9, 100])
def test_cauchy_conj_equals_naive_on_full_space(chunk):
    v, mu, a, c = _inputs()
    _compare(
        lambda v, mu: cauchy_conj(v, mu, a, c, chunk),
        lambda v, mu: cauchy_naive(_full(v), _full(mu), a, c),
        v,
        mu,
    )


@pytest.mark.parametrize("op", [cauchy, cauchy_conj])
def test_chunking_does_not_change_the_result(op):
    v, mu, a, c = _inputs(K=33, L=64)
    whole = op(v, mu, a, c, chunk=33)
    assert_close(op(v, mu, a, c, chunk=5), whole)
    assert_close(op(v, mu, a, c, chunk=1), whole)


@pytest.mark.parametrize("op", [cauchy, cauchy_conj])
def test_gradcheck(op):
    v, mu, a, c = _inputs(S=2, H=2, N=3, K=5, L=8)
    assert torch.autograd.gradcheck(lambda v, mu: op(v, mu, a, c, chunk=2), (v, mu))


def test_nyquist_node_is_finite():
    """omega = -1: a = 2, c = 0, so every term is v / 2 (no division by 1 + omega)."""
    v, mu, _, _ = _inputs()
    a, c = torch.tensor([2.0 + 0j], dtype=C128), torch.tensor([0j], dtype=C128)
    assert_close(cauchy(v, mu, a, c)[..., 0], v.sum(-1) / 2)
    assert_close(cauchy_conj(v, mu, a, c)[..., 0], v.real.sum(-1).to(C128))


@needs_numba
@pytest.mark.parametrize(
    "S, H, N, K, L",
    [(3, 4, 6, 9, 16), (1, 2, 1, 1, 2), (5, 3, 7, 130, 256), (2, 2, 3, 64, 126), (9, 2, 4, 200, 399)],
)
def test_numba_cauchy_conj_equals_naive(S, H, N, K, L):
    """The compiled loops: one block of nodes or several, a short last block, a single pole."""
    v, mu, a, c = _inputs(S, H, N, K, L)
    _compare(
        lambda v, mu: cauchy_conj(v, mu, a, c, backend="numba"),
        lambda v, mu: cauchy_naive(_full(v), _full(mu), a, c),
        v,
        mu,
    )


@needs_numba
def test_numba_cauchy_conj_without_pole_gradient():
    """Fixed poles (S4 with learn=False): only the numerators' gradient is computed."""
    v, mu, a, c = _inputs(K=70, L=140)
    mu = mu.detach()
    G = torch.randn(3, 4, 70, dtype=C128)
    got = torch.autograd.grad((cauchy_conj(v, mu, a, c, backend="numba") * G).real.sum(), v)[0]
    want = torch.autograd.grad((cauchy_naive(_full(v), _full(mu), a, c) * G).real.sum(), v)[0]
    assert_close(got, want)


@needs_numba
def test_numba_gradcheck():
    v, mu, a, c = _inputs(S=2, H=2, N=3, K=5, L=8)
    assert torch.autograd.gradcheck(lambda v, mu: cauchy_conj(v, mu, a, c, backend="numba"), (v, mu))


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32(backend):
    v, mu, a, c = _inputs(K=65, L=128)
    ref = cauchy_naive(_full(v), _full(mu), a, c)
    v, mu, a, c = (x.detach().to(torch.complex64) for x in (v, mu, a, c))
    out = cauchy_conj(v, mu, a, c, backend=backend)
    assert out.dtype == torch.complex64
    assert_close(out.to(C128), ref, dtype=torch.float32)


@needs_numba
def test_numba_float32_error_is_that_of_torch():
    """At the S4 benchmark's kind of poles (HiPPO-LegS at log-uniform steps, 8k nodes), the
    compiled float32 sums are as accurate as torch's: within 1.5x of its error against float64."""
    H, L = 16, 16000
    lam = hippo.nplr("legs", 64).Lambda.to(C128)  # (32,)
    dt = torch.logspace(-3, -1, H, dtype=torch.float64)
    mu = dt[:, None] * lam
    v = torch.randn(4, H, 32, dtype=C128, generator=torch.Generator().manual_seed(0))
    a, c = roots_of_unity(L, C128)
    ref = cauchy_conj(v, mu, a, c)
    low = [x.to(torch.complex64) for x in (v, mu, a, c)]
    err = {b: rel_err(cauchy_conj(*low, backend=b).to(C128), ref) for b in ("torch", "numba")}
    assert err["numba"] <= 1.5 * err["torch"], err


@needs_numba
def test_numba_nyquist_node_is_finite():
    v, mu, _, _ = _inputs()
    a, c = torch.tensor([2.0 + 0j], dtype=C128), torch.tensor([0j], dtype=C128)
    assert_close(cauchy_conj(v, mu, a, c, backend="numba")[..., 0], v.real.sum(-1).to(C128))


def test_bad_backend():
    v, mu, a, c = _inputs()
    with pytest.raises(ValueError, match="unknown backend 'cuda'; known: 'torch', 'numba'"):
        cauchy_conj(v, mu, a, c, backend="cuda")


@needs_numba
def test_numba_refuses_other_devices():
    v = torch.zeros(1, 2, 3, dtype=torch.complex64, device="meta")
    a = torch.zeros(4, dtype=torch.complex64, device="meta")
    with pytest.raises(ValueError, match="backend='numba' runs on CPU tensors, got the input on meta"):
        cauchy_conj(v, v[0], a, a, backend="numba")


@needs_numba
def test_numba_refuses_double_backward():
    """The compiled backward is not itself differentiable: asking it for a graph (second
    derivatives) raises instead of silently dropping the dependence on the inputs."""
    v, mu, a, c = _inputs()
    out = cauchy_conj(v, mu, a, c, backend="numba")
    with pytest.raises(RuntimeError, match="backend='numba' computes first derivatives only"):
        torch.autograd.grad(out.real.sum(), v, create_graph=True)


def test_torch_backwards_refuse_double_backward():
    """The written-out backwards give first derivatives only; differentiating them again raises
    torch's once_differentiable error instead of an unrelated one from inside the backward."""
    v, mu, a, c = _inputs()
    for out in (cauchy_conj(v, mu, a, c), cauchy(v, mu, a, c)):
        (grad_v,) = torch.autograd.grad(out.abs().square().sum(), v, create_graph=True)
        with pytest.raises(RuntimeError, match="once_differentiable"):
            grad_v.abs().sum().backward()
