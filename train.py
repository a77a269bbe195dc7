"""gradtrain's entry point: compose the config with Hydra, then validate, build and fit.

python train.py loss=quadratic
python train.py experiment=linear_regression optimizer=adam optimizer.lr=0.01
python train.py -m optimizer.lr=0.01,0.1,1.0
torchrun --nproc_per_node=2 train.py experiment=linear_regression   (README: Scaling out)
"""

from __future__ import annotations

import functools
import gc
import getpass
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gradtrain.plugin_configs import add_plugin_configs
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
        from gradtrain.sweeps.names import swept_keys

        # Only the keys this job was swept over go to the HParams tab.
        exclude_keys = hydra_cfg.job.config.override_dirname.exclude_keys
        swept = swept_keys(hydra_cfg.overrides.task, exclude_keys)
        # A failed job must not end the sweep: it is recorded, and the others go on.
        return run_sweep_job(raw_config, run_dir, hparam_keys=swept)  # type: ignore[arg-type]
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


def _screen_hydra_keys() -> None:
    """Check the `hydra` node of every composed config before Hydra acts on it.

    Hydra creates objects the config names under `hydra.*` (callbacks, a launcher's or a
    sweeper's arguments, logging factories: any importable callable), right after composing and
    before `main` or anything else of gradtrain runs; a config file (or an override such as
    `+hydra.callbacks.x={_target_:...}`) could reach any object through them. gradtrain lets a
    config name its own objects only (`gradtrain.hydra_keys.hydra_config_problems`), so Hydra's
    config loader, which every composition goes through, is wrapped to refuse the rest first:
    exit 2, before Hydra has configured logging or made the run folder.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    load = ConfigLoaderImpl.load_configuration

    @functools.wraps(load)
    def screened(self: ConfigLoaderImpl, *args: Any, **kwargs: Any) -> DictConfig:
        try:
            cfg = load(self, *args, **kwargs)
        except ConfigCompositionException as error:
            _exit_on_unknown_key(error, functools.partial(load, self), args, kwargs)
            raise
        _exit_on_foreign_objects(cfg.hydra)
        run_mode = kwargs.get("run_mode", args[2] if len(args) > 2 else RunMode.RUN)
        _exit_on_unusable_folder(cfg.hydra, run_mode)
        return cfg

    ConfigLoaderImpl.load_configuration = screened  # type: ignore[method-assign]


def _exit_on_unknown_key(
    error: ConfigCompositionException,
    load: Callable[..., DictConfig],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """Exit 2 naming the closest real key when an override names a key no config has.

    Hydra would suggest `+trainer.max_step=5`, which adds the typo for the schema to refuse.
    The config is composed once more without that override, to see the keys that do exist.
    """
    from gradtrain.errors import ConfigError
    from gradtrain.suggest import unknown_override_problem

    overrides = list(kwargs.get("overrides", args[1] if len(args) > 1 else []))

    def compose(chosen: list[str]) -> dict[str, Any]:
        return _plain(load(*args, **{**kwargs, "overrides": chosen}))  # type: ignore[no-any-return]

    problem = unknown_override_problem(str(error), overrides, compose)
    if problem is None:
        return
    print(f"{_who()}: {ConfigError([problem])}", file=sys.stderr)
    sys.exit(ConfigError.exit_code)


def _exit_on_foreign_objects(hydra_node: DictConfig) -> None:
    """Exit 2 naming each object the `hydra` node names that is not gradtrain's to allow."""
    from gradtrain.errors import ConfigError
    from gradtrain.hydra_keys import hydra_config_problems

    problems = hydra_config_problems(_plain(hydra_node))
    if problems:
        print(f"{_who()}: {ConfigError(problems)}", file=sys.stderr)
        sys.exit(ConfigError.exit_code)


def _exit_on_unusable_folder(hydra_node: DictConfig, run_mode: RunMode) -> None:
    """Exit 1 with a message when the run (or sweep) folder cannot be made or written: Hydra
    makes it before gradtrain runs, and would fail there with a traceback."""
    key = "hydra.sweep.dir" if run_mode == RunMode.MULTIRUN else "hydra.run.dir"
    node = hydra_node.sweep if run_mode == RunMode.MULTIRUN else hydra_node.run
    try:
        folder = Path(str(node.dir))
    except OmegaConfBaseException:
        return  # (an interpolation Hydra resolves later: checked by gradtrain when it runs)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} cannot be written"
    if problem is not None:
        print(f"{_who()}: {key}={folder}: {problem}; choose another {key}", file=sys.stderr)
        sys.exit(1)


def _plain(node: Any) -> Any:
    """`node` as dicts and lists, each interpolation resolved where it can be now; one that
    cannot yet (Hydra fills in `hydra.job.num`, `hydra.runtime.output_dir` when a job starts)
    stays as its text (those are paths, names and numbers)."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    plain = {}
    for key in keys:
        try:
            value = node[key]
        except OmegaConfBaseException:  # (an interpolation of a value Hydra sets later)
            value = OmegaConf.to_container(node, resolve=False)[key]  # type: ignore[index]
        plain[key] = _plain(value) if isinstance(value, DictConfig | ListConfig) else value
    return plain if isinstance(node, DictConfig) else list(plain.values())


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


def _resume_overrides(arguments: list[str]) -> list[str]:
    """`hydra.sweep.dir=<folder>` when the command continues a search in `<folder>`
    (`hydra.sweeper.resume=<folder>`, gradtrain's Optuna sweeper) and names no sweep folder:
    the search's jobs and summary then go into the folder that holds its study."""
    resume = [a.split("=", 1)[1] for a in arguments if a.startswith("hydra.sweeper.resume=")]
    if (
        not resume
        or resume[-1] in ("", "null")
        or any(a.startswith("hydra.sweep.dir=") for a in arguments)
    ):
        return []
    return [f"hydra.sweep.dir={resume[-1]}"]


if __name__ == "__main__":
    sys.argv += _quiet_worker_overrides()
    sys.argv += _resume_overrides(sys.argv[1:])
    _screen_hydra_keys()
    add_plugin_configs()  # installed plugins' YAML (model=polynomial): README, Plugins
    main()
    # Every file the run writes is closed by now (logging's handlers close at exit). Exempt the
    # objects torch, Hydra and pydantic created from the interpreter's final garbage collection,
    # which would only free memory the exit frees anyway: about 0.4 s, a quarter of a short run.
    gc.freeze()
    # Non-zero when a job of a sweep failed or diverged (see trainer/sweep_summary.py).
    sys.exit(sweep_exit_status())
