"""Honest numbers: `wall_s` covers every session of a resumed run, and one-time costs are
counted apart from `steps_per_s`."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import QuickRun, StopAfter

import gradtrain.run as run_module
from gradtrain.checkpoint import LAST, load_checkpoint
from gradtrain.errors import TrainingInterrupted

Quick = Callable[..., QuickRun]

PAUSE_S = 0.4  # a stretch of the first session that a resumed run must still count

# 820 training rows in batches of 64: 13 batches an epoch, checkpointed at each epoch's end.
CLASSIFICATION = [
    "experiment=mlp_classification",
    "trainer.max_steps=null",
    "trainer.max_epochs=3",
    "trainer.save_checkpoints=true",
]


class PauseThenStop(StopAfter):
    """A stop request that takes `PAUSE_S` at its `pause_at`-th poll (time spent in the first
    session) and then, at its `steps`-th, does what StopAfter does: a signal, or `then`."""

    def __init__(self, pause_at: int, steps: int, then: Callable[[], None] | None = None) -> None:
        super().__init__(steps, then)
        self.pause_at = pause_at

    @property
    def requested(self) -> bool:
        if self.polls + 1 == self.pause_at:
            time.sleep(PAUSE_S)
        return super().requested


def _kill() -> None:
    raise RuntimeError("simulated kill")  # what a kill leaves: the checkpoints before it


@pytest.mark.parametrize(
    ("path", "overrides", "stop"),
    [
        # SIGINT / SIGTERM: the run checkpoints at the stop and exits; resume continues.
        ("signal", [], PauseThenStop(pause_at=3, steps=20)),
        # SIGKILL after a checkpoint every 5 steps (the last at step 15).
        ("kill", ["trainer.checkpoint_every_n_steps=5"], PauseThenStop(3, 17, then=_kill)),
        # SIGKILL after the checkpoint at the end of epoch 1 (step 13).
        ("end of epoch", [], PauseThenStop(3, 17, then=_kill)),
    ],
)
def test_wall_s_carries_over_a_resume(
    quick_run: Quick,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    overrides: list[str],
    stop: PauseThenStop,
) -> None:
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patched:
        patched.setattr(run_module, "SignalStop", stop)
        with pytest.raises((TrainingInterrupted, RuntimeError)):
            quick_run(*CLASSIFICATION, *overrides, run_dir=run_dir)
    saved = load_checkpoint(run_dir / "checkpoints" / LAST)
    assert saved["running"]["elapsed_s"] >= PAUSE_S, path  # the first session's time is saved
    assert saved["running"]["first_steps"] == 1
    resumed = quick_run(*CLASSIFICATION, *overrides, "trainer.resume=auto", run_dir=run_dir)
    summary = resumed.summary
    assert summary["steps"] == 39
    assert summary["wall_s"] > saved["running"]["elapsed_s"]  # both sessions, not the last one
    assert summary["one_time_s"]["first_step"] > saved["running"]["first_step_s"]
    # Two sessions, two first updates; the rate leaves them (and the pause's session) honest.
    assert summary["steps_per_s"] == pytest.approx(
        (39 - 2) / (summary["wall_s"] - summary["one_time_s"]["first_step"]), rel=1e-3
    )


def test_one_time_costs_are_reported_apart_from_the_rate(quick_run: Quick) -> None:
    result = quick_run(
        "loss=rosenbrock", "logger=tensorboard", "logger.figures=true", "trainer.max_steps=50"
    )
    one_time = result.summary["one_time_s"]
    assert set(one_time) == {"first_step", "figures"}
    assert 0 < one_time["first_step"] < result.summary["wall_s"]
    assert one_time["figures"] > 0  # drawn after training: not part of wall_s
    steps_s = result.summary["wall_s"] - one_time["first_step"]
    assert result.summary["steps_per_s"] == pytest.approx(49 / steps_s, rel=1e-3)


def test_a_run_of_one_update_has_no_rate_and_says_none(quick_run: Quick) -> None:
    from gradtrain.run import format_summary

    summary = quick_run("trainer.max_steps=1").summary
    assert summary["steps_per_s"] is None  # its one update is all one-time cost
    assert summary["one_time_s"]["first_step"] <= summary["wall_s"]
    assert format_summary(summary).startswith(
        f"Completed after {summary['wall_s']:.2f} s: 1 steps,"
    )
