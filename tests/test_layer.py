import math

import pytest
import torch

from lssl import hippo
from lssl.kernels.krylov import KrylovKernel
from lssl.layer import LAYERS, LSSL, S4, S4D, SSMLayer

from .helpers import assert_close, hide_numba, needs_numba

F64 = torch.float64



H = 4

# Every layer and option the recurrent and convolutional views must agree on.
CONFIGS = {
    **{f"lssl-{m}-fixed": (LSSL, dict(measure=m, learn_a=False)) for m in hippo.MEASURES},
    **{f"lssl-{m}-shared": (LSSL, dict(measure=m, learn_a=True, share_a=True)) for m in hippo.MEASURES},
    **{f"lssl-{m}-feature": (LSSL, dict(measure=m, learn_a=True, share_a=False)) for m in hippo.MEASURES},
    "lssl-channels2": (LSSL, dict(channels=2)),
    "s4-legs": (S4, dict()),
    "s4-legt": (S4, dict(measure="legt")),
    "s4-channels2-linear": (S4, dict(channels=2, mix="linear")),
    "s4d-zoh": (S4D, dict(disc="zoh")),
    "s4d-bilinear": (S4D, dict(disc="bilinear", init="lin")),
    "s4d-channels2": (S4D, dict(channels=2)),
}


def _layer(name, **extra):
    cls, kwargs = CONFIGS[name]
    return cls(H, d_state=8, dt_min=1e-2, dt_max=1e-1, **kwargs, **extra)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_shapes_and_finite_gradients(name):
    """Spec E18/E19: (B, L, H) -> (B, L, H), and every parameter gets a finite gradient, in
    float32 and float64."""
    for dtype in (torch.float32, F64):
        layer = _layer(name).to(dtype)
        x = torch.randn(2, 64, H, dtype=dtype)
        y = layer(x)
        assert y.shape == (2, 64, H) and y.dtype == dtype
        y.square().sum().backward()
        for pname, p in layer.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (name, pname, dtype)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_causality(f64, name):
    """Spec E14: perturbing x_t leaves y_<t unchanged."""
    layer = _layer(name)
    x = torch.randn(2, 50, H)
    x2 = x.clone()
    x2[:, 30] += 1.0
    d = layer(x2) - layer(x)
    assert d[:, :30].abs().max() < 1e-12
    assert d[:, 30:].abs().max() > 1e-6


@pytest.mark.parametrize("name", list(CONFIGS))
def test_step_loop_equals_forward(f64, name):
    layer = _layer(name)
    x = torch.randn(3, 40, H)
    y = layer(x)
    state = layer.default_state(3)
    ys = []
    for t in range(40):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y)


@pytest.mark.parametrize("name", ["lssl-legs-shared", "s4-legs", "s4d-zoh"])
def test_layer_built_under_inference_mode_streams(f64, name):
    """A layer made inside torch.inference_mode (parameters without version counters) steps,
    and sees weights loaded in place afterwards (no stale system)."""
    trained = _layer(name)
    with torch.inference_mode():
        layer = _layer(name)
        x = torch.randn(2, 12, H)
        state = layer.default_state(2)
        y0, state = layer.step(x[:, 0], state)
        layer.load_state_dict(trained.state_dict())
        state = layer.default_state(2)
        ys = []
        for t in range(12):
            y_t, state = layer.step(x[:, t], state)
            ys.append(y_t)
        assert_close(torch.stack(ys, 1), trained(x))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_chunked_with_state_equals_whole(f64, name):
    layer = _layer(name)
    x = torch.randn(2, 48, H)
    y, final = layer(x, return_state=True)
    y1, s = layer(x[:, :20], return_state=True)
    y2, s = layer(x[:, 20:], state=s, return_state=True)
    assert_close(torch.cat([y1, y2], 1), y)
    assert_close(s, final)
    # ... and a state from stepping continues the convolution.
    s = layer.default_state(2)
    for t in range(20):
        _, s = layer.step(x[:, t], s)
    assert_close(layer(x[:, 20:], state=s), y[:, 20:])


@pytest.mark.parametrize("name", ["lssl-legs-shared", "s4-legs", "s4d-zoh", "s4d-bilinear"])
def test_rate_reads_subsampled_data(f64, name):
    """Spec E11: on smooth inputs, the layer run on x[:, ::r] with rate r approaches the layer's
    output on x, subsampled; the smoother the input, the closer."""
    layer = _layer(name)
    L, r = 400, 2
    t = torch.linspace(0, 1, L)[None, :, None]
    errs = []
    for freq in (8.0, 2.0):
        x = torch.sin(2 * math.pi * freq * t + torch.arange(H)) * torch.ones(2, 1, 1)
        y = layer(x)[:, ::r]
        y_r = layer(x[:, ::r], rate=r)
        errs.append((torch.linalg.norm(y_r - y) / torch.linalg.norm(y)).item())
    assert errs[1] < errs[0] and errs[1] < 0.05, errs


def test_bidirectional_sees_the_future(f64):
    layer = S4D(H, d_state=8, bidirectional=True)
    x = torch.randn(1, 30, H)
    x2 = x.clone()
    x2[:, 20] += 1
    assert (layer(x2) - layer(x))[:, :20].abs().max() > 1e-6
    with pytest.raises(ValueError, match="bidirectional layer has no recurrent view"):
        layer.step(x[:, 0], layer.default_state(1))
    with pytest.raises(ValueError, match="bidirectional layer has no state"):
        layer(x, return_state=True)


@pytest.mark.parametrize("mix, width", [("linear", H), ("glu", H), ("none", 2 * H)])
def test_mix(mix, width):
    layer = SSMLayer(KrylovKernel(H, 8, channels=2), mix=mix)
    assert layer(torch.randn(2, 10, H)).shape == (2, 10, width)


def test_registry_builds_every_layer():
    for name, cls in LAYERS.items():
        layer = cls(H, d_state=8)
        assert isinstance(layer, SSMLayer)
        assert layer(torch.randn(1, 16, H)).shape == (1, 16, H)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(16, H), r"x must have shape \(B, L, H\) with H=4, got \(16, 4\)"),
        (torch.randn(2, 16, H + 1), r"x must have shape \(B, L, H\) with H=4, got \(2, 16, 5\)"),
        (torch.full((2, 16, H), float("nan")), "x contains NaN or Inf"),
        (torch.ones(2, 16, H, dtype=torch.long), "floating-point"),
    ],
)
def test_bad_input(x, match):
    with pytest.raises(ValueError, match=match):
        S4D(H, d_state=8)(x)


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan")])
def test_bad_rate(rate):
    layer = S4D(H, d_state=8)
    with pytest.raises(ValueError, match="rate must be finite and > 0"):
        layer(torch.randn(1, 8, H), rate=rate)


def test_bad_step_input():
    layer = S4D(H, d_state=8)
    with pytest.raises(ValueError, match=r"x must have shape \(B, H\)"):
        layer.step(torch.randn(2, 3, H), layer.default_state(2))


def test_bad_options():
    with pytest.raises(ValueError, match="unknown activation 'relu6'"):
        S4D(H, activation="relu6")
    with pytest.raises(ValueError, match="unknown mix"):
        S4D(H, mix="mlp")


def test_transition_hints_reach_the_parameters():
    layer = LSSL(H, d_state=8, learn_a=True)
    hinted = {n: p._optim for n, p in layer.named_parameters() if hasattr(p, "_optim")}
    assert hinted["kernel.log_dt"] == {"lr": 1e-3, "weight_decay": 0.0}
    assert any(v == {"lr": 1e-4, "weight_decay": 0.0} for k, v in hinted.items() if k != "kernel.log_dt")
    assert "D" not in hinted and "kernel.C" not in hinted


@needs_numba
@pytest.mark.parametrize("kwargs", [dict(), dict(measure="legt", channels=2, mix="linear"), dict(bidirectional=True)])
def test_s4_numba_backend_equals_torch_backend(f64, kwargs):
    """backend='numba' (compiled Cauchy sums) is the same layer: outputs at rate 1 and 2, the
    gradients of the input and of every parameter, and chunks with state passing."""
    fast, slow = (S4(H, d_state=8, dt_min=1e-2, dt_max=1e-1, backend=b, **kwargs) for b in ("numba", "torch"))
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 48, H, requires_grad=True)
    for rate in (1.0, 2.0):
        y_fast, y_slow = fast(x, rate=rate), slow(x, rate=rate)
        assert_close(y_fast, y_slow)
        g = torch.randn_like(y_fast)
        want = torch.autograd.grad((y_slow * g).sum(), [x, *slow.parameters()])
        for got, expected in zip(torch.autograd.grad((y_fast * g).sum(), [x, *fast.parameters()]), want):
            assert_close(got, expected)
    if not kwargs.get("bidirectional"):
        with torch.no_grad():
            y1, s = fast(x[:, :20], return_state=True)
            assert_close(torch.cat([y1, fast(x[:, 20:], state=s)], 1), slow(x))


def test_s4_numba_backend_without_numba_says_how_to_get_it(monkeypatch):
    hide_numba(monkeypatch)
    with pytest.raises(ImportError, match=r"pip install 'lssl\[numba\]'"):
        S4(H, d_state=4, backend="numba")


def test_s4_bad_backend():
    with pytest.raises(ValueError, match="unknown backend 'cuda'; known: 'torch', 'numba'"):
        S4(H, d_state=4, backend="cuda")


def test_repr_names_the_kernel_options():
    assert "DPLRKernel(d_model=4, channels=1, d_state=8, measure='legt', n_ssm=4, backend='torch')" in repr(
        S4(H, d_state=8, measure="legt")
    )
    assert "DiagKernel(d_model=4, channels=2, d_state=8, init='lin', disc='bilinear', n_ssm=4)" in repr(
        S4D(H, d_state=8, channels=2, init="lin", disc="bilinear")
    )
    assert "d_model=4, channels=1, d_state=8, measure='lagt', disc='bilinear'" in repr(LSSL(H, d_state=8, measure="lagt"))
