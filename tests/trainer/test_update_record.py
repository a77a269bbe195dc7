"""UpdateRecord: per-update losses and gradient flags, settled in one read."""

from __future__ import annotations

import math

import torch

from trainer.update_record import NonFinite, UpdateRecord

CPU = torch.device("cpu")


def test_settle_gives_the_lowest_loss_and_forgets() -> None:
    record = UpdateRecord(CPU, check_finite=True)
    grads = [torch.ones(3), torch.ones(2, 2)]
    for step, loss in enumerate([3.0, 1.5, 2.0], start=1):
        record.record(step, torch.tensor(loss), grads)
    settled = record.settle()
    assert settled.first_non_finite is None
    assert settled.lowest_loss is not None and settled.lowest_loss.item() == 1.5
    assert record.settle().lowest_loss is None  # nothing recorded since


def test_the_first_bad_update_is_named_with_what_went_wrong() -> None:
    record = UpdateRecord(CPU, check_finite=True)
    good, bad_grad = [torch.ones(3)], [torch.tensor([1.0, math.inf, 0.0])]
    record.record(10, torch.tensor(4.0), good)
    record.record(11, torch.tensor(2.0), bad_grad)
    record.record(12, torch.tensor(math.nan), good)
    settled = record.settle()
    assert settled.first_non_finite == NonFinite(11, "gradient")
    assert settled.lowest_loss is not None and settled.lowest_loss.item() == 4.0  # before it
    # The flags were cleared: the same slots serve the next updates.
    record.record(13, torch.tensor(1.0), good)
    assert record.settle().first_non_finite is None
    record.record(14, torch.tensor(math.inf), good)
    assert record.settle().first_non_finite == NonFinite(14, "loss")


def test_the_check_leaves_every_gradient_value_as_it_was() -> None:
    record = UpdateRecord(CPU, check_finite=True)
    grad = torch.tensor([-0.0, 1e-45, 3.4e38, -math.inf, 2.5])
    before = grad.clone()
    record.record(1, torch.tensor(0.0), [grad])
    assert torch.equal(grad.view(torch.int32), before.view(torch.int32))  # bit for bit


def test_without_checking_nothing_is_flagged() -> None:
    record = UpdateRecord(CPU, check_finite=False)
    record.record(1, torch.tensor(math.nan), [torch.tensor([math.inf])])
    assert record.settle().first_non_finite is None


def test_settling_is_due_at_logging_steps_after_settle_every_or_when_full() -> None:
    record = UpdateRecord(
        CPU, check_finite=True, settle_every=3, settle_after_s=math.inf, capacity=5
    )
    for step in range(1, 6):
        assert not record.settle_due(logging_step=False)
        assert record.settle_due(logging_step=True) == (step > 3)
        record.record(step, torch.tensor(1.0), [])
    assert record.settle_due(logging_step=False)  # full


def test_a_gradient_norm_taken_anyway_stands_in_for_the_gradient_check() -> None:
    record = UpdateRecord(CPU, check_finite=True)
    bad_grad = [torch.tensor([math.nan])]
    # With the norm given, the gradients themselves are not looked at.
    record.record(1, torch.tensor(1.0), bad_grad, grad_norm=torch.tensor(2.0))
    record.record(2, torch.tensor(1.0), [torch.ones(2)])
    record.record(3, torch.tensor(1.0), [], grad_norm=torch.tensor(math.inf))
    assert record.settle().first_non_finite == NonFinite(3, "gradient")
    record.record(4, torch.tensor(1.0), [], grad_norm=torch.tensor(1.0))
    record.record(5, torch.tensor(1.0), bad_grad)
    assert record.settle().first_non_finite == NonFinite(5, "gradient")


def test_a_logging_step_also_settles_once_settle_after_s_has_passed() -> None:
    record = UpdateRecord(CPU, check_finite=True, settle_every=1000, settle_after_s=0.0)
    assert not record.settle_due(logging_step=True)  # nothing recorded yet
    record.record(1, torch.tensor(1.0), [])
    assert record.settle_due(logging_step=True) and not record.settle_due(logging_step=False)
