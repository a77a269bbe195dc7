"""dataset.streaming: chunks, sharding, the hashed validation split, refusals and exact resume."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import torch
from conftest import StopAtStep, TrainResult, make_trainer
from torch.utils.data import DataLoader

from gradtrain.checkpoint import LAST, load_checkpoint
from gradtrain.config import validate_config
from gradtrain.datasets import streaming
from gradtrain.datasets.streaming import ChunkStream, StreamLoader, TableSource, scan
from gradtrain.errors import ConfigError, DataError

Compose = Callable[..., dict[str, Any]]


def numbered_table(path: Path, rows: int, row_group_size: int = 300) -> Path:
    """Features a, b and a target that is the row's index: which rows a stream served can be
    read off its targets."""
    index = np.arange(rows, dtype=np.float32)
    table = pa.table({"a": np.sin(index), "b": np.cos(index) * 3, "y": index})
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=row_group_size)
    else:
        pa_csv.write_csv(table, path)
    return path


def served_rows(
    path: Path, split: str, ranks: int, workers: int, val_fraction: float = 0.25
) -> list[list[int]]:
    """The row indices each rank's stream serves in one epoch (a loader with `workers`)."""
    source = TableSource(path, "parquet", ["a", "b"], "y", "regression")
    plan = scan(source, seed=3, val_fraction=val_fraction, standardize=False)
    served = []
    for rank in range(ranks):
        stream = ChunkStream(source, plan, split, 3, val_fraction, ranks, rank)  # type: ignore[arg-type]
        chunks = DataLoader(stream, batch_size=None, num_workers=workers)
        served.append([int(v) for _, targets in chunks for v in targets.tolist()])
    return served


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Many chunks from a small file: several per row group, several per worker.
    monkeypatch.setattr(streaming, "CHUNK_ROWS", 128)
    monkeypatch.setattr(streaming, "CSV_BLOCK_BYTES", 4096)


def test_ranks_and_workers_share_the_training_rows_without_overlap(tmp_path: Path) -> None:
    path = numbered_table(tmp_path / "t.parquet", 1000)
    alone = served_rows(path, "train", ranks=1, workers=0)[0]
    shards = served_rows(path, "train", ranks=3, workers=1)
    assert len({len(shard) for shard in shards}) == 1  # as many rows on every rank (DDP)
    together = sorted(row for shard in shards for row in shard)
    assert len(together) == len(set(together))  # no row on two ranks or workers
    assert set(together) <= set(alone) and len(alone) - len(together) < 3
    assert served_rows(path, "train", ranks=1, workers=2)[0] == alone  # file order, any workers


def test_validation_rows_are_a_seeded_hash_of_the_row_index(tmp_path: Path) -> None:
    path = numbered_table(tmp_path / "t.parquet", 2000)
    val = served_rows(path, "val", ranks=1, workers=0)[0]
    train = served_rows(path, "train", ranks=1, workers=0)[0]
    assert not set(val) & set(train) and len(val) + len(train) == 2000
    assert 400 < len(val) < 600  # a quarter, drawn row by row
    flags = streaming.validation_rows(0, 2000, seed=3, val_fraction=0.25)
    assert flags.nonzero()[:, 0].tolist() == val  # the hash alone, no pass over the data
    split_across_ranks = served_rows(path, "val", ranks=2, workers=1)
    assert sorted(split_across_ranks[0] + split_across_ranks[1]) == val  # every row once
    other_seed = streaming.validation_rows(0, 2000, seed=4, val_fraction=0.25)
    assert not torch.equal(flags, other_seed)


def test_standardisation_uses_the_training_rows_statistics(tmp_path: Path) -> None:
    path = numbered_table(tmp_path / "t.parquet", 1000)
    source = TableSource(path, "parquet", ["a", "b"], "y", "regression")
    plan = scan(source, seed=3, val_fraction=0.25, standardize=True)
    train = torch.tensor(served_rows(path, "train", ranks=1, workers=0)[0])
    index = train.double()
    features = torch.stack([torch.sin(index), torch.cos(index) * 3], dim=1)
    assert plan.mean is not None and plan.std is not None
    torch.testing.assert_close(plan.mean, features.mean(0).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plan.std, features.std(0, correction=0).float(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("shuffle", [True, False])
def test_an_epoch_serves_every_training_row_once_in_batches(tmp_path: Path, shuffle: bool) -> None:
    path = numbered_table(tmp_path / "t.csv", 1000)
    source = TableSource(
        path, "csv", ["a", "b"], "y", "regression", raw_names={n: n for n in "aby"}
    )
    plan = scan(source, seed=0, val_fraction=0.0, standardize=False)
    assert len(plan.chunks) > 3  # (several CSV blocks)
    stream = ChunkStream(source, plan, "train", 0, 0.0, 1, 0)
    loader = StreamLoader(
        stream, 64, shuffle, 200, seed=0, drop_last=False, num_workers=0, pin_memory=False
    )
    rows = [int(v) for _, targets in loader for v in targets.tolist()]
    assert len(list(loader)) == len(loader) == 16
    assert sorted(rows) == list(range(1000))
    assert (rows == list(range(1000))) is not shuffle
    loader.set_epoch(1)
    again = [int(v) for _, targets in loader for v in targets.tolist()]
    assert (again != rows) is shuffle  # another epoch, another order


# ----------------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize(
    ("suffix", "overrides"),
    [
        (
            ".parquet",
            [
                "experiment=csv_regression",
                "model=mlp",
                "optimizer=adam",
                "model.dropout=0.2",
                "dataset.task=classification",
            ],
        ),
        (".csv", ["experiment=csv_regression", "dataset.num_workers=2"]),
    ],
    ids=["parquet mlp with dropout", "csv with two workers"],
)
def test_a_streamed_run_resumed_mid_epoch_ends_bit_identical(
    composed: Compose, tmp_path: Path, suffix: str, overrides: list[str]
) -> None:
    path = numbered_table(tmp_path / f"t{suffix}", 900)
    if "dataset.task=classification" in overrides:  # three classes by row
        table = pq.read_table(path)
        labels = pa.array([f"c{i % 3}" for i in range(900)])
        pq.write_table(table.set_column(2, "y", labels), path, row_group_size=300)
    raw = composed(
        *overrides,
        "dataset=csv",
        f"dataset.path={path}",
        "dataset.target=y",
        "dataset.streaming=true",
        "dataset.shuffle_buffer=100",
        "dataset.batch_size=50",
        "dataset.val_fraction=0.2",
        "loss=cross_entropy" if "dataset.task=classification" in overrides else "loss=mse",
        "logger=none",
        "trainer.max_epochs=2",
        "trainer.max_steps=null",
        "trainer.progress_bar=false",
    )
    straight = make_trainer(raw, tmp_path / "straight")
    straight.fit()
    stop = StopAtStep(9)  # mid-epoch (an epoch is ceil(train rows / 50) = 15 batches)
    first = make_trainer(raw, tmp_path / "resumed", stop)
    assert first.fit().stop_reason == "interrupted"
    stop.trainer = None
    checkpoint = load_checkpoint(tmp_path / "resumed" / LAST)
    assert checkpoint["step"] == 9 and checkpoint["batch_in_epoch"] == 9
    second = make_trainer(raw, tmp_path / "resumed")
    second.load_state_dict(checkpoint)
    assert second.fit().stop_reason == "max_epochs"
    for (name, p), q in zip(
        straight.module.state_dict().items(), second.module.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    assert second.state.val_metrics == straight.state.val_metrics


# ----------------------------------------------------------------------------------- refusals
def streamed(composed: Compose, path: Path, *overrides: str) -> dict[str, Any]:
    return composed(
        "experiment=csv_regression",
        f"dataset.path={path}",
        "dataset.target=y",
        "dataset.streaming=true",
        "logger=none",
        *overrides,
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer=lbfgs"], "optimizer=lbfgs is full-batch, but dataset.streaming=true"),
        (["dataset.batch_size=null"], "dataset.batch_size=null takes the whole table"),
        (["dataset.shuffle_buffer=0"], "dataset.shuffle_buffer: Input should be greater than 0"),
    ],
)
def test_streaming_settings_that_cannot_work_are_refused_by_key(
    composed: Compose, tmp_path: Path, overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(streamed(composed, tmp_path / "t.parquet", *overrides))
    assert caught.value.exit_code == 2
    assert message in str(caught.value)


def test_a_stream_shorter_than_one_batch_is_refused(composed: Compose, tmp_path: Path) -> None:
    path = numbered_table(tmp_path / "t.parquet", 40)
    raw = streamed(composed, path, "dataset.batch_size=64", "dataset.val_fraction=0")
    with pytest.raises(ConfigError) as caught:
        make_trainer(raw, tmp_path / "run")
    assert f"dataset.batch_size=64, but the stream of {path} holds 40 training rows" in str(
        caught.value
    )


@pytest.mark.slow
def test_train_py_refuses_a_csv_named_parquet_with_exit_2(
    train: Callable[..., TrainResult], tmp_path: Path
) -> None:
    path = tmp_path / "data.parquet"
    path.write_text("a,y\n1,2\n3,4\n")
    result = train(
        "experiment=csv_regression",
        f"dataset.path={path}",
        "dataset.target=y",
        "dataset.streaming=true",
    )
    assert result.returncode == 2
    assert "its suffix .parquet says Parquet, but the file is not one" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow  # a real torchrun job of two processes and a one-process run
def test_two_streamed_processes_of_batch_b_end_like_one_process_of_batch_2b(
    tmp_path: Path,
) -> None:
    from test_distributed import final_weights, one_process, run_to_end, torchrun

    path = numbered_table(tmp_path / "t.parquet", 768)
    table = pq.read_table(path)  # a learnable target instead of the row index
    target = pa.array((np.sin(np.arange(768)) * 2 - np.cos(np.arange(768))).astype(np.float32))
    pq.write_table(table.set_column(2, "y", target), path, row_group_size=300)
    job = [
        "experiment=csv_regression",
        f"dataset.path={path}",
        "dataset.target=y",
        "dataset.streaming=true",
        "dataset.shuffle=false",  # file order: rank p's batch k holds every other row of it
        "dataset.val_fraction=0",
        "trainer.max_epochs=2",
        "logger=none",
    ]
    two, one = tmp_path / "two", tmp_path / "one"
    result = run_to_end(torchrun(two, *job, "dataset.batch_size=32"), tmp_path)
    assert result.returncode == 0, result.stderr
    result = run_to_end(one_process(one, *job, "dataset.batch_size=64"), tmp_path)
    assert result.returncode == 0, result.stderr
    single, ddp = final_weights(one), final_weights(two)
    error = max((single[k] - ddp[k]).abs().max().item() for k in single)
    assert error < 1e-5
    summary = json.loads((two / "summary.json").read_text())
    assert summary["steps"] == 2 * 768 // 64  # 12 batches of 32 rows per process and epoch


def test_a_bad_cell_in_a_streamed_csv_is_named_before_training(tmp_path: Path) -> None:
    lines = ["a,y"] + [f"{i},{i}" for i in range(2000)]
    lines[1500] = "abc,3"  # line 1501, in a later block than the first
    path = tmp_path / "t.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as caught:
        streaming.build_streaming_data(
            str(path),
            "y",
            None,
            "regression",
            ",",
            "auto",
            True,
            0.0,
            16,
            True,
            10,
            False,
            0,
            False,
            0,
        )
    assert "column 'a': line 1501: CSV conversion error to float: invalid value 'abc'" in str(
        caught.value
    )
