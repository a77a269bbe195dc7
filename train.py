"""gradtrain's entry point: compose the config with Hydra, then validate, build and fit.

python train.py loss=quadratic
python train.py experiment=linear_regression optimizer=adam optimizer.lr=0.01
python train.py -m optimizer.lr=0.01,0.1,1.0
torchrun --nproc_per_node=2 train.py experiment=linear_regression   (README: Scaling out)
"""

from __future__ import annotations

import gc
import getpass
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gradtrain.sweeps.summary import sweep_exit_status


@hydra.main(version_base="1.3", config_path="pkg://gradtrain.configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the run's monitored metric (`trainer.monitor`) for sweepers such as Optuna to
    minimize, or None when the run failed or diverged."""
    # Imported here so that `--help` and config errors from Hydra come back before torch loads.
    from gradtrain.errors import GradtrainError
    from gradtrain.run import run
    from gradtrain.sweeps.job import run_sweep_job
    from gradtrain.sweeps.monitor import monitored_value

    hydra_cfg = HydraConfig.get()
    raw_config = OmegaConf.to_container(cfg, resolve=True)
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN and _who() != "gradtrain":
        print(
            f"{_who()}: -m under torchrun would run the sweep on every rank; see the "
            "README's Scaling out for sweeps of torchrun jobs",
            file=sys.stderr,
        )
        sys.exit(2)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # A failed job must not end the sweep: it is recorded, and the others go on.
        return run_sweep_job(raw_config, run_dir)  # type: ignore[arg-type]
    try:
        summary = run(raw_config, run_dir)  # type: ignore[arg-type]
    except GradtrainError as exc:
        print(f"{_who()}: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        # Ctrl-C while no stop handler is installed (before training starts or after it ended);
        # one during training stops at the next step, a second one there becomes
        # TrainingInterrupted above.
        print(f"{_who()}: interrupted by Ctrl-C", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except Exception as exc:
        if _who() != "gradtrain":  # under torchrun, say which rank failed (Hydra shows how)
            print(f"{_who()}: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise
    return monitored_value(summary)


def _who() -> str:
    """`gradtrain`, or under torchrun `gradtrain (rank R of N)`: which process is speaking."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"gradtrain (rank {os.environ.get('RANK')} of {os.environ['WORLD_SIZE']})"
    return "gradtrain"


def _quiet_worker_overrides() -> list[str]:
    """Hydra overrides for a torchrun worker other than rank 0 (none otherwise).

    Every torchrun process runs this script, and each one's Hydra would make its own
    `outputs/<date>/<time>/` (the times differ) with `.hydra/` and `train.log`. Rank 0's folder
    is the run's: `trainer.run` hands it to the other ranks over the process group once they
    have joined it (before that they cannot talk). So the others point Hydra at one shared
    scratch folder per user that it leaves empty (no `.hydra/`, logs to the console only): a
    worker killed mid-run leaves nothing behind. They log warnings and errors only. Read from
    the environment because this runs before Hydra, and the process group, exist.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or os.environ.get("RANK", "0") == "0":
        return []
    scratch = Path(tempfile.gettempdir()) / f"gradtrain-workers-{getpass.getuser()}"
    logging.getLogger("gradtrain").setLevel(logging.WARNING)
    # Given last, these win over the same keys on the command line.
    return [f"hydra.run.dir={scratch}", "hydra.output_subdir=null", "hydra/job_logging=stdout"]


if __name__ == "__main__":
    sys.argv += _quiet_worker_overrides()
    main()
    # Every file the run writes is closed by now (logging's handlers close at exit). Exempt the
    # objects torch, Hydra and pydantic created from the interpreter's final garbage collection,
    # which would only free memory the exit frees anyway: about 0.4 s, a quarter of a short run.
    gc.freeze()
    # Non-zero when a job of a sweep failed or diverged (see trainer/sweep_summary.py).
    sys.exit(sweep_exit_status())
