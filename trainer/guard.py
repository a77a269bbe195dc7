"""The non-finite guard: a NaN or an infinity in a loss, a gradient or a weight stops the run
(`trainer.on_nonfinite=stop`, the default), skips the update (`skip`), or is ignored (`off`).

Reading a loss back (`.item()`) or checking it with `torch.isfinite` every step would cost a host
synchronisation or several kernels per step, as much as a small model's whole update. Instead,
each update's loss is kept as the 0-d device tensor it already is (appending it to a list runs no
kernel), with the global gradient norm of the updates that computed one anyway (logging steps,
clipping). `settle()` stacks them once and reads them back with one transfer: the lowest loss, and
the first update whose loss or gradient norm is a NaN or an infinity. A norm is finite exactly
when every gradient is (or when it overflows float32, which counts as non-finite too).

Gradients of the other updates are not checked, and need not be: a non-finite gradient makes its
update's parameters non-finite, and so the next update's loss. Before each checkpoint and at the
end the weights themselves are checked, element by element (a norm of finite weights can
overflow), so no checkpoint ever holds the weights of a bad update.

The loop settles at checkpoints, at the end, and at the first logging step after `settle_every`
updates or `settle_after_s` seconds (a GPU may synchronise at logging steps, never between them).
So a run that diverges stops within about `settle_every` updates or a second or so, yet names the
update that went wrong. Under `skip` the verdict is needed before each update, so every update
settles (a host synchronisation per step: the price of deciding in time).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Policy = Literal["stop", "skip", "off"]


@dataclass(frozen=True)
class NonFinite:
    step: int
    what: Literal["loss", "gradient"]


@dataclass(frozen=True)
class Settled:
    # The lowest loss (a device tensor) of the updates settled, up to the first non-finite one;
    # None if there were none.
    lowest_loss: Tensor | None
    first_non_finite: NonFinite | None  # always None when finiteness is not checked


class UpdateRecord:
    """The updates since the last `settle()`: their losses and gradient norms, on the device.

    `check_finite`: look for non-finite values when settling (otherwise only the lowest loss is
    kept, and settling never synchronises). `settle_every`, `settle_after_s`: updates recorded,
    or seconds since the last settle, before a logging step settles them (whichever comes
    first). `capacity`: the most held at once; then they must be settled whatever the step (a
    synchronisation between logging steps when these are further apart).
    """

    def __init__(
        self,
        check_finite: bool,
        settle_every: int = 64,
        settle_after_s: float = 1.0,
        capacity: int = 1024,
    ) -> None:
        self.check_finite = check_finite
        self.settle_every = settle_every
        self.settle_after_s = settle_after_s
        self.capacity = capacity
        self._last_settle = time.monotonic()
        self._steps: list[int] = []
        self._losses: list[Tensor] = []
        self._norm_columns: list[int] = []  # the updates that come with a gradient norm
        self._grad_norms: list[Tensor] = []

    def settle_due(self, logging_step: bool) -> bool:
        recorded = len(self._steps)
        if recorded == self.capacity:
            return True
        if not logging_step or not recorded:
            return False
        waited = time.monotonic() - self._last_settle
        return recorded >= self.settle_every or waited >= self.settle_after_s

    def record(self, step: int, loss: Tensor, grad_norm: Tensor | None = None) -> None:
        """Remember update `step`: its loss and, if taken, its global gradient norm (0-d
        tensors the caller will not modify)."""
        if grad_norm is not None:
            self._norm_columns.append(len(self._steps))
            self._grad_norms.append(grad_norm)
        self._steps.append(step)
        self._losses.append(loss)

    def settle(self) -> Settled:
        """The lowest loss and the first non-finite update among those recorded (one
        device-to-host transfer when checking finiteness, none otherwise); then forget them."""
        if not self._steps:
            return Settled(None, None)
        self._last_settle = time.monotonic()
        steps, loss_list = self._steps, self._losses
        norm_columns, grad_norms = self._norm_columns, self._grad_norms
        self._steps, self._losses, self._norm_columns, self._grad_norms = [], [], [], []
        if not self.check_finite:
            return Settled(torch.stack(loss_list).min(), None)
        # One stack and one transfer for everything; a few dozen numbers are then faster to
        # scan in Python than with more kernels.
        stacked = torch.stack([*loss_list, *grad_norms])
        losses = stacked[: len(steps)]
        values = stacked.float().tolist()
        bad_norm_columns = {
            column
            for column, norm in zip(norm_columns, values[len(steps) :], strict=True)
            if not math.isfinite(norm)
        }
        for column, (step, loss) in enumerate(zip(steps, values, strict=False)):
            bad_loss = not math.isfinite(loss)
            if bad_loss or column in bad_norm_columns:
                lowest_finite = losses[:column].min() if column > 0 else None
                return Settled(lowest_finite, NonFinite(step, "loss" if bad_loss else "gradient"))
        return Settled(losses.min(), None)


class NonFiniteGuard:
    """Watches every update for non-finite values and says when the run must stop, and why.

    Args:
        policy: `trainer.on_nonfinite`: stop, skip or off.
        named_parameters: the trained parameters by name (messages name the culprit).
        max_skips: under `skip`, the most consecutive skipped updates before the run stops.
        device: where the losses live (`best_loss` is kept there).
    """

    def __init__(
        self,
        policy: Policy,
        named_parameters: list[tuple[str, Tensor]],
        max_skips: int,
        device: torch.device,
    ) -> None:
        self.policy = policy
        self.named_parameters = named_parameters
        self.max_skips = max_skips
        self.record = UpdateRecord(check_finite=policy != "off")
        # watch(step, loss, grad_norm): remember an update's loss and global gradient norm (if
        # taken) for the next check. (The record's own method: no extra call per step.)
        self.watch = self.record.record
        # Under `skip` the gradients are looked at (their norm) and settled before each update.
        self.decides_before_each_update = policy == "skip"
        self.best_loss = torch.tensor(math.inf, device=device)  # of the settled updates
        self.consecutive_skips = 0
        # The update `check` found at fault (or after which the weights were non-finite).
        self.problem_step: int | None = None

    def skip_update(self, steps_done: int) -> tuple[bool, str | None]:
        """Under `skip`: whether the update just watched must be dropped (a host sync), and, when
        it is one too many in a row, why the run stops. Never skips under `stop` or `off`."""
        if not self.decides_before_each_update:
            return False, None
        bad = self._settle()
        if bad is None:
            self.consecutive_skips = 0
            return False, None
        self.consecutive_skips += 1
        if self.consecutive_skips <= self.max_skips:
            return True, None
        return True, (
            f"non-finite {self._describe(bad)} in {self.consecutive_skips} consecutive updates "
            f"after step {steps_done} (trainer.max_nonfinite_skips={self.max_skips})"
        )

    def check_due(self, logging_step: bool) -> bool:
        return self.record.settle_due(logging_step)

    def check(self, step: int, parameters: bool = False) -> str | None:
        """Settle the updates watched since the last check: what went wrong first (a non-finite
        loss or gradient), or None. With `parameters`, then also the weights after `step`, which
        a gradient no norm was taken of can have made non-finite."""
        bad = self._settle()
        if bad is not None:
            self.problem_step = bad.step
            return f"non-finite {self._describe(bad)} at step {bad.step}"
        if parameters and self.policy != "off":
            name = self._non_finite_parameter()
            if name is not None:
                self.problem_step = step
                return f"non-finite parameter '{name}' after step {step}"
        return None

    def _settle(self) -> NonFinite | None:
        """Fold the watched updates' losses into best_loss (up to the first non-finite one) and
        return that one, if any."""
        settled = self.record.settle()
        if settled.lowest_loss is not None:
            self.best_loss = torch.minimum(self.best_loss, settled.lowest_loss)
        return settled.first_non_finite

    def _non_finite_parameter(self) -> str | None:
        """The first parameter holding a NaN or an infinity (one transfer)."""
        finite = torch.stack([torch.isfinite(p).all() for _, p in self.named_parameters])
        for (name, _), ok in zip(self.named_parameters, finite.tolist(), strict=True):
            if not ok:
                return name
        return None

    def _describe(self, bad: NonFinite) -> str:
        """'loss', or the gradient and the parameter it belongs to. That parameter's gradient
        is non-finite now (before the update), or, once updated with it, its values are."""
        if bad.what == "loss":
            return "loss"
        for name, p in self.named_parameters:
            if not bool(torch.isfinite(p).all()) or (
                p.grad is not None and not bool(torch.isfinite(p.grad).all())
            ):
                return f"gradient of parameter '{name}'"
        return "gradient"
