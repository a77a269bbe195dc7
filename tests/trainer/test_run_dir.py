"""The run folder: one run at a time, never overwritten, no leftovers, and clear messages when
it cannot be written."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ROOT, QuickRun, StopAfter, read_scalars

import gradtrain.run as run_module
from gradtrain.checkpoint import LAST, load_checkpoint
from gradtrain.errors import CheckpointError, GradtrainError, TrainingInterrupted

Quick = Callable[..., QuickRun]
Compose = Callable[..., dict[str, Any]]

# A run that writes what a real one does (events, checkpoints), and fast.
WRITES = [
    "logger=tensorboard",
    "trainer.save_checkpoints=true",
    "trainer.checkpoint_every_n_steps=5",
    "trainer.log_every_n_steps=1",
]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (but Hydra's and the claim) by its hash: what a refused
    run must leave as it was."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def assert_no_step_twice(log_dir: Path) -> None:
    for tag, points in read_scalars(log_dir).items():
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), f"{tag} repeats a step: {steps}"


# --------------------------------------------------------------------------------- the claim
HOLDER = """
import sys, time
from pathlib import Path
from gradtrain.files import claim_folder
with claim_folder(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_folder_a_live_run_holds_is_refused_and_a_killed_runs_claim_is_taken_over(
    quick_run: Quick, tmp_path: Path
) -> None:
    from gradtrain.files import CLAIM_FILE

    run_dir = tmp_path / "run"
    first = quick_run(*WRITES, run_dir=run_dir)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        before = snapshot(run_dir)
        with pytest.raises(GradtrainError, match=f"in use by .*pid {holder.pid}") as refused:
            quick_run(*WRITES, "trainer.resume=auto", "trainer.max_steps=30", run_dir=run_dir)
        assert "two runs" in str(refused.value) and "Traceback" not in str(refused.value)
        assert snapshot(run_dir) == before  # the claim file aside: nothing written
    finally:
        holder.send_signal(signal.SIGKILL)  # as a SIGKILL-ed run leaves its claim
        holder.wait()
    assert (run_dir / CLAIM_FILE).exists()
    resumed = quick_run(*WRITES, "trainer.resume=auto", "trainer.max_steps=30", run_dir=run_dir)
    assert resumed.summary["steps"] == 30 and first.summary["steps"] == 20
    assert not (run_dir / CLAIM_FILE).exists()  # a run lets go of its folder as it ends


def test_a_second_claim_in_the_same_process_is_refused(quick_run: Quick, tmp_path: Path) -> None:
    from gradtrain.files import claim_folder

    with claim_folder(tmp_path / "run"), pytest.raises(GradtrainError, match="this process"):
        quick_run(run_dir=tmp_path / "run")


@pytest.mark.slow
def test_two_runs_started_in_one_folder_the_second_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "experiment=linear_regression",
        "trainer.max_steps=100000",
        "trainer.max_epochs=null",
        "trainer.checkpoint_every_n_steps=50",
        f"hydra.run.dir={run_dir}",
    ]
    first = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "checkpoints" / LAST).exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = subprocess.run(
            [*command, "trainer.resume=auto"], cwd=tmp_path, capture_output=True, text=True
        )
        assert second.returncode == 1, second.stderr
        assert "is in use by another run" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None  # the first goes on
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"


# ------------------------------------------------------------------------------ never overwrite
def test_resume_from_another_folders_checkpoint_into_a_finished_run_is_refused(
    quick_run: Quick, tmp_path: Path
) -> None:
    other = quick_run(*WRITES, "seed=1", run_dir=tmp_path / "other")
    finished = quick_run(*WRITES, run_dir=tmp_path / "finished")
    before = snapshot(finished.run_dir)
    with pytest.raises(GradtrainError, match=r"already holds a run .*would continue another"):
        quick_run(
            *WRITES,
            "seed=1",
            f"trainer.resume={other.run_dir / 'checkpoints' / LAST}",
            "trainer.max_steps=30",
            run_dir=finished.run_dir,
        )
    assert snapshot(finished.run_dir) == before
    # Its own checkpoints, named by path, continue it as trainer.resume=auto would.
    own = finished.run_dir / "checkpoints" / "step_15.pt"
    again = quick_run(*WRITES, f"trainer.resume={own}", run_dir=finished.run_dir)
    assert again.summary["steps"] == 20
    assert_no_step_twice(finished.run_dir / "tensorboard")


# ------------------------------------------------------------------- no checkpoint to continue
@pytest.mark.parametrize("how", ["stopped by a signal", "killed (no summary)"])
def test_resume_auto_without_a_checkpoint_starts_afresh_and_hides_the_first_session(
    quick_run: Quick, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    no_checkpoints = [*WRITES, "trainer.save_checkpoints=false"]
    straight = quick_run(*no_checkpoints)
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patched:
        patched.setattr(run_module, "SignalStop", StopAfter(12))
        with pytest.raises(TrainingInterrupted) as stopped:
            quick_run(*no_checkpoints, "trainer.resume=auto", run_dir=run_dir)
    assert "checkpoint saved" not in str(stopped.value)
    assert "no checkpoint was saved" in str(stopped.value)
    if how == "killed (no summary)":
        (run_dir / "summary.json").unlink()
    resumed = quick_run(*no_checkpoints, "trainer.resume=auto", run_dir=run_dir)
    assert resumed.summary["status"] == "completed" and resumed.summary["steps"] == 20
    assert_no_step_twice(run_dir / "tensorboard")
    assert resumed.scalars()["train/loss"] == straight.scalars()["train/loss"]


def test_resume_auto_never_restarts_a_completed_run_that_has_no_checkpoint(
    quick_run: Quick, tmp_path: Path
) -> None:
    done = quick_run("logger=tensorboard", run_dir=tmp_path / "run")
    before = snapshot(done.run_dir)
    with pytest.raises(GradtrainError, match="holds a completed run but no checkpoint"):
        quick_run("logger=tensorboard", "trainer.resume=auto", run_dir=done.run_dir)
    assert snapshot(done.run_dir) == before


def test_a_fresh_run_is_refused_where_a_killed_run_left_only_events(
    quick_run: Quick, tmp_path: Path
) -> None:
    killed = quick_run("logger=tensorboard", run_dir=tmp_path / "run")
    (killed.run_dir / "summary.json").unlink()  # what a SIGKILL before any checkpoint leaves
    with pytest.raises(GradtrainError, match=r"already holds a run \(tensorboard/ events\)"):
        quick_run("logger=tensorboard", run_dir=killed.run_dir)


# --------------------------------------------------------------------------------- leftovers
def test_stale_checkpoint_temporaries_are_removed_at_start_and_nothing_else(
    quick_run: Quick, tmp_path: Path
) -> None:
    first = quick_run(*WRITES, run_dir=tmp_path / "run")
    checkpoints = first.run_dir / "checkpoints"
    stale = [checkpoints / ".last.pt.k3j_x9a2.tmp", checkpoints / ".step_25.pt.abcdefgh.tmp"]
    others = [
        checkpoints / "notes.tmp",
        checkpoints / ".mine.tmp",
        first.run_dir / ".x.abcdefgh.tmp",
    ]
    for path in stale + others:
        path.write_bytes(b"PK\x03\x04 half a checkpoint")
    quick_run(*WRITES, "trainer.resume=auto", "trainer.max_steps=25", run_dir=first.run_dir)
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in others)


# ------------------------------------------------------------------ folders that cannot be used
def test_a_run_dir_that_is_a_file_is_a_clear_error(quick_run: Quick, tmp_path: Path) -> None:
    path = tmp_path / "run"
    path.write_text("not a folder")
    with pytest.raises(GradtrainError, match="is a file"):
        quick_run(run_dir=path)
    with pytest.raises(GradtrainError, match="is a file"):
        quick_run(run_dir=path / "below")
    assert path.read_text() == "not a folder"


def test_a_read_only_run_dir_is_a_clear_error(
    quick_run: Quick, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    real_open = os.open

    def read_only(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if Path(path).parent == run_dir and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)  # (the test runs as root: chmod would not do)
    with pytest.raises(GradtrainError, match=r"cannot write into .*run: Read-only .*\(EROFS\)"):
        quick_run(run_dir=run_dir)
    monkeypatch.undo()
    assert list(run_dir.iterdir()) == []


def test_a_full_disk_at_a_checkpoint_names_the_file_and_keeps_the_previous_one(
    quick_run: Quick, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = torch.save
    saves = []

    def fill_up(obj: Any, file: Any, **kwargs: Any) -> None:
        saves.append(obj["step"])
        if obj["step"] == 10:
            file.write(b"PK\x03\x04 the start of a checkpoint")
            # What torch.save does on a full disk: its writer's OSError becomes the context of
            # a RuntimeError of torch's own.
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")  # noqa: B904
        real_save(obj, file, **kwargs)

    monkeypatch.setattr(torch, "save", fill_up)
    run_dir = tmp_path / "run"
    with pytest.raises(CheckpointError) as full:
        quick_run(*WRITES, "trainer.keep_checkpoints=0", run_dir=run_dir)
    message = str(full.value)
    assert str(run_dir / "checkpoints" / LAST) in message and "(ENOSPC)" in message
    assert "step 10" in message and "Nothing was replaced" in message
    monkeypatch.undo()
    assert load_checkpoint(run_dir / "checkpoints" / LAST)["step"] == 5
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [LAST]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "ENOSPC" in summary["error"]


# ------------------------------------------------------------------------------- second Ctrl-C
def test_a_second_ctrl_c_stops_at_once_with_a_message(
    quick_run: Quick, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradtrain.signals import SignalStop

    real = SignalStop()

    def press_ctrl_c_twice() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # raises KeyboardInterrupt here, in the handler

    class Twice(StopAfter):
        def __enter__(self) -> Twice:
            real.__enter__()
            return self

        def __exit__(self, *exc: object) -> None:
            real.__exit__(None, None, None)

    monkeypatch.setattr(run_module, "SignalStop", Twice(12, then=press_ctrl_c_twice))
    with pytest.raises(TrainingInterrupted, match="stopped at once by a second Ctrl-C") as stop:
        quick_run(*WRITES, run_dir=tmp_path / "run")
    assert stop.value.exit_code == 130
    assert "the last checkpoint is from step 10" in str(stop.value)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == 12


@pytest.mark.slow
def test_a_second_ctrl_c_at_the_command_line_exits_without_a_traceback(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "experiment=linear_regression",
            "trainer.max_steps=100000000",
            "trainer.max_epochs=null",
            "trainer.checkpoint_every_n_steps=50",
            "trainer.keep_checkpoints=0",
            "dataset.n_samples=200000",  # big checkpoints are not needed: long steps are
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (run_dir / "checkpoints" / LAST).exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)  # the second lands during the stop, or after the process has ended
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "gradtrain: " in stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["hydra.run.dir={file}"], "hydra.run.dir={file}: {file} is not a folder"),
        (["hydra.run.dir={file}/run"], "hydra.run.dir={file}/run: {file} is not a folder"),
        (["-m", "hydra.sweep.dir={file}", "optimizer.lr=0.1"], "hydra.sweep.dir={file}: "),
    ],
)
def test_train_py_names_a_run_folder_it_cannot_make_without_a_traceback(
    tmp_path: Path, args: list[str], named: str
) -> None:
    # Hydra makes the folder before gradtrain runs; train.py checks it when the config is
    # composed, before torch loads (so this subprocess is cheap).
    file = tmp_path / "a_file"
    file.write_text("not a folder")
    completed = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *(a.format(file=file) for a in args)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1
    assert named.format(file=file) in completed.stderr
    assert "Traceback" not in completed.stderr
    assert file.read_text() == "not a folder"
