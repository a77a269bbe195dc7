"""`python train.py ...` as users run it: real subprocesses, real Hydra, real files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TrainResult, read_scalars

Train = Callable[..., TrainResult]


def test_plain_train_py_minimizes_the_lecture_quadratic(train: Train) -> None:
    result = train()
    assert result.returncode == 0, result.output
    summary = result.summary
    assert summary["status"] == "completed"
    assert summary["final_loss"] == pytest.approx(-25.0, abs=1e-6)
    assert max(abs(v) for v in summary["params"]) < 1e-6
    # The closing summary names the outcome and where the logs are.
    assert "final loss  -25" in result.stdout
    assert "x           [" in result.stdout
    assert str(result.run_dir / "tensorboard") in result.stdout
    assert (result.run_dir / ".hydra" / "config.yaml").exists()
    assert (result.run_dir / "train.log").read_text().count("final loss") == 1
    scalars = read_scalars(result.run_dir / "tensorboard")
    assert scalars["train/loss"][-1] == (200, pytest.approx(-25.0))


def test_loss_quadratic_is_the_same_job_as_the_default(train: Train) -> None:
    default, explicit = train(), train("loss=quadratic")
    assert explicit.returncode == 0, explicit.output
    assert explicit.summary["params"] == default.summary["params"]


def test_linear_regression_with_adam_from_the_command_line(train: Train) -> None:
    result = train("experiment=linear_regression", "optimizer=adam", "optimizer.lr=0.01")
    assert result.returncode == 0, result.output
    tags = set(read_scalars(result.run_dir / "tensorboard"))
    assert {"train/loss", "train/grad_norm/weight", "train/grad_norm/bias", "optim/lr"} <= tags
    assert result.summary["epochs"] == 20


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["loss=quadraticc"], ["loss/quadraticc", "mse", "quadratic", "rosenbrock"]),
        (["optimizer.lr=-1"], ["optimizer.lr", "greater than 0"]),
        (["experiment=linear_regression", "dataset.batch_size=0"], ["dataset.batch_size"]),
        (["trainer.max_steps=0"], ["trainer.max_steps"]),
        (["+optimizer.betas=[0.9,0.9]"], ["optimizer.betas", "unknown key", "allowed keys"]),
        (["optimizer.lrr=0.1"], ["optimizer.lrr"]),
        (["optimizer.lr=fast"], ["optimizer.lr", "valid number"]),
        (["loss=mse"], ["loss=mse", "dataset=none", "experiment=linear_regression"]),
    ],
)
def test_bad_input_exits_non_zero_naming_the_key(
    train: Train, args: list[str], names: list[str]
) -> None:
    result = train(*args)
    assert result.returncode != 0
    for name in names:
        assert name in result.output, result.output
    assert "Traceback" not in result.output
    assert not (result.run_dir / "summary.json").exists()
    assert not (result.run_dir / "tensorboard").exists()


def test_rerunning_into_a_finished_run_dir_changes_nothing(train: Train, tmp_path: Path) -> None:
    first = train(run_dir=tmp_path / "kept")
    kept = {p: p.read_bytes() for p in (tmp_path / "kept" / "tensorboard").iterdir()}
    summary = (tmp_path / "kept" / "summary.json").read_bytes()
    again = train("optimizer.lr=0.3", run_dir=tmp_path / "kept")
    assert first.returncode == 0 and again.returncode != 0
    assert "already holds a run" in again.stderr
    assert (tmp_path / "kept" / "summary.json").read_bytes() == summary
    assert {p: p.read_bytes() for p in (tmp_path / "kept" / "tensorboard").iterdir()} == kept


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,y\n1,2\n2,x\n", "line 3, column 'y': 'x' is not a number"),
        ("a,y\n1,2\n,3\n", "line 3, column 'a': empty value"),
        ("a,b\n1,2\n", "no column 'y' (target); columns are: a, b"),
    ],
)
def test_bad_csv_exits_non_zero_naming_file_line_and_column(
    train: Train, tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "mine.csv"
    path.write_text(text)
    result = train("experiment=csv_regression", f"dataset.path={path}", "dataset.target=y")
    assert result.returncode != 0
    assert f"{path}" in result.stderr and message in result.stderr, result.output
    assert "Traceback" not in result.output


def test_missing_csv_file_is_named(train: Train, tmp_path: Path) -> None:
    result = train("experiment=csv_regression", "dataset.path=absent.csv", "dataset.target=y")
    assert result.returncode != 0 and "absent.csv: no such file" in result.stderr


def test_mlp_classification_preset_reports_validation_metrics(train: Train) -> None:
    result = train("experiment=mlp_classification", "logger=none")
    assert result.returncode == 0, result.output
    summary = result.summary
    assert summary["val_accuracy"] > 0.95 and summary["train_accuracy"] > 0.95
    assert summary["val_loss"] < 0.2
    assert "val acc" in result.stdout
