"""Loaders built from plain arguments, seeded so that every run sees the same batches.

In-memory data with `num_workers=0` (the default) takes the fast path, `InMemoryLoader`: one
seeded permutation per epoch, cut into batches that are each fetched with one indexing
operation. Anything else gets a `torch.utils.data.DataLoader`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datasets.tensor import InMemoryDataset


class Loader(Protocol):
    """What the trainer iterates: batches, and how many there are per epoch."""

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


class InMemoryLoader:
    """Batches of an in-memory dataset, cut from one permutation per epoch.

    A DataLoader spends 20-40 µs per batch on machinery that tensors already in memory do not
    need (a sampler yielding one index at a time, a fetcher, a profiler range): as long as a
    small model's whole step. Here a batch is `dataset.__getitems__(index)`, one indexing
    operation per tensor. Worker processes could not make that faster; they only add
    inter-process copies.

    Epoch e's order is `torch.randperm(n)` from a generator seeded with `seed + e`: a function of
    the seed and the epoch alone, so a resumed run can replay it. Each pass over the loader
    takes the next epoch; `set_epoch` (as on `DistributedSampler`) chooses one.
    """

    def __init__(
        self,
        dataset: InMemoryDataset,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        pin_memory: bool = False,
        drop_last: bool = False,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        # Page-locked batches let `.to("cuda", non_blocking=True)` copy asynchronously;
        # without a GPU there is nothing to pin for.
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.drop_last = drop_last
        # The trainer asks for the length every step; the dataset does not change.
        full, rest = divmod(len(dataset), batch_size)
        self._length = full if drop_last or rest == 0 else full + 1

    def __len__(self) -> int:
        return self._length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n, epoch = len(self.dataset), self.epoch
        self.epoch += 1
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(n)
        for index in order[: self._length * self.batch_size].split(self.batch_size):
            inputs, targets = self.dataset.__getitems__(index)
            if self.pin_memory:
                inputs, targets = inputs.pin_memory(), targets.pin_memory()
            yield inputs, targets


def keep_batch(batch: Any) -> Any:
    """Collate for datasets whose `__getitems__` already returns a whole batch."""
    return batch


def seed_worker(worker_id: int) -> None:
    """Give each worker's Python RNG a seed derived from torch's per-worker seed, which the
    loader's generator determines (torch seeds the workers' torch RNG itself)."""
    random.seed(torch.initial_seed() % 2**32)


def build_dataloader(
    dataset: Dataset[Any],
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
) -> Loader:
    """Batches whose order (and worker seeds) come from `seed` alone."""
    if isinstance(dataset, InMemoryDataset) and num_workers == 0:
        return InMemoryLoader(dataset, batch_size, shuffle, seed, pin_memory, drop_last)
    batched_fetch = hasattr(dataset, "__getitems__")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=seed_worker if num_workers > 0 else None,
        collate_fn=keep_batch if batched_fetch else None,
        pin_memory=pin_memory,
        drop_last=drop_last,
        # Re-spawning worker processes every epoch costs more than small epochs take.
        persistent_workers=num_workers > 0,
    )
