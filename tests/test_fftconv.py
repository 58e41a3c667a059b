import pytest
import torch

from lssl.kernels import reference
from lssl.ops.fftconv import fftconv

from .helpers import assert_close


@pytest.mark.parametrize("L, Lk", [(1, 1), (17, 17), (32, 5), (20, 40)])
def test_fftconv_equals_direct_sum(L, Lk):
    u = torch.randn(2, 3, L, dtype=torch.float64)
    K = torch.randn(4, 3, Lk, dtype=torch.float64)
    y = fftconv(u, K)
    assert y.shape == (2, 4, 3, L)
    assert_close(y, reference.causal_conv(u, K))


def test_fftconv_is_causal():
    u = torch.randn(1, 2, 50, dtype=torch.float64)
    K = torch.randn(1, 2, 50, dtype=torch.float64)
    v = u.clone()
    v[..., 30] += 1.0
    d = fftconv(v, K) - fftconv(u, K)
    assert d[..., :30].abs().max() < 1e-12
    assert d[..., 30:].abs().max() > 1e-3


@pytest.mark.parametrize("B, C, L, Lk", [(1, 1, 1, 1), (2, 1, 17, 17), (3, 2, 32, 5), (2, 3, 20, 40)])
def test_fftconv_gradients_equal_those_of_the_direct_sum(B, C, L, Lk):
    """The written-out adjoint (both gradients) against autograd through the direct sum."""
    u = torch.randn(B, 3, L, dtype=torch.float64, requires_grad=True)
    K = torch.randn(C, 3, Lk, dtype=torch.float64, requires_grad=True)
    G = torch.randn(B, C, 3, L, dtype=torch.float64)
    fast = torch.autograd.grad((fftconv(u, K) * G).sum(), (u, K))
    slow = torch.autograd.grad((reference.causal_conv(u, K) * G).sum(), (u, K))
    for got, expected in zip(fast, slow):
        assert got.shape == expected.shape
        assert_close(got, expected)


def test_fftconv_gradcheck_and_one_sided_gradients():
    u = torch.randn(2, 2, 9, dtype=torch.float64, requires_grad=True)
    K = torch.randn(2, 2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fftconv, (u, K))
    (grad_u,) = torch.autograd.grad(fftconv(u, K.detach()).sum(), (u,))
    (grad_K,) = torch.autograd.grad(fftconv(u.detach(), K).sum(), (K,))
    assert_close(grad_u, torch.autograd.grad(reference.causal_conv(u, K.detach()).sum(), (u,))[0])
    assert_close(grad_K, torch.autograd.grad(reference.causal_conv(u.detach(), K).sum(), (K,))[0])


def test_fftconv_refuses_double_backward():
    u = torch.randn(1, 1, 8, dtype=torch.float64, requires_grad=True)
    K = torch.randn(1, 1, 8, dtype=torch.float64, requires_grad=True)
    (grad_u,) = torch.autograd.grad(fftconv(u, K).square().sum(), (u,), create_graph=True)
    with pytest.raises(RuntimeError):
        grad_u.sum().backward()
