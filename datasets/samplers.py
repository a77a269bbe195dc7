"""A sampler whose order is a pure function of (seed, epoch), so a run resumed mid-epoch can
replay exactly the order it was interrupted in."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
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
        return iter(self.order().tolist())

    def __len__(self) -> int:
        return self.n

    def order(self) -> Tensor:
        """This epoch's indices, as one tensor."""
        if not self.shuffle:
            return torch.arange(self.n)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=generator)


class EpochBatchSampler(Sampler[Tensor]):
    """`EpochSampler`'s order cut into batches, each a tensor of indices.

    For datasets whose `__getitems__` indexes tensors: a batch is then one slice of the
    permutation, where the DataLoader's default `BatchSampler` would gather `batch_size` Python
    ints one by one into a list, which the dataset turns back into a tensor.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, drop_last: bool) -> None:
        self.sampler = EpochSampler(n, shuffle, seed)
        self.batch_size = batch_size
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Tensor]:
        batches = self.sampler.order().split(self.batch_size)
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches = batches[:-1]
        return iter(batches)

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.sampler) // self.batch_size
        return -(-len(self.sampler) // self.batch_size)


class ShardSampler(Sampler[int]):
    """Rows `rank, rank + num_replicas, ...` of 0..n-1, in order and without padding: across
    processes every row is seen exactly once (for evaluation, where shards may differ by one)."""

    def __init__(self, n: int, num_replicas: int, rank: int) -> None:
        self.indices = range(rank, n, num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
