"""Early stopping and best.pt: the tracker's rules, then real runs that stop early, keep the
best validation step in best.pt, and stop at the same step when resumed part way."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from gradtrain.early_stopping import MonitorTracker


# ------------------------------------------------------------------------------------ the rules
def test_patience_counts_evaluations_without_an_improvement_beyond_min_delta() -> None:
    tracker = MonitorTracker("val_loss", "min", patience=2, min_delta=0.1)
    assert tracker.observe(1.0, step=10).improved
    # 0.95 is a new best (best.pt), but not better by more than min_delta: it counts as none.
    verdict = tracker.observe(0.95, step=20)
    assert verdict.improved and not verdict.stop
    assert tracker.evaluations_without_improvement == 1
    verdict = tracker.observe(0.97, step=30)
    assert not verdict.improved and verdict.stop
    assert (tracker.best, tracker.best_step) == (0.95, 20)


def test_an_improvement_beyond_min_delta_resets_the_count() -> None:
    tracker = MonitorTracker("val_loss", "min", patience=2, min_delta=0.1)
    tracker.observe(1.0, step=1)
    tracker.observe(1.5, step=2)
    assert not tracker.observe(0.5, step=3).stop
    assert tracker.evaluations_without_improvement == 0


def test_mode_max_improves_upwards_and_nan_never_improves() -> None:
    tracker = MonitorTracker("val_accuracy", "max", patience=1)
    tracker.observe(0.5, step=1)
    assert tracker.observe(0.7, step=2).improved
    verdict = tracker.observe(math.nan, step=3)
    assert not verdict.improved and verdict.stop
    assert tracker.best == 0.7


def test_counters_of_another_metric_are_not_carried_over() -> None:
    tracker = MonitorTracker("val_loss", "min", patience=3)
    tracker.observe(1.0, step=1)
    tracker.observe(2.0, step=2)
    other = MonitorTracker("train_loss_epoch", "min", patience=3)
    other.load_state_dict(tracker.state_dict())
    assert other.best is None and other.evaluations_without_improvement == 0
    same = MonitorTracker("val_loss", "min", patience=3)
    same.load_state_dict(tracker.state_dict())
    assert (same.best, same.best_step, same.evaluations_without_improvement) == (1.0, 1, 1)


# ------------------------------------------------------------------------------------ real runs
# A small MLP on noisy moons with a too-large lr overfits quickly: validation stops improving
# long before 100 epochs.
EARLY = (
    "experiment=mlp_classification",
    "dataset.n_samples=256",
    "dataset.spread=0.3",
    "dataset.val_fraction=0.25",
    "dataset.batch_size=32",
    "optimizer.lr=0.05",
    "trainer.max_steps=null",
    "trainer.max_epochs=100",
    "trainer.save_checkpoints=true",
    "trainer.keep_checkpoints=0",  # last.pt and best.pt only: fewer writes
    "trainer.early_stopping.patience=3",
    "logger=tensorboard",
)


def test_early_stopping_ends_the_run_and_best_pt_holds_the_best_validation_step(
    quick_run: Callable[..., Any],
) -> None:
    result = quick_run(*EARLY)
    summary = result.summary
    assert summary["status"] == "completed" and summary["stop_reason"] == "early_stopping"
    assert summary["epochs"] < 50  # well before max_epochs=100
    val_loss = result.scalars()["val/loss"]
    best_step, best_value = min(val_loss, key=lambda point: point[1])
    assert summary["best_checkpoint"]["step"] == best_step
    assert summary["best_checkpoint"]["metric"] == "val_loss"
    assert summary["best_checkpoint"]["value"] == pytest.approx(best_value, rel=1e-6)
    # patience evaluations after the best one, none better
    assert [step for step, _ in val_loss][-4] == best_step
    best = torch.load(result.run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == best_step
    last = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == summary["steps"] > best_step


def test_a_run_resumed_part_way_stops_early_at_the_same_step(
    quick_run: Callable[..., Any], tmp_path: Path
) -> None:
    whole = quick_run(*EARLY).summary
    stopped_at = whole["epochs"]
    run_dir = tmp_path / "resumed"
    quick_run(*EARLY, f"trainer.max_epochs={stopped_at - 2}", run_dir=run_dir)
    resumed = quick_run(*EARLY, "trainer.resume=auto", run_dir=run_dir).summary
    assert resumed["stop_reason"] == "early_stopping"
    assert resumed["steps"] == whole["steps"]
    assert resumed["best_checkpoint"] == whole["best_checkpoint"]
    assert resumed["val_loss"] == whole["val_loss"]


def test_without_validation_the_epoch_mean_training_loss_is_monitored(
    quick_run: Callable[..., Any],
) -> None:
    result = quick_run(
        "experiment=linear_regression",
        "dataset.n_samples=128",
        "dataset.batch_size=16",
        "trainer.max_steps=null",
        "trainer.max_epochs=200",
        "trainer.early_stopping.patience=2",
        "trainer.early_stopping.min_delta=0.001",
        "logger=tensorboard",
    )
    summary = result.summary
    assert summary["monitor"] == "train_loss_epoch" and summary["monitor_mode"] == "min"
    assert summary["stop_reason"] == "early_stopping" and summary["epochs"] < 200
    epoch_losses = result.scalars()["train/loss_epoch"]
    assert len(epoch_losses) == summary["epochs"]
    assert summary["train_loss_epoch"] == pytest.approx(epoch_losses[-1][1], rel=1e-6)


@pytest.mark.slow
def test_train_py_stops_early_keeps_best_pt_and_scores_the_test_split_with_it(
    train: Callable[..., Any],
) -> None:
    overrides = [o for o in EARLY if o != "trainer.save_checkpoints=true"]
    result = train(*overrides, "dataset.test_fraction=0.2", "trainer.progress_bar=false")
    assert result.returncode == 0, result.output
    summary = result.summary
    assert summary["stop_reason"] == "early_stopping" and summary["epochs"] < 50
    best_step = summary["best_checkpoint"]["step"]
    best = torch.load(result.run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == best_step < summary["steps"]
    assert summary["test_weights"] == f"best.pt (step {best_step})"
    assert 0.5 < summary["test_accuracy"] <= 1.0
    assert "stopped at early_stopping" in result.output and "test loss" in result.output


@pytest.mark.slow  # torchrun and train.py subprocesses
def test_under_torchrun_ranks_stop_together_and_rank_0_alone_writes_best_pt(
    tmp_path: Path,
) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    job = [
        "experiment=mlp_classification",
        "model.dropout=0.0",
        "dataset.n_samples=480",
        "dataset.spread=0.3",
        "dataset.val_fraction=0.2",
        "dataset.test_fraction=0.2",  # 288 training rows
        "dataset.shuffle=false",
        "optimizer.lr=0.05",
        "trainer.max_steps=null",
        "trainer.max_epochs=60",
        "trainer.early_stopping.patience=2",
        "trainer.progress_bar=false",
        "logger.figures=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    two, one = tmp_path / "two" / "run", tmp_path / "one"
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    commands = {
        two: [*ddp, str(root / "train.py"), *job, "dataset.batch_size=16"],
        one: [sys.executable, str(root / "train.py"), *job, "dataset.batch_size=32"],
    }
    summaries = {}
    for run_dir, command in commands.items():
        completed = subprocess.run(
            [*command, f"hydra.run.dir={run_dir}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert completed.returncode == 0, completed.stderr
        summaries[run_dir] = json.loads((run_dir / "summary.json").read_text())
    ddp_summary, single = summaries[two], summaries[one]
    assert ddp_summary["stop_reason"] == single["stop_reason"] == "early_stopping"
    assert ddp_summary["steps"] == single["steps"]
    assert ddp_summary["best_checkpoint"]["step"] == single["best_checkpoint"]["step"]
    assert ddp_summary["test_loss"] == pytest.approx(single["test_loss"], rel=1e-4)
    best = torch.load(two / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == ddp_summary["best_checkpoint"]["step"]
    assert sorted(p.name for p in two.parent.iterdir()) == ["run"]  # no other rank's folder
