"""A synthetic linear-regression data set, generated from a seed."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset


class RegressionDataset(Dataset[tuple[Tensor, Tensor]]):
    """`y = X @ true_weight + true_bias + noise * eps`, with X, weights and eps ~ N(0, 1).

    The whole set lives in memory, so `__getitems__` hands the DataLoader a batch in one indexing
    operation instead of `batch_size` single samples to collate.
    """

    def __init__(self, n_samples: int, n_features: int, noise: float = 0.1, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.n_features = n_features
        self.true_weight = torch.randn(n_features, generator=generator)
        self.true_bias = torch.randn((), generator=generator)
        self.inputs = torch.randn(n_samples, n_features, generator=generator)  # (n, d)
        eps = torch.randn(n_samples, generator=generator)
        self.targets = self.inputs @ self.true_weight + self.true_bias + noise * eps  # (n,)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.inputs[index], self.targets[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices)
        return self.inputs[index], self.targets[index]
