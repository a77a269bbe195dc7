"""What a sweep's jobs are called and which keys they show in TensorBoard's HParams tab: the swept
ones.

Hydra names a job's folder `<number>_<every override of the job>`, and TensorBoard names a run
after its folder; `-m experiment=linear_regression logger.update_ratio=true
optimizer.lr=0.01,0.1` would give runs called `0_experiment=linear_regression,logger.update_ratio=
True,optimizer.lr=0.01/tensorboard`, cut off in every list. `SweepNames` (a Hydra callback,
`hydra.callbacks.sweep_names` in configs/config.yaml) leaves the overrides that are the same for
every job out of the names when the sweep starts (through `hydra.job.config.override_dirname.
exclude_keys`, which each job's config is composed with), so the runs are `0_optimizer.lr=0.01`.

A job then logs to the HParams tab only the keys it was swept over (`swept_keys`,
`metrics.dashboard.select_hparams`): TensorBoard
shows the first five hyperparameters of its list (those that differ first), so constant keys
(`dataset.batch_size`, `dataset.drop_last`, ...) would fill the first screen; they stay in each
run's config (the Text tab) and its `.hydra/` folder.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"


class SweepNames(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        overrides = [str(item) for item in config.hydra.overrides.task]
        constant = constant_override_keys(overrides)
        if not constant:
            return
        excluded = list(config.hydra.job.config.override_dirname.exclude_keys)
        excluded += [key for key in constant if key not in excluded]
        quoted = ",".join(f"'{key}'" for key in excluded)
        # Each job's config is composed anew from these overrides plus the job's own.
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.overrides.hydra.append(f"{EXCLUDE_KEYS}=[{quoted}]")


def constant_override_keys(overrides: Iterable[str]) -> list[str]:
    """The keys (or groups) of the command-line overrides that give every job the same value:
    those that are not sweeps (`optimizer.lr=0.01,0.1`, `range(...)`, `choice(...)`)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [override.key_or_group for override in parsed if not override.is_sweep_override()]


def swept_keys(task_overrides: Iterable[str], excluded: Iterable[str]) -> list[str]:
    """The keys (or groups) a sweep job was given its own value of: its overrides (the sweep's
    and a sweeper's, such as Optuna's) less those its folder name leaves out."""
    left_out = set(excluded)
    parsed = OverridesParser.create().parse_overrides(list(task_overrides))
    return [override.key_or_group for override in parsed if override.key_or_group not in left_out]
