"""In-memory datasets: splitting, standardizing, batched fetch."""

from __future__ import annotations

import torch

from gradtrain.datasets import InMemoryDataset


def make(n: int = 10) -> InMemoryDataset:
    return InMemoryDataset(torch.arange(n * 2, dtype=torch.float32).view(n, 2), torch.arange(n))


def test_split_is_seeded_disjoint_and_complete() -> None:
    train, val = make(10).split(0.3, seed=0)
    assert (len(train), len(val)) == (7, 3)
    rows = torch.cat([train.targets, val.targets]).sort().values
    assert torch.equal(rows, torch.arange(10))
    assert torch.equal(train.targets, train.targets.sort().values)  # file order kept
    again, _ = make(10).split(0.3, seed=0)
    assert torch.equal(again.targets, train.targets)
    other, _ = make(10).split(0.3, seed=1)
    assert not torch.equal(other.targets, train.targets)


def test_zero_val_fraction_keeps_every_row_for_training() -> None:
    train, val = make(5).split(0.0, seed=0)
    assert len(train) == 5 and len(val) == 0
    assert torch.equal(train.targets, torch.arange(5))


def test_standardized_uses_the_given_statistics() -> None:
    train, val = make(10).split(0.5, seed=0)
    mean, std = train.feature_statistics()
    scaled = train.standardized(mean, std)
    assert torch.allclose(scaled.inputs.mean(dim=0), torch.zeros(2), atol=1e-6)
    assert torch.allclose(scaled.inputs.std(dim=0, correction=0), torch.ones(2), atol=1e-6)
    assert torch.allclose(val.standardized(mean, std).inputs, (val.inputs - mean) / std)


def test_constant_feature_is_left_unscaled_not_divided_by_zero() -> None:
    data = InMemoryDataset(torch.tensor([[1.0, 3.0], [2.0, 3.0]]), torch.tensor([0, 1]))
    mean, std = data.feature_statistics()
    assert std[1] == 1.0
    assert torch.isfinite(data.standardized(mean, std).inputs).all()
