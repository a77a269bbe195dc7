"""The one number a run is judged by: what `train.py` returns to a sweeper and what a sweep
summary is sorted by. Lower is better; every objective is a loss."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from trainer.errors import GradtrainError


def choose_objective(requested: str | None, summary: Mapping[str, Any]) -> str:
    """The summary key that holds the objective: `trainer.objective` when set, else the final
    validation loss when the run has one, else the final training loss."""
    if requested is None:
        return "val_loss" if "val_loss" in summary else "final_loss"
    if requested not in summary:
        raise GradtrainError(
            f"trainer.objective={requested} but this run reports no {requested}; "
            "set trainer.objective=null to use the final loss"
        )
    return requested


def objective_value(summary: Mapping[str, Any]) -> float | None:
    """The objective of a finished run, or None when it failed, diverged or ended non-finite.

    Reads any `summary.json`, including those of failed runs, which name no objective.
    """
    if summary.get("status") != "completed":
        return None
    value = summary.get(summary.get("objective") or choose_objective(None, summary))
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)
