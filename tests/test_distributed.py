"""Real `torchrun` jobs of two CPU processes (gloo): the same answer as one process, recovery from
a killed worker, and no hang when a rank stops answering."""

from __future__ import annotations

import json
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

# Two CPU processes per job: each job's data splits evenly over the ranks (see the README).
JOB = [
    "experiment=mlp_classification",
    "model.dropout=0.0",  # dropout draws per process: one process of 2B would draw other masks
    "optimizer=adam",
    "dataset.n_samples=480",
    "dataset.val_fraction=0.2",  # 384 training rows
    "dataset.batch_size=16",  # per process: 12 updates per epoch
    "dataset.shuffle=false",
    "trainer.accumulate_grad_batches=2",
    "trainer.max_epochs=4",
    "trainer.max_steps=null",
    "trainer.log_every_n_steps=1",
    "logger.figures=false",
]


def env() -> dict[str, str]:
    # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: with torchrun's shared store a restarted round can
    # read the previous round's gloo addresses and fail to connect (pytorch/pytorch#135712).
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
    }


def torchrun(run_dir: Path, *args: str, launcher: tuple[str, ...] = ()) -> list[str]:
    """`torchrun --standalone --nproc_per_node=2 train.py ...`, through the current Python."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",  # what the `torchrun` script runs
        "--standalone",  # a free port on localhost: tests can run side by side
        "--nproc_per_node=2",
        *launcher,
        str(ROOT / "train.py"),
        *args,
        f"hydra.run.dir={run_dir}",
    ]


def one_process(run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"]


def run_to_end(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=env(), capture_output=True, text=True, timeout=120)


def workers_of(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the worker processes torchrun started (its children with a RANK)."""
    workers = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent != launcher_pid:
            continue
        for variable in environ:
            if variable.startswith(b"RANK="):
                workers[int(variable[5:])] = int(entry.name)
    return workers


def wait_for(condition, what: str, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / LAST)["model"]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted two-process run of JOB, batch 16 per process."""
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    result = run_to_end(torchrun(run_dir, *JOB), run_dir.parent)
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.mark.slow
def test_two_processes_of_batch_b_end_like_one_process_of_batch_2b(
    tmp_path: Path, two_processes: Path
) -> None:
    one = tmp_path / "one"
    result = run_to_end(one_process(one, *JOB, "dataset.batch_size=32"), tmp_path)
    assert result.returncode == 0, result.stderr

    single, ddp = final_weights(one), final_weights(two_processes)
    assert single.keys() == ddp.keys()  # no "module." prefix: checkpoints are portable
    error = max((single[k] - ddp[k]).abs().max().item() for k in single)
    print(f"max |parameter difference| after 24 updates: {error:.3g}")
    assert error < 1e-6

    # The logged loss and metrics describe the global batch, under the same tags.
    left, right = read_scalars(one / "tensorboard"), read_scalars(two_processes / "tensorboard")
    assert left.keys() == right.keys()
    for tag in ("train/loss", "watch/grad_norm", "val/loss", "train/accuracy", "val/accuracy"):
        assert [s for s, _ in left[tag]] == [s for s, _ in right[tag]], tag
        assert [v for _, v in left[tag]] == pytest.approx([v for _, v in right[tag]], rel=1e-5)
    one_summary = json.loads((one / "summary.json").read_text())
    ddp_summary = json.loads((two_processes / "summary.json").read_text())
    for key in ("final_loss", "best_loss", "val_loss", "val_accuracy", "train_accuracy"):
        assert ddp_summary[key] == pytest.approx(one_summary[key], rel=1e-5), key
    assert ddp_summary["steps"] == one_summary["steps"] == 24

    # Only rank 0 wrote: one event file, and no folders of the other rank anywhere.
    assert len(list((two_processes / "tensorboard").glob("events.*"))) == 1
    assert sorted(p.name for p in two_processes.parent.iterdir()) == ["run"]


@pytest.mark.slow
def test_torchrun_restarts_a_killed_worker_and_the_run_resumes_to_the_same_weights(
    tmp_path: Path, two_processes: Path
) -> None:
    run_dir = tmp_path / "run"
    command = torchrun(
        run_dir,
        *JOB,
        "trainer.resume=auto",
        "trainer.checkpoint_every_n_steps=4",
        # Two restarts allowed, one needed: a restarted round has once (in CI) aborted inside
        # gloo's connection set-up ("terminate called without an active exception") before any
        # gradtrain code ran; torchrun retries such a round, and what this test checks is that
        # the round that trains resumes from the checkpoint to the same weights.
        launcher=("--max-restarts=2",),
    )
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: (run_dir / "checkpoints" / "step_4.pt").exists(), "a checkpoint", process)
    workers = workers_of(process.pid)
    assert sorted(workers) == [0, 1], workers
    os.kill(workers[1], signal.SIGKILL)

    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "Resuming from" in stdout  # the restarted rank 0 continued from last.pt
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 24
    resumed, straight = final_weights(run_dir), final_weights(two_processes)
    for name, tensor in straight.items():
        assert torch.equal(resumed[name], tensor), name


@pytest.mark.slow
def test_a_rank_that_stops_answering_fails_the_job_at_the_collective_timeout(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    command = torchrun(
        run_dir,
        *JOB,
        "trainer.max_epochs=1000",
        "trainer.checkpoint_every_n_steps=4",
        "trainer.dist_timeout_s=3",
    )
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: (run_dir / "checkpoints" / "step_4.pt").exists(), "a checkpoint", process)
    workers = workers_of(process.pid)
    os.kill(workers[1], signal.SIGSTOP)  # alive but silent: no error of its own to report
    stopped = time.monotonic()
    try:
        # Rank 0 waits for rank 1 in an all-reduce until trainer.dist_timeout_s, then fails.
        wait_for(lambda: not Path(f"/proc/{workers[0]}").exists(), "rank 0 to fail", process, 30)
        waited = time.monotonic() - stopped
    finally:
        os.kill(workers[1], signal.SIGCONT)  # lets torchrun's SIGTERM reach it at once
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert 3 <= waited < 20, waited
    assert "gradtrain (rank 0 of 2): " in stderr  # the failed rank and its error, from gradtrain
    assert "rank      : 0" in stderr or "rank: 0" in stderr, stderr[-3000:]  # torchrun's report
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_every_rank_stops_at_the_same_divergence(tmp_path: Path) -> None:
    # With lr 100 the loss overflows in the second epoch (8 updates per rank and epoch), before
    # the first logging step: the check before the epoch-end checkpoint finds it on every rank
    # (only rank 0 writes checkpoints), so every rank stops at the same step.
    run_dir = tmp_path / "run"
    command = torchrun(
        run_dir,
        "experiment=linear_regression",
        "optimizer.lr=100",
        "trainer.log_every_n_steps=50",
        "trainer.dist_timeout_s=60",
        "logger=none",
    )
    started = time.monotonic()
    result = run_to_end(command, tmp_path)
    assert result.returncode != 0
    assert time.monotonic() - started < 50, result.stderr[-2000:]  # not held up to the timeout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["steps"] == 16, summary
    assert "non-finite loss at step 9; the last checkpoint is from step 8" in summary["message"]
    assert all(torch.isfinite(t).all() for t in final_weights(run_dir).values())
    # A rank that went on alone would fail in its next all-reduce, the others being gone.
    assert "Connection closed" not in result.stderr, result.stderr[-3000:]


@pytest.mark.slow  # train.py and torchrun subprocesses, like the tests above
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_under_torchrun_or_on_one_gpu(tmp_path: Path) -> None:
    """With two GPUs or more: the nccl equivalence of two processes and one; with one: a plain
    single-GPU run with trainer.device=cuda."""
    gpu_job = [*JOB, "trainer.device=cuda"]
    one = tmp_path / "one"
    result = run_to_end(one_process(one, *gpu_job, "dataset.batch_size=32"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((one / "summary.json").read_text())["status"] == "completed"
    if torch.cuda.device_count() < 2:
        return
    two = tmp_path / "two"
    result = run_to_end(torchrun(two, *gpu_job), tmp_path)
    assert result.returncode == 0, result.stderr
    single, ddp = final_weights(one), final_weights(two)
    # TF32 matmuls and nccl's reduction order: close, not bit-equal.
    error = max((single[k] - ddp[k]).abs().max().item() for k in single)
    assert error < 1e-4, error
