"""lssl.data.synthetic: shapes, seeded determinism, and every answer recomputed item by item."""

import itertools
import math

import numpy as np
import pytest
import torch

from lssl.data import load, synthetic
from lssl.errors import UserError

SMALL = dict(n_train=20, n_val=5, n_test=7)
TASKS = ["copying", "selective-copying", "adding", "recall", "parity", "s5"]


@pytest.mark.parametrize("name", TASKS)
def test_shapes_types_and_determinism(name):
    spec = load(name, length=40, **SMALL)
    assert (len(spec.train), len(spec.val), len(spec.test)) == (20, 5, 7)
    x, y = spec.train[0]
    if spec.vocab_size is None:
        assert x.shape == (40, spec.d_input) and x.dtype == torch.float32
        assert y.shape == (spec.d_output,) and y.dtype == torch.float32 and spec.task == "regression"
    else:
        assert x.shape == (40,) and x.dtype == torch.int64
        assert int(spec.train.x.min()) >= 0 and int(spec.train.x.max()) < spec.vocab_size
        assert y.shape == () and y.dtype == torch.int64 and 0 <= int(y) < spec.d_output
    assert not spec.real and spec.length == 40
    again = load(name, length=40, **SMALL)
    other = load(name, length=40, seed=1, **SMALL)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(spec, split).x, getattr(again, split).x)
        assert torch.equal(getattr(spec, split).y, getattr(again, split).y)
    assert not torch.equal(spec.train.x, other.train.x)
    assert not torch.equal(spec.train.x[:5], spec.val.x)
    batch = spec.collate([spec.train[i] for i in range(3)])
    assert batch["x"].shape[:2] == (3, 40)


def answers(name, x, spec):
    """The expected label of one item, by a plain loop."""
    xs = x.tolist()
    if name in ("copying", "selective-copying"):
        k = spec.vocab_size - spec.d_output - 2
        symbols = [t for t in xs[:-2] if 1 <= t <= spec.d_output]
        assert len(symbols) == k
        return symbols[xs[-1] - (spec.d_output + 2)] - 1
    if name == "adding":
        return sum(v for v, m in xs if m == 1.0)
    if name == "recall":
        n_keys = spec.vocab_size - 1 - spec.d_output
        return next(v for k, v in zip(xs[0:-1:2], xs[1::2]) if k == xs[-1] and 1 <= k <= n_keys) - n_keys - 1
    if name == "parity":
        return sum(xs) % 2
    perms = list(itertools.permutations(range(5)))
    state = list(range(5))
    for g in xs:
        state = [perms[g][s] for s in state]   # apply g after the running state
    return perms.index(tuple(state))


@pytest.mark.parametrize("name", TASKS)
def test_answers_match_a_loop(name):
    spec = load(name, length=24, **SMALL)
    for i in range(len(spec.train)):
        x, y = spec.train[i]
        expected = answers(name, x, spec)
        if spec.task == "regression":
            assert abs(float(y[0]) - expected) < 1e-6
        else:
            assert int(y) == expected


def test_labels_cover_classes():
    spec = load("s5", length=8, n_train=3000, n_val=1, n_test=1)
    assert len(torch.unique(spec.train.y)) > 100
    spec = load("parity", length=8, n_train=200, n_val=1, n_test=1)
    assert set(spec.train.y.tolist()) == {0, 1}


def test_bad_sizes_are_user_errors():
    with pytest.raises(UserError, match="length"):
        load("copying", length=3, n_memorize=4)
    with pytest.raises(UserError, match="n_train"):
        load("parity", n_train=0)
    with pytest.raises(UserError, match="n_pairs"):
        load("recall", n_pairs=40, n_keys=32)


def test_lag_correlation_shapes_seeds_and_balance():
    spec = load("lag-correlation", length=32, n_train=21, n_val=6, n_test=8)
    assert (len(spec.train), len(spec.val), len(spec.test)) == (21, 6, 8)
    x, y = spec.train[0]
    assert x.shape == (32, 1) and x.dtype == torch.float32 and y.shape == () and y.dtype == torch.int64
    assert spec.task == "classification" and (spec.d_input, spec.d_output) == (1, 2) and spec.vocab_size is None
    assert not spec.real and spec.length == 32 and spec.labels == ("negative", "positive")
    # Each split holds the two classes equally often (one more 0 for an odd size).
    assert [torch.bincount(s.y, minlength=2).tolist() for s in (spec.train, spec.val, spec.test)] == \
        [[11, 10], [3, 3], [4, 4]]
    again = load("lag-correlation", length=32, n_train=21, n_val=6, n_test=8)
    other = load("lag-correlation", length=32, n_train=21, n_val=6, n_test=8, seed=1)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(spec, split).x, getattr(again, split).x)
        assert torch.equal(getattr(spec, split).y, getattr(again, split).y)
    assert not torch.equal(spec.train.x, other.train.x)
    assert not torch.equal(spec.train.x[:6], spec.val.x)
    assert spec.collate([spec.train[i] for i in range(3)])["x"].shape == (3, 32, 1)


def test_ar1_is_the_recurrence():
    phi = np.array([0.5, -0.8])
    noise = np.random.default_rng(0).standard_normal((2, 6))
    u = synthetic.ar1(phi, noise)
    for b in range(2):
        prev = noise[b, 0]
        assert u[b, 0] == prev
        for t in range(1, 6):
            prev = phi[b] * prev + math.sqrt(1 - phi[b] ** 2) * noise[b, t]
            assert abs(u[b, t] - prev) < 1e-12


def test_lag_correlation_classes_share_every_marginal():
    """Every sample is N(0, 1) in both classes, at the first step as at the last: what makes a
    model that sums functions of single samples blind to the class."""
    spec = load("lag-correlation", length=64, n_train=4000, n_val=1, n_test=1)
    u, y = spec.train.x[..., 0].double(), spec.train.y
    for c in (0, 1):
        v = u[y == c]  # (2000, 64)
        assert abs(v.mean()) < 0.05 and abs(v.var() - 1) < 0.05
        assert abs((v > 1).double().mean() - 0.1587) < 0.01   # P(N(0, 1) > 1)
        assert abs(v[:, 0].var() - 1) < 0.15 and abs(v[:, -1].var() - 1) < 0.15


def test_lag_correlation_lag1_product_separates_the_classes():
    spec = load("lag-correlation", n_train=1, n_val=1, n_test=1000)
    u, y = spec.test.x[..., 0], spec.test.y
    lag1 = (u[:, 1:] * u[:, :-1]).mean(1)  # (B,)
    assert ((lag1 > 0).long() == y).double().mean() > 0.9


@pytest.mark.parametrize("options, match", [
    (dict(phi_min=0.0), "phi_min"), (dict(phi_max=1.0), "phi_max"), (dict(phi_min=0.5, phi_max=0.4), "phi_min"),
    (dict(length=1), "length"),
])
def test_lag_correlation_bad_options_are_user_errors(options, match):
    with pytest.raises(UserError, match=match):
        load("lag-correlation", n_train=2, n_val=2, n_test=2, **options)
