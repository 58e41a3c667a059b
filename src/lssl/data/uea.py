"""UEA multivariate sets bundled in the sktime wheel, with the LSSL irregular-sampling protocol.

Source: the `sktime==1.2.0` wheel from PyPI, read as a zip with our own `.ts` reader (the
package is never imported). Variable lengths are right-zero-padded and carried as lengths.

Protocol: the archive's train/test split; validation is a seeded `val_fraction` of train.
Each channel is standardised with the training split's mean and standard deviation (missing
values then become 0, the mean).

Irregular sampling (LSSL paper, CharacterTrajectories): with `drop` = 0.3, 0.5 or 0.7 each
sequence independently loses that fraction of its time points, chosen at random; the kept
values come with their time stamps t (their original step indices), so items are (x, y, t)
and batches carry the per-step time gaps `dt_scale`.
"""

from __future__ import annotations

import zipfile

import numpy as np
import torch

from ..errors import UserError
from .base import ArrayDataset, DataSpec, cached, split_indices
from .fetch import fetch_wheel
from .ts import pad, parse_ts

WHEEL = ("sktime", "1.2.0", "dbffc6731d2d683b668dceb5e2bbc5804bebc8446b4c580803a281684d90e4ae",
         "sktime-1.2.0-py3-none-any.whl")
VERSION = "1"


def uea_arrays(problem: str, root=None) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Padded arrays x (N, L, C), lengths, y (class index) of both splits, and the class names."""
    def build():
        out = {}
        with zipfile.ZipFile(fetch_wheel(*WHEEL, root=root)) as z:
            for split in ("TRAIN", "TEST"):
                member = f"sktime/datasets/data/{problem}/{problem}_{split}.ts"
                ts = parse_ts(z.read(member).decode(), member)
                key = split.lower()
                out[f"{key}_x"], out[f"{key}_lengths"] = pad(ts.series)
                out[f"{key}_y"] = np.array([ts.classes.index(v) for v in ts.labels])
                out["classes"] = np.array(ts.classes)
        return out

    arrays = cached(f"uea-{problem}", {"source": "sktime==1.2.0"}, VERSION, build, root)
    return arrays, tuple(str(c) for c in arrays["classes"])


def drop_points(x: np.ndarray, lengths: np.ndarray, drop: float, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep a random (1 - drop) share (at least one) of each sequence's steps, in order.

    x: (N, L, C) padded, lengths: (N,). Returns x (N, L', C), lengths (N,), t (N, L') float32
    with the kept steps' original indices (zeros on the padding).
    """
    keep = np.maximum(1, np.rint((1 - drop) * lengths).astype(np.int64))
    out = np.zeros((len(x), int(keep.max()), x.shape[2]), dtype=x.dtype)
    t = np.zeros(out.shape[:2], dtype=np.float32)
    for i, (n, m) in enumerate(zip(lengths, keep)):
        idx = np.sort(rng.choice(int(n), int(m), replace=False))
        out[i, :m] = x[i, idx]
        t[i, :m] = idx
    return out, keep, t


def _build(problem, name, root, drop, val_fraction, seed, stands_in_for) -> DataSpec:
    if isinstance(drop, bool) or not (isinstance(drop, (int, float)) and 0.0 <= drop < 1.0):
        raise UserError(f"drop must be a fraction in [0, 1) (the protocol uses 0.3, 0.5, 0.7), got {drop!r}")
    if not (isinstance(val_fraction, float) and 0.0 < val_fraction < 1.0):
        raise UserError(f"val_fraction must be a float in (0, 1), got {val_fraction!r}")
    a, classes = uea_arrays(problem, root)
    tr, va = split_indices(len(a["train_x"]), [1 - val_fraction, val_fraction], seed)
    parts = {"train": (a["train_x"][tr], a["train_lengths"][tr], a["train_y"][tr]),
             "val": (a["train_x"][va], a["train_lengths"][va], a["train_y"][va]),
             "test": (a["test_x"], a["test_lengths"], a["test_y"])}
    x, n = parts["train"][:2]
    valid = np.arange(x.shape[1])[None, :] < n[:, None]
    mean, std = x[valid].mean(0), x[valid].std(0) + 1e-8
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence([seed, 1]).spawn(3)]
    sets = []
    for rng, (x, n, y) in zip(rngs, parts.values()):
        x = np.where(np.arange(x.shape[1])[None, :, None] < n[:, None, None], (x - mean) / std, 0.0)
        x = np.nan_to_num(x).astype(np.float32)
        t = None
        if drop > 0:
            x, n, t = drop_points(x, n, drop, rng)
            t = torch.from_numpy(t)
        sets.append(ArrayDataset(torch.from_numpy(x), torch.from_numpy(y).long(), torch.from_numpy(n), t))
    length = max(int(a["train_lengths"].max()), int(a["test_lengths"].max()))
    return DataSpec(name, *sets, d_input=x.shape[2], d_output=len(classes), length=length, task="classification",
                    labels=classes, source=f"PyPI sktime 1.2.0 wheel ({problem}, UEA archive)", real=True,
                    stands_in_for=stands_in_for + (f", {int(round(drop * 100))}% of points dropped" if drop else ""))


def japanese_vowels(root=None, drop: float = 0.0, val_fraction: float = 0.2, seed: int = 0) -> DataSpec:
    """UEA JapaneseVowels: 270/370 speaker utterances, 12 LPC channels, lengths 7-29, 9 speakers."""
    return _build("JapaneseVowels", "japanese-vowels", root, drop, val_fraction, seed,
                  "CharacterTrajectories (UEA, variable length)")


def basic_motions(root=None, drop: float = 0.0, val_fraction: float = 0.2, seed: int = 0) -> DataSpec:
    """UEA BasicMotions: 40/40 smart-watch recordings, 6 channels (accelerometer, gyroscope), length 100, 4 classes."""
    return _build("BasicMotions", "basic-motions", root, drop, val_fraction, seed, "UEA multivariate classification")
