"""Irregular sampling (`dt_scale`): the linear scan against its loop, every kernel's
`irregular` against a per-sample dense oracle, and the layer- and model-level contracts."""

import pytest
import torch

from lssl import SequenceModel
from lssl.kernels import reference
from lssl.kernels.base import full
from lssl.layer import LSSL, S4, S4D
from lssl.ops.scan import linear_scan, linear_scan_naive

from .helpers import assert_close, grads
from .test_layer import CONFIGS, H, _layer

F64 = torch.float64


def _gaps(batch, L, low=0.2, high=3.0):
    return low + (high - low) * torch.rand(batch, L)


@pytest.mark.parametrize("L", [1, 2, 7, 64, 100])
@pytest.mark.parametrize("dtype", [F64, torch.complex128])
def test_scan_equals_loop_values_and_gradients(L, dtype):
    a = (0.95 * torch.rand(3, 5, L, dtype=F64)).to(dtype)
    if dtype.is_complex:
        a = a * torch.exp(1j * torch.rand(3, 5, L, dtype=F64))
    b = torch.randn(3, 5, L, dtype=dtype)
    a.requires_grad_(True)
    b.requires_grad_(True)
    w = torch.randn(3, 5, L, dtype=dtype)
    fast, slow = linear_scan(a, b), linear_scan_naive(a, b)
    assert_close(fast, slow)
    g_fast = grads((w * fast).real.sum(), {"a": a, "b": b})
    g_slow = grads((w * slow).real.sum(), {"a": a, "b": b})
    for k in g_fast:
        assert_close(g_fast[k], g_slow[k])


def test_scan_gradcheck():
    a = (0.9 * torch.rand(2, 9, dtype=F64) * torch.exp(1j * torch.rand(2, 9, dtype=F64))).requires_grad_(True)
    b = torch.randn(2, 9, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(linear_scan, (a, b))


def test_scan_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="a and b must match"):
        linear_scan(torch.rand(2, 5), torch.rand(2, 4))


def _oracle(kernel, u, scale, state=None):
    """y (B, C, H, L) and the full final state from dense per-sample systems: A_bar, B_bar from
    `discrete(1, rate=scale[b, t])` and C from `discrete(1)` (the training-rate C)."""
    batch, L, _ = u.shape
    C = kernel.discrete(1).C
    systems = [[kernel.discrete(1, rate=scale[b, t].item()) for t in range(L)] for b in range(batch)]
    A = torch.stack([torch.stack([s.A for s in row]) for row in systems])  # (B, L, H, N, N)
    B = torch.stack([torch.stack([s.B for s in row]) for row in systems])  # (B, L, H, N)
    x0 = None if state is None else (full(state) if state.is_complex() else state)
    return reference.varying_recurrence(A, B, C, u.to(A.dtype) if A.is_complex() else u, x0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_irregular_equals_per_sample_oracle(f64, name):
    """Irregular gaps: the kernel's fast path equals the explicit loop over per-sample dense
    systems, for the output and the final state, from a non-zero initial state."""
    layer = _layer(name)
    layer(torch.randn(1, 16, H))  # S4: make C hold C~, as after any training step
    kernel = layer.kernel
    u, scale = torch.randn(2, 12, H), _gaps(2, 12)
    state = layer(torch.randn(2, 5, H), return_state=True)[1]
    y, final = kernel.irregular(u, scale, state)
    y_ref, final_ref = _oracle(kernel, u, scale, state)
    assert_close(y, y_ref)
    assert_close(final, final_ref[..., : final.shape[-1]])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_unit_gaps_equal_plain_forward(f64, name):
    layer = _layer(name)
    x = torch.randn(2, 40, H)
    y, s = layer(x, return_state=True)
    y1, s1 = layer(x, dt_scale=torch.ones(2, 40), return_state=True)
    assert_close(y1, y)
    assert_close(s1, s)


@pytest.mark.parametrize("cls", [LSSL, S4, S4D])
def test_unit_gaps_equal_plain_forward_bidirectional(f64, cls):
    layer = cls(H, d_state=8, bidirectional=True)
    x = torch.randn(2, 30, H)
    assert_close(layer(x, dt_scale=torch.ones(2, 30)), layer(x))


def test_bidirectional_backward_half_reads_reversed_gaps(f64):
    """The backward half sees the reversed sequence with the gap after each sample."""
    layer = S4D(H, d_state=8, bidirectional=True, mix="none", activation="identity")
    x, scale = torch.randn(2, 20, H), _gaps(2, 20)
    kernel = layer.kernel
    back_scale = torch.cat([scale[:, 1:], scale[:, -1:]], dim=1).flip(1)
    y_f = kernel.irregular(x, scale)[0][:, :1]
    y_b = kernel.irregular(x.flip(1), back_scale)[0][:, 1:].flip(-1)
    expected = y_f + y_b + layer.D[..., None] * x.transpose(1, 2)[:, None]  # (B, 1, H, L)
    assert_close(layer(x, dt_scale=scale), expected.permute(0, 3, 1, 2).flatten(-2))


@pytest.mark.parametrize("name", ["lssl-legs-fixed", "lssl-lagt-feature", "s4d-zoh", "s4d-bilinear"])
def test_constant_gaps_equal_rate(f64, name):
    """A constant gap c is the regular rate c (exact for kernels whose C does not depend on the
    rate; S4's C~ does, through its node count)."""
    layer = _layer(name)
    x = torch.randn(2, 30, H)
    assert_close(layer(x, dt_scale=torch.full((2, 30), 2.5)), layer(x, rate=2.5))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_step_with_gaps_equals_forward_with_gaps(f64, name):
    layer = _layer(name)
    x, scale = torch.randn(2, 10, H), _gaps(2, 10)
    y = layer(x, dt_scale=scale)
    state = layer.default_state(2)
    ys = []
    for t in range(10):
        y_t, state = layer.step(x[:, t], state, dt_scale=scale[:, t])
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y)


@pytest.mark.parametrize("name", ["lssl-legs-feature", "s4-legs", "s4d-zoh", "s4d-bilinear"])
def test_irregular_gradients_equal_oracle(f64, name):
    """Gradients of the fast irregular path (scan backward for S4D, loops for S4 and LSSL)
    equal the oracle's, for every SSM parameter."""
    layer = _layer(name)
    layer(torch.randn(1, 16, H))  # S4: C holds C~ from here on, in both computations
    kernel = layer.kernel
    u, scale = torch.randn(2, 9, H), _gaps(2, 9)
    w = torch.randn(2, kernel.channels, H, 9)
    params = dict(kernel.named_parameters())
    g_fast = grads((w * kernel.irregular(u, scale)[0]).sum(), params)
    g_ref = grads((w * _oracle(kernel, u, scale)[0]).sum(), params)
    for k in params:
        assert g_ref[k].abs().max() > 0, k
        assert_close(g_fast[k], g_ref[k])


@pytest.mark.parametrize("cls", [LSSL, S4, S4D])
def test_gaps_approximate_the_dense_signal(f64, cls):
    """Continuous time: a smooth signal observed at a random half of the samples, with the
    gaps between them, gives nearly the full-rate output at the kept samples, much closer
    than ignoring the gaps; the error (holding each kept sample over its gap) shrinks with
    the signal's frequency."""
    layer = cls(H, d_state=16, dt_min=2e-3, dt_max=2e-2, activation="identity", mix="none")
    L = 400
    keep = torch.stack([torch.sort(torch.randperm(L - 1)[: L // 2] + 1).values for _ in range(2)])  # (B, L/2)
    index = keep[..., None].expand(-1, -1, H)
    gaps = torch.diff(keep, dim=1, prepend=torch.zeros(2, 1, dtype=keep.dtype)).to(torch.float64)
    errors = []
    for cycles in (0.5, 0.25):
        t = torch.arange(L)[:, None] / L
        x = torch.sin(2 * torch.pi * cycles * (1 + torch.arange(H)) * t)[None].expand(2, L, H)
        x_kept = torch.gather(x, 1, index)
        y_full = torch.gather(layer(x), 1, index)
        errors.append(((layer(x_kept, dt_scale=gaps) - y_full).abs().max() / y_full.abs().max()).item())
        err_ignored = ((layer(x_kept) - y_full).abs().max() / y_full.abs().max()).item()
    assert errors[1] < 0.05 and errors[1] < err_ignored / 5, (errors, err_ignored)
    assert errors[1] < 0.7 * errors[0], errors


def test_model_passes_gaps_to_every_layer(f64):
    model = SequenceModel(d_input=3, d_output=2, d_model=8, n_layers=2, layer="s4d", layer_args={"d_state": 8})
    x = torch.randn(2, 20, 3)
    assert_close(model(x, dt_scale=torch.ones(2, 20)), model(x))
    assert (model(x, dt_scale=_gaps(2, 20)) - model(x)).abs().max() > 1e-3
    stream = SequenceModel(d_input=3, d_output=2, d_model=8, n_layers=2, layer="s4", pooling="none",
                           layer_args={"d_state": 8}).eval()
    scale = _gaps(2, 20)
    with torch.no_grad():
        y = stream(x, dt_scale=scale)
        states = stream.default_state(2)
        ys = []
        for k in range(20):
            y_k, states = stream.step(x[:, k], states, dt_scale=scale[:, k])
            ys.append(y_k)
    assert_close(torch.stack(ys, 1), y)


@pytest.mark.parametrize(
    "scale, match",
    [
        (torch.zeros(2, 10), "dt_scale must be finite and > 0"),
        (-torch.ones(2, 10), "dt_scale must be finite and > 0"),
        (torch.full((2, 10), float("nan")), "dt_scale must be finite and > 0"),
        (torch.ones(2, 9), r"dt_scale must have shape \(B, L\) = \(2, 10\)"),
        (torch.ones(10), r"dt_scale must have shape \(B, L\)"),
        ([1.0] * 10, r"dt_scale must have shape \(B, L\).*got list"),
    ],
)
def test_bad_gaps(scale, match):
    layer = S4D(H, d_state=8)
    with pytest.raises(ValueError, match=match):
        layer(torch.randn(2, 10, H), dt_scale=scale)


def test_bad_step_gaps():
    layer = S4D(H, d_state=8)
    with pytest.raises(ValueError, match=r"dt_scale must have shape \(B,\) = \(2,\)"):
        layer.step(torch.randn(2, H), layer.default_state(2), dt_scale=torch.ones(2, 1))
    with pytest.raises(ValueError, match="dt_scale must be finite and > 0"):
        layer.step(torch.randn(2, H), layer.default_state(2), dt_scale=torch.zeros(2))
