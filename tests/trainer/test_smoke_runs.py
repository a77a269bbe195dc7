"""Smoke runs and cadences: fast_dev_run, limit_train_batches, limit_val_batches,
overfit_batches and val_every_n_steps, on real runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

MOONS = (
    "experiment=mlp_classification",
    "dataset.n_samples=256",
    "dataset.val_fraction=0.25",
    "dataset.batch_size=16",
)


def test_fast_dev_run_takes_one_batch_through_everything_and_keeps_only_the_summary(
    quick_run: Callable[..., Any], tmp_path: Path
) -> None:
    run_dir = tmp_path / "smoke"
    summary = quick_run(
        *MOONS,
        "dataset.test_fraction=0.25",
        "trainer.fast_dev_run=true",
        "trainer.save_checkpoints=true",
        "logger=tensorboard",
        "trainer.max_steps=null",
        "trainer.max_epochs=50",
        run_dir=run_dir,
    ).summary
    assert summary["status"] == "completed" and summary["fast_dev_run"] is True
    assert summary["steps"] == 1 and summary["last_checkpoint_step"] == 1  # (in scratch)
    assert "val_loss" in summary and "test_loss" in summary
    assert sorted(p.name for p in run_dir.iterdir()) == ["summary.json"]


def test_limit_train_batches_caps_each_epoch(quick_run: Callable[..., Any]) -> None:
    summary = quick_run(
        *MOONS, "trainer.max_steps=null", "trainer.max_epochs=3", "trainer.limit_train_batches=2"
    ).summary
    assert (summary["steps"], summary["epochs"]) == (6, 3)


def test_limit_val_batches_scores_only_the_first_batches(
    quick_run: Callable[..., Any],
) -> None:
    # 64 validation rows in batches of 16: one batch is 16 rows, so accuracy is in 1/16ths
    whole = quick_run(*MOONS, "trainer.max_steps=5").summary
    limited = quick_run(*MOONS, "trainer.max_steps=5", "trainer.limit_val_batches=1").summary
    assert limited["final_loss"] == whole["final_loss"]  # the same training
    assert limited["val_loss"] != whole["val_loss"]
    assert (limited["val_accuracy"] * 16) == pytest.approx(round(limited["val_accuracy"] * 16))


def test_overfit_batches_fits_the_same_batches_every_epoch(quick_run: Callable[..., Any]) -> None:
    common = (
        "experiment=mlp_classification",
        "dataset.n_samples=256",
        "dataset.spread=0.5",  # overlapping moons: 256 rows cannot all be fitted
        "dataset.batch_size=8",
        "optimizer.lr=0.02",
        "trainer.max_steps=null",
        "trainer.max_epochs=60",
    )
    same = quick_run(*common, "trainer.overfit_batches=1").summary
    fresh = quick_run(*common, "trainer.limit_train_batches=1").summary
    assert same["steps"] == fresh["steps"] == 60
    # the same 8 rows every epoch are memorised; a new batch every epoch is not
    assert same["train_loss_epoch"] < 0.05
    assert fresh["train_loss_epoch"] > 2 * same["train_loss_epoch"]


def test_val_every_n_steps_validates_on_its_own_cadence(quick_run: Callable[..., Any]) -> None:
    result = quick_run(
        *MOONS,
        "trainer.max_steps=25",
        "trainer.val_every_n_steps=10",
        "logger=tensorboard",
    )
    steps = [step for step, _ in result.scalars()["val/loss"]]
    assert steps == [10, 20, 25]  # every 10 updates (mid-epoch: 12 per epoch), and the end


@pytest.mark.slow
def test_train_py_fast_dev_run_leaves_only_the_summary_of_gradtrain(
    train: Callable[..., Any],
) -> None:
    result = train("experiment=mlp_classification", "trainer.fast_dev_run=true")
    assert result.returncode == 0, result.output
    assert result.summary["steps"] == 1 and "val_loss" in result.summary
    # Hydra's own record (.hydra/, train.log) is Hydra's; gradtrain kept only summary.json.
    left = {p.name for p in result.run_dir.iterdir()} - {".hydra", "train.log"}
    assert left == {"summary.json"}
