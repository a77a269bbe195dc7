"""UpdateRecord: per-update losses and gradient norms, settled in one read."""

from __future__ import annotations

import math

import torch

from gradtrain.guard import NonFinite, UpdateRecord


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
