"""Images read as pixel sequences in raster order (row by row).

`sfmnist`: Fashion-MNIST zero-padded from 28x28 to 32x32 (2 pixels on every side), so 1024
steps x 1 channel, the offline stand-in for sCIFAR and LRA-Image (numbers are not comparable
to CIFAR). Source: the Debian package `dataset-fashion-mnist` (IDX files in
/usr/share/datasets/fashion-mnist), or `path=` a folder of the same IDX files. Split as for
MNIST: 60k/10k with the last `n_val` training images as validation.

`scifar`: CIFAR-10 from its original python pickles (`data_batch_1..5`, `test_batch`,
`batches.meta`) in folder `path`: 1024 steps x 3 channels (RGB), as in the LSSL paper; the last
`n_val` training images are the validation split.

Scaling: a pixel byte p becomes p / 255 in [0, 1].
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .base import ArrayDataset, DataSpec, ToFloat
from .mnist import fixed_splits, read_idx_folder

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")


def _need_1024(length):
    if length != 1024:
        raise UserError(f"padded Fashion-MNIST images must have 1024 pixels, got {length}")


def sfmnist(root=None, path: str | None = None, n_train: int | None = None, n_val: int = 10000,
            n_test: int | None = None) -> DataSpec:
    """Sequential Fashion-MNIST padded to 32x32: x float32 (1024, 1), 10 classes."""
    folder = Path(path or FASHION_DIR)
    if path is None and not folder.exists():
        raise UserError(f"sfmnist needs the Debian package dataset-fashion-mnist ({FASHION_DIR} is missing); "
                        "install it with `apt-get install -y dataset-fashion-mnist`, or pass path=DIR with the IDX files")
    arrays = read_idx_folder(folder)
    for split in ("train", "test"):
        x = arrays[f"{split}_x"]
        if x.shape[1] != 784:
            raise UserError(f"{folder}: Fashion-MNIST images must be 28x28, got {x.shape[1]} pixels")
        arrays[f"{split}_x"] = np.pad(x.reshape(-1, 28, 28), ((0, 0), (2, 2), (2, 2))).reshape(-1, 1024)
    train, val, test = fixed_splits(arrays, n_train, n_val, n_test, ToFloat(255.0), _need_1024)
    return DataSpec("sfmnist", train, val, test, d_input=1, d_output=10, length=1024, task="classification",
                    labels=FASHION_LABELS, source=f"Fashion-MNIST IDX files in {folder}", real=True,
                    stands_in_for="sCIFAR / LRA-Image (grayscale; not comparable to published numbers)")


def _unpickle(path: Path) -> dict:
    if not path.exists():
        raise UserError(f"{path.parent} has no {path.name}: not the CIFAR-10 python folder (cifar-10-batches-py)")
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def scifar(root=None, path: str | None = None, n_val: int = 5000) -> DataSpec:
    """Sequential CIFAR-10 from the python pickles in `path`: x float32 (1024, 3) RGB, 10 classes."""
    if path is None:
        raise UserError("scifar needs path=DIR, the CIFAR-10 python folder (cifar-10-batches-py); "
                        "no package registry ships CIFAR-10 (sfmnist is the offline stand-in)")
    folder = Path(path).expanduser()
    batches = [_unpickle(folder / f"data_batch_{i}") for i in range(1, 6)]
    test = _unpickle(folder / "test_batch")
    names = tuple(n.decode() for n in _unpickle(folder / "batches.meta")[b"label_names"])

    def pixels(batch_list):  # rows hold the R plane, then G, then B: (N, 3, 1024) -> (N, 1024, 3)
        x = np.concatenate([b[b"data"] for b in batch_list]).reshape(-1, 3, 1024).transpose(0, 2, 1)
        y = np.concatenate([b[b"labels"] for b in batch_list])
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y).long()

    x, y = pixels(batches)
    if not (isinstance(n_val, int) and 0 < n_val < len(x)):
        raise UserError(f"n_val must be an int in [1, {len(x) - 1}], got {n_val!r}")
    cut = len(x) - n_val
    xt, yt = pixels([test])
    sets = [ArrayDataset(a, b, transform=ToFloat(255.0)) for a, b in ((x[:cut], y[:cut]), (x[cut:], y[cut:]), (xt, yt))]
    return DataSpec("scifar", *sets, d_input=3, d_output=len(names), length=1024, task="classification",
                    labels=names, source=f"CIFAR-10 python pickles in {folder}", real=True, stands_in_for="sCIFAR")
