import pytest
import torch

from lssl.layer import LAYERS
from lssl.model import SequenceModel

from .helpers import assert_close, needs_numba

F64 = torch.float64



def _model(**kw):
    args = dict(d_input=3, d_output=5, d_model=8, n_layers=2, layer="s4d", layer_args={"d_state": 8})
    return SequenceModel(**{**args, **kw})


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("pooling, shape", [("mean", (2, 5)), ("last", (2, 5)), ("none", (2, 30, 5))])
def test_every_registry_entry_builds_and_runs(layer, pooling, shape):
    model = _model(layer=layer, pooling=pooling)
    assert model(torch.randn(2, 30, 3)).shape == shape


@pytest.mark.parametrize("norm", ["layer", "batch", "none"])
@pytest.mark.parametrize("prenorm", [True, False])
def test_norms(norm, prenorm):
    model = _model(norm=norm, prenorm=prenorm)
    out = model(torch.randn(4, 20, 3))
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_token_inputs():
    model = SequenceModel(d_input=None, vocab_size=11, d_output=3, d_model=8, n_layers=1, layer_args={"d_state": 4})
    assert model(torch.randint(0, 11, (2, 25))).shape == (2, 3)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 11\)"):
        model(torch.full((2, 5), 11))
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.randn(2, 5))


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_padding_masks(f64, pooling):
    """A padded sequence with its length gives the same output as the sequence alone."""
    model = _model(pooling=pooling).eval()
    x = torch.randn(2, 30, 3)
    lengths = torch.tensor([30, 17])
    out = model(x, lengths=lengths)
    assert_close(out[1], model(x[1:, :17])[0])
    assert_close(out[0], model(x[:1])[0])


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_model_step_equals_forward(f64, layer, norm):
    model = _model(layer=layer, pooling="none", norm=norm).eval()
    x = torch.randn(2, 25, 3)
    y = model(x)
    states = model.default_state(2)
    ys = []
    for t in range(25):
        y_t, states = model.step(x[:, t], states)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y)


def test_errors():
    with pytest.raises(ValueError, match="unknown layer 'mamba'; known: 'lssl', 's4', 's4d', 'liquid-s4'"):
        _model(layer="mamba")
    with pytest.raises(ValueError, match="unknown pooling"):
        _model(pooling="max")
    with pytest.raises(ValueError, match="unknown norm"):
        _model(norm="group")
    with pytest.raises(ValueError, match="exactly one of d_input"):
        SequenceModel(d_input=None, d_output=2)
    model = _model()
    with pytest.raises(ValueError, match=r"x must have shape \(B, L, d_input\)"):
        model(torch.randn(30, 3))
    with pytest.raises(ValueError, match="last dim d_input=3"):
        model(torch.randn(2, 30, 4))
    with pytest.raises(ValueError, match="lengths must be"):
        model(torch.randn(2, 30, 3), lengths=torch.tensor([0, 30]))
    with pytest.raises(ValueError, match="x contains NaN"):
        model(torch.full((2, 30, 3), float("inf")))
    with pytest.raises(ValueError, match="step needs a model with pooling='none'"):
        model.step(torch.randn(2, 3), model.default_state(2))


def test_standardised_outputs(f64):
    kwargs = dict(d_input=2, d_output=2, d_model=8, n_layers=1, layer="s4d", layer_args={"d_state": 4})
    torch.manual_seed(0)
    plain = SequenceModel(**kwargs)
    torch.manual_seed(0)
    scaled = SequenceModel(**kwargs, target_mean=[10.0, -1.0], target_std=[2.0, 0.5])
    x = torch.randn(3, 12, 2)
    assert_close(scaled(x), plain(x) * torch.tensor([2.0, 0.5]) + torch.tensor([10.0, -1.0]))
    assert set(scaled.state_dict()) - set(plain.state_dict()) == {"target_mean", "target_std"}
    stream = SequenceModel(**kwargs, pooling="none", target_mean=[10.0, -1.0], target_std=[2.0, 0.5]).eval()
    y_t, _ = stream.step(x[:, 0], stream.default_state(3))
    assert_close(y_t, stream(x[:, :1])[:, 0])
    with pytest.raises(ValueError, match="give both target_mean and target_std"):
        SequenceModel(**kwargs, target_mean=[0.0, 0.0])
    with pytest.raises(ValueError, match="target_std > 0"):
        SequenceModel(**kwargs, target_mean=[0.0, 0.0], target_std=[1.0, 0.0])
    with pytest.raises(ValueError, match="must be 2 numbers"):
        SequenceModel(**kwargs, target_mean=[0.0], target_std=[1.0])


@needs_numba
@pytest.mark.parametrize("layer", ["s4", "liquid-s4"])
def test_numba_backend_through_layer_args(f64, layer):
    """layer_args={'backend': 'numba'} reaches every block's layer (the CLI's
    --model.layer_args.backend=numba), and the model computes what the torch backend does."""
    args = {"d_state": 8, "l_max": 30} if layer == "liquid-s4" else {"d_state": 8}
    fast = _model(layer=layer, layer_args={**args, "backend": "numba"}, pooling="none")
    slow = _model(layer=layer, layer_args=args, pooling="none")
    slow.load_state_dict(fast.state_dict())
    assert all(block.layer.kernel.backend == "numba" for block in fast.blocks)
    x = torch.randn(2, 30, 3)
    assert_close(fast(x), slow(x))
