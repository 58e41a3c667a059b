"""LiquidS4's liquid_gain and liquid_scale: what they compute (against the plain layer's order-p
terms), that a zero gain starts from S4 exactly, and that every view applies them alike."""

import copy
import math

import pytest
import torch

from lssl import LiquidS4
from lssl.kernels import liquid
from lssl.train.optim import param_groups

from .helpers import BACKENDS, assert_close

H = 3
KERNELS = ["dplr", "diag"]
TERMS = ["pb", "kb"]
SCALES = [None, "normalized"]


def _layer(term="pb", kernel="dplr", degree=3, **kw):
    """A layer whose SSM output is visible: no activation, no mixing, y (B, L, C H); the plain
    term (liquid_gain='none') unless kw says otherwise."""
    args = dict(d_state=6, mix="none", activation="identity", dt_min=0.05, dt_max=0.2, liquid_gain="none")
    return LiquidS4(H, degree=degree, liquid=term, kernel=kernel, **{**args, **kw})


def _plain_copy(layer, term, kernel, degree, **kw):
    """The same layer without liquid_gain / liquid_scale, with layer's shared tensors."""
    plain = _layer(term, kernel, degree, **kw)
    own = plain.state_dict()
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if k in own})
    return plain


def _with_random_gain(layer):
    with torch.no_grad():
        layer.liquid.gain.copy_(torch.randn(H))
    return layer


# ---------------------------------------------------------------------------------------------
# What the options compute


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("term", TERMS)
@pytest.mark.parametrize("scale", SCALES)
def test_options_weight_each_order_of_the_plain_term(f64, kernel, term, scale):
    """y = S4 part + sum_p g f_p (order-p term of the plain layer): the gain and the scale
    multiply each order's coefficient and nothing else (g per feature, over every channel)."""
    degree, L = 3, 30
    layer = _with_random_gain(_layer(term, kernel, degree, liquid_gain="zero", liquid_scale=scale, channels=2))
    x = torch.randn(2, L, H)
    y = layer(x)
    plain = _plain_copy(layer, term, kernel, degree, channels=2)
    f = layer.liquid.order_scales() if scale else [1.0] * (degree - 1)
    g = layer.liquid.gain.detach().repeat(2)  # (C H), the layout of mix='none'
    plain.degree = 1
    expected, previous = plain(x), plain(x)
    for p in range(2, degree + 1):
        plain.degree = p
        current = plain(x)
        expected = expected + g * f[p - 2] * (current - previous)
        previous = current
    assert_close(y, expected)


def test_normalized_scales_are_the_products_counted():
    pb = _layer("pb", degree=4, liquid_scale="normalized", l_max=1000)
    windows = pb.liquid.windows()
    assert pb.liquid.order_scales() == [1 / math.sqrt(math.comb(W, p)) for p, W in zip(range(2, 5), windows)]
    kb = _layer("kb", degree=4, liquid_scale="normalized", l_max=1000)
    assert kb.liquid.order_scales() == [1 / math.sqrt(math.comb(999, p - 1)) for p in range(2, 5)]


@pytest.mark.parametrize("p", [2, 3, 4])
def test_normalized_signals_have_unit_order_variance(f64, p):
    """For N(0, 1) inputs and s = 1 each normalised order alone has variance 1 (estimated here
    within 20 %): PB's z in every full window, and KB's SSM input w - u at the last sample
    (variance binom(i, p-1) / binom(l-1, p-1), 1 at i = l - 1). The KB prefixes of one row are
    nearly the same at every i, so its estimate needs many rows."""
    torch.manual_seed(0)
    s = torch.ones(1)
    only_p = torch.zeros(p - 1, 1)
    only_p[-1] = 1.0
    L = 2000
    u = torch.randn(8, 1, L)
    W = liquid.default_window(L, p)
    z, _ = liquid.pb_signal(u, s, [W] * (p - 1), weights=only_p / math.sqrt(math.comb(W, p)))
    assert 0.8 < z[..., W:].var().item() < 1.25
    L = 200
    u = torch.randn(4096, 1, L)
    w, _ = liquid.kb_signal(u, s, p, weights=only_p / math.sqrt(math.comb(L - 1, p - 1)))
    assert 0.8 < (w - u)[..., -1].var().item() < 1.25


# ---------------------------------------------------------------------------------------------
# A zero gain starts from S4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("term", TERMS)
@pytest.mark.parametrize("scale", SCALES)
def test_zero_gain_is_the_s4_part_bit_for_bit(backend, kernel, term, scale):
    """At initialisation the layer equals its degree-1 (S4) self in every view, bit for bit, and
    the SSM gradients equal S4's; the gain alone gets a gradient from the liquid term."""
    torch.manual_seed(0)
    layer = LiquidS4(H, d_state=8, degree=3, liquid=term, kernel=kernel, backend=backend, liquid_gain="zero",
                     liquid_scale=scale, l_max=40)
    s4 = copy.deepcopy(layer)
    s4.degree = 1
    x = torch.randn(2, 40, H)
    y, final = layer(x, return_state=True)
    y_step, _ = layer.step(x[:, 0], layer.default_state(2))
    y1, final1 = s4(x, return_state=True)
    y1_step, _ = s4.step(x[:, 0], s4.default_state(2))
    assert torch.equal(y, y1) and torch.equal(final.ssm, final1.ssm) and torch.equal(y_step, y1_step)
    (y.sum() + y_step.sum()).backward()
    (y1.sum() + y1_step.sum()).backward()
    assert layer.liquid.gain.grad.abs().min() > 0
    for (name, p), q in zip(layer.named_parameters(), s4.parameters()):
        if name != "liquid.gain":
            assert_close(p.grad, q.grad), name


@pytest.mark.parametrize("term", TERMS)
def test_one_step_from_zero_gain_turns_the_liquid_term_on(f64, term):
    """One AdamW step moves every g by its lr hint (the layer's lr, 1e-3, not the global 1e-2;
    Adam's first step is lr g / (|g| + eps)), and the liquid term is then on (dt in [0.05, 0.2],
    where it is not negligible)."""
    torch.manual_seed(1)
    layer = _layer(term, degree=2, liquid_gain="zero", mix="glu", activation="gelu")
    x = torch.randn(4, 32, H)
    opt = torch.optim.AdamW(param_groups(layer, lr=1e-2, weight_decay=0.1))
    layer(x).square().mean().backward()
    opt.step()
    assert torch.allclose(layer.liquid.gain.abs(), torch.full((H,), 1e-3), rtol=1e-3, atol=0)
    with torch.no_grad():
        y = layer(x)
        layer.degree = 1
        assert (y - layer(x)).abs().max() > 1e-5 * y.abs().max()


def test_gain_optimizer_hint():
    """The gain has no weight decay (decay would pull it back to S4) and the SSM lr hint."""
    layer = LiquidS4(H, d_state=8, liquid_gain="zero", lr=3e-4)
    assert layer.liquid.gain.shape == (H,)
    assert layer.liquid.gain._optim == {"lr": 3e-4, "weight_decay": 0.0}
    groups = param_groups(layer, lr=1e-2, weight_decay=0.1)
    (group,) = [g for g in groups if any(p is layer.liquid.gain for p in g["params"])]
    assert group["lr"] == 3e-4 and group["weight_decay"] == 0.0


def test_the_plain_term_keeps_the_old_state_dict_keys_and_the_default_adds_only_the_gain():
    """Checkpoints of plain layers (the default before liquid_gain='zero') keep loading: their
    keys are those of liquid_gain='none'; the default layer has exactly one more, liquid.gain."""
    for term in TERMS:
        plain = set(LiquidS4(H, d_state=4, liquid=term, liquid_gain="none").state_dict())
        assert not any(k.startswith("liquid.gain") for k in plain)
        assert ("liquid.length" in plain) == (term == "pb")
        assert set(LiquidS4(H, d_state=4, liquid=term).state_dict()) == plain | {"liquid.gain"}


# ---------------------------------------------------------------------------------------------
# Every view applies the same gain and scale


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("term", TERMS)
@pytest.mark.parametrize("scale", SCALES)
def test_step_and_chunks_equal_forward_with_a_gain(f64, backend, kernel, term, scale):
    layer = _with_random_gain(
        _layer(term, kernel, degree=3, backend=backend, liquid_gain="zero", liquid_scale=scale, l_max=48,
               mix="glu", activation="gelu")
    )
    x = torch.randn(2, 48, H)
    y, final = layer(x, return_state=True, rate=1.5)
    state, ys = layer.default_state(2), []
    for t in range(48):
        y_t, state = layer.step(x[:, t], state, rate=1.5)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y)
    assert_close(state.ssm, final.ssm)
    assert_close(state.memory, final.memory)
    y1, s = layer(x[:, :17], return_state=True, rate=1.5)
    y2, s = layer(x[:, 17:20], state=s, return_state=True, rate=1.5)
    y3, s = layer(x[:, 20:], state=s, return_state=True, rate=1.5)
    assert_close(torch.cat([y1, y2, y3], 1), y)
    assert_close(s.ssm, final.ssm)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("term", TERMS)
def test_backends_agree_with_a_gain_and_scale(f64, backend, term):
    torch.manual_seed(2)
    layer = _with_random_gain(_layer(term, degree=3, liquid_gain="zero", liquid_scale="normalized", l_max=40))
    other = _layer(term, degree=3, backend=backend, liquid_gain="zero", liquid_scale="normalized", l_max=40)
    other.load_state_dict(layer.state_dict())
    x = torch.randn(2, 40, H)
    assert_close(other(x), layer(x))


@pytest.mark.parametrize("term", TERMS)
def test_bidirectional_with_a_gain(f64, term):
    """The backward half gets the same gain: a bidirectional layer's liquid part is that of the
    forward direction plus that of the reversed sequence, each weighted by g."""
    layer = _with_random_gain(_layer(term, degree=2, bidirectional=True, liquid_gain="zero", l_max=12))
    x = torch.randn(2, 12, H)
    y = layer(x)
    g = layer.liquid.gain.detach().clone()
    with torch.no_grad():
        layer.liquid.gain.fill_(1.0)
    y_one = layer(x)
    layer.degree = 1
    y_s4 = layer(x)
    assert_close(y - y_s4, g * (y_one - y_s4))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(liquid_gain="one"), "unknown liquid_gain 'one'; known: 'zero', 'none'"),
        (dict(liquid_scale="window"), "unknown liquid_scale 'window'; known: 'normalized'"),
        (dict(liquid_scale="normalized", liquid_compat="official"), "applies to our causal terms"),
    ],
)
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        LiquidS4(H, d_state=4, **kw)


def test_the_default_is_the_gain_started_at_zero_and_official_ignores_it():
    layer = LiquidS4(H, d_state=4)
    assert layer.liquid.gain is not None and torch.equal(layer.liquid.gain, torch.zeros(H))
    assert LiquidS4(H, d_state=4, liquid_gain=None).liquid.gain is None
    assert LiquidS4(H, d_state=4, liquid_gain="none").liquid.gain is None
    official = LiquidS4(H, d_state=4, liquid_compat="official")
    assert not any("gain" in name for name, _ in official.named_parameters())


def test_kb_scale_needs_a_length():
    layer = LiquidS4(H, d_state=4, liquid="kb", liquid_scale="normalized")
    with pytest.raises(ValueError, match="takes its length from l_max"):
        layer.liquid.order_scales()
    layer(torch.randn(1, 64, H))
    assert layer.liquid.length.item() == 64
