"""A sweep's jobs are named after their swept values, and show only those in HParams."""

from __future__ import annotations

import pytest

from gradtrain.metrics.dashboard import select_hparams
from gradtrain.sweeps.names import constant_override_keys, swept_keys


def test_overrides_that_sweep_are_told_from_those_every_job_shares() -> None:
    overrides = [
        "experiment=linear_regression",
        "optimizer.lr=0.01,0.1",
        "logger.update_ratio=true",
        "optimizer=sgd,adam",
        "trainer.max_steps=range(10,30,10)",
    ]
    assert constant_override_keys(overrides) == ["experiment", "logger.update_ratio"]


def test_a_job_is_swept_over_its_overrides_less_the_shared_ones() -> None:
    job = ["experiment=linear_regression", "optimizer.lr=0.01", "logger.update_ratio=true"]
    excluded = ["hparams_search", "experiment", "logger.update_ratio"]
    assert swept_keys(job, excluded) == ["optimizer.lr"]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["optimizer.lr"], {"optimizer.lr"}),
        (["optimizer"], {"optimizer.name", "optimizer.lr", "optimizer.momentum"}),  # a group
        (["+optimizer.momentum"], {"optimizer.momentum"}),
        (None, {"optimizer.name", "optimizer.lr", "optimizer.momentum", "seed"}),
        ([], {"optimizer.name", "optimizer.lr", "optimizer.momentum", "seed"}),  # none: all
    ],
)
def test_hparams_are_those_under_the_swept_keys(keys: list[str] | None, expected: set[str]) -> None:
    hparams = {"optimizer.name": "sgd", "optimizer.lr": 0.1, "optimizer.momentum": 0.9, "seed": 0}
    assert set(select_hparams(hparams, keys)) == expected
