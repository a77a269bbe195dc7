"""The LR range test: training after it is bit-identical to training without it, its figure
and summary entry, lr_find.apply, and (slow) its suggestion against a small lr sweep."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from gradtrain.lr_find import suggest

MOONS = (
    "experiment=mlp_classification",
    "dataset.n_samples=256",
    "dataset.val_fraction=0.25",
    "dataset.batch_size=32",
    "model.dropout=0.2",  # draws random numbers in every forward: the RNG must be put back
    "trainer.max_steps=12",
    "trainer.save_checkpoints=true",
)
FIND = ("lr_find.enabled=true", "lr_find.num_steps=25", "lr_find.min_lr=1e-5", "lr_find.max_lr=1")


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    return checkpoint["model"]  # type: ignore[no-any-return]


def test_training_after_the_range_test_is_bit_identical_to_training_without_it(
    quick_run: Callable[..., Any],
) -> None:
    plain = quick_run(*MOONS)
    found = quick_run(*MOONS, *FIND, "logger=tensorboard", "logger.figures=true")
    assert found.summary["lr_find"]["steps"] > 10
    assert found.summary["final_loss"] == plain.summary["final_loss"]
    with_test, without = _weights(found.run_dir), _weights(plain.run_dir)
    assert all(torch.equal(with_test[name], without[name]) for name in without)
    # the figure, as a file and in TensorBoard
    png = (found.run_dir / "lr_find.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(found.run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "watch/lr_find" in events.Tags()["images"]


def test_apply_trains_with_the_suggested_lr(quick_run: Callable[..., Any]) -> None:
    summary = quick_run(*MOONS, *FIND, "lr_find.apply=true").summary
    suggested = summary["lr_find"]["suggested_lr"]
    assert suggested is not None and summary["lr_find"]["applied"] is True
    checkpoint = torch.load(Path(summary["run_dir"]) / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(suggested)


def test_the_suggestion_is_the_steepest_fall_before_the_minimum() -> None:
    lrs = [10 ** (i / 10 - 4) for i in range(40)]  # 1e-4 .. 10**-0.1
    # a fall steepest at index 25 (tanh's inflection), the minimum at 32, then a climb
    losses = [2.0 - math.tanh((i - 25) / 3) for i in range(33)] + [2.0 + i for i in range(7)]
    assert suggest(lrs, losses) == lrs[25]
    assert suggest(lrs, [1.0 + i for i in range(40)]) is None  # only rises: nothing to suggest


@pytest.mark.slow
def test_the_suggestion_is_within_ten_times_the_best_lr_of_a_small_sweep(
    quick_run: Callable[..., Any], train: Callable[..., Any]
) -> None:
    problem = (
        "experiment=linear_regression",
        "dataset.n_samples=512",
        "dataset.batch_size=32",
        "trainer.max_steps=null",
        "trainer.max_epochs=3",
    )
    finals = {}
    for lr in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0):
        try:
            finals[lr] = quick_run(*problem, f"optimizer.lr={lr}").summary["train_loss_epoch"]
        except Exception:  # a diverging lr is no candidate
            continue
    best_lr = min(finals, key=finals.__getitem__)
    result = train(*problem, "lr_find.enabled=true", "trainer.progress_bar=false")
    assert result.returncode == 0, result.output
    suggested = result.summary["lr_find"]["suggested_lr"]
    assert best_lr / 10 <= suggested <= best_lr * 10, (suggested, finals)
    assert "LR range test" in result.output
    assert (result.run_dir / "lr_find.png").is_file()
