"""The sweep summary's rows, read from job folders laid out as Hydra and gradtrain write them,
and the monitored metric a run is judged by."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from gradtrain.errors import GradtrainError
from gradtrain.run import run
from gradtrain.sweeps.job import run_sweep_job
from gradtrain.sweeps.monitor import choose_monitor, monitored_value
from gradtrain.sweeps.summary import claim_sweep_dir, collect_rows, csv_text, markdown_table

Compose = Callable[..., dict[str, Any]]


def make_job(sweep_dir: Path, number: int, overrides: list[str], summary: Any = None) -> Path:
    """A job folder as a sweep leaves it: Hydra's `.hydra/` record, and gradtrain's summary."""
    job = sweep_dir / f"{number}_{','.join(overrides)}"
    (job / ".hydra").mkdir(parents=True)
    hydra = {"hydra": {"job": {"num": number}, "overrides": {"task": overrides}}}
    OmegaConf.save(OmegaConf.create(hydra), job / ".hydra" / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    if summary is not None:
        (job / "summary.json").write_text(json.dumps(summary))
    return job


def completed(**values: Any) -> dict[str, Any]:
    return {"status": "completed", "stop_reason": "max_steps", "steps": 10, "wall_s": 0.5, **values}


def test_rows_are_sorted_by_the_monitored_metric_and_failures_come_last(tmp_path: Path) -> None:
    make_job(tmp_path, 0, ["a=0"], {"status": "failed", "error": "boom", "steps": 3})
    make_job(tmp_path, 1, ["a=1"], completed(final_loss=2.0, best_loss=1.0, monitor="final_loss"))
    make_job(tmp_path, 2, ["a=2"], completed(final_loss=-1.0, best_loss=-1.0, monitor="final_loss"))
    make_job(tmp_path, 3, ["a=3"])  # stopped before writing summary.json
    rows = collect_rows(tmp_path)
    assert [row.job for row in rows] == ["2_a=2", "1_a=1", "0_a=0", "3_a=3"]
    assert [row.status for row in rows] == ["completed", "completed", "failed", "failed"]
    assert rows[2].reason == "boom" and "no summary.json" in rows[3].reason
    assert rows[0].overrides == ["a=2"] and rows[0].monitored_value == -1.0


def test_validation_metrics_become_columns_and_val_loss_is_the_default_monitored_metric(
    tmp_path: Path,
) -> None:
    # Runs with a validation set report val_loss (and maybe val_accuracy); it wins over the
    # training loss when trainer.monitor is null.
    make_job(tmp_path, 0, ["a=0"], completed(final_loss=0.1, val_loss=0.9, val_accuracy=0.5))
    make_job(tmp_path, 1, ["a=1"], completed(final_loss=0.5, val_loss=0.3, val_accuracy=0.8))
    rows = collect_rows(tmp_path)
    assert [row.job for row in rows] == ["1_a=1", "0_a=0"]
    assert rows[0].monitor == "val_loss" and rows[0].monitored_value == 0.3
    header = csv_text(rows).splitlines()[0].split(",")
    assert header[header.index("best_loss") + 1 :][:2] == ["val_accuracy", "val_loss"]
    assert "| 0.8 | 0.3 |" in markdown_table(rows)


def test_a_non_finite_monitored_metric_is_diverged_and_a_stated_status_is_kept(
    tmp_path: Path,
) -> None:
    make_job(tmp_path, 0, ["a=0"], completed(final_loss=math.nan, monitor="final_loss"))
    stated = {"status": "diverged", "error": "loss became inf at step 7", "final_loss": math.inf}
    make_job(tmp_path, 1, ["a=1"], stated)
    rows = {row.job: row for row in collect_rows(tmp_path)}
    assert (rows["0_a=0"].status, rows["0_a=0"].reason) == ("diverged", "final_loss is nan")
    assert (rows["1_a=1"].status, rows["1_a=1"].reason) == ("diverged", "loss became inf at step 7")
    assert all(row.monitored_value is None for row in rows.values())


def test_markdown_cells_stay_on_one_line_and_keep_pipes_inside(tmp_path: Path) -> None:
    error = "Invalid configuration (1 problem):\n  - x: a|b"
    make_job(tmp_path, 0, ["a=0"], {"status": "failed", "error": error})
    table = markdown_table(collect_rows(tmp_path))
    assert len(table.splitlines()) == 3
    assert "Invalid configuration (1 problem): - x: a\\|b" in table


def test_claiming_a_sweep_folder_refuses_one_that_holds_a_sweep(tmp_path: Path) -> None:
    claim_sweep_dir(tmp_path / "new" / "sweep")
    assert (tmp_path / "new" / "sweep").is_dir()
    claim_sweep_dir(tmp_path / "new" / "sweep")  # still empty: nothing to mix with
    (tmp_path / "new" / "sweep" / "multirun.yaml").write_text("{}")
    with pytest.raises(SystemExit, match="already holds a sweep"):
        claim_sweep_dir(tmp_path / "new" / "sweep")


# ------------------------------------------------------------------------------- monitor
def test_the_monitored_metric_is_val_loss_when_present_else_final_loss_unless_chosen() -> None:
    assert choose_monitor(None, {"final_loss": 1.0}) == "final_loss"
    assert choose_monitor(None, {"final_loss": 1.0, "val_loss": 2.0}) == "val_loss"
    assert choose_monitor("best_loss", {"best_loss": 0.5, "val_loss": 2.0}) == "best_loss"
    with pytest.raises(GradtrainError, match=r"trainer.monitor=val_loss .* no val_loss"):
        choose_monitor("val_loss", {"final_loss": 1.0})


def test_a_run_records_and_returns_its_monitored_metric(composed: Compose, tmp_path: Path) -> None:
    summary = run(composed("logger=none", "trainer.monitor=best_loss"), tmp_path / "a")
    assert summary["monitor"] == "best_loss"
    assert monitored_value(summary) == summary["best_loss"]
    value = run_sweep_job(composed("logger=none", "trainer.max_steps=20"), tmp_path / "b")
    assert value == json.loads((tmp_path / "b" / "summary.json").read_text())["final_loss"]


def test_a_failing_sweep_job_returns_none_and_leaves_a_failed_summary(
    composed: Compose, tmp_path: Path
) -> None:
    # None, not NaN: Optuna's sweeper records None as a failed trial, but crashes on NaN.
    assert run_sweep_job(composed("optimizer.lr=-1"), tmp_path / "bad") is None
    summary = json.loads((tmp_path / "bad" / "summary.json").read_text())
    assert summary["status"] == "failed" and "optimizer.lr" in summary["error"]
    assert not (tmp_path / "bad" / "tensorboard").exists()

    diverged = composed("logger=none", "optimizer.lr=1e30", "trainer.max_steps=5")
    assert run_sweep_job(diverged, tmp_path / "nan") is None

    # A combination only the data can rule out: found when building, before training.
    mismatched = composed(
        "experiment=linear_regression", "model.out_features=2", "trainer.max_steps=2", "logger=none"
    )
    assert run_sweep_job(mismatched, tmp_path / "crash") is None
    summary = json.loads((tmp_path / "crash" / "summary.json").read_text())
    assert summary["status"] == "failed" and "model.out_features=2" in summary["error"]
