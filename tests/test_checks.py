"""Input checks shared by the layers, kernels and data code."""

import pytest
import torch

from lssl._checks import check_finite


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_finite_finds_one_bad_value(bad):
    x = torch.randn(3, 50, 4)
    x[1, 17, 2] = bad
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        check_finite("x", x)


def test_check_finite_finds_opposite_infinities():
    # +Inf and -Inf sum to NaN: still caught.
    x = torch.zeros(10)
    x[2], x[7] = float("inf"), -float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        check_finite("x", x)


def test_check_finite_accepts_finite_values_whose_sum_overflows():
    x = torch.full((8,), 3e38)
    assert not torch.isfinite(x.sum())
    check_finite("x", x)


def test_check_finite_accepts_empty_and_ordinary_tensors():
    check_finite("x", torch.empty(0, 3))
    check_finite("x", torch.randn(4, 5, dtype=torch.float64))
