"""Shared fixtures: real Hydra composition of the real configs, shrunk in-process runs of them,
real `train.py` subprocesses, and real TensorBoard event files read back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

if TYPE_CHECKING:
    from gradtrain.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Runs in this process use one intra-op thread. The models here are tiny, and on a machine
    whose cores other work shares, torch's second OpenMP thread mostly waits for a core at every
    op: the MLP preset took 20 s instead of 0.3 s on two busy cores. Results do not depend on it
    beyond float rounding, and no test compares an in-process run with a subprocess's
    (`python train.py` subprocesses keep torch's default)."""
    import torch

    torch.set_num_threads(1)


def compose_config(overrides: list[str] | None = None) -> dict[str, Any]:
    """The config `python train.py <overrides>` would get, as plain Python."""
    with initialize_config_module("gradtrain.configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides or [])
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return container


@pytest.fixture
def composed() -> Callable[..., dict[str, Any]]:
    """Compose the real configs with Hydra's compose API: `composed("loss=rosenbrock")`."""

    def make(*overrides: str) -> dict[str, Any]:
        return compose_config(list(overrides))

    return make


# What an in-process test run needs and nothing more: `debug=fast`, the smoke-run preset users have
# too (20 steps, no logger, no checkpoints, no progress bar). A test's own overrides come after it
# and win; with logger=tensorboard, figures stay off unless the test sets logger.figures itself
# (drawing them costs a matplotlib import and a render per run).
def quick_overrides(overrides: Sequence[str]) -> list[str]:
    given = {override.split("=", 1)[0].lstrip("+~") for override in overrides}
    shrunk = ["debug=fast"]
    if "logger=tensorboard" in overrides and "logger.figures" not in given:
        shrunk.append("logger.figures=false")
    return [*shrunk, *overrides]


@pytest.fixture
def quick_config() -> Callable[..., dict[str, Any]]:
    """The composed config of a shrunk run: `quick_config("loss=rosenbrock")` (see
    quick_overrides; e.g. "logger=tensorboard" or "trainer.max_steps=null" undo the shrinking)."""

    def make(*overrides: str) -> dict[str, Any]:
        return compose_config(quick_overrides(overrides))

    return make


@dataclass
class QuickRun:
    summary: dict[str, Any]
    run_dir: Path

    def scalars(self) -> dict[str, list[tuple[int, float]]]:
        return read_scalars(self.run_dir / "tensorboard")


@pytest.fixture
def quick_run(
    quick_config: Callable[..., dict[str, Any]], tmp_path: Path
) -> Callable[..., QuickRun]:
    """`gradtrain.run.run` in this process on `quick_config(*overrides)`, each run in a fresh
    folder under tmp_path (or `run_dir`). Errors propagate as train.py would report them."""
    counter = iter(range(1000))

    def make(*overrides: str, run_dir: Path | None = None) -> QuickRun:
        from gradtrain.run import run

        run_dir = run_dir or tmp_path / f"quick{next(counter)}"
        return QuickRun(run(quick_config(*overrides), run_dir), run_dir)

    return make


class TrainResult:
    def __init__(self, completed: subprocess.CompletedProcess[str], run_dir: Path) -> None:
        self.returncode = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr
        self.run_dir = run_dir

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads((self.run_dir / "summary.json").read_text())

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def train(tmp_path: Path) -> Callable[..., TrainResult]:
    """Run `python train.py <args>` in a subprocess with its run directory under tmp_path."""
    counter = iter(range(1000))

    def run(*args: str, run_dir: Path | None = None, timeout: float = 120) -> TrainResult:
        run_dir = run_dir or tmp_path / f"run{next(counter)}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        completed = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return TrainResult(completed, run_dir)

    return run


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the event files under log_dir, as (step, value) lists."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


class RecordingSink:
    """A MetricSink that keeps what it is given."""

    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = {}

    def log_scalars(self, scalars: dict[str, Any], step: int) -> None:
        for tag, value in scalars.items():
            self.scalars.setdefault(tag, []).append((step, float(value)))

    def log_text(self, tag: str, text: str) -> None:
        pass

    def log_hparams(self, hparams: Any, metrics: Any, step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class StopAfter:
    """Stands in for SignalStop: a stop request after `steps` updates (the trainer asks once
    per update), as if SIGTERM had arrived then; or, with `then`, something else at that
    poll (a second Ctrl-C, a crash)."""

    def __init__(self, steps: int, then: Callable[[], None] | None = None) -> None:
        self.steps = steps
        self.then = then
        self.polls = 0
        self.signal_number: int | None = None

    def __call__(self, checkpoints: bool = True) -> StopAfter:  # SignalStop(checkpoints=...)
        return self

    @property
    def requested(self) -> bool:
        self.polls += 1
        if self.polls == self.steps:
            if self.then is not None:
                self.then()
            self.signal_number = signal.SIGTERM
        return self.signal_number is not None

    def __enter__(self) -> StopAfter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class StopAtStep:
    """A stop request that fires once the trainer reaches `step`, as a signal would."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.trainer: Trainer | None = None

    @property
    def requested(self) -> bool:
        return self.trainer is not None and self.trainer.state.step >= self.step


def make_trainer(
    raw: dict[str, Any], directory: Path, stop: StopAtStep | None = None, keep: int = 2
) -> Trainer:
    """A Trainer of the composed `raw` config, checkpointing into `directory`, recording its
    scalars, and stopped by `stop` when one is given."""
    from gradtrain.build import build_trainer
    from gradtrain.checkpoint import CheckpointWriter
    from gradtrain.config import validate_config
    from gradtrain.run import seed_everything

    cfg = validate_config(raw)
    seed_everything(cfg.seed)
    trainer = build_trainer(
        cfg, RecordingSink(), checkpointer=CheckpointWriter(directory, keep=keep), stop_request=stop
    )
    if stop is not None:
        stop.trainer = trainer
    return trainer
