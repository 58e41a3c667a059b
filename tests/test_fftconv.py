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
