"""`History` keeps what a run logs in memory (the Result's history); `TeeSink` hands it everything
the run's own logger gets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gradtrain.metrics.history import MAX_PENDING_STEPS, History, TeeSink
from gradtrain.metrics.sinks import NullSink, TensorBoardSink
from tests.conftest import read_scalars


def test_history_keeps_device_tensors_and_floats_as_step_value_pairs() -> None:
    history = History()
    history.log_scalars({"train/loss": torch.tensor(2.5), "optim/lr": 0.1}, step=10)
    history.log_scalars({"train/loss": torch.tensor(1.5), "optim/lr": 0.05}, step=20)
    history.log_hparams({"optimizer.lr": 0.1}, {"summary/final_loss": 1.5}, step=20)
    assert history.scalars == {
        "train/loss": [(10, 2.5), (20, 1.5)],
        "optim/lr": [(10, 0.1), (20, 0.05)],
        "summary/final_loss": [(20, 1.5)],
    }


def test_history_reads_tensors_back_in_batches_not_one_per_step() -> None:
    history = History()
    logged = [torch.tensor(float(step)) for step in range(MAX_PENDING_STEPS + 1)]
    for step, value in enumerate(logged):
        history.log_scalars({"train/loss": value}, step)
    # The first MAX_PENDING_STEPS were read back together; the last one still waits.
    assert len(history._series["train/loss"]) == MAX_PENDING_STEPS
    assert len(history._pending) == 1
    assert history.scalars["train/loss"][-1] == (MAX_PENDING_STEPS, float(MAX_PENDING_STEPS))


def test_tee_gives_history_and_tensorboard_the_same_scalars(tmp_path: Path) -> None:
    history = History()
    tee = TeeSink(TensorBoardSink(tmp_path), history)
    for step in range(1, 4):
        tee.log_scalars({"train/loss": torch.tensor(1.0 / step)}, step)
    tee.log_histogram("params/x", torch.arange(4.0), step=3)  # TensorBoard's alone
    tee.log_text("explain", "# report")
    tee.close()
    written = read_scalars(tmp_path)
    assert [s for s, _ in written["train/loss"]] == [s for s, _ in history.scalars["train/loss"]]
    assert [v for _, v in history.scalars["train/loss"]] == pytest.approx(
        [v for _, v in written["train/loss"]]
    )
    assert history.texts == {"explain": "# report"}


class FailingSink(NullSink):
    def close(self) -> None:
        raise OSError(28, "No space left on device")


def test_tee_closes_every_sink_when_one_fails() -> None:
    history = History()
    history.log_scalars({"train/loss": torch.tensor(3.0)}, step=1)
    with pytest.raises(OSError, match="No space left"):
        TeeSink(FailingSink(), history).close()
    assert history._pending == []  # closed (settled) all the same
