"""The epoch's mean training loss (train/loss_epoch) and the test split scored at the end of a
run, with best.pt's weights when there is one."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from gradtrain.build import build
from gradtrain.config import validate_config
from gradtrain.datasets import InMemoryDataset
from gradtrain.errors import ConfigError
from gradtrain.evaluation import EpochLoss
from gradtrain.run import seed_everything


# ---------------------------------------------------------------------------------- epoch loss
def test_epoch_loss_is_the_mean_of_the_updates_and_survives_a_checkpoint() -> None:
    losses = torch.rand(1300)  # more than one collapse window
    whole, halves = EpochLoss(), EpochLoss()
    for loss in losses:
        whole.add(loss)
    for loss in losses[:700]:
        halves.add(loss)
    resumed = EpochLoss()
    resumed.load_state_dict(halves.state_dict(), torch.device("cpu"))
    for loss in losses[700:]:
        resumed.add(loss)
    mean = whole.mean()
    assert mean is not None and resumed.mean() is not None
    assert mean.item() == pytest.approx(losses.mean().item(), rel=1e-5)
    assert torch.equal(resumed.mean(), mean)  # the same grouping: the same bits
    whole.reset()
    assert whole.mean() is None


def test_train_loss_epoch_is_logged_at_each_epoch_end_as_the_mean_of_its_step_losses(
    quick_run: Callable[..., Any],
) -> None:
    result = quick_run(
        "experiment=linear_regression",
        "dataset.n_samples=96",
        "dataset.batch_size=32",
        "trainer.max_steps=null",
        "trainer.max_epochs=4",
        "trainer.log_every_n_steps=1",
        "logger=tensorboard",
    )
    scalars = result.scalars()
    step_losses = dict(scalars["train/loss"])
    epoch_losses = scalars["train/loss_epoch"]
    assert [step for step, _ in epoch_losses] == [3, 6, 9, 12]
    for step, value in epoch_losses:
        mean = sum(step_losses[s] for s in range(step - 2, step + 1)) / 3
        assert value == pytest.approx(mean, rel=1e-5)


# ---------------------------------------------------------------------------------- test split
def test_the_test_split_is_disjoint_from_validation_and_training_and_seeded() -> None:
    rows = InMemoryDataset(torch.arange(100.0).unsqueeze(1), torch.arange(100.0))
    train, val, test = rows.split_with_test(0.2, 0.1, seed=3)
    ids = [set(part.targets.tolist()) for part in (train, val, test)]
    assert [len(s) for s in ids] == [70, 20, 10]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    # validation is the split a run without a test split has; the test rows come from training
    assert torch.equal(val.targets, rows.split(0.2, seed=3)[1].targets)
    again = rows.split_with_test(0.2, 0.1, seed=3)[2]
    assert torch.equal(again.targets, test.targets)


TEST_RUN = (
    "experiment=mlp_classification",
    "dataset.n_samples=256",
    "dataset.spread=0.3",
    "dataset.val_fraction=0.25",
    "dataset.test_fraction=0.25",
    "dataset.batch_size=32",
    "optimizer.lr=0.05",
    "trainer.max_steps=null",
    "trainer.max_epochs=100",
    "trainer.save_checkpoints=true",
    "trainer.keep_checkpoints=0",
    "trainer.early_stopping.patience=3",
    "logger=tensorboard",
)


def _score_by_hand(raw: dict[str, Any], weights: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Cross-entropy and accuracy of `weights` on the config's test rows, computed here."""
    cfg = validate_config(raw)
    seed_everything(cfg.seed)
    parts = build(cfg)
    assert parts.data.test_loader is not None
    parts.module.load_state_dict(weights)
    parts.module.eval()
    test = parts.data.test_loader.dataset
    with torch.no_grad():
        logits = parts.module(test.inputs)  # type: ignore[attr-defined]
    targets = test.targets  # type: ignore[attr-defined]
    loss = F.cross_entropy(logits, targets).item()
    return loss, (logits.argmax(dim=1) == targets).float().mean().item()


def test_the_test_score_is_computed_with_the_best_weights(
    quick_run: Callable[..., Any], quick_config: Callable[..., dict[str, Any]]
) -> None:
    result = quick_run(*TEST_RUN)
    summary = result.summary
    best_step = summary["best_checkpoint"]["step"]
    assert summary["steps"] > best_step and summary["test_weights"] == f"best.pt (step {best_step})"
    checkpoints = result.run_dir / "checkpoints"
    best = torch.load(checkpoints / "best.pt", weights_only=True)["model"]
    last = torch.load(checkpoints / "last.pt", weights_only=True)["model"]
    raw = quick_config(*TEST_RUN)
    loss, accuracy = _score_by_hand(raw, best)
    assert summary["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert summary["test_accuracy"] == pytest.approx(accuracy)
    assert summary["test_loss"] != pytest.approx(_score_by_hand(raw, last)[0], rel=1e-5)
    scalars = result.scalars()
    assert scalars["test/loss"] == [(summary["steps"], pytest.approx(loss, rel=1e-5))]
    assert scalars["test/accuracy"][0][1] == pytest.approx(accuracy)


def _write_csv(path: Path, rows: list[tuple[float, float, str]]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["size", "weight", "kind"])
        writer.writerows(rows)


def with_test_file(train_csv: Path, test_csv: Path) -> tuple[str, ...]:
    """A classification of the `kind` column of `train_csv`, scored on `test_csv`."""
    return (
        "dataset=csv",
        f"dataset.path={train_csv}",
        "dataset.target=kind",
        "dataset.task=classification",
        f"dataset.test_path={test_csv}",
        "loss=cross_entropy",
        "model=logistic",
    )


def _csv_rows(n: int, seed: int) -> list[tuple[float, float, str]]:
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(n, 2, generator=generator)
    # features far from standardised: a model scored on unstandardised rows would be far off
    return [
        (1000 + 100 * float(x), -50 + 10 * float(y), "big" if x + y > 0 else "small")
        for x, y in points
    ]


def test_a_test_csv_is_standardised_with_the_training_statistics(
    quick_run: Callable[..., Any], quick_config: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    train_csv, test_csv = tmp_path / "train.csv", tmp_path / "test.csv"
    _write_csv(train_csv, _csv_rows(200, seed=1))
    _write_csv(test_csv, _csv_rows(80, seed=2))
    overrides = (
        *with_test_file(train_csv, test_csv),
        "optimizer=sgd",
        "trainer.save_checkpoints=false",  # no best.pt: the last weights are scored
    )
    summary = quick_run(*overrides).summary
    assert summary["test_weights"] == "last" and 0.8 < summary["test_accuracy"] <= 1.0
    # the training file's statistics, applied to the test rows by hand, give the same score
    cfg = validate_config(quick_config(*overrides))
    seed_everything(cfg.seed)
    parts = build(cfg)
    train_inputs = parts.data.train_loader.dataset.inputs  # type: ignore[union-attr]
    test = parts.data.test_loader.dataset  # type: ignore[union-attr]
    assert train_inputs.mean(dim=0).abs().max() < 1e-4  # the training rows are standardised
    train_raw = torch.tensor([row[:2] for row in _csv_rows(200, seed=1)])
    test_raw = torch.tensor([row[:2] for row in _csv_rows(80, seed=2)])
    mean, std = train_raw.mean(dim=0), train_raw.std(dim=0, correction=0)
    assert torch.allclose(test.inputs, (test_raw - mean) / std, atol=1e-4)  # type: ignore[attr-defined]
    labels = {"big": 0, "small": 1}
    expected_targets = torch.tensor([labels[kind] for _, _, kind in _csv_rows(80, seed=2)])
    assert torch.equal(test.targets, expected_targets)  # type: ignore[attr-defined]


def test_a_test_csv_with_a_label_training_never_saw_is_refused(
    quick_run: Callable[..., Any], tmp_path: Path
) -> None:
    train_csv, test_csv = tmp_path / "train.csv", tmp_path / "test.csv"
    _write_csv(train_csv, _csv_rows(50, seed=1))
    # (load_csv asks for two classes in any file it reads for classification)
    _write_csv(test_csv, [(1.0, 2.0, "medium"), (2.0, 3.0, "big")])
    with pytest.raises(ConfigError, match=r"dataset\.test_path=.*labels medium of 'kind'"):
        quick_run(*with_test_file(train_csv, test_csv))


def test_a_test_fraction_that_holds_out_no_row_is_refused(quick_run: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match=r"dataset\.test_fraction=0\.001 holds out no test rows"):
        quick_run(
            "experiment=linear_regression", "dataset.n_samples=100", "dataset.test_fraction=0.001"
        )


def test_a_test_csv_without_rows_is_refused_naming_the_key(
    quick_run: Callable[..., Any], tmp_path: Path
) -> None:
    train_csv, test_csv = tmp_path / "train.csv", tmp_path / "test.csv"
    _write_csv(train_csv, _csv_rows(50, seed=1))
    _write_csv(test_csv, [])  # a header, no rows
    with pytest.raises(ConfigError, match=r"dataset\.test_path=.*test\.csv: .*no data rows"):
        quick_run(*with_test_file(train_csv, test_csv))
    assert not (tmp_path / "quick0").exists() or not any((tmp_path / "quick0").iterdir())
