"""gradtrain's entry point: compose the config with Hydra, then validate, build and fit.

python train.py loss=quadratic
python train.py experiment=linear_regression optimizer=adam optimizer.lr=0.01
python train.py -m optimizer.lr=0.01,0.1,1.0
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float:
    # Imported here so that `--help` and config errors from Hydra come back before torch loads.
    from trainer.errors import GradtrainError
    from trainer.run import run

    hydra_cfg = HydraConfig.get()
    raw_config = OmegaConf.to_container(cfg, resolve=True)
    try:
        summary = run(raw_config, Path(hydra_cfg.runtime.output_dir))  # type: ignore[arg-type]
    except GradtrainError as exc:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # let the sweep record this job as failed and go on
        print(f"gradtrain: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    return float(summary["final_loss"])


if __name__ == "__main__":
    main()
    # Every file the run writes is closed by now (logging's handlers close at exit). Exempt the
    # objects torch, Hydra and pydantic created from the interpreter's final garbage collection,
    # which would only free memory the exit frees anyway: about 0.4 s, a quarter of a short run.
    gc.freeze()
