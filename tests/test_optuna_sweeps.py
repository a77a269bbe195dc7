"""`python train.py -m hparams_search=optuna` as users run it: real searches in subprocesses, with
the study read back from Optuna's journal file in the sweep folder."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_sweeps import SweepResult, start_sweep

from gradtrain.sweeps.optuna_sweeper import JOURNAL_FILE, RESULTS_FILE, WORKER_ATTR
from gradtrain.sweeps.summary import SUMMARY_MD

optuna = pytest.importorskip("optuna", reason='pip install -e ".[sweeps]"')

pytestmark = pytest.mark.slow

# Trials of a few seconds on Rosenbrock (no data): long enough to kill one mid-way, or for a
# second worker to start while the first is busy.
ROSENBROCK_TRIALS = (
    "hparams_search=optuna",
    "loss=rosenbrock",
    "optimizer=adam",
    "optimizer.lr=tag(log, interval(0.001, 0.1))",
    "trainer.max_steps=1500",
    "logger=none",
    "trainer.save_checkpoints=false",
    "trainer.progress_bar=false",
)
# A small MLP with validation data every epoch: what a pruner needs.
MLP_TRIALS = (
    "hparams_search=optuna",
    "experiment=mlp_classification",
    "optimizer=adam",
    "optimizer.lr=tag(log, interval(0.0003, 0.3))",
    "dataset.n_samples=160",
    "dataset.batch_size=32",
    "trainer.max_epochs=5",
    "logger=none",
    "trainer.save_checkpoints=false",
    "trainer.progress_bar=false",
)


def study_of(sweep_dir: Path) -> Any:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(sweep_dir / JOURNAL_FILE)))
    return optuna.load_study(study_name="gradtrain", storage=storage)


def job_numbers(sweep_dir: Path) -> list[int]:
    return sorted(int(p.parent.name.split("_")[0]) for p in sweep_dir.glob("*/.hydra"))


def wait_for(condition: Callable[[], bool], timeout: float, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def finish(process: subprocess.Popen[str], sweep_dir: Path) -> SweepResult:
    stdout, stderr = process.communicate(timeout=240)
    completed = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return SweepResult(completed, sweep_dir)


def search(*args: str, sweep_dir: Path) -> SweepResult:
    """`python train.py -m <args>` to its end, with its sweep folder at `sweep_dir`."""
    process = start_sweep(*args, f"hydra.sweep.dir={sweep_dir}", cwd=sweep_dir.parent)
    return finish(process, sweep_dir)


def test_a_killed_search_continues_with_resume_keeping_its_trials(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "search"
    args = (*ROSENBROCK_TRIALS, "hydra.sweeper.n_trials=4")
    first = start_sweep(*args, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    # Killed while its third trial trains: two summaries written, the third run's folder claimed.
    wait_for(
        lambda: (
            len(list(sweep_dir.glob("*/summary.json"))) == 2
            and len(list(sweep_dir.glob("2_*/.gradtrain.lock"))) == 1
        ),
        timeout=180,
        process=first,
    )
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    before = {t.number: t.value for t in study_of(sweep_dir).trials if t.value is not None}
    assert sorted(before) == [0, 1]

    resumed = finish(
        start_sweep(*args, f"hydra.sweeper.resume={sweep_dir}", cwd=tmp_path), sweep_dir
    )
    # The killed trial failed (exit 1), and is recorded as failed; the search went on to n_trials.
    assert resumed.returncode == 1, resumed.output
    trials = study_of(sweep_dir).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert {t.number: t.value for t in trials if t.value is not None} == {
        **before,
        3: trials[3].value,
    }
    assert job_numbers(sweep_dir) == [0, 1, 2, 3]  # no job folder reused
    rows = {row["job"].split("_")[0]: row for row in resumed.rows()}
    assert rows["2"]["status"] == "failed" and "no summary.json" in rows["2"]["reason"]
    assert [rows[n]["status"] for n in "013"] == ["completed"] * 3


def test_two_workers_run_one_study_to_n_trials_without_running_a_trial_twice(
    tmp_path: Path,
) -> None:
    sweep_dir = tmp_path / "search"
    args = (*ROSENBROCK_TRIALS, "hydra.sweeper.n_trials=6")
    first = start_sweep(*args, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    wait_for(lambda: (sweep_dir / JOURNAL_FILE).exists(), timeout=120, process=first)
    second = start_sweep(*args, f"hydra.sweeper.resume={sweep_dir}", cwd=tmp_path)
    results = [finish(first, sweep_dir), finish(second, sweep_dir)]
    for result in results:
        assert result.returncode == 0, result.output

    trials = study_of(sweep_dir).trials
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state.name == "COMPLETE" for t in trials)
    workers = {t.user_attrs[WORKER_ATTR]["pid"] for t in trials}
    assert workers == {first.pid, second.pid}  # both took trials
    # Each trial ran once: one job folder and one summary.json per trial number.
    assert job_numbers(sweep_dir) == list(range(6))
    runs = [json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")]
    assert len(runs) == 6 and all(run["status"] == "completed" for run in runs)
    # The summary written last (by whichever worker ended second) holds all six.
    assert sorted(row["status"] for row in results[0].rows()) == ["completed"] * 6


def test_a_pruned_search_prunes_trials_and_finds_a_best_near_the_unpruned_one(
    tmp_path: Path,
) -> None:
    n_trials = "hydra.sweeper.n_trials=8"
    unpruned = search(*MLP_TRIALS, n_trials, sweep_dir=tmp_path / "unpruned")
    pruned = search(*MLP_TRIALS, n_trials, "hydra.sweeper.pruner=median", sweep_dir=tmp_path / "p")
    assert unpruned.returncode == 0 and pruned.returncode == 0, pruned.output

    study = study_of(pruned.sweep_dir)
    pruned_numbers = {t.number for t in study.trials if t.state.name == "PRUNED"}
    assert pruned_numbers, "no trial was pruned"
    # Each pruned trial says so in its summary.json, stopped before its last epoch...
    for row in pruned.rows():
        summary = json.loads((pruned.sweep_dir / row["job"] / "summary.json").read_text())
        number = int(row["job"].split("_")[0])
        assert (summary["status"] == "pruned") == (number in pruned_numbers), row
        if number in pruned_numbers:
            assert summary["epochs"] < 5 and row["status"] == "pruned"
    # ...and the sweep summary lists them in a section of their own; none failed the sweep.
    table = (pruned.sweep_dir / SUMMARY_MD).read_text()
    main, section = table.split("## Pruned trials")
    assert "| pruned |" in section and "| pruned |" not in main

    best_unpruned = study_of(tmp_path / "unpruned").best_value
    assert study.best_value <= best_unpruned * 1.1
    results = (pruned.sweep_dir / RESULTS_FILE).read_text()
    assert f"best_value: {study.best_value}" in results


def test_failed_trials_are_recorded_and_a_search_of_failures_still_writes_its_summary(
    tmp_path: Path,
) -> None:
    # An invalid value and a step size that overflows: every trial fails or diverges.
    result = search(
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "optimizer=sgd",
        "optimizer.lr=choice(fast,1e30)",
        "trainer.max_steps=20",
        "logger=none",
        sweep_dir=tmp_path / "search",
    )
    assert result.returncode == 1
    assert "Traceback" not in result.output
    assert {row["status"] for row in result.rows()} <= {"failed", "diverged"}
    assert len(result.rows()) == 3
    assert [t.state.name for t in study_of(result.sweep_dir).trials] == ["FAIL"] * 3
    assert "best_value: null" in (result.sweep_dir / RESULTS_FILE).read_text()
    assert "3 of 3 jobs did not complete" in result.stderr


def test_bad_search_settings_are_refused_before_any_trial_naming_each_key(
    tmp_path: Path,
) -> None:
    sweep_dir = tmp_path / "search"
    result = search(
        "hparams_search=optuna",
        "hydra.sweeper.sampler=annealing",
        "hydra.sweeper.pruner=sometimes",
        "hydra.sweeper.n_trials=0",
        '+hydra.sweeper.params.trainer.max_steps="range(1,"',
        "optimizer=choice(sgd,nadam)",
        sweep_dir=sweep_dir,
    )
    assert result.returncode == 2, result.output
    for key in (
        "hydra.sweeper.sampler=annealing",
        "hydra.sweeper.pruner=sometimes",
        "hydra.sweeper.n_trials=0",
        "hydra.sweeper.params.trainer.max_steps",
    ):
        assert key in result.stderr
    assert "Traceback" not in result.output
    assert not result.sweep_dir.exists()  # nothing left behind

    # An option Hydra cannot compose, found before the first trial.
    result = search("hparams_search=optuna", "optimizer=choice(sgd,nadam)", sweep_dir=sweep_dir)
    assert result.returncode == 2 and "optimizer=nadam" in result.stderr
    assert not result.sweep_dir.exists()

    # A resume folder with no study, and a study of another search space.
    empty = tmp_path / "empty"
    empty.mkdir()
    process = start_sweep("hparams_search=optuna", f"hydra.sweeper.resume={empty}", cwd=tmp_path)
    refused = finish(process, empty)
    assert refused.returncode == 2 and "hydra.sweeper.resume" in refused.stderr
    assert list(empty.iterdir()) == []
    one = search(
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=1",
        "trainer.max_steps=5",
        sweep_dir=sweep_dir,
    )
    assert one.returncode == 0, one.output
    process = start_sweep(
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "trainer.max_steps=5",
        "optimizer.lr=choice(0.1,0.2)",
        f"hydra.sweeper.resume={one.sweep_dir}",
        cwd=tmp_path,
    )
    other = finish(process, one.sweep_dir)
    assert other.returncode == 2 and "another space" in other.stderr
    assert len(study_of(one.sweep_dir).trials) == 1


def test_the_same_seed_gives_the_same_search(tmp_path: Path) -> None:
    args = ("hparams_search=optuna", "hydra.sweeper.n_trials=2", "trainer.max_steps=5")
    searches = []
    for name in ("a", "b"):
        result = search(*args, "hydra.sweeper.sampler=random", sweep_dir=tmp_path / name)
        assert result.returncode == 0, result.output
        searches.append([t.params for t in study_of(tmp_path / name).trials])
    assert searches[0] == searches[1] and searches[0][0] != searches[0][1]
