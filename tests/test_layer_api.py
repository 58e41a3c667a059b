"""One contract for every layer: states are checked alike (type, shape, batch, device), `rate`
is a number or a 0-d tensor, half-precision parameters are refused at conversion time (mixed
precision is autocast over float32 parameters, with the SSM maths kept in float32), and layers
can be built on the meta device and loaded later. The `gpu` tests run every layer on CUDA
against the CPU float64 result."""

from __future__ import annotations

import pytest
import torch

import lssl

from .helpers import layer_kinds
from lssl.layer import LiquidState

H, N, L = 8, 8, 32

LAYERS = layer_kinds(H, N, L)


def plain_state(layer, state):
    """The SSM tensor of a state (LiquidS4 wraps it with its memory)."""
    return state.ssm if isinstance(state, LiquidState) else state


def with_ssm(layer, state, ssm):
    return LiquidState(ssm, state.memory) if isinstance(state, LiquidState) else ssm


@pytest.fixture(params=list(LAYERS))
def layer(request):
    torch.manual_seed(0)
    return LAYERS[request.param]()


def test_a_missing_state_is_named(layer):
    with pytest.raises(ValueError, match=r"^state must be a"):
        layer.step(torch.randn(2, H), None)


@pytest.mark.parametrize("call", ["step", "forward"])
def test_a_state_of_another_batch_size_is_named(layer, call):
    state = layer.default_state(3)
    x = torch.randn(2, L, H)
    with pytest.raises(ValueError, match=r"state(\.ssm)? must have shape \(B, H, S\) = \(2, 8, \d+\) for this layer "
                                         r"and batch, got \(3, 8, \d+\)"):
        layer.step(x[:, 0], state) if call == "step" else layer(x, state=state)


def test_a_state_of_the_wrong_kind_or_width_is_named(layer):
    state = layer.default_state(2)
    ssm = plain_state(layer, state)
    wrong_kind = ssm.real.contiguous() if ssm.is_complex() else torch.complex(ssm, ssm)
    with pytest.raises(ValueError, match="like the layer's"):
        layer.step(torch.randn(2, H), with_ssm(layer, state, wrong_kind))
    with pytest.raises(ValueError, match="must have shape"):
        layer.step(torch.randn(2, H), with_ssm(layer, state, ssm[..., :-1]))


def test_rate_may_be_a_0d_tensor_and_nothing_else(layer):
    x = torch.randn(2, L, H)
    with torch.no_grad():
        assert torch.equal(layer(x, rate=torch.tensor(2.0)), layer(x, rate=2.0))
        s = layer.default_state(2)
        assert torch.equal(layer.step(x[:, 0], s, rate=torch.tensor(2.0))[0], layer.step(x[:, 0], s, rate=2.0)[0])
    with pytest.raises(ValueError, match="rate must be a number or a 0-d real tensor, got a tensor of shape \\(2,\\)"):
        layer(x, rate=torch.tensor([2.0, 2.0]))
    with pytest.raises(ValueError, match="rate must be a number, got str"):
        layer(x, rate="2")
    with pytest.raises(ValueError, match="rate must be finite and > 0"):
        layer(x, rate=torch.tensor(float("nan")))


@pytest.mark.parametrize("convert", [lambda m: m.half(), lambda m: m.to(torch.bfloat16),
                                     lambda m: m.to(dtype=torch.float16)], ids=["half", "bf16", "to-f16"])
def test_half_precision_parameters_are_refused_before_any_conversion(layer, convert):
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(ValueError, match="keeps its parameters in float32 or float64.*torch.autocast"):
        convert(layer)
    after = layer.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    layer.double()  # the supported dtypes still convert
    assert layer.D.dtype == torch.float64


def test_a_model_is_refused_whole_not_half_converted():
    model = lssl.SequenceModel(d_input=1, d_output=3, d_model=H, n_layers=2, layer="s4")
    with pytest.raises(ValueError, match="SequenceModel keeps its parameters in float32 or float64"):
        model.half()
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_autocast_keeps_the_ssm_maths_in_float32(layer):
    """Under bf16 autocast the output is close to the float32 layer's (the bf16 input's and the
    mix's rounding only), forward and step alike."""
    x = torch.randn(2, L, H)
    with torch.no_grad():
        ref = layer(x)
        ref_step, _ = layer.step(x[:, 0], layer.default_state(2))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
            y_step, _ = layer.step(x[:, 0], layer.default_state(2))
    assert (y.float() - ref).norm() / ref.norm() < 2e-2
    assert (y_step.float() - ref_step).norm() / ref_step.norm() < 2e-2


def test_layers_build_on_the_meta_device_and_load_later(request):
    x = torch.randn(2, L, H)
    for name, make in LAYERS.items():
        torch.manual_seed(0)
        ref = make()
        with torch.device("meta"):
            deferred = make()
        assert any(p.is_meta for p in deferred.parameters()), name
        deferred.load_state_dict(ref.state_dict(), assign=True)
        assert not any(t.is_meta for t in [*deferred.parameters(), *deferred.buffers()]), name
        with torch.no_grad():
            assert torch.equal(deferred(x), ref(x)), name


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(LAYERS))
def test_every_layer_on_cuda_matches_the_cpu_float64_result(name):
    torch.manual_seed(0)
    cpu = LAYERS[name]().double()
    gpu = LAYERS[name]().double()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda().float()
    x = torch.randn(2, L, H, dtype=torch.float64)
    y_ref = cpu(x)
    y_ref.square().sum().backward()
    y = gpu(x.float().cuda())
    y.square().sum().backward()
    assert (y.double().cpu() - y_ref).abs().max() < 1e-4 * y_ref.abs().max()
    for (n, p), (_, q) in zip(cpu.named_parameters(), gpu.named_parameters()):
        if p.grad is not None:
            assert (q.grad.double().cpu() - p.grad).norm() <= 1e-3 * p.grad.norm() + 1e-6, n
    with torch.no_grad():
        s_ref, s = cpu.default_state(2), gpu.default_state(2)
        for t in range(4):
            y_ref_t, s_ref = cpu.step(x[:, t], s_ref)
            y_t, s = gpu.step(x[:, t].float().cuda(), s)
        assert (y_t.double().cpu() - y_ref_t).abs().max() < 1e-4 * y_ref_t.abs().max()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(LAYERS))
def test_autocast_on_cuda_is_close_to_float32(name, dtype):
    torch.manual_seed(0)
    layer = LAYERS[name]().cuda()
    x = torch.randn(2, L, H, device="cuda")
    ref = layer(x)
    with torch.autocast("cuda", dtype=dtype):
        y = layer(x)
        y.float().square().sum().backward()
    assert (y.float() - ref).norm() / ref.norm() < 2e-2
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)
