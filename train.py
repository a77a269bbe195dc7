"""gradtrain's entry point: compose the config with Hydra, then validate, build and fit.

python train.py loss=quadratic
python train.py experiment=linear_regression optimizer=adam optimizer.lr=0.01
python train.py -m optimizer.lr=0.01,0.1,1.0
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trainer.sweep_summary import sweep_exit_status


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the run's objective (`trainer.objective`) for sweepers such as Optuna to minimize,
    or None when the run failed or diverged."""
    # Imported here so that `--help` and config errors from Hydra come back before torch loads.
    from trainer.errors import GradtrainError
    from trainer.objective import objective_value
    from trainer.run import run
    from trainer.sweep_job import run_sweep_job

    hydra_cfg = HydraConfig.get()
    raw_config = OmegaConf.to_container(cfg, resolve=True)
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # A failed job must not end the sweep: it is recorded, and the others go on.
        return run_sweep_job(raw_config, run_dir)  # type: ignore[arg-type]
    try:
        summary = run(raw_config, run_dir)  # type: ignore[arg-type]
    except GradtrainError as exc:
        print(f"gradtrain: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    return objective_value(summary)


if __name__ == "__main__":
    main()
    # Non-zero when a job of a sweep failed or diverged (see trainer/sweep_summary.py).
    sys.exit(sweep_exit_status())
