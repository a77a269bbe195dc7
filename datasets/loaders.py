"""DataLoaders built from plain arguments, seeded so that every run sees the same batches."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


def keep_batch(batch: Any) -> Any:
    """Collate for datasets whose `__getitems__` already returns a whole batch."""
    return batch


def build_dataloader(
    dataset: Dataset[Any],
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
) -> DataLoader[Any]:
    """A DataLoader whose shuffling order comes from `seed` alone."""
    batched_fetch = hasattr(dataset, "__getitems__")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=keep_batch if batched_fetch else None,
        # Re-spawning worker processes every epoch costs more than small epochs take.
        persistent_workers=num_workers > 0,
    )
