"""Batches for training and evaluation: a data order that is a pure function of (seed, epoch)
and resumes mid-epoch, sharded across processes; evaluation shards without padding; and the
decimated view of a split for evaluation at a lower sampling rate.

The training order is `DistributedSampler`'s (a seeded permutation per epoch, rank r taking
every world-th index): with one process it is the plain permutation, so a run on W processes
with batch b each sees the same global batches as one process with batch W b.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

Tensor = torch.Tensor


class ResumableSampler(Sampler[int]):
    """The indices of `DistributedSampler(dataset, world, rank, seed)` at `epoch`, skipping the
    first `skip` of them (the samples already trained on before a mid-epoch checkpoint)."""

    def __init__(self, dataset: Dataset, world: int, rank: int, seed: int, epoch: int, skip: int = 0):
        self.base = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.base.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        return len(self.base) - self.skip


def train_loader(
    dataset: Dataset, collate: Callable, batch_size: int, world: int, rank: int, seed: int, epoch: int,
    skip_batches: int = 0, num_workers: int = 0,
) -> DataLoader:
    """Per-process loader of one epoch, starting after `skip_batches` batches. The loader's own
    generator (worker seeds) is seeded by (seed, epoch), so a resumed epoch draws the same."""
    sampler = ResumableSampler(dataset, world, rank, seed, epoch, skip_batches * batch_size)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                      num_workers=num_workers, generator=generator)


def eval_loader(dataset: Dataset, collate: Callable, batch_size: int, world: int, rank: int,
                num_workers: int = 0) -> DataLoader:
    """Loader over this process's shard (indices rank, rank + world, ...): no sample repeated,
    so summed metrics all-reduce to the exact totals."""
    shard = Subset(dataset, range(rank, len(dataset), world))
    return DataLoader(shard, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)


class Decimated(Dataset):
    """Every `factor`-th sample of each sequence in `dataset` (x[::factor], as the 8 kHz Speech
    Commands test), for evaluation at rate `factor`. Time stamps, where present, are kept in
    units of the new sampling step (t / factor)."""

    def __init__(self, dataset: Dataset, factor: int):
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"decimation factor must be a positive int, got {factor!r}")
        self.dataset, self.factor = dataset, factor

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        x, y, *t = self.dataset[i]
        x = x[:: self.factor]
        return (x, y) if not t else (x, y, t[0][:: self.factor] / self.factor)


def to_device(batch: dict[str, Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
    """Move a collated batch; floating tensors take the training dtype (token ids stay int)."""
    return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in batch.items()}
