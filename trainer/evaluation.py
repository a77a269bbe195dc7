"""Numbers a run is judged by beyond the step's loss: the epoch's mean training loss
(`train/loss_epoch`), and the test score at the end of the run (`test/loss`, `test/accuracy`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# The epoch's losses are kept as the device tensors they are and added up every this many
# updates: one kernel per window, not one per update, and no host sync at all.
_COLLAPSE_EVERY = 512


class EpochLoss:
    """The mean loss of the updates of one epoch, on the device (read only when logged)."""

    def __init__(self) -> None:
        self._losses: list[Tensor] = []  # 0-d device tensors, since the last collapse
        self._total: Tensor | None = None  # the sum of those collapsed already
        self.count = 0  # updates added this epoch

    def add(self, loss: Tensor) -> None:
        self._losses.append(loss)
        self.count += 1
        if len(self._losses) >= _COLLAPSE_EVERY:
            self._total = self._sum()
            self._losses = []

    def _sum(self) -> Tensor:
        total = torch.stack(self._losses).sum() if self._losses else None
        if self._total is None:
            assert total is not None
            return total
        return self._total + total if total is not None else self._total

    def mean(self) -> Tensor | None:
        """The epoch's mean loss (0-d, on the device), or None before its first update."""
        if self.count == 0:
            return None
        return self._sum() / self.count

    def reset(self) -> None:
        self._losses, self._total, self.count = [], None, 0

    def state_dict(self) -> dict[str, Any]:
        # The pending losses one by one, not their sum: a resumed run adds them up in the same
        # grouping, so its epoch mean is the same to the last bit.
        pending = torch.stack(self._losses).cpu() if self._losses else torch.zeros(0)
        total = self._total.detach().cpu() if self._total is not None else None
        return {"total": total, "pending": pending, "count": self.count}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self._total = state["total"].to(device) if state["total"] is not None else None
        self._losses = list(state["pending"].to(device).unbind())
        self.count = state["count"]
