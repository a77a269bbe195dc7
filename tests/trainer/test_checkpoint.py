"""Checkpoint files and exact resume."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import QuickRun, StopAfter, StopAtStep, make_trainer

import gradtrain.run as run_module
from gradtrain.checkpoint import (
    LAST,
    load_checkpoint,
    save_checkpoint,
)
from gradtrain.errors import CheckpointError, TrainingDiverged, TrainingInterrupted
from gradtrain.loop import Trainer
from gradtrain.run import run

Compose = Callable[..., dict[str, Any]]
Quick = Callable[..., QuickRun]


def assert_same_state(a: Trainer, b: Trainer) -> None:
    for (name, p), (_, q) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), name
    optim_a, optim_b = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert optim_a.keys() == optim_b.keys()
    for key in optim_a:
        for field_name, value in optim_a[key].items():
            other = optim_b[key][field_name]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), field_name
    assert a.state.step == b.state.step and a.state.epoch == b.state.epoch


RESUME_CASES = {
    "shuffled sgd momentum, step lr, mid-epoch": [
        "experiment=linear_regression",
        "optimizer.momentum=0.9",
        "scheduler=step",
        "scheduler.step_size=7",
        "trainer.max_epochs=3",
    ],
    "adam mlp with dropout, cosine, accumulation": [
        "experiment=mlp_classification",
        "model.dropout=0.2",
        "scheduler=cosine",
        "trainer.accumulate_grad_batches=2",
        "trainer.max_epochs=4",
    ],
    "two loader workers": [
        "experiment=linear_regression",
        "dataset.num_workers=2",
        "dataset.n_samples=640",
        "trainer.max_epochs=3",
    ],
    "objective problem with adam": ["experiment=rosenbrock", "trainer.max_steps=60"],
}


@pytest.mark.parametrize("overrides", RESUME_CASES.values(), ids=RESUME_CASES.keys())
@pytest.mark.parametrize("stop_at", [5, 23])
def test_resumed_run_ends_bit_identical_to_an_uninterrupted_one(
    composed: Compose, tmp_path: Path, overrides: list[str], stop_at: int
) -> None:
    raw = composed("logger=none", *overrides)
    straight = make_trainer(raw, tmp_path / "straight")
    straight.fit()

    stop = StopAtStep(stop_at)
    first = make_trainer(raw, tmp_path / "resumed", stop)
    assert first.fit().stop_reason == "interrupted"
    stop.trainer = None  # no reference cycle keeping loader workers alive past this test
    checkpoint = load_checkpoint(tmp_path / "resumed" / LAST)
    assert checkpoint["step"] == stop_at
    second = make_trainer(raw, tmp_path / "resumed")
    second.load_state_dict(checkpoint)
    result = second.fit()
    assert result.stop_reason != "interrupted"
    assert_same_state(straight, second)
    assert second.guard.best_loss == straight.guard.best_loss


def test_checkpoint_holds_what_exact_resume_needs(composed: Compose, tmp_path: Path) -> None:
    trainer = make_trainer(
        composed("experiment=linear_regression", "logger=none", "trainer.max_steps=5"), tmp_path
    )
    trainer.fit()
    checkpoint = load_checkpoint(tmp_path / LAST)
    assert {"model", "optimizer", "scheduler", "step", "epoch", "batch_in_epoch", "rng"} <= set(
        checkpoint
    )
    assert checkpoint["format_version"] == 1
    assert {"torch", "python"} <= set(checkpoint["rng"])
    assert checkpoint["step"] == 5 and checkpoint["batch_in_epoch"] == 5


def test_checkpoints_every_n_steps_keep_the_newest(composed: Compose, tmp_path: Path) -> None:
    trainer = make_trainer(
        composed("logger=none", "trainer.max_steps=50", "trainer.checkpoint_every_n_steps=10"),
        tmp_path,
    )
    trainer.fit()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST, "step_40.pt", "step_50.pt"]
    assert load_checkpoint(tmp_path / "step_40.pt")["step"] == 40


def test_a_failed_write_leaves_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / LAST
    save_checkpoint(path, {"step": 1, "model": {"w": torch.ones(3)}})

    def crash_half_way(obj: Any, file: Any, **kwargs: Any) -> None:
        file.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "model": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()
    assert b"touch" in path.read_bytes()  # the file really does carry the payload


def test_truncated_and_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / LAST
    save_checkpoint(path, {"step": 1, "model": {"w": torch.ones(1000)}})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a gradtrain checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "absent.pt")


def test_resume_auto_in_a_fresh_dir_starts_fresh_and_a_missing_path_is_an_error(
    composed: Compose, tmp_path: Path
) -> None:
    summary = run(composed("logger=none", "trainer.resume=auto"), tmp_path / "fresh")
    assert summary["status"] == "completed" and summary["steps"] == 200
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        run(composed("logger=none", f"trainer.resume={tmp_path}/nope.pt"), tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_resume_auto_continues_a_finished_run_with_a_larger_budget(
    composed: Compose, tmp_path: Path
) -> None:
    run(composed("logger=none", "trainer.max_steps=20"), tmp_path)
    summary = run(composed("logger=none", "trainer.max_steps=30", "trainer.resume=auto"), tmp_path)
    assert summary["steps"] == 30


# ------------------------------------------------------- every reported figure resumes exactly
def _simulated_kill() -> None:
    """What a kill leaves is the checkpoints before it: an exception at that step stands in."""
    raise RuntimeError("simulated kill")


# 820 training rows in batches of 64: 13 batches an epoch, 39 updates in all.
CLASSIFICATION = [
    "experiment=mlp_classification",
    "logger=tensorboard",
    "trainer.max_steps=null",
    "trainer.max_epochs=3",
    "trainer.log_every_n_steps=1",
    "trainer.save_checkpoints=true",
]


def assert_same_report(straight: QuickRun, resumed: QuickRun) -> None:
    for key in ("train_accuracy", "val_accuracy", "val_loss", "final_loss", "best_loss", "steps"):
        assert resumed.summary[key] == straight.summary[key], key
    expected, got = straight.scalars(), resumed.scalars()
    assert got.keys() == expected.keys()
    for tag, points in expected.items():
        assert got[tag] == points, tag  # no step twice, none missing, the same values


def test_a_stop_mid_epoch_resumes_train_accuracy_and_every_curve_exactly(
    quick_run: Quick, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = quick_run(*CLASSIFICATION)
    run_dir = tmp_path / "stopped"
    with monkeypatch.context() as patched:
        patched.setattr(run_module, "SignalStop", StopAfter(20))  # 7 batches into epoch 2
        with pytest.raises(TrainingInterrupted, match="after step 20; checkpoint saved"):
            quick_run(*CLASSIFICATION, run_dir=run_dir)
    resumed = quick_run(*CLASSIFICATION, "trainer.resume=auto", run_dir=run_dir)
    assert_same_report(straight, resumed)


def test_a_checkpoint_at_an_epochs_last_update_does_not_log_its_metrics_twice(
    quick_run: Quick, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    every_epoch = [*CLASSIFICATION, "trainer.checkpoint_every_n_steps=13"]
    straight = quick_run(*every_epoch)
    run_dir = tmp_path / "killed"
    with monkeypatch.context() as patched:
        patched.setattr(run_module, "SignalStop", StopAfter(17, then=_simulated_kill))
        with pytest.raises(RuntimeError, match="simulated kill"):
            quick_run(*every_epoch, run_dir=run_dir)
    assert load_checkpoint(run_dir / "checkpoints" / LAST)["step"] == 13
    resumed = quick_run(*every_epoch, "trainer.resume=auto", run_dir=run_dir)
    assert_same_report(straight, resumed)


# ---------------------------------------------------------------------------- non-finite values


def test_a_diverged_summary_tells_the_bad_step_from_the_steps_applied(
    composed: Compose, tmp_path: Path
) -> None:
    with pytest.raises(TrainingDiverged) as diverged:
        run(composed("logger=none", "optimizer.lr=10", "trainer.log_every_n_steps=50"), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["diverged_at_step"] == 16
    steps = summary["steps"]  # read back at a logging step 64 updates or 1 s after the last
    assert steps in (50, 100)
    assert f"non-finite loss at step 16; no checkpoint. Found at the check after step {steps}" in (
        str(diverged.value)
    )
    assert summary["message"] in str(diverged.value)
