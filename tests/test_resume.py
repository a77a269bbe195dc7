"""Real processes, real signals: runs killed at random points resume to the same bits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, read_scalars

from gradtrain.checkpoint import LAST, load_checkpoint

pytestmark = pytest.mark.slow

JOB = [
    "experiment=linear_regression",
    "optimizer.momentum=0.9",
    "scheduler=cosine",
    "dataset.n_samples=512",
    "trainer.max_epochs=60",
    "trainer.checkpoint_every_n_steps=50",
    "trainer.log_every_n_steps=1",
    "trainer.keep_checkpoints=50",
]


def start(run_dir: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *JOB, *extra, f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoints(run_dir: Path, count: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while len(list((run_dir / "checkpoints").glob("step_*.pt"))) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)


def finish(run_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    process = start(run_dir, *extra)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def assert_same_final_state(a: Path, b: Path) -> None:
    left = load_checkpoint(a / "checkpoints" / LAST)
    right = load_checkpoint(b / "checkpoints" / LAST)
    assert left["step"] == right["step"]
    for name, tensor in left["model"].items():
        assert torch.equal(tensor, right["model"][name]), name
    for index, slot in left["optimizer"]["state"].items():
        for key, value in slot.items():
            assert torch.equal(value, right["optimizer"]["state"][index][key]), key
    assert left["scheduler"] == right["scheduler"]


def assert_same_loss_curve(a: Path, b: Path) -> None:
    left = read_scalars(a / "tensorboard")["train/loss"]
    right = read_scalars(b / "tensorboard")["train/loss"]
    steps = [step for step, _ in right]
    assert steps == sorted(set(steps)), "duplicated or backward steps after resume"
    assert left == right


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    result = finish(run_dir)
    assert result.returncode == 0, result.stderr
    return run_dir


def test_sigkill_twice_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path, uninterrupted: Path
) -> None:
    run_dir = tmp_path / "run"
    for checkpoints_before_kill in (1, 3):
        process = start(run_dir, "trainer.resume=auto")
        wait_for_checkpoints(run_dir, checkpoints_before_kill, process)
        time.sleep(0.02 * checkpoints_before_kill)  # land between checkpoints, or right after one
        process.send_signal(signal.SIGKILL)
        process.communicate()
        assert process.returncode == -signal.SIGKILL
    result = finish(run_dir, "trainer.resume=auto")
    assert result.returncode == 0, result.stderr
    assert "Resuming from" in result.stdout
    assert_same_final_state(uninterrupted, run_dir)
    assert_same_loss_curve(uninterrupted, run_dir)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_stop_signal_checkpoints_at_that_step_and_resume_finishes_identically(
    tmp_path: Path, uninterrupted: Path, signum: int
) -> None:
    import json

    run_dir = tmp_path / "run"
    process = start(run_dir)
    wait_for_checkpoints(run_dir, 1, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stderr
    assert "trainer.resume=auto" in stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert load_checkpoint(run_dir / "checkpoints" / LAST)["step"] == summary["steps"]

    result = finish(run_dir, "trainer.resume=auto")
    assert result.returncode == 0, result.stderr
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["status"] == "completed"
    assert resumed["wall_s"] > summary["wall_s"]  # the stopped session's time carried over
    assert_same_final_state(uninterrupted, run_dir)
    assert_same_loss_curve(uninterrupted, run_dir)


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path: Path) -> None:
    script = f"""
import sys, torch
from pathlib import Path
from gradtrain.checkpoint import save_checkpoint
path = Path({str(tmp_path)!r}) / "last.pt"
save_checkpoint(path, {{"step": 1, "model": {{"w": torch.ones(4)}}}})
print("saved", flush=True)
save_checkpoint(path, {{"step": 2, "model": {{"w": torch.zeros(200_000_000)}}}})  # 800 MB
"""
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "saved\n"
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".tmp") and p.stat().st_size > 0 for p in tmp_path.iterdir()):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.001)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 1


def test_resume_from_a_malicious_file_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    script = f"""
import os, torch
class Exploit:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
torch.save({{"format_version": 1, "model": Exploit()}}, {str(evil)!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    result = finish(tmp_path / "run", f"trainer.resume={evil}")
    assert result.returncode != 0
    assert "refusing to load" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "run" / "checkpoints").exists()
