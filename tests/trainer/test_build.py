"""build.py: from a validated config to the pieces of a run, refusing what cannot train before
anything is written."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import torch
from conftest import QuickRun, RecordingSink

from gradtrain.build import build_data, build_trainer
from gradtrain.config import TrainerConfig, validate_config
from gradtrain.errors import ConfigError, GradtrainError
from gradtrain.loop import Trainer

Quick = Callable[..., QuickRun]
Compose = Callable[..., dict[str, Any]]


@pytest.fixture
def deadline() -> Iterator[Callable[[float], None]]:
    """`deadline(seconds)`: fail the test, instead of hanging it, if it runs longer (a loop
    that spins without progress is pure Python, so the alarm's exception interrupts it)."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError("still running at the deadline: the loop spins")

    previous = signal.signal(signal.SIGALRM, expire)
    yield lambda seconds: signal.setitimer(signal.ITIMER_REAL, seconds)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------- epochs with no batch
@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (
            ["dataset.n_samples=10", "dataset.drop_last=true"],
            ["10 training rows", "dataset.batch_size=64", "dataset.drop_last=true"],
        ),
        (
            ["dataset.n_samples=100", "dataset.val_fraction=0.5", "dataset.drop_last=true"],
            ["50 training rows", "100 rows less dataset.val_fraction=0.5", "batch_size=64"],
        ),
        (
            # Without shuffling too: drop_last applies to the training batches either way.
            ["dataset.n_samples=10", "dataset.drop_last=true", "dataset.shuffle=false"],
            ["10 training rows", "dataset.drop_last=true"],
        ),
    ],
)
def test_an_epoch_without_a_batch_is_refused_before_training_and_writes_nothing(
    quick_run: Quick,
    tmp_path: Path,
    deadline: Callable[[float], None],
    overrides: list[str],
    said: list[str],
) -> None:
    deadline(30)  # the loop used to spin here forever, deaf to SIGTERM
    with pytest.raises(ConfigError) as caught:
        quick_run(
            "experiment=linear_regression",
            "logger=tensorboard",
            *overrides,
            run_dir=tmp_path / "run",
        )
    assert caught.value.exit_code == 2
    message = str(caught.value)
    assert "leaves an epoch with no batch" in message
    for words in [*said, "set dataset.drop_last=false or dataset.batch_size"]:
        assert words in message, message
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_trainer_given_an_empty_loader_refuses_rather_than_spins() -> None:
    # The loop's own guard, for loaders that do not come through build().
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="no batch"):
        Trainer(
            model,
            torch.nn.MSELoss(),
            torch.optim.SGD(model.parameters(), lr=0.1),
            [],
            TrainerConfig(max_steps=5),
            torch.device("cpu"),
            RecordingSink(),  # type: ignore[arg-type]
        )


class _Hollow:
    """A loader that claims batches and yields none (a broken custom dataset)."""

    def __len__(self) -> int:
        return 3

    def __iter__(self) -> Iterator[Any]:
        return iter(())


def test_an_epoch_that_yields_no_batch_stops_the_loop(
    composed: Compose, deadline: Callable[[float], None]
) -> None:
    deadline(30)
    cfg = validate_config(composed("experiment=linear_regression", "trainer.max_steps=5"))
    trainer = build_trainer(cfg, RecordingSink())  # type: ignore[arg-type]
    trainer.train_loader = _Hollow()
    with pytest.raises(RuntimeError, match="no batch"):
        trainer.fit()


# ------------------------------------------------------------------------------ drop_last
@pytest.mark.parametrize("shuffle", [True, False])
def test_drop_last_drops_the_short_training_batch_whatever_shuffle_says(
    composed: Compose, shuffle: bool
) -> None:
    cfg = validate_config(
        composed(
            "experiment=linear_regression",
            "dataset.n_samples=100",
            "dataset.batch_size=32",
            "dataset.val_fraction=0.3",
            "dataset.drop_last=true",
            f"dataset.shuffle={str(shuffle).lower()}",
        )
    )
    data = build_data(cfg.dataset, seed=0)
    assert data.train_loader is not None and data.val_loader is not None
    assert [len(targets) for _, targets in data.train_loader] == [32, 32]  # 70 rows: 6 dropped
    # Validation never drops: every held-out row is evaluated.
    assert sum(len(targets) for _, targets in data.val_loader) == 30


# ------------------------------------------------------------------ trainer.monitor=val_loss
def test_val_loss_monitored_on_a_split_too_small_to_hold_a_row_is_refused(
    quick_run: Quick, tmp_path: Path
) -> None:
    # 0.01 of 10 rows rounds to none: known only once the data is; said before training.
    with pytest.raises(ConfigError) as caught:
        quick_run(
            "experiment=linear_regression",
            "dataset.n_samples=10",
            "dataset.val_fraction=0.01",
            "trainer.monitor=val_loss",
            run_dir=tmp_path / "run",
        )
    message = str(caught.value)
    assert "trainer.monitor=val_loss" in message and "dataset.val_fraction=0.01" in message
    assert not (tmp_path / "run" / "summary.json").exists()


# ----------------------------------------------------------- refused before anything is written
def test_a_bad_csv_is_reported_before_the_event_file_is_created(
    quick_run: Quick, tmp_path: Path
) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("a,y\n1,2\n2,x\n")
    with pytest.raises(GradtrainError, match="is not a number"):
        quick_run(
            "experiment=csv_regression",
            f"dataset.path={path}",
            "dataset.target=y",
            "logger=tensorboard",
            run_dir=tmp_path / "run",
        )
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_val_fraction_leaving_no_training_rows_is_a_config_error_that_writes_nothing(
    quick_run: Quick, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"dataset.val_fraction=0.99 leaves no training rows"):
        quick_run(
            "experiment=linear_regression",
            "dataset.n_samples=10",
            "dataset.val_fraction=0.99",
            "logger=tensorboard",
            run_dir=tmp_path / "run",
        )
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_an_allocation_that_fails_names_the_keys_that_size_it(
    quick_run: Quick, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the estimate in config.py lets through (it counts lower bounds) can still fail in
    # torch's allocator; that too is a message naming the sizes, not a traceback.
    from gradtrain.datasets import synthetic

    def no_memory(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 4000000000 bytes. Error code 12"
        )

    monkeypatch.setattr(synthetic.torch, "randn", no_memory)
    with pytest.raises(GradtrainError) as caught:
        quick_run("experiment=linear_regression", "logger=tensorboard", run_dir=tmp_path / "run")
    message = str(caught.value)
    assert message.startswith("Not enough memory to build this run")
    assert "dataset.n_samples=1024 x dataset.n_features=8" in message
    assert "you tried to allocate 4000000000 bytes" in message
    assert not (tmp_path / "run" / "tensorboard").exists()
