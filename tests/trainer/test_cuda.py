"""On a CUDA device the loop never waits for the GPU between logging intervals (skipped without
CUDA)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import read_scalars

from gradtrain.build import build_trainer
from gradtrain.config import validate_config
from gradtrain.metrics.sinks import TensorBoardSink
from gradtrain.unprofiled import step_is_watched

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEFAULT, ERROR = 0, 2  # torch.cuda.get_sync_debug_mode()'s values for "default" and "error"


class SyncCheck:
    """Passes scalars on to a sink, and makes every host synchronisation raise from just after
    `first_step`'s scalars until just before `last_step`'s: the steps in between, two logging
    steps among them, run under torch.cuda.set_sync_debug_mode("error"). Nothing is hooked into
    the optimizer: a registered step hook would switch gradtrain's optimizers to torch's
    profiled step (see `Unprofiled` in trainer/optim.py), a path runs never take. The
    synchronisations allowed come after `last_step`'s scalars: the loop's check at its last step,
    the result's `.item()`s and the sink writing its batch."""

    def __init__(self, sink: TensorBoardSink, first_step: int, last_step: int) -> None:
        self.sink = sink
        self.first_step = first_step
        self.last_step = last_step
        self.mode_at: dict[int, int] = {}  # the debug mode each logging step arrived in

    def log_scalars(self, scalars: Mapping[str, Any], step: int) -> None:
        self.mode_at[step] = torch.cuda.get_sync_debug_mode()
        if step == self.last_step:
            torch.cuda.set_sync_debug_mode("default")
        self.sink.log_scalars(scalars, step)
        if step == self.first_step:
            torch.cuda.set_sync_debug_mode("error")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sink, name)


def test_a_host_synchronisation_raises_in_error_mode() -> None:
    # What the test below relies on: in "error" mode a read-back fails instead of waiting.
    on_gpu = torch.ones(1, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            on_gpu.item()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_steps_never_synchronise_with_the_gpu(
    quick_config: Callable[..., dict[str, Any]], tmp_path: Path, precision: str
) -> None:
    raw = quick_config(
        "experiment=linear_regression",
        "logger=tensorboard",
        "dataset.pin_memory=true",
        "trainer.device=cuda",
        "trainer.max_epochs=null",
        "trainer.max_steps=40",  # two and a half epochs of 16 batches
        "trainer.log_every_n_steps=10",
        f"trainer.precision={precision}",
    )
    # Two deliberate synchronisations are kept out of this check, which looks for any other:
    # the sink's timed write (once per flush_secs) and the non-finite guard's read-back at a
    # logging step once 64 updates or a second have passed (at most one per second).
    sink = SyncCheck(TensorBoardSink(tmp_path, flush_secs=10**6), first_step=10, last_step=40)
    trainer = build_trainer(validate_config(raw), sink)  # type: ignore[arg-type]
    trainer.guard.record.settle_after_s = math.inf
    assert next(iter(trainer.train_loader))[0].is_pinned()  # type: ignore[arg-type]
    assert not step_is_watched(trainer.optimizer)  # the optimizer's step as runs take it
    try:
        result = trainer.fit()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    sink.close()
    assert not step_is_watched(trainer.optimizer)
    # Steps 11 to 40 ran in error mode: 27 steps between logging steps, 2 logging steps, and the
    # epoch ends after steps 16 and 32.
    assert sink.mode_at == {10: DEFAULT, 20: ERROR, 30: ERROR, 40: ERROR}
    assert [step for step, _ in read_scalars(tmp_path)["train/loss"]] == [10, 20, 30, 40]
    assert result.final_loss < read_scalars(tmp_path)["train/loss"][0][1]
