"""build.py: from a validated config to the pieces of a run, refusing what cannot train before
anything is written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import QuickRun

from gradtrain.build import build_data
from gradtrain.config import validate_config
from gradtrain.errors import ConfigError, GradtrainError

Quick = Callable[..., QuickRun]
Compose = Callable[..., dict[str, Any]]


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
