"""The flat registry of data sets: DATASETS maps a name to its builder; `load` checks options."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UserError
from . import bidmc, images, listops, mnist, pathfinder, speech, synthetic, uea
from .base import DataSpec


@dataclass(frozen=True)
class Builder:
    """A data set's builder `build(root=None, **options) -> DataSpec`, a one-line size summary, and
    the names of the cache entries it reads (empty: generated in memory on every load)."""

    build: Callable[..., DataSpec]
    size: str
    cache: tuple[str, ...] = ()

    def __call__(self, root=None, **options) -> DataSpec:
        return self.build(root=root, **options)

    def options(self) -> dict[str, object]:
        """The builder's keyword options with their defaults."""
        params = inspect.signature(self.build).parameters
        return {k: p.default for k, p in params.items() if k != "root"}


DATASETS: dict[str, Builder] = {
    "smnist": Builder(mnist.smnist, "50k/10k/10k, 784 x 1, 10 classes", ("mnist",)),
    "pmnist": Builder(mnist.pmnist, "50k/10k/10k, 784 x 1, 10 classes", ("mnist",)),
    "sfmnist": Builder(images.sfmnist, "50k/10k/10k, 1024 x 1, 10 classes"),
    "scifar": Builder(images.scifar, "45k/5k/10k (user's files), 1024 x 3, 10 classes"),
    "listops": Builder(listops.listops, "96k/2k/2k (any), 500-2000 tokens, 10 classes", ("listops",)),
    "pathfinder": Builder(pathfinder.pathfinder, "160k/20k/20k (any), 1024 x 1, 2 classes", ("pathfinder",)),
    "path-x": Builder(pathfinder.path_x, "160k/20k/20k (any), 16384 x 1, 2 classes", ("path-x",)),
    "speech10": Builder(speech.speech10, "20k/2k/2k (any), 16000 x 1, 10 classes", ("speech10", "speech-commands10")),
    "speech35": Builder(speech.speech35, "35k/3.5k/3.5k (any), 16000 x 1, 35 classes", ("speech35", "speech-commands35")),
    "bidmc-synth": Builder(bidmc.bidmc_synth, "5565/1192/1192 (any), 4000 x 2, 1 target", ("bidmc-synth",)),
    "bidmc": Builder(bidmc.bidmc, "7949 windows (user's files), 4000 x 2, 1 target"),
    "japanese-vowels": Builder(uea.japanese_vowels, "216/54/370, 7-29 x 12, 9 classes", ("uea-JapaneseVowels",)),
    "basic-motions": Builder(uea.basic_motions, "32/8/40, 100 x 6, 4 classes", ("uea-BasicMotions",)),
    "copying": Builder(synthetic.copying, "10k/1k/1k (any), length 200 (any), 8 classes"),
    "selective-copying": Builder(synthetic.selective_copying, "10k/1k/1k (any), length 200 (any), 8 classes"),
    "adding": Builder(synthetic.adding, "10k/1k/1k (any), length 200 (any) x 2, regression"),
    "recall": Builder(synthetic.recall, "10k/1k/1k (any), length 256 (any), 16 classes"),
    "parity": Builder(synthetic.parity, "10k/1k/1k (any), length 256 (any), 2 classes"),
    "s5": Builder(synthetic.s5, "10k/1k/1k (any), length 32 (any), 120 classes"),
    "lag-correlation": Builder(synthetic.lag_correlation, "10k/1k/1k (any), length 128 (any) x 1, 2 classes"),
}


def load(name: str, root=None, **options) -> DataSpec:
    """Build the data set `name` (a key of DATASETS) with its keyword `options`; `root`: cache folder."""
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}")
    builder = DATASETS[name]
    known = builder.options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        listed = ", ".join(f"{k}={v!r}" for k, v in known.items()) or "none"
        raise UserError(f"data set {name!r} has no option {', '.join(unknown)}; its options: {listed}")
    return builder(root=root, **options)
