"""The monitored metric: the one number a run is judged by, what `train.py` returns to a sweeper
and what a sweep summary is sorted by (`trainer.monitor`, better when lower under
`trainer.mode=min`, higher under `max`; null: max for val_accuracy, min for the losses)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from gradtrain.errors import GradtrainError


def natural_mode(monitor: str | None) -> Literal["min", "max"]:
    """`trainer.mode=null`: accuracy improves upwards, every loss downwards."""
    return "max" if monitor is not None and monitor.endswith("accuracy") else "min"


def choose_monitor(requested: str | None, summary: Mapping[str, Any]) -> str:
    """The summary key that holds the monitored metric: `trainer.monitor` when set, else the final
    validation loss when the run has one, else the last epoch's mean training loss, else (no
    epochs of data) the final training loss."""
    if requested is None:
        for key in ("val_loss", "train_loss_epoch"):
            if key in summary:
                return key
        return "final_loss"
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


def monitor_mode(summary: Mapping[str, Any]) -> Literal["min", "max"]:
    """Whether the summary's monitored metric is better lower or higher (`monitor_mode`, or
    what its name implies in a summary from before modes existed)."""
    mode = summary.get("monitor_mode")
    if mode in ("min", "max"):
        return mode  # type: ignore[no-any-return]
    return natural_mode(summary.get("monitor"))
