"""The monitored metric during training: its best value (for `checkpoints/best.pt`) and the
early-stopping count of evaluations without improvement (`trainer.early_stopping`).

`Trainer` hands every evaluation of the monitored metric (a validation, or an epoch's mean
training loss) to `MonitorTracker.observe`, in one place (`Trainer._monitored`); the verdict says
whether to write best.pt and whether to stop. The counters go into every checkpoint, so a
resumed run stops where an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Verdict:
    improved: bool  # a new best value: write best.pt
    stop: bool  # `patience` evaluations in a row without an improvement beyond min_delta


@dataclass
class MonitorTracker:
    """Follows one metric (`metric`, better when lower under mode "min", higher under "max").

    The best value is the best seen; early stopping compares with its own reference, which only
    moves on an improvement larger than `min_delta` (so slow creeping does not reset it).
    """

    metric: str
    mode: Literal["min", "max"]
    patience: int | None = None  # None: never stop
    min_delta: float = 0.0
    best: float | None = None
    best_step: int | None = None
    reference: float | None = None  # early stopping's last value that improved by > min_delta
    evaluations_without_improvement: int = 0

    def observe(self, value: float, step: int) -> Verdict:
        """One evaluation of the metric at `step`. A non-finite value never improves."""
        finite = math.isfinite(value)
        improved = finite and (self.best is None or self._better(value, self.best, 0.0))
        if improved:
            self.best, self.best_step = value, step
        if finite and (
            self.reference is None or self._better(value, self.reference, self.min_delta)
        ):
            self.reference = value
            self.evaluations_without_improvement = 0
        else:
            self.evaluations_without_improvement += 1
        stop = self.patience is not None and self.evaluations_without_improvement >= self.patience
        return Verdict(improved=improved, stop=stop)

    def _better(self, value: float, than: float, margin: float) -> bool:
        return value < than - margin if self.mode == "min" else value > than + margin

    def state_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "mode": self.mode,
            "best": self.best,
            "best_step": self.best_step,
            "reference": self.reference,
            "evaluations_without_improvement": self.evaluations_without_improvement,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A checkpoint's counters; those of another metric or mode (changed on resume) are
        not comparable, so the tracking starts afresh."""
        if state.get("metric") != self.metric or state.get("mode") != self.mode:
            return
        self.best, self.best_step = state["best"], state["best_step"]
        self.reference = state["reference"]
        self.evaluations_without_improvement = state["evaluations_without_improvement"]
