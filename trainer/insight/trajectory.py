"""The optimizer's path through parameter space, recorded for figures.

The trainer calls `record` at logging steps only, where it reads the loss from the device anyway,
so recording adds no synchronisation of its own. Memory stays bounded: past `max_points` points,
every other one is dropped and from then on only every other logging step is kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

TRAJECTORY_FILE = "trajectory.json"
# Paths of bigger models are not recorded: 1000 numbers x MAX_POINTS points stays a few MB.
MAX_PARAMETERS = 1000
MAX_POINTS = 1024


class Trajectory:
    """Flat float64 CPU copies of all trainable parameters, with the step of each.

    Args:
        on_record: called after each `record` with the trajectory and the step (to draw a
            figure every so many steps).
        max_points: how many points are kept at most (the first and the latest always are).
    """

    def __init__(
        self,
        on_record: Callable[[Trajectory, int], None] | None = None,
        max_points: int = MAX_POINTS,
    ) -> None:
        self.on_record = on_record
        self.max_points = max_points
        self._steps: list[int] = []
        self._points: list[Tensor] = []
        self._stride = 1  # keep every stride-th offered point
        self._offered = 0
        self._latest: tuple[int, Tensor] | None = None

    def record(self, step: int, parameters: Sequence[Tensor]) -> None:
        point = torch.cat([p.detach().reshape(-1).to("cpu", torch.float64) for p in parameters])
        if self._offered % self._stride == 0:
            self._steps.append(step)
            self._points.append(point)
            if len(self._points) > self.max_points:
                del self._steps[1::2], self._points[1::2]
                self._stride *= 2
        self._offered += 1
        self._latest = (step, point)
        if self.on_record is not None:
            self.on_record(self, step)

    def latest(self) -> tuple[int, Tensor]:
        """(step, point) of the last `record`, kept or not (thinning drops points, not this)."""
        if self._latest is None:
            raise ValueError("nothing recorded yet")
        return self._latest

    def path(self) -> tuple[list[int], Tensor]:
        """(steps, points): the kept points and the latest, points of shape (n, n_parameters)."""
        if self._latest is None:
            raise ValueError("nothing recorded yet")
        steps, points = list(self._steps), list(self._points)
        if self._latest_dropped():
            steps.append(self._latest[0])
            points.append(self._latest[1])
        return steps, torch.stack(points)

    def __len__(self) -> int:
        return len(self._steps) + int(self._latest_dropped())

    def _latest_dropped(self) -> bool:
        return self._latest is not None and self._steps[-1] != self._latest[0]


def save_trajectory(path: Path, trajectory: Trajectory, problem: dict[str, Any]) -> None:
    """`trajectory.json`: the path and the loss config it was taken on (for sweep figures)."""
    from gradtrain.files import write_atomic

    steps, points = trajectory.path()
    data = {"problem": problem, "steps": steps, "points": points.tolist()}
    text = json.dumps(data) + "\n"
    write_atomic(path, lambda file: file.write(text.encode()))


def load_trajectory(path: Path) -> tuple[dict[str, Any], list[int], Tensor]:
    data = json.loads(path.read_text())
    return data["problem"], data["steps"], torch.tensor(data["points"], dtype=torch.float64)
