"""Synthetic data sets generated from a seed: regression and classification."""

from __future__ import annotations

import math

import torch

from gradtrain.datasets.tensor import InMemoryDataset


class RegressionDataset(InMemoryDataset):
    """`y = X @ true_weight + true_bias + noise * eps`, with X, weights and eps ~ N(0, 1)."""

    def __init__(self, n_samples: int, n_features: int, noise: float = 0.1, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.true_weight = torch.randn(n_features, generator=generator)
        self.true_bias = torch.randn((), generator=generator)
        inputs = torch.randn(n_samples, n_features, generator=generator)  # (n, d)
        eps = torch.randn(n_samples, generator=generator)
        super().__init__(inputs, inputs @ self.true_weight + self.true_bias + noise * eps)


class ClassificationDataset(InMemoryDataset):
    """Labelled points, int64 class indices 0..n_classes-1.

    `blobs`: one Gaussian cloud (standard deviation `spread`) per class around centres drawn
    uniformly from [-5, 5]^d. `moons`: two interleaving half circles in 2-D with Gaussian
    jitter `spread`; needs n_features=2 and n_classes=2.
    """

    def __init__(
        self,
        n_samples: int,
        n_features: int,
        n_classes: int,
        shape: str = "blobs",
        spread: float = 1.0,
        seed: int = 0,
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        targets = torch.arange(n_samples) % n_classes  # balanced classes
        targets = targets[torch.randperm(n_samples, generator=generator)]
        if shape == "blobs":
            self.centres = torch.rand(n_classes, n_features, generator=generator) * 10 - 5
            jitter = torch.randn(n_samples, n_features, generator=generator) * spread
            inputs = self.centres[targets] + jitter
        elif shape == "moons":
            if n_features != 2 or n_classes != 2:
                raise ValueError("moons are 2-D with 2 classes")
            angle = torch.rand(n_samples, generator=generator) * math.pi
            upper = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
            lower = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
            inputs = torch.where(targets[:, None] == 0, upper, lower)
            inputs = inputs + torch.randn(n_samples, 2, generator=generator) * spread
        else:
            raise ValueError(f"unknown shape {shape!r}; choose blobs or moons")
        super().__init__(inputs, targets)
