"""A Hydra callback that draws every job of a sweep on one figure, `<sweep dir>/trajectories.png`.

Registered in configs/config.yaml under `hydra.callbacks.trajectory_figure`. It reads the
`trajectory.json` each job wrote (runs with `logger.figures=true`), so a sweep over optimizers on
Rosenbrock (`python train.py -m loss=rosenbrock optimizer=manual_sgd,sgd,adam`) shows their paths
on one contour plot; a sweep on `loss=quadratic_form` also gets `<sweep dir>/convergence.png`,
each job's measured rate on the theoretical one against the condition number. Hydra skips
`on_multirun_end` when a job fails.
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
        from gradtrain.insight.convergence import draw_condition_sweep
        from gradtrain.insight.figures import draw_sweep_comparison

        figure = draw_sweep_comparison(Path(config.hydra.sweep.dir))
        if figure is not None:
            log.info(f"Trajectories of the sweep's jobs: {figure}")
        # A sweep on quadratic_form (over loss.condition_number, say): measured against theory.
        rates = draw_condition_sweep(Path(config.hydra.sweep.dir))
        if rates is not None:
            log.info(f"Measured and theoretical rates of the sweep's jobs: {rates}")
