"""The monitored metric: the one number a run is judged by, what `train.py` returns to a sweeper
and what a sweep summary is sorted by (`trainer.monitor`). Lower is better; each is a loss."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gradtrain.errors import GradtrainError


def choose_monitor(requested: str | None, summary: Mapping[str, Any]) -> str:
    """The summary key that holds the monitored metric: `trainer.monitor` when set, else the final
    validation loss when the run has one, else the final training loss."""
    if requested is None:
        return "val_loss" if "val_loss" in summary else "final_loss"
    if requested not in summary:
        raise GradtrainError(
            f"trainer.monitor={requested} but this run reports no {requested}; "
            "set trainer.monitor=null to use the final loss"
        )
    return requested


def monitored_value(summary: Mapping[str, Any]) -> float | None:
    """The monitored metric of a finished run, or None when it failed, diverged or ended non-finite.

    Reads any `summary.json`, including those of failed runs, which name no monitored metric.
    """
    if summary.get("status") != "completed":
        return None
    value = summary.get(summary.get("monitor") or choose_monitor(None, summary))
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)
