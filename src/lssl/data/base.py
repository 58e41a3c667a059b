"""The record every data set returns, the batch collation, and the on-disk cache.

Every data set is built by a function `build(root=None, **options) -> DataSpec`. Items are
`(x, y)` or, for irregularly sampled sets, `(x, y, t)`:

- x: float32 (L_i, d_input), or int64 (L_i,) for token inputs
- y: int64 scalar (classification) or float32 (d_output,) (regression)
- t: float32 (L_i,) increasing time stamps in units of the regular sampling step

The cache lives in `root`, else `$LSSL_DATA`, else `$XDG_CACHE_HOME/lssl` (default
`~/.cache/lssl`). Each cache entry is a folder of `.npy` files plus `record.json`, which holds
the SHA-256 of every file and the generator version. Files are written to a temporary name and
renamed into place, and the record is written last, so an interrupted write leaves no record
and is rebuilt. A file whose hash differs from its record is never used: it is rebuilt (with a
warning) from its source.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

TASKS = ("classification", "regression")


def pad_collate(items: Sequence[tuple]) -> dict[str, torch.Tensor]:
    """Stack items into a right-zero-padded batch.

    Returns {"x": (B, L, d_input) float32 or (B, L) int64, "y": (B,) int64 or (B, d_output)
    float32, "lengths": (B,) int64}, plus "dt_scale": (B, L) float32 when items carry time
    stamps t: the gap to the previous stamp, with a virtual stamp at -1 before the first one (so a
    regular sequence has all gaps 1.0), and 1.0 on the padding.
    """
    if not items:
        raise ValueError("pad_collate needs at least one item")
    xs = [item[0] for item in items]
    lengths = torch.tensor([x.shape[0] for x in xs], dtype=torch.int64)
    x = torch.nn.utils.rnn.pad_sequence(xs, batch_first=True)
    y = torch.stack([torch.as_tensor(item[1]) for item in items])
    batch = {"x": x, "y": y, "lengths": lengths}
    if len(items[0]) == 3:
        dt = torch.ones(x.shape[:2], dtype=torch.float32)
        for i, item in enumerate(items):
            t = torch.as_tensor(item[2], dtype=torch.float32)
            dt[i, : t.shape[0]] = torch.diff(t, prepend=t.new_full((1,), -1.0))
        batch["dt_scale"] = dt
    return batch


@dataclass(frozen=True)
class DataSpec:
    """One data set: splits, shapes, task kind and provenance (see the module docstring for items)."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    d_input: int
    d_output: int
    length: int
    task: str
    labels: tuple[str, ...]
    source: str
    real: bool
    stands_in_for: str
    vocab_size: int | None = None
    extra: dict[str, Dataset] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    collate: Callable[[list], dict] = pad_collate

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if len(self.labels) != self.d_output:
            raise ValueError(f"labels has {len(self.labels)} names but d_output={self.d_output}")
        unknown = set(self.rates) - set(self.extra)
        if unknown:
            raise ValueError(f"rates names splits not in extra: {sorted(unknown)}")


class ArrayDataset(Dataset):
    """Items from stored arrays: row i of `x`, cut to `lengths[i]` and passed through `transform`.

    x: (N, L, ...) any dtype (stored compactly, e.g. uint8 pixels or int16 audio); y: (N,) int64
    or (N, d_output) float32; lengths: (N,) or None (all full length); t: (N, L) time stamps or
    None. `transform` maps the stored row (L_i, ...) to the item's x and must be picklable
    (a module-level class) so that DataLoader workers can use it.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor | None = None,
                 t: torch.Tensor | None = None, transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x, self.y, self.lengths, self.t, self.transform = x, y, lengths, t, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple:
        n = self.x.shape[1] if self.lengths is None else int(self.lengths[i])
        x = self.x[i, :n]
        x = self.transform(x) if self.transform is not None else x
        if self.t is None:
            return x, self.y[i]
        return x, self.y[i], self.t[i, :n]


class ToFloat:
    """Stored integer samples -> float32 (L, C) divided by `scale`; optionally a permutation of the
    steps, or every `step`-th sample (decimation, x[::step])."""

    def __init__(self, scale: float, permutation: torch.Tensor | None = None, step: int = 1):
        self.scale, self.permutation, self.step = scale, permutation, step

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.permutation is not None:
            x = x[self.permutation]
        x = x[:: self.step]
        x = x.to(torch.float32) / self.scale
        return x.unsqueeze(-1) if x.dim() == 1 else x


# --------------------------------------------------------------------------- cache


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """The cache folder: `root`, else $LSSL_DATA, else $XDG_CACHE_HOME/lssl (~/.cache/lssl)."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get("LSSL_DATA"):
        return Path(os.environ["LSSL_DATA"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lssl"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) for a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; cached data is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)

    atomic_write(path, write)


def _key(options: Mapping[str, Any]) -> str:
    text = json.dumps(options, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def entry_dir(dataset: str, options: Mapping[str, Any], root: str | os.PathLike | None = None) -> Path:
    """The folder of the cache entry for `dataset` built with `options`."""
    return cache_dir(root) / dataset / _key(options)


def read_entry(folder: Path, version: str) -> dict[str, np.ndarray] | None:
    """The arrays of a cache entry, or None when it is absent, partial, stale or corrupt."""
    record_path = folder / "record.json"
    if not record_path.exists():
        return None
    try:
        record = json.loads(record_path.read_text())
        files = record["files"]
    except (ValueError, KeyError) as e:
        log.warning("cache record %s is unreadable (%s); rebuilding", record_path, e)
        return None
    if record.get("version") != version:
        log.info("cache entry %s has generator version %s, need %s; rebuilding", folder, record.get("version"), version)
        return None
    arrays = {}
    for name, digest in files.items():
        path = folder / f"{name}.npy"
        if not path.exists() or sha256(path) != digest:
            log.warning("cache file %s is missing or its SHA-256 differs from %s; rebuilding", path, record_path)
            return None
        arrays[name] = np.load(path, allow_pickle=False)
    return arrays


def write_entry(folder: Path, arrays: Mapping[str, np.ndarray], version: str, dataset: str,
                options: Mapping[str, Any]) -> None:
    """Write arrays atomically, then the record with their SHA-256 and the generator version."""
    record_path = folder / "record.json"
    if record_path.exists():
        record_path.unlink()
    files = {}
    for name, array in arrays.items():
        path = folder / f"{name}.npy"
        _save_npy(path, np.ascontiguousarray(array))
        files[name] = sha256(path)
    record = {"dataset": dataset, "options": options, "version": version, "files": files}
    atomic_write(record_path, lambda tmp: tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str)))


def cached(dataset: str, options: Mapping[str, Any], version: str, build: Callable[[], Mapping[str, np.ndarray]],
           root: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The arrays of `dataset` built with `options`: read from the cache when valid, else built and cached.

    `options` must hold everything the arrays depend on (seed, sizes, ...); `version` is the
    generator version, bumped whenever the generator's output changes.
    """
    folder = entry_dir(dataset, options, root)
    arrays = read_entry(folder, version)
    if arrays is None:
        arrays = dict(build())
        write_entry(folder, arrays, version, dataset, options)
    return arrays


def cached_entries(root: str | os.PathLike | None = None) -> dict[str, list[tuple[Path, int]]]:
    """Cache entries per data set name: [(folder, bytes on disk)], from their records."""
    out: dict[str, list[tuple[Path, int]]] = {}
    for record_path in sorted(cache_dir(root).glob("*/*/record.json")):
        try:
            record = json.loads(record_path.read_text())
        except ValueError:
            continue
        folder = record_path.parent
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        out.setdefault(record["dataset"], []).append((folder, size))
    return out


# --------------------------------------------------------------------------- splits


def split_indices(n: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """A seeded random partition of range(n) into parts of the given fractions (the last takes the rest)."""
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([int(round(f * n)) for f in fractions[:-1]])
    return np.split(order, cuts)

