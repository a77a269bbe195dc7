"""Optional parameter statistics (histograms, update-to-weight ratios): off by default, at their
steps when on, read back from the real event files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import read_scalars

from gradtrain.run import run

Compose = Callable[..., dict[str, Any]]


def histograms(log_dir: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"histograms": 0})
    accumulator.Reload()
    return {
        tag: [event.step for event in accumulator.Histograms(tag)]
        for tag in accumulator.Tags()["histograms"]
    }


def test_views_are_off_by_default(composed: Compose, tmp_path: Path) -> None:
    run(composed("trainer.max_steps=20"), tmp_path)
    assert histograms(tmp_path / "tensorboard") == {}
    assert not any(
        tag.startswith("watch/update_ratio") for tag in read_scalars(tmp_path / "tensorboard")
    )


def test_histograms_every_n_steps_of_parameters_and_gradients(
    composed: Compose, tmp_path: Path
) -> None:
    run(
        composed(
            "experiment=linear_regression",
            "trainer.max_steps=30",
            "logger.histogram_every_n_steps=15",
        ),
        tmp_path,
    )
    assert histograms(tmp_path / "tensorboard") == {
        "watch/params/weight": [15, 30],
        "watch/params/bias": [15, 30],
        "watch/grads/weight": [15, 30],
        "watch/grads/bias": [15, 30],
    }


def test_update_ratio_is_logged_at_logging_steps(composed: Compose, tmp_path: Path) -> None:
    run(composed("trainer.max_steps=30", "logger.update_ratio=true"), tmp_path)
    ratios = read_scalars(tmp_path / "tensorboard")["watch/update_ratio/x"]
    # Gradient descent on x**2 moves x by lr * 2x: a ratio of 2 * lr = 0.2 at every step.
    assert [step for step, _ in ratios] == [1, 10, 20, 30]
    assert all(ratio == pytest.approx(0.2, rel=1e-4) for _, ratio in ratios)


def test_update_ratio_of_a_weight_that_stopped_at_zero_is_zero(
    composed: Compose, tmp_path: Path
) -> None:
    # lr = 0.5 takes x straight to 0, after which the updates are 0 too: no change, not 0/0.
    run(composed("trainer.max_steps=20", "optimizer.lr=0.5", "logger.update_ratio=true"), tmp_path)
    assert read_scalars(tmp_path / "tensorboard")["watch/update_ratio/x"] == [
        (1, 1.0),  # x -= 0.5 * 2x: the whole of x
        (10, 0.0),
        (20, 0.0),
    ]
