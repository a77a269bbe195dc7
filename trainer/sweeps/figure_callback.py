"""A Hydra callback that draws every job of a sweep on one figure, `<sweep dir>/trajectories.png`.

Registered in configs/config.yaml under `hydra.callbacks.trajectory_figure`. It reads the
`trajectory.json` each job wrote (runs with `logger.figures=true`), so a sweep over optimizers on
Rosenbrock (`python train.py -m loss=rosenbrock optimizer=manual_sgd,sgd,adam`) shows their paths
on one contour plot. Hydra skips `on_multirun_end` when a job fails.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("gradtrain")


class TrajectoryFigureCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Imported here: Hydra builds callbacks for every run, which should not load torch early.
        from gradtrain.insight.figures import draw_sweep_comparison

        figure = draw_sweep_comparison(Path(config.hydra.sweep.dir))
        if figure is not None:
            log.info(f"Trajectories of the sweep's jobs: {figure}")
