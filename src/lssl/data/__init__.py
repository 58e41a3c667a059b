"""Benchmark data that works offline: one DataSpec per data set, one flat registry, a checked cache.

    spec = load("smnist")          # DataSpec with train/val/test datasets and shapes
    batch = spec.collate([spec.train[0], spec.train[1]])
"""

from .base import ArrayDataset, DataSpec, cache_dir, pad_collate
from .registry import DATASETS, Builder, load

__all__ = ["DATASETS", "ArrayDataset", "Builder", "DataSpec", "cache_dir", "load", "pad_collate"]
