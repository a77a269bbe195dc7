"""The synthetic data sets and their DataLoader."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from gradtrain.datasets import (
    ClassificationDataset,
    EpochBatchSampler,
    EpochSampler,
    RegressionDataset,
    build_dataloader,
)
from gradtrain.datasets.loaders import keep_batch


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b = RegressionDataset(64, 3, seed=1), RegressionDataset(64, 3, seed=1)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, RegressionDataset(64, 3, seed=2).inputs)


def test_targets_follow_the_true_weights_up_to_the_noise() -> None:
    dataset = RegressionDataset(4096, 5, noise=0.1, seed=0)
    residual = dataset.targets - (dataset.inputs @ dataset.true_weight + dataset.true_bias)
    assert abs(residual.std().item() - 0.1) < 0.01
    noiseless = RegressionDataset(16, 5, noise=0.0, seed=0)
    exact = noiseless.inputs @ noiseless.true_weight + noiseless.true_bias
    assert torch.allclose(noiseless.targets, exact)


def test_batched_fetch_equals_sample_by_sample() -> None:
    dataset = RegressionDataset(32, 4, seed=0)
    indices = [5, 0, 31, 7]
    inputs, targets = dataset.__getitems__(indices)
    assert inputs.shape == (4, 4) and targets.shape == (4,)
    for row, index in enumerate(indices):
        x, y = dataset[index]
        assert torch.equal(inputs[row], x) and torch.equal(targets[row], y)


def test_loader_serves_whole_batches_in_a_seeded_order() -> None:
    dataset = RegressionDataset(100, 4, seed=0)

    def first_targets(seed: int) -> list[torch.Tensor]:
        loader = build_dataloader(dataset, batch_size=32, shuffle=True, num_workers=0, seed=seed)
        return [targets for _, targets in loader]

    batches = first_targets(seed=0)
    assert [len(t) for t in batches] == [32, 32, 32, 4]
    assert all(torch.equal(a, b) for a, b in zip(batches, first_targets(seed=0), strict=True))
    assert not torch.equal(batches[0], first_targets(seed=1)[0])
    assert torch.equal(torch.sort(torch.cat(batches)).values, torch.sort(dataset.targets).values)


def test_loader_without_shuffle_keeps_dataset_order() -> None:
    dataset = RegressionDataset(10, 2, seed=0)
    loader = build_dataloader(dataset, batch_size=4, shuffle=False, num_workers=0, seed=0)
    assert torch.equal(torch.cat([t for _, t in loader]), dataset.targets)


def test_blobs_are_balanced_seeded_classes() -> None:
    data = ClassificationDataset(300, 4, 3, shape="blobs", spread=0.5, seed=0)
    assert data.inputs.shape == (300, 4) and data.targets.dtype == torch.int64
    assert torch.bincount(data.targets).tolist() == [100, 100, 100]
    assert torch.equal(data.inputs, ClassificationDataset(300, 4, 3, spread=0.5, seed=0).inputs)
    # Each point lies nearer its own centre than the others, at this spread.
    nearest = torch.cdist(data.inputs, data.centres).argmin(dim=1)
    assert (nearest == data.targets).float().mean() > 0.9


def test_moons_are_two_interleaved_half_circles() -> None:
    data = ClassificationDataset(200, 2, 2, shape="moons", spread=0.0, seed=0)
    upper = data.inputs[data.targets == 0]
    assert torch.allclose(upper.norm(dim=1), torch.ones(len(upper)), atol=1e-6)
    assert (upper[:, 1] >= 0).all()


def test_loader_fetches_whole_batches_and_drops_the_last_partial_one() -> None:
    dataset = RegressionDataset(10, 2, seed=0)
    kept = build_dataloader(dataset, batch_size=4, shuffle=True, seed=0)
    dropped = build_dataloader(dataset, batch_size=4, shuffle=True, seed=0, drop_last=True)
    assert isinstance(kept, DataLoader) and kept.collate_fn is keep_batch  # __getitems__ path
    assert len(kept) == 3 and [len(t) for _, t in kept] == [4, 4, 2]
    assert len(dropped) == 2 and [len(t) for _, t in dropped] == [4, 4]


def test_epoch_e_is_the_permutation_seeded_with_seed_plus_e() -> None:
    dataset = RegressionDataset(64, 2, seed=0)
    loader = build_dataloader(dataset, batch_size=16, shuffle=True, seed=3)
    sampler = loader.batch_sampler
    assert isinstance(sampler, EpochBatchSampler)  # batches of indices as tensors
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        epochs.append(torch.cat([targets for _, targets in loader]))
    for epoch, targets in enumerate(epochs):
        order = torch.randperm(64, generator=torch.Generator().manual_seed(3 + epoch))
        assert torch.equal(targets, dataset.targets[order])
    sampler.set_epoch(1)  # e.g. a run resumed in its second epoch
    assert torch.equal(torch.cat([targets for _, targets in loader]), epochs[1])


def test_a_dataset_without_getitems_gets_the_same_order_sample_by_sample() -> None:
    dataset = RegressionDataset(64, 2, seed=0)
    plain = torch.utils.data.TensorDataset(dataset.inputs, dataset.targets)
    batched = build_dataloader(dataset, batch_size=16, shuffle=True, seed=3)
    per_sample = build_dataloader(plain, batch_size=16, shuffle=True, seed=3)
    assert isinstance(per_sample.sampler, EpochSampler)
    for epoch in range(2):
        batched.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
        per_sample.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        for (_, expected), (_, targets) in zip(batched, per_sample, strict=True):
            assert torch.equal(targets, expected)


def test_worker_processes_serve_the_same_batches() -> None:
    dataset = RegressionDataset(10, 2, seed=0)
    loader = build_dataloader(dataset, batch_size=4, shuffle=False, num_workers=1, seed=0)
    assert torch.equal(torch.cat([t for _, t in loader]), dataset.targets)
