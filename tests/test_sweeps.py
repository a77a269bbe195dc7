"""`python train.py -m ...` as users run it: real Hydra sweeps in subprocesses, real job folders,
real event files, and a real TensorBoard server reading them."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from gradtrain.sweeps.summary import SUMMARY_CSV, SUMMARY_MD


class SweepResult:
    def __init__(self, completed: subprocess.CompletedProcess[str], sweep_dir: Path) -> None:
        self.returncode = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr
        self.sweep_dir = sweep_dir

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def rows(self) -> list[dict[str, str]]:
        with (self.sweep_dir / SUMMARY_CSV).open(newline="") as file:
            return list(csv.DictReader(file))

    def job_dirs(self) -> list[Path]:
        return sorted(p.parent.parent for p in self.sweep_dir.glob("*/.hydra/overrides.yaml"))


Sweep = Callable[..., SweepResult]


def start_sweep(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-m", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def sweep(tmp_path: Path) -> Sweep:
    """Run `python train.py -m <args>` with its sweep folder at tmp_path/sweep."""

    def run(*args: str, timeout: float = 120) -> SweepResult:
        sweep_dir = tmp_path / "sweep"
        process = start_sweep(*args, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
        stdout, stderr = process.communicate(timeout=timeout)
        completed = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        return SweepResult(completed, sweep_dir)

    return run


@pytest.mark.slow  # tests/trainer/sweeps covers the summary's rows in-process
def test_three_job_sweep_writes_job_folders_and_a_summary_sorted_by_the_monitored_metric(
    sweep: Sweep,
) -> None:
    result = sweep("optimizer.lr=0.01,0.3,0.1", "trainer.max_steps=20")
    assert result.returncode == 0, result.output

    jobs = result.job_dirs()
    assert [job.name for job in jobs] == [
        # Named after the swept value alone: trainer.max_steps is the same for every job.
        "0_optimizer.lr=0.01",
        "1_optimizer.lr=0.3",
        "2_optimizer.lr=0.1",
    ]
    for job in jobs:
        assert json.loads((job / "summary.json").read_text())["status"] == "completed"
        assert len(list((job / "tensorboard").glob("events.out.tfevents.*"))) == 1

    rows = result.rows()
    # Lowest final loss first: the largest stable step size gets furthest in 20 steps.
    assert [row["job"] for row in rows] == [jobs[1].name, jobs[2].name, jobs[0].name]
    for row in rows:
        summary = json.loads((result.sweep_dir / row["job"] / "summary.json").read_text())
        assert row["status"] == "completed" and row["monitor"] == "final_loss"
        assert float(row["monitored_value"]) == summary["final_loss"]
        assert int(row["steps"]) == 20 and float(row["wall_s"]) > 0
    assert rows[0]["overrides"] == "optimizer.lr=0.3 trainer.max_steps=20"

    # The same table as Markdown, in the sweep folder and printed when the sweep ends.
    table = (result.sweep_dir / SUMMARY_MD).read_text()
    assert table.splitlines()[0].startswith("| job | overrides | status | monitor |")
    assert len(table.splitlines()) == 2 + 3
    assert table in result.stdout


def test_failed_and_diverged_jobs_do_not_stop_the_others_and_the_sweep_exits_non_zero(
    sweep: Sweep,
) -> None:
    # An invalid value, a step size that overflows to nan, and a good job after both.
    result = sweep("optimizer.lr=fast,1e30,0.1", "trainer.max_steps=20", "logger=none")
    assert result.returncode != 0

    rows = {row["overrides"].split()[0]: row for row in result.rows()}
    assert rows["optimizer.lr=0.1"]["status"] == "completed"
    assert rows["optimizer.lr=fast"]["status"] == "failed"
    assert "optimizer.lr" in rows["optimizer.lr=fast"]["reason"]
    assert "valid number" in rows["optimizer.lr=fast"]["reason"]
    assert rows["optimizer.lr=1e+30"]["status"] == "diverged"
    assert "non-finite loss at step" in rows["optimizer.lr=1e+30"]["reason"]
    # The completed job ranks first; the failed one still has its own folder and summary.json.
    assert result.rows()[0]["status"] == "completed"
    failed_job = result.sweep_dir / rows["optimizer.lr=fast"]["job"]
    assert json.loads((failed_job / "summary.json").read_text())["status"] == "failed"
    assert "2 of 3 jobs did not complete" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.slow  # two processes at once: slow on two cores; the claim is unit-tested too
def test_two_sweeps_started_together_get_separate_folders(tmp_path: Path) -> None:
    args = ("optimizer.lr=0.1", "trainer.max_steps=5", "logger=none")
    processes = [start_sweep(*args, cwd=tmp_path) for _ in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    sweeps = sorted(tmp_path.glob("multirun/*/*"))
    assert len(sweeps) == 2
    for sweep_dir in sweeps:
        assert len(list(sweep_dir.glob("*/summary.json"))) == 1
        assert (sweep_dir / SUMMARY_CSV).exists()


def test_a_sweep_folder_that_holds_a_sweep_is_not_reused(sweep: Sweep, tmp_path: Path) -> None:
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "multirun.yaml").write_text("kept: true\n")
    again = sweep("optimizer.lr=0.2", "trainer.max_steps=5", "logger=none")
    assert again.returncode != 0
    assert "already holds a sweep" in again.stderr and "Traceback" not in again.stderr
    assert [p.name for p in (tmp_path / "sweep").iterdir()] == ["multirun.yaml"]
    assert (tmp_path / "sweep" / "multirun.yaml").read_text() == "kept: true\n"


@pytest.mark.slow
def test_optuna_search_of_four_trials_records_a_diverged_trial_as_failed(sweep: Sweep) -> None:
    pytest.importorskip("optuna", reason='pip install ".[sweeps]"')
    # The preset's search space with the step sizes narrowed to a good one and one that
    # overflows; the seeded sampler draws both within four trials.
    result = sweep(
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=4",
        "optimizer.lr=choice(0.1,1e30)",
        "trainer.max_steps=20",
        "logger=none",
    )
    assert "Traceback" not in result.output
    rows = result.rows()
    assert len(rows) == 4 and len(result.job_dirs()) == 4
    statuses = {row["status"] for row in rows}
    assert statuses == {"completed", "diverged"}, rows
    assert result.returncode != 0  # a diverged trial is a failed job of the sweep

    # Optuna recorded the diverged trials as failed, not as a value, and found the best one.
    results = (result.sweep_dir / "optimization_results.yaml").read_text()
    best_value = float(re.search(r"best_value: (\S+)", results).group(1))  # type: ignore[union-attr]
    assert best_value == pytest.approx(float(rows[0]["monitored_value"]))
    assert re.search(r"optimizer.lr: '?0.1'?\n", results)
    # The preset name is the same for every job, so it is left out of the folder names.
    assert not any("hparams_search" in job.name for job in result.job_dirs())


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(sweep: Sweep) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason='pip install ".[sweeps]"')
    result = sweep(
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "optimizer.lr=0.1,fast",
        "trainer.max_steps=5",
        "logger=none",
    )
    assert result.returncode != 0
    assert sorted(row["status"] for row in result.rows()) == ["completed", "failed"]


# ------------------------------------------------------------------------------------ TensorBoard
class TensorBoardServer:
    """`tensorboard --logdir <dir>` on 127.0.0.1 and a port the OS picks; stopped on exit."""

    def __init__(self, logdir: Path, log_file: Path) -> None:
        self.log_file = log_file
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("tensorboard")),
                f"--logdir={logdir}",
                "--host=127.0.0.1",
                "--port=0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file.open("w"),
        )
        self.url = self._wait_for_url(deadline=time.monotonic() + 60)

    def _wait_for_url(self, deadline: float) -> str:
        while time.monotonic() < deadline:
            match = re.search(r"http://127\.0\.0\.1:\d+/", self.log_file.read_text())
            if match:
                return match.group(0)
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"TensorBoard did not start:\n{self.log_file.read_text()}")

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(self.url + path + query, timeout=10) as response:
            return json.load(response)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def tensorboard(tmp_path: Path) -> Iterator[Callable[[Path], TensorBoardServer]]:
    servers: list[TensorBoardServer] = []

    def start(logdir: Path) -> TensorBoardServer:
        servers.append(TensorBoardServer(logdir, tmp_path / f"tensorboard{len(servers)}.log"))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.mark.slow
def test_tensorboard_serves_every_run_of_a_sweep_with_its_loss_and_hparams(
    sweep: Sweep, tensorboard: Callable[[Path], TensorBoardServer]
) -> None:
    # SGD has `momentum`, Adam has `betas`: a key that one run lacks must still be listed.
    result = sweep("optimizer=sgd,adam", "optimizer.lr=0.05", "trainer.max_steps=20")
    assert result.returncode == 0, result.output
    expected_runs = {f"{job.name}/tensorboard" for job in result.job_dirs()}
    server = tensorboard(result.sweep_dir)

    deadline = time.monotonic() + 60  # TensorBoard loads event files in the background
    while set(server.get("data/runs")) != expected_runs and time.monotonic() < deadline:
        time.sleep(0.3)
    assert set(server.get("data/runs")) == expected_runs

    for run in expected_runs:
        series = server.get("data/plugin/scalars/scalars", run=run, tag="train/loss")
        assert [step for _, step, _ in series] == [1, 10, 20]

    experiment = server.post("data/plugin/hparams/experiment", {"experimentName": ""})
    hparams = {info["name"]: info for info in experiment["hparamInfos"]}
    assert {"optimizer.name", "optimizer.lr", "optimizer.momentum", "optimizer.betas"} <= set(
        hparams
    )
    assert hparams["optimizer.name"]["differs"] is True
    metrics = {info["name"]["tag"] for info in experiment["metricInfos"]}
    assert {"train/loss_best", "train/loss"} <= metrics
    # Only the swept group's keys: constant ones would fill TensorBoard's first five columns.
    assert all(name.startswith("optimizer.") for name in hparams)

    statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
    groups = server.post(
        "data/plugin/hparams/session_groups",
        {"experimentName": "", "allowedStatuses": statuses, "startIndex": 0, "sliceSize": 100},
    )["sessionGroups"]
    by_run = {group["name"]: group for group in groups}
    assert set(by_run) == expected_runs
    for run, group in by_run.items():
        name = group["hparams"]["optimizer.name"]
        assert f"optimizer={name}" in run
        assert group["hparams"]["optimizer.lr"] == pytest.approx(0.05)
        assert None not in group["hparams"].values()
        final = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        summary = json.loads((result.sweep_dir / run / ".." / "summary.json").read_text())
        assert final["train/loss"] == pytest.approx(summary["final_loss"])
    assert "momentum" not in str(by_run[next(r for r in by_run if "adam" in r)]["hparams"])

    # The custom-scalars layout, the same in every run, merged into one.
    layout = server.get("data/plugin/custom_scalars/layout")
    assert [category["title"] for category in layout["category"]] == [
        "loss",
        "gradients",
        "optimizer",
    ]
