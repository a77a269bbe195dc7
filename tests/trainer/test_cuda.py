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

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class SyncCheckOff:
    """Passes scalars on to a sink, first turning synchronisation errors off at `last_step`: the
    only host synchronisations allowed are the ones after the loop (the result's `.item()`s and
    the sink writing its batch)."""

    def __init__(self, sink: TensorBoardSink, last_step: int) -> None:
        self.sink = sink
        self.last_step = last_step
        self.logged_steps: list[int] = []

    def log_scalars(self, scalars: Mapping[str, Any], step: int) -> None:
        if step == self.last_step:
            torch.cuda.set_sync_debug_mode("default")
        self.logged_steps.append(step)
        self.sink.log_scalars(scalars, step)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sink, name)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_steps_never_synchronise_with_the_gpu(
    composed: Callable[..., dict[str, Any]], tmp_path: Path, precision: str
) -> None:
    raw = composed(
        "experiment=linear_regression",
        "dataset.pin_memory=true",
        "trainer.device=cuda",
        "trainer.max_epochs=null",
        "trainer.max_steps=40",  # two and a half epochs of 16 batches
        "trainer.log_every_n_steps=10",
        "trainer.progress_bar=false",
        f"trainer.precision={precision}",
    )
    sink = SyncCheckOff(TensorBoardSink(tmp_path), last_step=40)
    trainer = build_trainer(validate_config(raw), sink)  # type: ignore[arg-type]
    # The non-finite guard reads its flags back at a logging step once 64 updates or a second
    # have passed (a deliberate synchronisation, at most one per second): kept out of this
    # check, which looks for any other.
    trainer.updates.settle_after_s = math.inf
    assert next(iter(trainer.train_loader))[0].is_pinned()  # type: ignore[arg-type]
    # From the end of the first step on, any host synchronisation raises.
    trainer.optimizer.register_step_post_hook(lambda *_: torch.cuda.set_sync_debug_mode("error"))
    try:
        result = trainer.fit()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    sink.close()
    assert sink.logged_steps == [10, 20, 30, 40]
    assert [step for step, _ in read_scalars(tmp_path)["train/loss"]] == [10, 20, 30, 40]
    assert result.final_loss < read_scalars(tmp_path)["train/loss"][0][1]
