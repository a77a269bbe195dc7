"""In-memory datasets: a pair of tensors, served a whole batch at a time."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset


class InMemoryDataset(Dataset[tuple[Tensor, Tensor]]):
    """`inputs[i], targets[i]` pairs held in memory.

    `__getitems__` lets the DataLoader fetch a batch with one indexing operation instead of
    `batch_size` single samples glued together by the default collate (about twice as fast for
    small rows); use `datasets.build_dataloader`, which pairs it with a pass-through collate.
    """

    def __init__(self, inputs: Tensor, targets: Tensor) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        self.inputs = inputs  # (n, n_features)
        self.targets = targets  # (n,): float for regression, int64 class indices otherwise

    @property
    def n_features(self) -> int:
        return self.inputs.shape[1]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.inputs[index], self.targets[index]

    def __getitems__(self, indices: list[int] | Tensor) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices)  # (a tensor of indices passes through as it is)
        # index_select: the same rows as `inputs[index]`, without advanced indexing's parsing.
        return self.inputs.index_select(0, index), self.targets.index_select(0, index)

    def split(self, val_fraction: float, seed: int) -> tuple[InMemoryDataset, InMemoryDataset]:
        """A seeded random split into (train, validation); validation gets
        round(val_fraction * n) rows. Both keep the rows' original order."""
        n_val = round(val_fraction * len(self))
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        val, train = order[:n_val].sort().values, order[n_val:].sort().values
        return self.subset(train), self.subset(val)

    def split_with_test(
        self, val_fraction: float, test_fraction: float, seed: int
    ) -> tuple[InMemoryDataset, InMemoryDataset, InMemoryDataset]:
        """(train, validation, test), disjoint: validation is the rows `split` gives it (the
        same seeded order), the test rows (round(test_fraction * n)) come next in that order,
        training keeps the rest. Each keeps the rows' original order."""
        n_val, n_test = round(val_fraction * len(self)), round(test_fraction * len(self))
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        val, test = order[:n_val], order[n_val : n_val + n_test]
        train = order[n_val + n_test :]
        return tuple(self.subset(rows.sort().values) for rows in (train, val, test))  # type: ignore[return-value]

    def subset(self, index: Tensor) -> InMemoryDataset:
        return InMemoryDataset(self.inputs[index], self.targets[index])

    def standardized(self, mean: Tensor, std: Tensor) -> InMemoryDataset:
        """Features z-scored with the given statistics (those of the training split)."""
        return InMemoryDataset((self.inputs - mean) / std, self.targets)

    def feature_statistics(self) -> tuple[Tensor, Tensor]:
        """Per-feature mean and standard deviation; constant features get std 1."""
        std = self.inputs.std(dim=0, correction=0)
        return self.inputs.mean(dim=0), torch.where(std > 0, std, torch.ones_like(std))
