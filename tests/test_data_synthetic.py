"""lssl.data.synthetic: shapes, seeded determinism, and every answer recomputed item by item."""

import itertools

import pytest
import torch

from lssl.data import load
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
