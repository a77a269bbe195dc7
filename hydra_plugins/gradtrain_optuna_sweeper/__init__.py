"""gradtrain's Optuna sweeper, named where Hydra looks for plugins (`hydra_plugins.*`).

Hydra imports every module of the `hydra_plugins` namespace package when it starts and accepts
a sweeper only from there, so this shim registers `hydra/sweeper=gradtrain_optuna` and forwards
to `gradtrain.sweeps.optuna_sweeper`, where the logic lives. It imports neither Optuna nor torch.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from gradtrain.sweeps.optuna_sweeper import OptunaSearch, register_configs

register_configs()


class GradtrainOptunaSweeper(Sweeper):
    """`hydra.sweeper._target_` of configs/hparams_search/optuna.yaml."""

    def __init__(self, **settings: Any) -> None:
        self.search = OptunaSearch(**settings)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        self.search.sweep(arguments)
