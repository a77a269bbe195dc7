"""DataLoaders built from plain arguments, seeded so that every run sees the same batches."""

from __future__ import annotations

import random
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from gradtrain.datasets.samplers import EpochBatchSampler, EpochSampler, ShardSampler


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
    num_replicas: int = 1,
    rank: int = 0,
    equal_shards: bool = True,
) -> DataLoader[Any]:
    """A DataLoader whose order comes from `seed` and the epoch alone (see `EpochSampler`).

    A dataset with `__getitems__` gets whole batches of indices as tensors (`EpochBatchSampler`)
    and returns whole batches (collated by `keep_batch`, which passes them through). Call
    `set_epoch` on the loader's `batch_sampler` if it has one, else on its `sampler`.

    With `num_replicas > 1` (one loader per process of a distributed run) this process gets
    the rows `rank, rank + num_replicas, ...` of that order. `equal_shards` (training): every
    process gets as many rows, as DDP's lockstep needs; `torch`'s `DistributedSampler` pads
    the last shards with rows from the start (or with `drop_last` drops the rows that do not
    divide evenly). Otherwise (validation) each row is seen exactly once, in shards that may
    differ by one row.
    """
    batched_fetch = hasattr(dataset, "__getitems__")
    common: dict[str, Any] = {
        "num_workers": num_workers,
        "generator": torch.Generator().manual_seed(seed),
        "worker_init_fn": seed_worker if num_workers > 0 else None,
        "collate_fn": keep_batch if batched_fetch else None,
        "pin_memory": pin_memory,
        # Re-spawning worker processes every epoch costs more than small epochs take.
        "persistent_workers": num_workers > 0,
    }
    if num_replicas == 1 and batched_fetch:
        batches = EpochBatchSampler(len(dataset), batch_size, shuffle, seed, drop_last)  # type: ignore[arg-type]
        # (typed for lists of indices; a tensor of them goes to __getitems__ just the same)
        return DataLoader(dataset, batch_sampler=batches, **common)  # type: ignore[arg-type]
    sampler: Sampler[int]
    if num_replicas == 1:
        sampler = EpochSampler(len(dataset), shuffle, seed)  # type: ignore[arg-type]
    elif equal_shards:
        # Same order as EpochSampler (randperm seeded with seed + epoch), interleaved over ranks.
        sampler = DistributedSampler(
            dataset, num_replicas, rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
    else:
        sampler = ShardSampler(len(dataset), num_replicas, rank)  # type: ignore[arg-type]
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **common
    )
