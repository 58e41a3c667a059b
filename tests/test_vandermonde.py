import math

import pytest
import torch

from lssl.ops.vandermonde import vandermonde, vandermonde_naive, vandermonde_re

from .helpers import assert_close, grads, rel_err

C128 = torch.complex128


def _inputs(C, H, N, dtype=C128, decay=0.05):
    """v (C, H, N) complex normal and log z (H, N) with |z| <= 1 (Re log z in [-decay, 0])."""
    v = torch.randn(C, H, N, dtype=dtype)
    re = -decay * torch.rand(H, N, dtype=torch.float64)
    im = math.pi * (2 * torch.rand(H, N, dtype=torch.float64) - 1)
    return v, torch.complex(re, im).to(dtype)


@pytest.mark.parametrize("L", [1, 2, 3, 64, 100, 257])
def test_equals_naive_values_and_grads(L):
    """L = 64 is a multiple of the block T = 8; 100 and 257 are not (the last block is cut)."""
    v, log_z = _inputs(2, 3, 5)
    v.requires_grad_(True)
    log_z.requires_grad_(True)
    out, ref = vandermonde(v, log_z, L), vandermonde_naive(v, log_z, L)
    assert out.shape == (2, 3, L)
    assert_close(out, ref)
    G = torch.randn(2, 3, L, dtype=C128)
    params = {"v": v, "log_z": log_z}
    g_fast = grads((out * G).real.sum(), params)
    g_ref = grads((ref * G).real.sum(), params)
    for name in params:
        assert_close(g_fast[name], g_ref[name])


@pytest.mark.parametrize("L", [1, 3, 64, 100])
def test_real_part_equals_naive_values_and_grads(L):
    v, log_z = _inputs(2, 3, 5)
    v.requires_grad_(True)
    log_z.requires_grad_(True)
    out, ref = vandermonde_re(v, log_z, L), vandermonde_naive(v, log_z, L).real
    assert out.shape == (2, 3, L) and out.dtype == torch.float64
    assert_close(out, ref)
    G = torch.randn(2, 3, L, dtype=torch.float64)
    params = {"v": v, "log_z": log_z}
    g_fast = grads((out * G).sum(), params)
    g_ref = grads((ref * G).sum(), params)
    for name in params:
        assert_close(g_fast[name], g_ref[name])


def test_zero_and_unit_modulus_nodes():
    """z = 1 gives running constants, and a strongly decaying z underflows to 0, not NaN."""
    v = torch.ones(1, 1, 2, dtype=C128)
    log_z = torch.tensor([[0.0, -800.0]], dtype=C128)
    out = vandermonde(v, log_z, 10)
    expected = torch.ones(10, dtype=C128)
    expected[0] = 2
    assert_close(out[0, 0], expected)


@pytest.mark.parametrize("fn", [vandermonde, vandermonde_re])
def test_float32_accuracy_at_length_16000(fn):
    """float32 against float64 on the same (rounded) inputs. Every power is one exp, so the
    error is that of rounding l log z in float32, as in the naive product, and does not
    accumulate with l. S4D-like nodes log z = dt Lambda (S4D-Lin, N = 64, dt in [1e-3, 1e-1])
    stay near 1e-6; arbitrary nodes with |z| <= 1 (phases up to pi L) match the naive error."""
    L = 16000
    part = (lambda x: x) if fn is vandermonde else (lambda x: x.real)
    dt = torch.logspace(-3, -1, 4, dtype=torch.float64)[:, None]
    n = torch.arange(32, dtype=torch.float64)
    s4d = (dt * torch.complex(-0.5 + 0 * n, -math.pi * n)).to(torch.complex64)
    v, general = _inputs(1, 4, 32, dtype=torch.complex64, decay=1e-3)
    for log_z, bound in [(s4d, 2e-5), (general, 1e-3)]:
        ref = vandermonde_naive(v.to(C128), log_z.to(C128), L)
        err = rel_err(fn(v, log_z, L), part(ref))
        err_naive = rel_err(part(vandermonde_naive(v, log_z, L)), part(ref))
        assert err <= bound and err <= 2 * err_naive, (err, err_naive)


@pytest.mark.parametrize("fn", [vandermonde, vandermonde_re])
def test_memory_is_sublinear_in_n_times_l(fn):
    """No intermediate as large as (H, N, L): the largest tensor autograd saves is (C, H, L)."""
    C, H, N, L = 1, 4, 64, 4096
    v, log_z = _inputs(C, H, N)
    v.requires_grad_(True)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(v, log_z, L)
    assert max(sizes) < H * N * L / 8


def test_bad_length():
    v, log_z = _inputs(1, 1, 2)
    for fn in (vandermonde, vandermonde_re, vandermonde_naive):
        for L in (0, -3, 2.5):
            with pytest.raises(ValueError, match="L"):
                fn(v, log_z, L)
