"""What the loop remembers of each update between two reads: its loss, and whether the loss
and the gradients were finite.

Reading a loss back (`.item()`) or checking it with `torch.isfinite` every step would cost a host
synchronisation or several kernels per step, as much as a small model's whole update. Instead,
each update's loss is kept as the 0-d device tensor it already is (appending it to a list runs no
kernel), and its gradients are checked by the fused kernel `torch.amp.GradScaler` runs over all
gradients each step (one kernel, no allocation, no synchronisation). `settle()` stacks the losses
once: the lowest one, and the first update with a NaN or infinity, read back with one transfer.
The loop settles at checkpoints, at the end, and at the first logging step after `settle_every`
updates or `settle_after_s` seconds (a GPU may synchronise at logging steps, never between them).
So a run that diverges stops within about `settle_every` updates or a second or so, yet names
the exact update that went wrong.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class NonFinite:
    step: int
    what: str  # "loss", or "gradient" (of any parameter)


@dataclass(frozen=True)
class Settled:
    # The lowest loss (a device tensor) of the updates settled, up to the first non-finite one;
    # None if there were none.
    lowest_loss: Tensor | None
    first_non_finite: NonFinite | None  # always None when finiteness is not checked


class UpdateRecord:
    """The updates since the last `settle()`: their losses and, with `check_finite`, flags of
    their gradients' finiteness, kept on `device`.

    `settle_every`, `settle_after_s`: updates recorded, or seconds since the last settle, before
    a logging step settles them (whichever comes first). `capacity`: the most held at once; then
    they must be settled whatever the step (a synchronisation between logging steps when these
    are further apart).
    """

    def __init__(
        self,
        device: torch.device,
        check_finite: bool,
        settle_every: int = 64,
        settle_after_s: float = 1.0,
        capacity: int = 1024,
    ) -> None:
        self.check_finite = check_finite
        self.settle_every = settle_every
        self.settle_after_s = settle_after_s
        self._last_settle = time.monotonic()
        self.capacity = capacity
        self._losses: list[Tensor] = []
        self._steps: list[int] = []
        self._norm_columns: list[int] = []  # updates checked by their gradient norm instead
        self._grad_norms: list[Tensor] = []
        self._grad_flags = torch.zeros(capacity, device=device)
        # Views of single flags, made once: slicing a tensor every step would cost more than the
        # check itself.
        self._grad_slots = self._grad_flags.unbind()
        self._unit_scale = torch.ones((), device=device)

    def settle_due(self, logging_step: bool) -> bool:
        recorded = len(self._steps)
        if recorded == self.capacity:
            return True
        if not logging_step or not recorded:
            return False
        waited = time.monotonic() - self._last_settle
        return recorded >= self.settle_every or waited >= self.settle_after_s

    def record(
        self, step: int, loss: Tensor, grads: list[Tensor], grad_norm: Tensor | None = None
    ) -> None:
        """Remember update `step`'s loss (a 0-d tensor the caller will not modify) and flag it if
        any of `grads` holds a NaN or an infinity.

        `grad_norm`: the global norm of `grads`, when the caller has computed it anyway (at
        logging steps). It is finite exactly when every gradient is (or its norm would overflow
        float32, which counts as non-finite too), so it is kept to check instead.
        """
        if self.check_finite and grad_norm is not None:
            self._norm_columns.append(len(self._steps))
            self._grad_norms.append(grad_norm)
        elif self.check_finite and grads:
            # The fused kernel also multiplies the gradients by a scale in place: 1 here, which
            # leaves every value as it was.
            torch._amp_foreach_non_finite_check_and_unscale_(
                grads, self._grad_slots[len(self._steps)], self._unit_scale
            )
        self._losses.append(loss)
        self._steps.append(step)

    def settle(self) -> Settled:
        """The lowest loss and the first non-finite update among those recorded (one
        device-to-host transfer when checking finiteness, none otherwise); then forget them."""
        if not self._steps:
            return Settled(None, None)
        self._last_settle = time.monotonic()
        steps, losses = self._steps, torch.stack(self._losses)
        norm_columns, grad_norms = self._norm_columns, self._grad_norms
        self._steps, self._losses, self._norm_columns, self._grad_norms = [], [], [], []
        if not self.check_finite:
            return Settled(losses.min(), None)
        recorded = len(steps)
        grad_flags = self._grad_flags[:recorded]
        # One transfer of everything; a few dozen values are then faster to scan in Python
        # than with more kernels.
        parts = [losses.float(), grad_flags]
        if grad_norms:
            parts.append(torch.stack(grad_norms).float())
        values = torch.cat(parts).tolist()
        grad_flags.zero_()  # cleared for reuse
        bad_grads = [flag != 0 for flag in values[recorded : 2 * recorded]]
        for column, norm in zip(norm_columns, values[2 * recorded :], strict=True):
            bad_grads[column] = not math.isfinite(norm)
        for column in range(recorded):
            bad_loss = not math.isfinite(values[column])
            if bad_loss or bad_grads[column]:
                lowest_finite = losses[:column].min() if column > 0 else None
                what = "loss" if bad_loss else "gradient"
                return Settled(lowest_finite, NonFinite(steps[column], what))
        return Settled(losses.min(), None)
