"""`python train.py ...` as users run it. The real command runs in subprocesses where only a fresh
interpreter shows it (the exit status, what reaches the terminal, Hydra's own errors); the runs
behind it are the same `gradtrain.run.run` call, made in this process."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import QuickRun, TrainResult, read_scalars

from gradtrain.errors import ConfigError, GradtrainError

Train = Callable[..., TrainResult]
Quick = Callable[..., QuickRun]


# --------------------------------------------------------------------------- the real command
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


def test_an_invalid_value_exits_2_naming_the_key_without_a_traceback(train: Train) -> None:
    # The one path train.py gives every GradtrainError: its message on stderr after
    # "gradtrain: ", its exit_code as the status. The cases below check the errors in-process.
    result = train("optimizer.lr=-1")
    assert result.returncode == ConfigError.exit_code == 2
    assert "gradtrain: Invalid configuration (1 problem)" in result.stderr
    assert "optimizer.lr" in result.stderr and "greater than 0" in result.stderr
    assert "Traceback" not in result.output
    assert not (result.run_dir / "summary.json").exists()
    assert not (result.run_dir / "tensorboard").exists()


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["loss=quadraticc"], ["loss/quadraticc", "mse", "quadratic", "rosenbrock"]),
        (["optimizer.lrr=0.1"], ["optimizer.lrr"]),
    ],
)
def test_an_override_hydra_rejects_exits_non_zero_naming_it(
    train: Train, args: list[str], names: list[str]
) -> None:
    # Hydra refuses these while composing, before torch is imported: a fresh process is cheap.
    result = train(*args)
    assert result.returncode != 0
    for name in names:
        assert name in result.output, result.output
    assert "Traceback" not in result.output
    assert not (result.run_dir / "summary.json").exists()
    assert not (result.run_dir / "tensorboard").exists()


# ------------------------------------------------------------------------------- in-process
@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["optimizer.lr=-1"], ["optimizer.lr", "greater than 0"]),
        (["experiment=linear_regression", "dataset.batch_size=0"], ["dataset.batch_size"]),
        (["trainer.max_steps=0"], ["trainer.max_steps"]),
        (["+optimizer.betas=[0.9,0.9]"], ["optimizer.betas", "unknown key", "allowed keys"]),
        (["optimizer.lr=fast"], ["optimizer.lr", "valid number"]),
        (["loss=mse"], ["loss=mse", "dataset=none", "experiment=linear_regression"]),
    ],
)
def test_bad_input_is_a_config_error_naming_the_key_and_writes_nothing(
    quick_config: Callable[..., dict[str, Any]], tmp_path: Path, args: list[str], names: list[str]
) -> None:
    from gradtrain.run import run

    raw = quick_config("logger=tensorboard", *args)
    with pytest.raises(ConfigError) as caught:
        run(raw, tmp_path / "run")
    assert caught.value.exit_code == 2
    for name in names:
        assert name in str(caught.value), caught.value
    assert not (tmp_path / "run" / "summary.json").exists()
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_loss_quadratic_is_the_same_job_as_the_default(
    composed: Callable[..., dict[str, Any]], quick_run: Quick
) -> None:
    assert composed("loss=quadratic") == composed()
    default, explicit = quick_run(), quick_run("loss=quadratic")
    assert explicit.summary["params"] == default.summary["params"]


def test_linear_regression_with_adam_logs_loss_lr_and_a_grad_norm_per_parameter(
    quick_run: Quick,
) -> None:
    result = quick_run(
        "experiment=linear_regression",
        "optimizer=adam",
        "optimizer.lr=0.01",
        "logger=tensorboard",
        "trainer.max_steps=null",  # the preset's 20 epochs
    )
    tags = set(result.scalars())
    assert {"train/loss", "watch/grad_norm/weight", "watch/grad_norm/bias", "watch/lr"} <= tags
    assert result.summary["epochs"] == 20


def test_rerunning_into_a_finished_run_dir_changes_nothing(
    quick_run: Quick, tmp_path: Path
) -> None:
    kept_dir = tmp_path / "kept"
    quick_run("logger=tensorboard", run_dir=kept_dir)
    kept = {p: p.read_bytes() for p in (kept_dir / "tensorboard").iterdir()}
    summary = (kept_dir / "summary.json").read_bytes()
    with pytest.raises(GradtrainError, match="already holds a run") as caught:
        quick_run("logger=tensorboard", "optimizer.lr=0.3", run_dir=kept_dir)
    assert caught.value.exit_code == 1
    assert (kept_dir / "summary.json").read_bytes() == summary
    assert {p: p.read_bytes() for p in (kept_dir / "tensorboard").iterdir()} == kept


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,y\n1,2\n2,x\n", "line 3, column 'y': 'x' is not a number"),
        ("a,y\n1,2\n,3\n", "line 3, column 'a': empty value"),
        ("a,b\n1,2\n", "no column 'y' (target); columns are: a, b"),
    ],
)
def test_bad_csv_is_an_error_naming_file_line_and_column(
    quick_run: Quick, tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "mine.csv"
    path.write_text(text)
    with pytest.raises(GradtrainError) as caught:
        quick_run("experiment=csv_regression", f"dataset.path={path}", "dataset.target=y")
    assert caught.value.exit_code == 1
    assert f"{path}" in str(caught.value) and message in str(caught.value), caught.value


def test_missing_csv_file_is_named(
    quick_run: Quick, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where train.py would look for a relative path
    with pytest.raises(GradtrainError) as caught:
        quick_run("experiment=csv_regression", "dataset.path=absent.csv", "dataset.target=y")
    assert caught.value.exit_code == 1 and "absent.csv: no such file" in str(caught.value)


def test_mlp_classification_preset_reports_validation_metrics(
    quick_run: Quick, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gradtrain"):
        summary = quick_run("experiment=mlp_classification", "trainer.max_steps=null").summary
    assert summary["val_accuracy"] > 0.95 and summary["train_accuracy"] > 0.95
    assert summary["val_loss"] < 0.2
    assert "val acc" in caplog.text  # in the closing summary train.py prints
