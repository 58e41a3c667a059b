"""Traced graphs: every layer's forward (fixed L) and step, and SequenceModel's forward and step,
compile with torch.compile(fullgraph=True) (no graph break) and export with torch.export, and
the traced graphs give the eager outputs. Value checks (finiteness, positivity) step aside while
tracing and still run in eager mode.

The compile tests use the 'aot_eager' backend: it traces forward and backward graphs as
inductor does (so a graph break or a data-dependent branch fails here) without generating C++
for every case, which would take minutes on a small CPU."""

from __future__ import annotations

import pytest
import torch

import lssl

from .helpers import layer_kinds

H, N, L, B = 8, 8, 32, 2

LAYERS = layer_kinds(H, N, L)


class Step(torch.nn.Module):
    """A layer's `step` as a module's forward (what torch.export takes)."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x, state):
        return self.layer.step(x, state)


def flat(out):
    """The tensors of an output: y, or (y, state) with a LiquidState or a list of states."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for part in out for t in flat(part)]


def assert_same(a, b):
    fa, fb = flat(a), flat(b)
    assert len(fa) == len(fb)
    for x, y in zip(fa, fb):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


@pytest.fixture(params=list(LAYERS))
def layer(request):
    torch.manual_seed(0)
    layer = LAYERS[request.param]().eval()
    with torch.no_grad():
        layer(torch.randn(B, L, H))  # the kernels' setup for L runs once, eagerly
    return layer


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_forward_and_step_have_no_graph_break_and_match_eager(layer):
    x = torch.randn(B, L, H)
    state = layer.default_state(B)
    with torch.no_grad():
        forward = torch.compile(layer, fullgraph=True, backend="aot_eager")
        assert_same(forward(x), layer(x))
        step = torch.compile(Step(layer), fullgraph=True, backend="aot_eager")
        assert_same(step(x[:, 0], state), layer.step(x[:, 0], state))


def test_compiled_forward_trains(layer):
    """The compiled forward's backward gives eager's gradients."""
    x = torch.randn(B, L, H)
    layer.train()
    forward = torch.compile(layer, fullgraph=True, backend="aot_eager")
    grads = []
    for fn in (forward, layer):
        layer.zero_grad()
        fn(x).square().sum().backward()
        grads.append([p.grad.clone() for p in layer.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_exported_forward_and_step_match_eager(layer):
    x = torch.randn(B, L, H)
    state = layer.default_state(B)
    with torch.no_grad():
        ep = torch.export.export(layer, (x,))
        assert_same(ep.module()(x), layer(x))
        ep = torch.export.export(Step(layer), (x[:, 0], state))
        assert_same(ep.module()(x[:, 0], state), layer.step(x[:, 0], state))


@pytest.mark.parametrize("kind", ["s4d", "s4", "lssl", "liquid-s4"])
def test_a_whole_model_compiles_and_exports(kind):
    torch.manual_seed(0)
    model = lssl.SequenceModel(d_input=1, d_output=3, d_model=H, n_layers=2, layer=kind, pooling="none",
                               layer_args={"d_state": N, **({"l_max": L} if kind == "liquid-s4" else {})}).eval()
    x = torch.randn(B, L, 1)

    class ModelStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x, states):
            return self.model.step(x, states)

    with torch.no_grad():
        ref = model(x)
        states = model.default_state(B)
        assert_same(torch.compile(model, fullgraph=True, backend="aot_eager")(x), ref)
        assert_same(torch.export.export(model, (x,)).module()(x), ref)
        step = ModelStep()
        assert_same(torch.compile(step, fullgraph=True, backend="aot_eager")(x[:, 0], states),
                    model.step(x[:, 0], states))
        assert_same(torch.export.export(step, (x[:, 0], states)).module()(x[:, 0], states),
                    model.step(x[:, 0], states))


def test_eager_calls_still_check_values():
    layer = lssl.S4D(H, N)
    x = torch.randn(B, L, H)
    x[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        layer(x)
    with pytest.raises(ValueError, match="rate must be finite and > 0"):
        layer(torch.randn(B, L, H), rate=-1.0)
