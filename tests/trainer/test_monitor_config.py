"""Bad input for the monitored metric, early stopping, the test split, smoke runs and the LR
range test: each refused before training, naming the key; and the sweep summary's ranking by
the monitored metric's mode."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from gradtrain.config import validate_config
from gradtrain.errors import ConfigError
from gradtrain.sweeps.summary import collect_rows

Compose = Callable[..., dict[str, Any]]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer.early_stopping.patience=0"], "trainer.early_stopping.patience"),
        (["trainer.early_stopping.min_delta=-0.1"], "trainer.early_stopping.min_delta"),
        (
            [
                "experiment=linear_regression",
                "dataset.val_fraction=0.5",
                "dataset.test_fraction=0.5",
            ],
            "dataset.test_fraction=0.5 plus dataset.val_fraction=0.5",
        ),
        (
            ["trainer.fast_dev_run=true", "lr_find.enabled=true"],
            "lr_find.enabled=true and trainer.fast_dev_run=true",
        ),
        (["lr_find.min_lr=1", "lr_find.max_lr=0.1"], "lr_find.min_lr=1 must be below"),
        (
            ["experiment=linear_regression", "trainer.monitor=val_accuracy"],
            "trainer.monitor=val_accuracy needs validation data",
        ),
        (
            [
                "experiment=linear_regression",
                "dataset.val_fraction=0.2",
                "trainer.monitor=val_accuracy",
            ],
            "trainer.monitor=val_accuracy needs a classification dataset",
        ),
        (["trainer.monitor=train_loss_epoch"], "trainer.monitor=train_loss_epoch needs epochs"),
        (
            ["trainer.early_stopping.patience=3"],  # dataset=none: final_loss, known at the end
            "trainer.early_stopping.patience=3 watches the monitored metric",
        ),
        (["trainer.mode=up"], "trainer.mode"),
        (["lr_find.num_steps=2"], "lr_find.num_steps"),
    ],
)
def test_bad_input_is_refused_naming_the_key(
    composed: Compose, overrides: list[str], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(composed(*overrides))
    assert expected in str(caught.value)


def test_test_path_and_test_fraction_together_are_refused(composed: Compose) -> None:
    raw = composed(
        "experiment=csv_regression",
        "dataset.path=a.csv",
        "dataset.target=y",
        "dataset.test_path=b.csv",
        "dataset.test_fraction=0.2",
    )
    with pytest.raises(ConfigError, match=r"dataset\.test_path=b\.csv and dataset\.test_fraction"):
        validate_config(raw)


@pytest.mark.slow
def test_train_py_exits_2_naming_the_key_and_writes_nothing(
    train: Callable[..., Any], tmp_path: Path
) -> None:
    result = train(
        "experiment=logistic_regression", "trainer.early_stopping.patience=0", "lr_find.min_lr=50"
    )
    assert result.returncode == 2
    assert "trainer.early_stopping.patience" in result.output
    assert "lr_find.min_lr=50 must be below lr_find.max_lr=10" in result.output
    assert "Traceback" not in result.output
    assert not (result.run_dir / "summary.json").exists()


def _job(sweep_dir: Path, number: int, summary: dict[str, Any]) -> None:
    job = sweep_dir / f"{number}_a={number}"
    (job / ".hydra").mkdir(parents=True)
    hydra = {"hydra": {"job": {"num": number}, "overrides": {"task": [f"a={number}"]}}}
    OmegaConf.save(OmegaConf.create(hydra), job / ".hydra" / "hydra.yaml")
    OmegaConf.save(OmegaConf.create([f"a={number}"]), job / ".hydra" / "overrides.yaml")
    (job / "summary.json").write_text(json.dumps(summary))


def test_the_sweep_summary_puts_the_highest_accuracy_first_under_mode_max(
    tmp_path: Path,
) -> None:
    for number, accuracy in enumerate([0.7, 0.9, 0.8]):
        _job(
            tmp_path,
            number,
            {
                "status": "completed",
                "val_accuracy": accuracy,
                "monitor": "val_accuracy",
                "monitor_mode": "max",
            },
        )
    rows = collect_rows(tmp_path)
    assert [row.monitored_value for row in rows] == [0.9, 0.8, 0.7]


def test_a_run_without_validation_is_judged_by_its_epoch_loss(
    quick_run: Callable[..., Any],
) -> None:
    summary = quick_run("experiment=linear_regression").summary
    assert summary["monitor"] == "train_loss_epoch" and summary["monitor_mode"] == "min"
    assert summary["train_loss_epoch"] > 0
