"""The non-finite guard: per-update losses and gradient norms settled in one read, and what a run
does when a loss, a gradient or a weight stops being finite (stop, skip, name the culprit, never
checkpoint a bad update)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import RecordingSink

from gradtrain.build import build_trainer
from gradtrain.checkpoint import LAST, load_checkpoint
from gradtrain.config import TrainerConfig, validate_config
from gradtrain.errors import TrainingDiverged
from gradtrain.guard import NonFinite, UpdateRecord
from gradtrain.loop import Trainer
from gradtrain.models import VectorModel
from gradtrain.optim import ManualSGD
from gradtrain.run import run, seed_everything

Compose = Callable[..., dict[str, Any]]


def test_settle_gives_the_lowest_loss_and_forgets() -> None:
    record = UpdateRecord(check_finite=True)
    for step, loss in enumerate([3.0, 1.5, 2.0], start=1):
        record.record(step, torch.tensor(loss), torch.tensor(1.0) if step == 2 else None)
    settled = record.settle()
    assert settled.first_non_finite is None
    assert settled.lowest_loss is not None and settled.lowest_loss.item() == 1.5
    assert record.settle().lowest_loss is None  # nothing recorded since


def test_the_first_bad_update_is_named_with_what_went_wrong() -> None:
    record = UpdateRecord(check_finite=True)
    record.record(10, torch.tensor(4.0))
    record.record(11, torch.tensor(2.0), grad_norm=torch.tensor(math.inf))
    record.record(12, torch.tensor(math.nan))
    settled = record.settle()
    assert settled.first_non_finite == NonFinite(11, "gradient")
    assert settled.lowest_loss is not None and settled.lowest_loss.item() == 4.0  # before it
    record.record(13, torch.tensor(1.0), grad_norm=torch.tensor(5.0))
    record.record(14, torch.tensor(-math.inf), grad_norm=torch.tensor(math.nan))
    settled = record.settle()
    assert settled.first_non_finite == NonFinite(14, "loss")  # the loss first
    assert settled.lowest_loss is not None and settled.lowest_loss.item() == 1.0


def test_losses_of_any_dtype_are_compared_as_numbers() -> None:
    record = UpdateRecord(check_finite=True)
    record.record(1, torch.tensor(3.0, dtype=torch.bfloat16), grad_norm=torch.tensor(1.0))
    record.record(2, torch.tensor(2.0, dtype=torch.float64))
    settled = record.settle()
    assert settled.first_non_finite is None
    assert settled.lowest_loss is not None and settled.lowest_loss.item() == 2.0


def test_without_checking_nothing_is_flagged() -> None:
    record = UpdateRecord(check_finite=False)
    record.record(1, torch.tensor(2.0), grad_norm=torch.tensor(math.inf))
    record.record(2, torch.tensor(math.nan))
    assert record.settle().first_non_finite is None


def test_settling_is_due_at_logging_steps_after_settle_every_or_when_full() -> None:
    record = UpdateRecord(check_finite=True, settle_every=3, settle_after_s=math.inf, capacity=5)
    for step in range(1, 6):
        assert not record.settle_due(logging_step=False)
        assert record.settle_due(logging_step=True) == (step > 3)
        record.record(step, torch.tensor(1.0))
    assert record.settle_due(logging_step=False)  # full


def test_a_logging_step_also_settles_once_settle_after_s_has_passed() -> None:
    record = UpdateRecord(check_finite=True, settle_every=1000, settle_after_s=0.0)
    assert not record.settle_due(logging_step=True)  # nothing recorded yet
    record.record(1, torch.tensor(1.0))
    assert record.settle_due(logging_step=True) and not record.settle_due(logging_step=False)


# ------------------------------------------------------------------------- in a real run
def test_lecture_quadratic_with_lr_10_diverges_with_a_hint(
    composed: Compose, tmp_path: Path
) -> None:
    with pytest.raises(TrainingDiverged) as caught:
        run(composed("logger=none", "optimizer.lr=10"), tmp_path)
    message = str(caught.value)
    assert "non-finite loss at step" in message and "optimizer.lr=1" in message
    import json

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["final_loss"] is None


def test_divergence_names_the_first_bad_step_even_between_log_steps(
    composed: Compose, tmp_path: Path
) -> None:
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 16;"):
        run(composed("logger=none", "optimizer.lr=10", "trainer.log_every_n_steps=50"), tmp_path)


def test_divergence_keeps_the_checkpoint_from_before_the_bad_step(
    composed: Compose, tmp_path: Path
) -> None:
    # The loss first overflows at step 16 (x**2 of a finite x); step 15's weights are finite.
    with pytest.raises(TrainingDiverged, match="step 16; the last checkpoint is from step 15"):
        run(
            composed(
                "logger=none",
                "optimizer.lr=10",
                "trainer.checkpoint_every_n_steps=5",
                "trainer.log_every_n_steps=50",
            ),
            tmp_path,
        )
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / LAST)
    assert checkpoint["step"] == 15
    assert torch.isfinite(checkpoint["model"]["x"]).all()


class SqrtLoss(torch.nn.Module):
    def forward(self, x: torch.Tensor, target: None = None) -> torch.Tensor:
        return x.abs().sqrt().sum()  # finite at 0, but its gradient there is infinite


class SavedSteps:
    """A checkpointer that remembers which steps it was asked to save."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def save(self, payload: dict[str, Any], step: int) -> None:
        assert all(torch.isfinite(t).all() for t in payload["model"].values())
        self.steps.append(step)

    def save_best(self, payload: dict[str, Any], step: int) -> None:
        assert all(torch.isfinite(t).all() for t in payload["model"].values())


def sqrt_trainer(checkpointer: SavedSteps | None = None, **settings: Any) -> Trainer:
    model = VectorModel([0.0, 1.0])
    return Trainer(
        model,
        SqrtLoss(),
        ManualSGD(model.parameters(), lr=0.1),
        None,
        TrainerConfig(max_steps=5, **settings),
        torch.device("cpu"),
        RecordingSink(),
        checkpointer=checkpointer,
    )


def test_a_non_finite_gradient_at_a_logging_step_is_named_by_parameter() -> None:
    result = sqrt_trainer(log_every_n_steps=1).fit()
    assert result.stop_reason == "diverged"
    assert "non-finite gradient of parameter 'x' at step 1;" in (result.message or "")


def past_step_one(trainer: Trainer) -> Trainer:
    """The trainer as a run resumed after step 1 (always a logging step): its first update,
    step 2, is not a logging step."""
    trainer.state.step = 1
    return trainer


def test_a_non_finite_gradient_between_logging_steps_shows_in_the_next_loss() -> None:
    # Step 2's gradient is infinite, so its update makes x infinite and step 3's loss too.
    result = past_step_one(sqrt_trainer(log_every_n_steps=10)).fit()
    assert result.stop_reason == "diverged"
    assert "non-finite loss at step 3;" in (result.message or "")


def test_weights_made_non_finite_are_never_checkpointed() -> None:
    # Step 2's unchecked gradient (not a logging step) makes x infinite; the checkpoint due
    # right after that update looks at the weights themselves and saves nothing.
    saved = SavedSteps()
    trainer = sqrt_trainer(saved, log_every_n_steps=10, checkpoint_every_n_steps=1)
    result = past_step_one(trainer).fit()
    assert result.stop_reason == "diverged" and saved.steps == []
    assert "non-finite parameter 'x' after step 2; no checkpoint" in (result.message or "")


def test_skip_drops_bad_updates_and_gives_up_after_the_limit(composed: Compose) -> None:
    raw = composed(
        "logger=none",
        "optimizer.lr=10",
        "trainer.on_nonfinite=skip",
        "trainer.max_nonfinite_skips=3",
    )
    cfg = validate_config(raw)
    seed_everything(cfg.seed)
    result = build_trainer(cfg, RecordingSink()).fit()
    assert result.stop_reason == "diverged"
    assert "4 consecutive updates after step 15" in (result.message or "")
    assert result.steps == 15  # skipped updates do not count as steps


def test_detect_anomaly_names_the_backward_op(composed: Compose, tmp_path: Path) -> None:
    with pytest.raises(
        TrainingDiverged, match=r"autograd anomaly at step \d+: Function '\w+Backward"
    ):
        run(
            composed(
                "logger=none",
                "optimizer.lr=10",
                "trainer.detect_anomaly=true",
                "trainer.on_nonfinite=off",
                "trainer.max_steps=100",
            ),
            tmp_path,
        )
