"""A sampler whose order is a pure function of (seed, epoch), so a run resumed mid-epoch can
replay exactly the order it was interrupted in."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Indices 0..n-1, shuffled by a generator seeded with `seed + epoch` (or in order).

    Like `DistributedSampler`, call `set_epoch` before each epoch. Unlike the DataLoader's own
    shuffling, which draws from a generator whose state depends on how many iterators were
    made, nothing here depends on history.
    """

    def __init__(self, n: int, shuffle: bool, seed: int) -> None:
        self.n = n
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


class ShardSampler(Sampler[int]):
    """Rows `rank, rank + num_replicas, ...` of 0..n-1, in order and without padding: across
    processes every row is seen exactly once (for evaluation, where shards may differ by one)."""

    def __init__(self, n: int, num_replicas: int, rank: int) -> None:
        self.indices = range(rank, n, num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
