"""DataLoaders built from plain arguments, seeded so that every run sees the same batches."""

from __future__ import annotations

import random
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from datasets.samplers import EpochSampler


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
) -> DataLoader[Any]:
    """A DataLoader whose order comes from `seed` and the epoch alone (see `EpochSampler`)."""
    batched_fetch = hasattr(dataset, "__getitems__")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), shuffle, seed),  # type: ignore[arg-type]
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=seed_worker if num_workers > 0 else None,
        collate_fn=keep_batch if batched_fetch else None,
        pin_memory=pin_memory,
        drop_last=drop_last,
        # Re-spawning worker processes every epoch costs more than small epochs take.
        persistent_workers=num_workers > 0,
    )
