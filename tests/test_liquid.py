import functools
import itertools
import math

import numpy as np
import pytest
import torch

import lssl
import lssl.ops
from lssl import LiquidS4, LiquidState
from lssl.kernels import liquid, reference
from lssl.layer import S4, S4D

from .helpers import BACKENDS, assert_close, grads, hide_numba, needs_numba, rel_err

H = 3
KERNELS = ["dplr", "diag"]
TERMS = ["pb", "kb"]
SSM_PARAMS = {
    "dplr": ["log_neg_re", "lam_im", "P", "B", "C", "log_dt"],
    "diag": ["log_neg_re", "lam_im", "B", "C", "log_dt"],
}



def _layer(liquid_name="pb", kernel="dplr", degree=2, **kw):
    """A layer whose SSM output is visible: no activation, no mixing, y (B, L, C H); the liquid
    term as the paper defines it (liquid_gain='none'), which these tests hold to its oracles."""
    args = dict(d_state=6, mix="none", activation="identity", dt_min=0.05, dt_max=0.2, liquid_gain="none")
    return LiquidS4(H, degree=degree, liquid=liquid_name, kernel=kernel, **{**args, **kw})


def _s4_part(layer, x):
    """K * u + D u by the explicit-powers kernel and the direct convolution, (B, L, C, H)."""
    L = x.shape[1]
    A, B, C = layer.kernel.discrete(L)
    K = reference.kernel(A, B, C, L)
    return reference.causal_conv(x.transpose(1, 2), K).permute(0, 3, 1, 2) + layer.D * x[:, :, None]


def _windows(layer):
    return layer.liquid.windows() if isinstance(layer.liquid, liquid.PolyB) else None


# ---------------------------------------------------------------------------------------------
# The oracles


def test_enumeration_of_exact_weights_is_the_recurrence(f64):
    """The subset enumeration with the exact weights, up to order L, plus the S4 part equals the
    liquid recurrence run step by step: the oracles agree with each other."""
    layer = _layer(degree=2)
    L = 7
    x = 0.7 * torch.randn(2, L, H)
    A, B, C = layer.kernel.discrete(L)
    y_rec, _ = reference.liquid_recurrence(A, B, C, layer.D, x)
    y_enum = _s4_part(layer, x) + reference.liquid_enumeration(A, B, C, x, L, "exact")
    assert_close(y_enum, y_rec)


def test_elementary_reference_against_expansion(f64):
    x = torch.randn(5, 6)
    e = reference.elementary(x, 4)
    for q in range(5):
        expected = sum(math.prod(x[:, i] for i in S) for S in itertools.combinations(range(6), q))
        assert_close(e[q], expected * torch.ones(5))


# ---------------------------------------------------------------------------------------------
# Correctness of the fast terms


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("term", TERMS)
@pytest.mark.parametrize("degree", [2, 3, 4])
def test_equals_brute_force_enumeration(f64, kernel, term, degree):
    """KB and PB equal the sum over every index subset of their weights, L = 9 (the default PB
    windows, W = 5, 5, 6, are shorter than L)."""
    layer = _layer(term, kernel, degree)
    L = 9
    x = torch.randn(2, L, H)
    y = layer(x)
    A, B, C = layer.kernel.discrete(L)
    expected = _s4_part(layer, x) + reference.liquid_enumeration(A, B, C, x, degree, term, _windows(layer))
    assert_close(y, expected.flatten(-2))


@pytest.mark.parametrize("window", [2, 3, 20])
def test_pb_explicit_window_equals_enumeration(f64, window):
    layer = _layer("pb", degree=2, window=window)
    x = torch.randn(2, 8, H)
    A, B, C = layer.kernel.discrete(8)
    expected = _s4_part(layer, x) + reference.liquid_enumeration(A, B, C, x, 2, "pb", [window])
    assert_close(layer(x), expected.flatten(-2))


@pytest.mark.parametrize("term", TERMS)
def test_channels_and_rate_equal_enumeration(f64, term):
    """Two channels per feature and rate = 2 (K and s at step 2 dt) against the oracle built from
    the discrete system at that rate."""
    layer = _layer(term, degree=3, channels=2)
    x = torch.randn(2, 8, H)
    y = layer(x, rate=2.0)
    A, B, C = layer.kernel.discrete(8, rate=2.0)
    K = reference.kernel(A, B, C, 8)
    s4 = reference.causal_conv(x.transpose(1, 2), K).permute(0, 3, 1, 2) + layer.D * x[:, :, None]
    expected = s4 + reference.liquid_enumeration(A, B, C, x, 3, term, _windows(layer))
    assert_close(y, expected.flatten(-2))


@pytest.mark.parametrize("term", TERMS)
@pytest.mark.parametrize("L", [1, 2, 3, 4])
def test_short_sequences(f64, term, L):
    """L <= 4 (where the published code crashes) works and equals the enumeration."""
    layer = _layer(term, degree=3)
    x = torch.randn(2, L, H)
    y = layer(x)
    A, B, C = layer.kernel.discrete(L)
    expected = _s4_part(layer, x) + reference.liquid_enumeration(A, B, C, x, 3, term, _windows(layer))
    assert_close(y, expected.flatten(-2))


@pytest.mark.parametrize("kernel, cls, kw", [("dplr", S4, {}), ("diag", S4D, {"disc": "bilinear"})])
def test_degree_one_is_plain_s4_bit_for_bit(kernel, cls, kw):
    for term in TERMS:
        torch.manual_seed(3)
        plain = cls(H, d_state=8, **kw)
        torch.manual_seed(3)
        layer = LiquidS4(H, d_state=8, degree=1, liquid=term, kernel=kernel)
        x = torch.randn(2, 20, H)
        assert torch.equal(layer(x), plain(x))
        assert torch.equal(layer(x, rate=2.0), plain(x, rate=2.0))
        y, state = layer(x, return_state=True)
        y_plain, state_plain = plain(x, return_state=True)
        assert torch.equal(y, y_plain) and torch.equal(state.ssm, state_plain)
        y, state = layer.step(x[:, 0], layer.default_state(2))
        y_plain, state_plain = plain.step(x[:, 0], plain.default_state(2))
        assert torch.equal(y, y_plain) and torch.equal(state.ssm, state_plain)
        y.sum().backward()
        y_plain.sum().backward()
        for (name, p), q in zip(layer.named_parameters(), plain.parameters()):
            assert torch.equal(p.grad, q.grad), name


# ---------------------------------------------------------------------------------------------
# Structure: causality, homogeneity, views


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("term", TERMS)
def test_causality(f64, kernel, term):
    layer = _layer(term, kernel, degree=3)
    x = torch.randn(2, 60, H)
    x2 = x.clone()
    x2[:, 40] += 1.0
    d = layer(x2) - layer(x)
    assert d[:, :40].abs().max() < 1e-12
    assert d[:, 40:].abs().max() > 1e-6


@pytest.mark.parametrize("term", TERMS)
@pytest.mark.parametrize("p", [2, 3, 4])
def test_order_p_term_is_homogeneous_of_degree_p(f64, term, p):
    """Spec E15(c): the order-p term (output at degree p minus output at degree p - 1) scales by
    alpha^p when u scales by alpha."""
    layer = _layer(term, degree=p)
    x = torch.randn(2, 30, H)
    alpha = 1.7

    def order_p(u):
        layer.degree = p
        y = layer(u)
        layer.degree = p - 1
        return y - layer(u)

    corr = order_p(x)
    assert corr.abs().max() > 1e-6
    assert_close(order_p(alpha * x), alpha**p * corr)


def test_pb_term_vanishes_off_the_window(f64):
    """Spec E15(d), causal form: the PB term at time k only sees the last W_p samples."""
    layer = _layer("pb", degree=2, window=4)
    plain = _layer("pb", degree=1)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(1, 20, H)
    x[:, 10:14] = 0  # the windows ending at 13 hold zeros only ...
    d = layer(x) - plain(x)
    assert d[:, 13].abs().max() < 1e-14
    assert d[:, 12].abs().max() < 1e-14 and d[:, 15].abs().max() > 1e-6  # ... and one sample is not a product


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("term", TERMS)
def test_step_loop_equals_forward(f64, kernel, term):
    layer = _layer(term, kernel, degree=3, mix="glu", activation="gelu")
    x = torch.randn(3, 40, H)
    y = layer(x, rate=1.5)
    state = layer.default_state(3)
    ys = []
    for t in range(40):
        y_t, state = layer.step(x[:, t], state, rate=1.5)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y)
    _, final = layer(x, return_state=True, rate=1.5)
    assert_close(state.ssm, final.ssm)
    assert_close(state.memory, final.memory)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("degree", [4, 6])
@pytest.mark.parametrize("outlier", [1e3, 1e4])
def test_pb_step_equals_forward_around_an_outlier(f64, backend, degree, outlier):
    """PB with one outlier, dt in [0.3, 1] (s of order one): the recurrent steps (power sums over
    each window) equal the forward pass before the outlier and once the longest window has left
    it. Inside the windows that hold it both lose the digits that Newton's identities cancel
    (eps outlier^p against e_p ~ outlier e_{p-1}), each in its own order of summation. Window
    sums taken as differences of prefix sums kept the outlier's rounding in every later window
    (measured 1.5e-2 relative at 1e3, degree 6)."""
    L, at = 200, 20
    layer = _layer("pb", degree=degree, dt_min=0.3, dt_max=1.0, l_max=L, backend=backend)
    x = torch.randn(2, L, H)
    x[:, at] = outlier
    with torch.no_grad():
        y = layer(x)
        state = layer.default_state(2)
        steps = []
        for t in range(L):
            y_t, state = layer.step(x[:, t], state)
            steps.append(y_t)
    steps = torch.stack(steps, 1)
    W = max(layer.liquid.windows())
    assert_close(steps[:, :at], y[:, :at])
    assert_close(steps[:, at + W :], y[:, at + W :])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("term", TERMS)
def test_chunked_with_state_equals_whole(f64, kernel, term):
    layer = _layer(term, kernel, degree=3, l_max=48)
    x = torch.randn(2, 48, H)
    y, final = layer(x, return_state=True)
    y1, s = layer(x[:, :17], return_state=True)
    y2, s = layer(x[:, 17:20], state=s, return_state=True)  # a chunk shorter than the PB window
    y3, s = layer(x[:, 20:], state=s, return_state=True)
    assert_close(torch.cat([y1, y2, y3], 1), y)
    assert_close(s.ssm, final.ssm)
    assert_close(s.memory, final.memory)
    # ... and a state from stepping continues the convolution.
    s = layer.default_state(2)
    for t in range(20):
        _, s = layer.step(x[:, t], s)
    assert_close(layer(x[:, 20:], state=s), y[:, 20:])


def test_bidirectional(f64):
    """The backward half is the same causal term on the reversed sequence."""
    for term in TERMS:
        layer = _layer(term, degree=2, bidirectional=True)
        forward = _layer(term, degree=2)
        x = torch.randn(2, 12, H)
        sd = layer.state_dict()
        C_fwd, C_bwd = sd["kernel.C"].chunk(2, dim=0)
        sd_fwd = {**sd, "kernel.C": C_fwd}
        forward.load_state_dict(sd_fwd)
        y = layer(x)
        part_fwd = forward(x) - forward.D.flatten() * x.repeat(1, 1, 1)
        forward.load_state_dict({**sd, "kernel.C": C_bwd})
        part_bwd = (forward(x.flip(1)) - forward.D.flatten() * x.flip(1)).flip(1)
        assert_close(y, part_fwd + part_bwd + layer.D.flatten() * x)
        with pytest.raises(ValueError, match="no recurrent view"):
            layer.step(x[:, 0], None)


# ---------------------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("term", TERMS)
def test_liquid_term_gradients_reach_every_ssm_parameter(f64, kernel, term):
    layer = _layer(term, kernel, degree=3)
    x = torch.randn(2, 24, H)
    y = layer(x)
    layer.degree = 1
    corr = y - layer(x)  # the liquid terms alone
    params = {name: getattr(layer.kernel, name) for name in SSM_PARAMS[kernel]}
    g = grads((corr * torch.randn_like(corr)).sum(), params)
    for name, grad in g.items():
        assert grad.abs().max() > 1e-8, name


@pytest.mark.parametrize("term", TERMS)
@pytest.mark.parametrize("degree", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_gradients(term, degree, dtype):
    """Spec E18: N(0, 1) inputs, B = 2, L = 64: every parameter gets a finite gradient."""
    layer = LiquidS4(4, d_state=8, degree=degree, liquid=term, liquid_gain="none").to(dtype)
    y = layer(torch.randn(2, 64, 4, dtype=dtype))
    assert y.dtype == dtype
    y.square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("term", TERMS)
def test_gradients_match_the_oracle(f64, term):
    """d(loss)/d(input) through the fast term equals that through the enumeration oracle."""
    layer = _layer(term, degree=3)
    x = torch.randn(1, 7, H, requires_grad=True)
    G = torch.randn(1, 7, H)
    (gx,) = torch.autograd.grad((layer(x) * G).sum(), x)
    A, B, C = (t.detach() for t in layer.kernel.discrete(7))
    y_ref = _s4_part(layer, x) + reference.liquid_enumeration(A, B, C, x, 3, term, _windows(layer))
    (gx_ref,) = torch.autograd.grad((y_ref.flatten(-2) * G).sum(), x)
    assert_close(gx, gx_ref)


# ---------------------------------------------------------------------------------------------
# KB against the exact recurrence


def test_exact_recurrence_agrees_with_kb_to_first_order(f64):
    """For u = eps v, the exact liquid recurrence and KB share the order-1 (S4) term exactly and
    differ from order 2 on, by the inner gaps A_bar^g versus I: the relative difference is
    O(eps), and measured to fall 10x per 10x smaller eps (slope 1 within 2%)."""
    layer = _layer("kb", degree=6)
    L = 12
    v = torch.randn(2, L, H)
    A, B, C = layer.kernel.discrete(L)
    errs = []
    for eps in (1e-2, 1e-3, 1e-4):
        y_exact, _ = reference.liquid_recurrence(A, B, C, layer.D, eps * v)
        errs.append(rel_err(layer(eps * v), y_exact.flatten(-2)))
    assert errs[0] < 0.05, errs
    for a, b in zip(errs, errs[1:]):
        assert 9.8 < a / b < 10.2, errs


def test_kb_order_two_approaches_exact_as_dt_shrinks(f64):
    """The order-2 coefficients: exact weight C A^{k-j} B (1^T A^{j-i-1} B) versus KB's
    C A^{k-j} B s differ by 1^T (A^g - I) B = O(dt g): 10x smaller dt, ~10x closer."""
    L = 10
    v = torch.randn(1, L, H)
    errs = []
    for dt in (1e-4, 1e-5):
        layer = _layer("kb", degree=2, dt_min=dt, dt_max=dt)
        A, B, C = layer.kernel.discrete(L)
        exact = reference.liquid_enumeration(A, B, C, v, 2, "exact")
        kb = reference.liquid_enumeration(A, B, C, v, 2, "kb")
        errs.append(rel_err(kb, exact))
    assert 8 < errs[0] / errs[1] < 12, errs


# ---------------------------------------------------------------------------------------------
# Elementary symmetric polynomials: stability at long L


def _hard_inputs(L):
    """(4, 2, L): centred, positive, offset (3 + small noise) and heavy-tailed (Student t, 2
    degrees of freedom) float32 inputs."""
    g = torch.Generator().manual_seed(1)
    return torch.stack([
        torch.randn(2, L, generator=g),
        torch.rand(2, L, generator=g),
        3.0 + 0.1 * torch.randn(2, L, generator=g),
        torch.distributions.StudentT(2.0).sample((2, L)),
    ])


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_pb_signal_is_stable_at_long_length(backend):
    """PB's windowed e_p (float32 in and out, power sums and Newton's identities in float64) at
    L = 16000 with the default windows, against the float64 sequential recurrence over every
    window: the error is float32 rounding, also for heavy tails, where float32 power sums lose
    the cancelling outliers' digits (measured 3.5e-5 at p = 3)."""
    L = 16000
    x = _hard_inputs(L)
    windows = [liquid.default_window(L, p) for p in (2, 3, 4)]
    expected = 0
    for p, W in zip((2, 3, 4), windows):
        padded = torch.nn.functional.pad(x.double(), (W - 1, 0)).unfold(-1, W, 1)  # (..., L, W)
        expected = expected + reference.elementary(padded, p)[p]
    z, _ = liquid.pb_signal(x, torch.ones(2), windows, backend=backend)
    assert z.dtype == torch.float32
    for kind in range(4):
        assert rel_err(z[kind].double(), expected[kind]) < 2e-6, kind


@pytest.mark.parametrize("backend", BACKENDS)
def test_kb_signal_is_stable_at_long_length(backend):
    """KB's prefix e_q (float32 in and out) at L = 16000 against the float64 running recurrence."""
    L = 16000
    x = _hard_inputs(L)
    s = torch.full((2,), 0.5)
    w, memory = liquid.kb_signal(x, s, 4, backend=backend)
    e = [torch.ones(4, 2, dtype=torch.float64)] + [torch.zeros(4, 2, dtype=torch.float64)] * 3
    gain = []
    xd = x.double()
    for i in range(L):
        gain.append(1 + 0.5 * e[1] + 0.25 * e[2] + 0.125 * e[3])
        e = [e[0], e[1] + xd[..., i], e[2] + xd[..., i] * e[1], e[3] + xd[..., i] * e[2]]
    expected = xd * torch.stack(gain, -1)
    for kind in range(4):
        assert rel_err(w[kind].double(), expected[kind]) < 2e-6, kind
        assert rel_err(memory[kind].double(), torch.stack(e[1:], -1)[kind]) < 2e-6, kind


def _elementary(values: list[int], q: int) -> list[int]:
    """e_0 .. e_q of integers, exactly."""
    e = [1] + [0] * q
    for v in values:
        for j in range(q, 0, -1):
            e[j] += v * e[j - 1]
    return e


@functools.lru_cache
def _outlier_case(outlier: int, W: int = 9, n: int = 150, at: int = 40) -> tuple:
    """Two rows of samples m / 2^10 (m integers; m = outlier 2^10 at `at`) and output gradients
    G / 2^10, with, for p = 2..6, e_p of every causal window of W samples, the gradient of
    sum_k g_k e_p(window k) at every sample, and the same two with absolute values (the scales),
    all exact in integers and rounded once: ({p: (value, scale, grad, grad scale) (2, n)}, x, g)."""
    gen = torch.Generator().manual_seed(3)
    m = (torch.randn(2, n, generator=gen) * 2**10).round().long()
    m[:, at] = outlier * 2**10
    G = (torch.randn(2, n, generator=gen) * 2**10).round().long()
    cases = {}
    for p in range(2, 7):
        rows = []
        for row, g_row in zip(m.tolist(), G.tolist()):
            value, scale, grad, grad_scale = [0] * n, [0] * n, [0] * n, [0] * n
            for k in range(n):
                window = range(max(0, k - W + 1), k + 1)
                value[k] = _elementary([row[i] for i in window], p)[p]
                scale[k] = _elementary([abs(row[i]) for i in window], p)[p]
                for i in window:
                    rest = [row[j] for j in window if j != i]
                    grad[i] += g_row[k] * _elementary(rest, p - 1)[p - 1]
                    grad_scale[i] += abs(g_row[k]) * _elementary([abs(v) for v in rest], p - 1)[p - 1]
            rows.append([[v / 2 ** (10 * p) for v in t] for t in (value, scale, grad, grad_scale)])
        cases[p] = torch.tensor(rows, dtype=torch.float64).unbind(1)  # 4 x (2, n)
    return cases, m.double() / 2**10, G.double() / 2**10


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("outlier", [1000, 10000])
def test_window_polynomial_forgets_an_outlier(backend, outlier):
    """An outlier poisons no window that does not hold it: e_p (p = 2..6) of every window of
    W = 9 samples without the outlier, and the gradient at every sample none of whose windows
    holds it, against exact integer arithmetic, to float64 rounding relative to the window's own
    magnitude (e_p of the absolute values; for the gradient the same sum with absolute values),
    with the order's window shared by the lower orders or not. Window sums taken as differences
    of prefix sums over the whole sequence kept eps outlier^p in every later window."""
    W, at = 9, 40
    cases, x, g = _outlier_case(outlier)
    n = x.shape[-1]
    far = [i for i in range(n) if abs(i - at) >= W]  # samples none of whose windows holds it
    for p in range(2, 7):
        value, scale, grad, grad_scale = cases[p]
        # Windows of at least p samples (e_p = 0 before) without the outlier.
        clean = [k for k in range(p - 1, n) if not k - W < at <= k]
        for windows in ((W,) * (p - 1), tuple(W - p + q for q in range(2, p + 1))):
            a = torch.zeros(p - 1, 2, dtype=torch.float64)
            a[-1] = 1.0  # z = e_p over the order-p windows
            xr = x[None].clone().requires_grad_()  # (1, 2, n)
            z = liquid.window_polynomial(xr, a, windows, backend)
            (gx,) = torch.autograd.grad((z * g).sum(), xr)
            err = ((z[0] - value).abs() / scale)[:, clean].max().item()
            assert err < 1e-10, (p, windows, err)
            err = ((gx[0] - grad).abs() / grad_scale)[:, far].max().item()
            assert err < 1e-10, (p, windows, err)


def test_window_sums_and_their_adjoints_against_direct_sums(f64):
    x = torch.randn(2, 50)
    for W in (1, 3, 7, 50, 80):
        expected = torch.stack([x[:, max(0, k - W + 1) : k + 1].sum(-1) for k in range(50)], -1)
        assert_close(liquid.window_sums(x, W), expected)
        expected = torch.stack([x[:, i : i + W].sum(-1) for i in range(50)], -1)
        assert_close(liquid.reverse_window_sums(x, W), expected)
    expected = torch.stack([x[:, i + 1 :].sum(-1) for i in range(50)], -1)
    assert_close(liquid.reverse_exclusive_sums(x), expected)


@pytest.mark.parametrize("windows", [(3,), (4, 4, 4), (5, 3, 2)])
def test_window_polynomial_gradcheck(f64, windows):
    """The analytic backward of the PB signal, against finite differences (float64)."""
    x = torch.randn(2, 2, 9, requires_grad=True)
    a = torch.randn(len(windows), 2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a: liquid.WindowPolynomial.apply(x, a, windows), (x, a))


@pytest.mark.parametrize("Q, batch", [(1, 1), (3, 1), (3, 2)])
def test_prefix_polynomial_gradcheck(f64, Q, batch):
    """The analytic backward of the KB signal (output and chunk totals), against finite
    differences (float64)."""
    x = torch.randn(2, 2, 9, requires_grad=True)
    c = torch.randn(Q + 1, batch, 2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, c: liquid.PrefixPolynomial.apply(x, c), (x, c))


def test_default_window_rule():
    """The official rule (spec C.4 table) where the official code has one; ours also for L <= 4."""
    assert [liquid.default_window(1024, p) for p in (2, 3, 4)] == [46, 20, 15]
    assert [liquid.default_window(16000, p) for p in (2, 3, 4)] == [180, 47, 27]
    assert [liquid.default_window(L, 2) for L in (1, 2, 3, 4)] == [2, 3, 3, 4]


# ---------------------------------------------------------------------------------------------
# The published code's terms


def _compat(term, degree, **kw):
    return _layer(term, degree=degree, liquid_compat="official", **kw)


def _official_B_bar(layer):
    lam, B = layer.kernel.modes()
    lam, B = torch.cat([lam, lam.conj()], -1), torch.cat([B, B.conj()], -1)
    dt = layer.kernel.dt[:, None]
    B_bar = dt * B / (1 - dt * lam / 2)
    return B_bar, B_bar.sum(-1)


def _official_v(x, p):
    """v_p by itertools: the last L p-subsets of the final n_p steps."""
    L = x.shape[1]
    n = next(n for n in range(2, L) if math.comb(n, p) >= L)
    subsets = list(itertools.combinations(range(L - n, L), p))[-L:]
    return torch.stack([math.prod(x[:, i] for i in S) for S in subsets], 1)  # (B, L, H)


def test_official_indices_match_the_spec_table():
    idx = liquid.official_indices(1024, 2)
    assert idx.shape == (1024, 2)
    assert idx[0].tolist() == [978, 990] and idx[-1].tolist() == [1022, 1023]
    assert [liquid.official_window(L, 2) for L in (1024, 4096, 16000)] == [46, 92, 180]
    assert [liquid.official_window(L, 3) for L in (1024, 4096, 16000)] == [20, 31, 47]
    assert [liquid.official_window(L, 4) for L in (1024, 4096, 16000)] == [15, 20, 27]


@pytest.mark.parametrize("degree", [2, 3, 4])
def test_official_pb_closed_form(f64, degree):
    """Spec E15(e): the term is sum_p c_p flip(v_p), c_p = Re sum_n conj(C)_n B_bar_n
    s^(2^(p-1) - 1) (B_bar meets the conjugate of the kernel's C, spec G.1), with B_bar of the
    diagonal part of A only."""
    layer = _compat("pb", degree)
    plain = _compat("pb", 1)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 30, H)
    C = layer.kernel.complex("C")
    C = torch.cat([C.conj(), C], -1)  # the initial C: no kernel call has replaced it by C~ yet
    B_bar, s = _official_B_bar(layer)
    expected = 0
    for p in range(2, degree + 1):
        c = (C * B_bar * s[:, None] ** (2 ** (p - 1) - 1)).sum(-1).real  # (1, H)
        expected = expected + c * _official_v(x, p).flip(1)
    assert_close(layer(x) - plain(x), expected)


@pytest.mark.parametrize("kernel", KERNELS)
def test_official_pb_replays_the_published_steps(f64, kernel):
    """The published PB term replayed step by step (liq-code s4.py, `liquid_kernel='polyb'`):
    its kernel wrapper keeps C_w and the kernel parameter (our C) is conj(C_w) (spec G.1), so
    dC = concat(C_w, conj C_w) = concat(conj C, C); dB = dt diag(1 / (1 - dt w / 2)) B on the
    full space; per order, dB <- sum over one axis of the outer product dB dB^T, then
    y += Re(dC . dB) times the time-reversed correlations."""
    layer = _compat("pb", 4, kernel=kernel)
    plain = _compat("pb", 1, kernel=kernel)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 30, H)
    C_w = layer.kernel.complex("C").conj()  # the initial C: no kernel call has replaced it by C~ yet
    dC = torch.cat([C_w, C_w.conj()], -1)  # (1, H, N)
    lam, B = layer.kernel.modes()
    w, B = torch.cat([lam, lam.conj()], -1), torch.cat([B, B.conj()], -1)  # (H, N)
    dt = layer.kernel.dt[:, None]
    dB = dt * (torch.diag_embed(1 / (1 - 0.5 * dt * w)) @ B[..., None])[..., 0]  # (H, N)
    expected = 0
    for p in range(2, 5):
        dB = (dB[:, :, None] * dB[:, None, :]).sum(2)
        dCB = (dC * dB).sum(-1)  # (1, H)
        expected = expected + (_official_v(x, p).flip(1) * dCB).real
    assert_close(layer(x) - plain(x), expected)


def test_official_kb_closed_form_is_not_a_convolution(f64):
    """Spec E15(f): the KB term is irfft_2L(rfft_2L(flip v_2) * fft_{L+1}(K s))[:L], which is not
    the linear convolution (K s) * flip(v_2)."""
    layer = _compat("kb", 2)
    plain = _compat("kb", 1)
    plain.load_state_dict(layer.state_dict())
    L = 40
    x = torch.randn(2, L, H)
    term = layer(x) - plain(x)
    K = layer.kernel(L)[0].detach()  # (H, L)
    _, s = _official_B_bar(layer)
    v = _official_v(x, 2).flip(1).transpose(1, 2)  # (B, H, L)
    Y = torch.fft.rfft(v, n=2 * L) * torch.fft.fft(K * s[:, None], n=L + 1)
    assert_close(term, torch.fft.irfft(Y, n=2 * L)[..., :L].transpose(1, 2))
    conv = reference.causal_conv(v, (K * s.real[:, None])[None])[:, 0].transpose(1, 2)
    assert rel_err(term, conv) > 0.1


@pytest.mark.parametrize("term", TERMS)
def test_official_is_non_causal_and_frozen(f64, term):
    layer = _compat(term, 2)
    x = torch.randn(2, 30, H)
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert (layer(x2) - layer(x))[:, 0].abs().max() > 1e-8  # y_0 depends on u_{L-1}
    with pytest.raises(ValueError, match="no recurrent view or state"):
        layer.default_state(2)
    with pytest.raises(ValueError, match="no recurrent view or state"):
        layer(x, return_state=True)


def test_official_pb_gives_no_gradient_to_the_ssm(f64):
    """Spec E18: the official PB term uses frozen copies of the parameters."""
    layer = _compat("pb", 3)
    x = torch.randn(2, 30, H)
    y = layer(x)
    layer.degree = 1
    corr = y - layer(x)
    params = {name: getattr(layer.kernel, name) for name in SSM_PARAMS["dplr"]}
    g = grads((corr * torch.randn_like(corr)).sum(), params)
    assert all(v.abs().max() == 0 for v in g.values())
    assert corr.abs().max() > 1e-6


def test_official_bidirectional_pb(f64):
    layer = _compat("pb", 2, bidirectional=True)
    plain = _compat("pb", 1, bidirectional=True)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 20, H)
    C = layer.kernel.complex("C")
    C = torch.cat([C.conj(), C], -1)
    B_bar, s = _official_B_bar(layer)
    c = (C * B_bar * s[:, None]).sum(-1).real  # (2, H): forward, backward
    v = _official_v(x, 2)
    assert_close(layer(x) - plain(x), c[0] * v.flip(1) + c[1] * v)


@pytest.mark.parametrize("term", TERMS)
@pytest.mark.parametrize("degree", [1, 2])
def test_official_bidirectional_is_the_published_two_sided_convolution(f64, term, degree):
    """Spec F17: the published bidirectional layer convolves with the two-sided kernel
    k = pad(k0, (0, L)) + pad(k1.flip(-1), (L, 0)), circularly over 2L samples, so its backward
    half sees strictly future samples: y_t = sum_{i <= t} k0_{t-i} u_i + sum_{i > t} k1_{i-t-1} u_i,
    written out here, plus at degree 2 the liquid term (PB: c_fwd v_2[L-1-t] + c_bwd v_2[t]; KB:
    the frequency-domain product with that same k). Our own layers put the backward half at lag
    0, sum_{i >= t} k1_{i-t} u_i."""
    L = 12
    layer = _compat(term, degree, bidirectional=True)
    ours = _layer(term, degree=1, bidirectional=True)
    ours.kernel.load_state_dict(layer.kernel.state_dict())
    ours.D.data.copy_(layer.D)
    x = torch.randn(2, L, H)
    C = layer.kernel.complex("C")  # the initial C: no kernel call has replaced it by C~ yet
    C = torch.cat([C.conj(), C], -1)
    k0, k1 = layer.kernel(L).detach()  # (H, L) each
    published, lag0 = torch.zeros(2, L, H), torch.zeros(2, L, H)
    for t in range(L):
        for i in range(L):
            if i <= t:
                published[:, t] += k0[:, t - i] * x[:, i]
                lag0[:, t] += k0[:, t - i] * x[:, i]
            else:
                published[:, t] += k1[:, i - t - 1] * x[:, i]
            if i >= t:
                lag0[:, t] += k1[:, i - t] * x[:, i]
    expected = published + layer.D * x
    if degree == 2:
        B_bar, s = _official_B_bar(layer)
        v = _official_v(x, 2)  # (B, L, H)
        if term == "pb":
            c = (C * B_bar * s[:, None]).sum(-1).real  # (2, H): forward, backward
            expected = expected + c[0] * v.flip(1) + c[1] * v
        else:
            k = torch.nn.functional.pad(k0, (0, L)) + torch.nn.functional.pad(k1.flip(-1), (L, 0))  # (H, 2L)
            Y = torch.fft.rfft(v.flip(1).transpose(1, 2), n=2 * L) * torch.fft.fft(k * s[:, None], n=L + 1)
            expected = expected + torch.fft.irfft(Y, n=2 * L)[..., :L].transpose(1, 2)
    assert_close(layer(x), expected)
    assert_close(ours(x), lag0 + ours.D * x)


def test_official_pb_vanishes_when_the_last_samples_do(f64):
    """Spec E15(d): the official PB correction is 0 when u vanishes on the final n_p steps, for
    every order (n_2 = 9, n_3 = 7, n_4 = 7 at L = 30), whatever the earlier samples."""
    layer = _compat("pb", 4)
    plain = _compat("pb", 1)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 30, H)
    x[:, -9:] = 0
    assert (layer(x) - plain(x)).abs().max() == 0


def test_official_short_sequence_raises_clearly():
    with pytest.raises(ValueError, match="no correlation window for L=4 at order 2"):
        _compat("pb", 2)(torch.randn(1, 4, H))


# ---------------------------------------------------------------------------------------------
# Options and errors


def test_degree_change_after_a_forward_pass(f64):
    """The published code raises IndexError here (stale index cache); ours equals a layer built
    with the new degree."""
    for term in TERMS:
        layer = _layer(term, degree=2)
        x = torch.randn(2, 30, H)
        layer(x)
        layer.degree = 4
        fresh = _layer(term, degree=4)
        fresh.load_state_dict(layer.state_dict())
        assert_close(layer(x), fresh(x))
    # KB's memory holds e_1 .. e_{P-1}: a state made for another degree is refused.
    layer = _layer("kb", degree=2)
    old = layer.default_state(2)
    layer.degree = 3
    with pytest.raises(ValueError, match=r"state.memory must have shape \(B, H, M\) = \(2, 3, 2\)"):
        layer.step(torch.randn(2, H), old)


def test_window_is_fixed_by_the_first_input_or_l_max():
    layer = LiquidS4(H, d_state=4)
    with pytest.raises(ValueError, match="window=None takes its windows from l_max"):
        layer.default_state(1)
    layer(torch.randn(1, 1024, H))
    assert layer.liquid.windows() == [46]
    layer(torch.randn(1, 16000 // 100, H))
    assert layer.liquid.windows() == [46]
    assert LiquidS4(H, d_state=4, degree=3, l_max=16000).liquid.windows() == [180, 47]
    assert LiquidS4(H, d_state=4, degree=3, window=9).liquid.windows() == [9, 9]


def test_registry_and_export():
    assert lssl.LAYERS["liquid-s4"] is LiquidS4
    model = lssl.SequenceModel(d_input=2, d_output=3, d_model=4, n_layers=2, layer="liquid-s4",
                               layer_args={"d_state": 4, "degree": 3, "liquid": "kb"})
    assert model(torch.randn(2, 10, 2)).shape == (2, 3)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(degree=0), "degree must be an int >= 1"),
        (dict(degree=2.5), "degree must be an int >= 1"),
        (dict(degree=True), "degree must be an int >= 1"),
        (dict(liquid="polyb"), "unknown liquid 'polyb'; known: 'pb', 'kb'"),
        (dict(kernel="nplr"), "unknown kernel 'nplr'; known: 'dplr', 'diag'"),
        (dict(kernel="diag", measure="legt"), "unknown measure 'legt'"),
        (dict(liquid_compat="paper"), "unknown liquid_compat 'paper'"),
        (dict(window=0), "window must be a positive int"),
        (dict(window=2, degree=3), "window must be >= degree"),
        (dict(window=5, liquid="kb"), "window applies to the causal PB term only"),
        (dict(backend="cuda"), "unknown backend 'cuda'; known: 'torch', 'numba'"),
        pytest.param(
            dict(backend="numba", liquid_compat="official"), "not liquid_compat='official'", marks=needs_numba
        ),
    ],
)
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        LiquidS4(H, d_state=4, **kw)


def test_bad_degree_and_state_after_construction():
    layer = LiquidS4(H, d_state=4, window=3)
    with pytest.raises(ValueError, match="degree must be an int >= 1"):
        layer.degree = 0
    with pytest.raises(ValueError, match="window must be >= degree"):
        layer.degree = 4
    with pytest.raises(ValueError, match="state must be a LiquidState"):
        layer.step(torch.randn(2, H), torch.zeros(2, H, 2))
    state = layer.default_state(2)
    assert isinstance(state, LiquidState) and state.memory.shape == (2, H, 2)


def test_dt_scale_only_at_degree_one(f64):
    """Irregular sampling (dt_scale) is plain S4's: LiquidS4 takes it at degree 1 (equal to S4)
    and refuses it with a clear error above."""
    torch.manual_seed(5)
    plain = S4(H, d_state=4)
    torch.manual_seed(5)
    layer = LiquidS4(H, d_state=4, degree=1)
    x = torch.randn(2, 10, H)
    gaps = torch.rand(2, 10) + 0.5
    assert torch.equal(layer(x, dt_scale=gaps), plain(x, dt_scale=gaps))
    y, state = layer.step(x[:, 0], layer.default_state(2), dt_scale=gaps[:, 0])
    y_plain, state_plain = plain.step(x[:, 0], plain.default_state(2), dt_scale=gaps[:, 0])
    assert torch.equal(y, y_plain) and torch.equal(state.ssm, state_plain)
    layer.degree = 2
    with pytest.raises(ValueError, match="degree > 1 does not take dt_scale"):
        layer(x, dt_scale=gaps)
    with pytest.raises(ValueError, match="degree > 1 does not take dt_scale"):
        layer.step(x[:, 0], layer.default_state(2), dt_scale=gaps[:, 0])


@pytest.mark.parametrize("windows", [(5,), (4, 4, 6)])
def test_row_blocks_do_not_change_the_window_signal(f64, monkeypatch, windows):
    """WindowPolynomial in blocks of one row (every block boundary exercised) equals one block
    for all rows, in value and in the gradients of x and a."""
    x = torch.randn(3, 4, 40, requires_grad=True)
    a = torch.randn(len(windows), 4, requires_grad=True)
    G = torch.randn(3, 4, 40)

    def run():
        z = liquid.WindowPolynomial.apply(x, a, windows)
        return (z, *torch.autograd.grad((z * G).sum(), (x, a)))

    whole = run()
    assert liquid.row_block(40, x.device) >= 12
    monkeypatch.setattr(liquid, "row_block", lambda n, device: 1)
    for got, expected in zip(run(), whole):
        assert_close(got, expected)


@pytest.mark.parametrize("batch", [1, 3])
def test_row_blocks_do_not_change_the_prefix_signal(f64, monkeypatch, batch):
    """PrefixPolynomial in blocks of one row equals one block for all rows: w, the chunk
    totals, and the gradients of x and c through both."""
    x = torch.randn(3, 4, 30, requires_grad=True)
    c = torch.randn(3, batch, 4, requires_grad=True)
    G, T = torch.randn(3, 4, 30), torch.randn(2, 3, 4)

    def run():
        w, totals = liquid.PrefixPolynomial.apply(x, c)
        return (w, totals, *torch.autograd.grad((w * G).sum() + (totals * T).sum(), (x, c)))

    whole = run()
    monkeypatch.setattr(liquid, "row_block", lambda n, device: 1)
    for got, expected in zip(run(), whole):
        assert_close(got, expected)


@pytest.mark.parametrize("windows", [(6,), (6, 4), (5, 5, 3)])
def test_last_window_polynomial_is_the_last_sample_of_the_window_signal(f64, windows):
    """The recurrent step's PB signal (power sums over the last windows) equals the last sample
    of WindowPolynomial, in value and in the gradients of x and a."""
    x = torch.randn(3, 4, max(windows), requires_grad=True)
    a = torch.randn(len(windows), 4, requires_grad=True)
    G = torch.randn(3, 4, 1)
    last = liquid.last_window_polynomial(x, a, windows)
    full = liquid.WindowPolynomial.apply(x, a, windows)[..., -1:]
    assert_close(last, full)
    for got, expected in zip(torch.autograd.grad((last * G).sum(), (x, a)), torch.autograd.grad((full * G).sum(), (x, a))):
        assert_close(got, expected)


def test_kb_degree_2_float32_path_at_long_length():
    """KB at degree 2 (Q = 1) computes in float32 on the CPU (e_1 is a cumulative sum, no
    Newton step): at L = 16000 its output and the gradients of x and c through output and chunk
    totals agree with the float64 computation to float32 rounding, for centred, positive,
    offset and heavy-tailed inputs."""
    L = 16000
    x = _hard_inputs(L).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    c = torch.tensor([[[0.0, 0.0]], [[0.5, -0.3]]], requires_grad=True)  # (Q+1, 1, H)
    c64 = c.detach().double().requires_grad_()
    G = torch.randn(4, 2, L, generator=torch.Generator().manual_seed(2))
    T = torch.randn(1, 4, 2, dtype=torch.float64)
    assert liquid.working_dtype(x, 1) == torch.float32 and liquid.working_dtype(x, 2) == torch.float64
    w, totals = liquid.PrefixPolynomial.apply(x, c)
    w64, totals64 = liquid.PrefixPolynomial.apply(x64, c64)
    assert w.dtype == torch.float32
    ((w * G).sum() + (totals * T).sum()).backward()
    ((w64 * G.double()).sum() + (totals64 * T).sum()).backward()
    for kind in range(4):
        assert rel_err(w[kind].double(), w64[kind].detach()) < 2e-6, kind
        assert rel_err(totals[:, kind].double(), totals64[:, kind].detach()) < 2e-6, kind
        assert rel_err(x.grad[kind].double(), x64.grad[kind]) < 2e-6, kind
    assert rel_err(c.grad.double(), c64.grad) < 2e-6


# ----------------------------------------------------------------------------------------------
# The compiled PB backend


@needs_numba
@pytest.mark.parametrize("windows", [(3,), (4, 4, 4), (5, 3, 2), (20,)])
@pytest.mark.parametrize("n", [1, 4, 9, 50, 150])
def test_numba_window_polynomial_equals_torch(f64, windows, n):
    """The compiled sliding sums (in the (B, n, H) layout) against the torch prefix-sum version,
    values and both gradients; windows longer than the sequence included, and sequences of
    several time blocks (`WINDOW_BLOCK`, 64 samples)."""
    from lssl.ops.liquid_numba import WindowPolynomialNumba

    x = torch.randn(3, n, 5, requires_grad=True)
    a = torch.randn(len(windows), 5, requires_grad=True)
    g = torch.randn(3, n, 5)
    z = WindowPolynomialNumba.apply(x, a, windows)
    expected = liquid.WindowPolynomial.apply(x.transpose(1, 2), a, windows).transpose(1, 2)
    grads_numba = torch.autograd.grad((z * g).sum(), (x, a))
    # At n = 1 every product of two or more samples is exactly 0: the torch version's prefix
    # differences leave round-off there, hence an error scale of at least 1.
    for got, want in zip([z, *grads_numba], [expected, *torch.autograd.grad((expected * g).sum(), (x, a))]):
        assert (got - want).abs().max() <= 1e-10 * max(1.0, want.abs().max().item())


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("windows", "n"), [((4, 3), 30), ((40, 2), 150), ((1, 1), 5), ((7, 5, 3), 200), ((9, 6, 4, 5), 140), ((2, 2, 2), 7)]
)
def test_numba_written_out_orders_equal_the_generic_loops(dtype, windows, n):
    """Orders 2 to 4 run written-out loops (`forward_2`, `backward_4`, ...); the generic loops
    for any order compute the same arithmetic in the same order: outputs and both gradients agree
    to the last bit, in either dtype, over several time blocks (order 5 runs the generic loops
    either way, beside written-out ones)."""
    from lssl.ops import liquid_numba

    x = torch.randn(3, n, 6, dtype=dtype).numpy()
    g = torch.randn(3, n, 6, dtype=dtype).numpy()
    a = torch.randn(len(windows), 3, 6, dtype=torch.float64).numpy()
    orders = np.arange(2, len(windows) + 2)
    results = []
    for written_out in (False, True):
        z, gx, ga = np.empty_like(x), np.empty_like(x), np.empty(a.shape)
        liquid_numba.window_forward(x, a, orders, np.asarray(windows), z, written_out)
        liquid_numba.window_backward(x, a, orders, np.asarray(windows), g, gx, ga, written_out)
        results.append((z, gx, ga))
    for generic, written in zip(*results):
        assert np.array_equal(generic, written)


@needs_numba
def test_numba_window_polynomial_gradcheck(f64):
    from lssl.ops.liquid_numba import WindowPolynomialNumba

    x = torch.randn(2, 11, 3, requires_grad=True)
    a = torch.randn(3, 3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a: WindowPolynomialNumba.apply(x, a, (5, 3, 2)), (x, a))


@needs_numba
@pytest.mark.parametrize("Q", [1, 2, 3])
@pytest.mark.parametrize("per_batch", [False, True])
@pytest.mark.parametrize("n", [1, 5, 300])
def test_numba_prefix_polynomial_equals_torch(f64, Q, per_batch, n):
    """The compiled KB recurrence and its blocked adjoint (n = 300 spans two blocks of 256)
    against the torch prefix-sum version: w, the chunk's e's, and the gradients of x and c
    through both outputs."""
    from lssl.ops.liquid_numba import PrefixPolynomialNumba

    x = torch.randn(3, n, 4, requires_grad=True)
    c = (0.3 * torch.randn(Q + 1, 3 if per_batch else 1, 4)).requires_grad_()
    g, t = torch.randn(3, n, 4), torch.randn(Q, 3, 4)
    w, totals = PrefixPolynomialNumba.apply(x, c)
    w_ref, totals_ref = liquid.PrefixPolynomial.apply(x.transpose(1, 2), c)
    w_ref = w_ref.transpose(1, 2)
    got = [w, totals, *torch.autograd.grad((w * g).sum() + (totals * t).sum(), (x, c))]
    want = [w_ref, totals_ref, *torch.autograd.grad((w_ref * g).sum() + (totals_ref * t).sum(), (x, c))]
    for a, b in zip(got, want):
        assert_close(a, b)


@needs_numba
def test_numba_prefix_polynomial_gradcheck(f64):
    from lssl.ops.liquid_numba import PrefixPolynomialNumba

    x = torch.randn(2, 9, 3, requires_grad=True)
    c = torch.randn(4, 2, 3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, c: PrefixPolynomialNumba.apply(x, c), (x, c))


@needs_numba
@pytest.mark.parametrize("term", TERMS)
@pytest.mark.parametrize("degree", [2, 3, 4])
def test_numba_backend_equals_brute_force_enumeration(f64, term, degree):
    layer = _layer(term, degree=degree, backend="numba")
    x = torch.randn(2, 9, H)
    y = layer(x)
    A, B, C = layer.kernel.discrete(9)
    expected = _s4_part(layer, x) + reference.liquid_enumeration(A, B, C, x, degree, term, _windows(layer))
    assert_close(y, expected.flatten(-2))


@needs_numba
@pytest.mark.parametrize("term", TERMS)
def test_numba_backend_layer_equals_torch_backend(f64, term):
    """Same parameters, both backends: outputs at a rate, every gradient, chunked state passing,
    bidirectional layers and the step loop after a numba chunk."""
    fast = _layer(term, degree=3, backend="numba", mix="glu", activation="gelu", l_max=40)
    slow = _layer(term, degree=3, mix="glu", activation="gelu", l_max=40)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 40, H, requires_grad=True)
    y_fast, y_slow = fast(x, rate=1.5), slow(x, rate=1.5)
    assert_close(y_fast, y_slow)
    g = torch.randn_like(y_fast)
    grads_fast = torch.autograd.grad((y_fast * g).sum(), [x, *fast.parameters()])
    for got, want in zip(grads_fast, torch.autograd.grad((y_slow * g).sum(), [x, *slow.parameters()])):
        assert_close(got, want)
    with torch.no_grad():
        y1, s = fast(x[:, :13], return_state=True)
        y2, s = fast(x[:, 13:], state=s, return_state=True)
        assert_close(torch.cat([y1, y2], 1), slow(x))
        for t in range(5):
            _, s = fast.step(x[:, t], fast.default_state(2) if t == 0 else s)
        assert_close(fast(x[:, 5:], state=s), slow(x)[:, 5:])
        both = [_layer(term, degree=2, bidirectional=True, backend=b) for b in ("numba", "torch")]
        both[1].load_state_dict(both[0].state_dict())
        assert_close(both[0](x), both[1](x))


def test_numba_backend_without_numba_says_how_to_get_it(monkeypatch):
    hide_numba(monkeypatch)
    with pytest.raises(ImportError, match=r"pip install 'lssl\[numba\]'"):
        LiquidS4(H, d_state=4, backend="numba")


@needs_numba
def test_numba_backend_refuses_other_devices():
    x = torch.zeros(2, 3, 5, device="meta")
    with pytest.raises(ValueError, match="backend='numba' runs on CPU tensors, got the input on meta"):
        liquid.window_polynomial(x, torch.zeros(1, 3, device="meta"), (2,), "numba")
    with pytest.raises(ValueError, match="backend='numba' runs on CPU tensors"):
        liquid.prefix_polynomial(x, torch.zeros(2, 1, 3, device="meta"), "numba")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_pb_folds_a_single_channel_k0_into_its_coefficients(f64, backend, bidirectional):
    """With one channel per direction, K_0 z comes out of the window polynomial with K_0 in its
    coefficients; values and gradients (input, s, K) equal the product K_0 z made afterwards."""
    term = liquid.PolyB(3, window=4, backend=backend)
    u = torch.randn(2, H, 11, requires_grad=True)
    s = torch.rand(H, requires_grad=True)
    K = torch.randn(2 if bidirectional else 1, H, 11, requires_grad=True)
    _, pointwise, _, _ = term(u, K, s, None, bidirectional)
    K0 = K[..., 0]
    z = liquid.pb_signal(u, s, [4, 4], backend=backend)[0].transpose(1, 2)[:, :, None]  # (B, L, 1, H)
    if bidirectional:
        z_rev = liquid.pb_signal(u.flip(-1), s, [4, 4], backend=backend)[0].flip(-1).transpose(1, 2)[:, :, None]
        expected = K0[0] * z + K0[1] * z_rev
    else:
        expected = K0[0] * z
    assert pointwise.shape == (2, 11, 1, H)
    assert_close(pointwise, expected)
    g = torch.randn_like(expected)
    for got, want in zip(
        torch.autograd.grad((pointwise * g).sum(), (u, s, K)),
        torch.autograd.grad((expected * g).sum(), (u, s, K)),
    ):
        assert_close(got, want)


def _signal(term, u, s, backend):
    """The PB (windows 4, 3) or KB (degree 3) signal of u (B, H, L) with input sums s (H,)."""
    if term == "pb":
        return liquid.pb_signal(u, s, [4, 3], backend=backend)[0]
    return liquid.kb_signal(u, s, 3, backend=backend)[0]


@needs_numba
@pytest.mark.parametrize("term", TERMS)
def test_numba_backend_takes_bfloat16(term):
    """Half-precision inputs run the float32 loops and come back in their own dtype (values and
    input gradients), close to the torch backend's result."""
    u = torch.randn(2, H, 20).to(torch.bfloat16).requires_grad_()
    s = torch.rand(H)
    outputs = []
    for backend in ("numba", "torch"):
        z = _signal(term, u, s, backend)
        (grad,) = torch.autograd.grad(z.float().square().sum(), u)
        outputs.append((z, grad))
    (z_fast, g_fast), (z_slow, g_slow) = outputs
    assert z_fast.dtype == g_fast.dtype == torch.bfloat16
    assert rel_err(z_fast.float(), z_slow.float()) < 1e-2
    assert rel_err(g_fast.float(), g_slow.float()) < 2e-2


@pytest.mark.parametrize("term", TERMS)
def test_torch_signals_refuse_double_backward(term):
    """The torch signals' written-out backwards give first derivatives only: differentiating
    them again raises torch's once_differentiable error."""
    u = torch.randn(2, H, 12, dtype=torch.float64, requires_grad=True)
    s = torch.rand(H, dtype=torch.float64)
    z = _signal(term, u, s, "torch")
    (grad_u,) = torch.autograd.grad(z.square().sum(), u, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_u.sum().backward()


@needs_numba
@pytest.mark.parametrize("term", TERMS)
def test_numba_signals_refuse_double_backward(term):
    u = torch.randn(2, H, 12, dtype=torch.float64, requires_grad=True)
    s = torch.rand(H, dtype=torch.float64)
    z = _signal(term, u, s, "numba")
    with pytest.raises(RuntimeError, match="backend='numba' computes first derivatives only"):
        torch.autograd.grad(z.sum(), u, create_graph=True)
