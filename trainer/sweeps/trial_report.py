"""How a trial of a search reports to its sweeper while it trains, so that a pruner can stop it.

A search's trials run in the sweeper's own process (Hydra's basic launcher calls `train.py`'s
task function), so the sweeper installs a reporter around each trial (`reporting_to`) and the
training loop asks `should_prune` after each validation: once per validation, never per step.
Outside a search no reporter is installed and `should_prune` is always False.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Protocol


class TrialReporter(Protocol):
    """Receives a trial's monitored metric at each validation (e.g. Optuna's `trial.report`)."""

    def report(self, step: int, value: float, final: bool) -> bool:
        """Record `value` at `step`; True when the trial should stop here (pruned). `final`:
        the run ends at this validation anyway, so only the value matters."""
        ...


_active: TrialReporter | None = None


@contextlib.contextmanager
def reporting_to(reporter: TrialReporter) -> Iterator[None]:
    """Hand the metrics of runs trained in this block to `reporter`."""
    global _active
    previous, _active = _active, reporter
    try:
        yield
    finally:
        _active = previous


def should_prune(
    step: int, monitor: str | None, val_metrics: Mapping[str, float], final: bool
) -> bool:
    """Report the run's monitored metric after a validation; True when the search prunes it.

    `monitor` is `trainer.monitor`; unset, a run with validation data is judged by its
    `val_loss` (gradtrain.sweeps.monitor.choose_monitor). Only a `val_*` metric exists at
    validation time, so a run judged by its final or best training loss reports nothing.
    """
    name = monitor or "val_loss"
    if _active is None or not name.startswith("val_"):
        return False
    value = val_metrics.get(name.removeprefix("val_"))
    if value is None or not math.isfinite(value):
        return False  # (a non-finite loss ends the run as diverged instead)
    return _active.report(step, float(value), final)
