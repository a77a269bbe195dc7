"""Parquet and Arrow tables, the columnar CSV reader, and the messages that say what to set."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import torch

from gradtrain.config import validate_config
from gradtrain.datasets import DataError, load_csv
from gradtrain.datasets.csv_table import _load_fast, _load_slowly
from gradtrain.errors import ConfigError

Compose = Callable[..., dict[str, Any]]

TABLE = {"a": [1.0, 2.0, 3.5, 4.0], "b": [10, 20, 30, 40], "y": [0.5, 1.5, 2.5, 3.5]}
CSV = "a,b,y\n1,10,0.5\n2,20,1.5\n3.5,30,2.5\n4,40,3.5\n"


def write_table(path: Path, columns: dict[str, list[Any]]) -> Path:
    table = pa.table(columns)
    if path.suffix in (".parquet", ".pq"):
        pq.write_table(table, path)
    else:
        feather.write_feather(table, path)
    return path


@pytest.mark.parametrize("name", ["data.parquet", "data.pq", "data.arrow", "data.feather"])
def test_parquet_and_arrow_files_read_as_the_same_csv_does(tmp_path: Path, name: str) -> None:
    from_csv = load_csv(_write(tmp_path / "data.csv", CSV), target="y")
    table = load_csv(write_table(tmp_path / name, TABLE), target="y")
    assert table.feature_names == from_csv.feature_names == ["a", "b"]
    assert torch.equal(table.dataset.inputs, from_csv.dataset.inputs)
    assert torch.equal(table.dataset.targets, from_csv.dataset.targets)


def test_dataset_format_overrides_the_suffix(tmp_path: Path) -> None:
    path = write_table(tmp_path / "export.parquet", TABLE).rename(tmp_path / "export.bin")
    data = load_csv(path, target="y", features=["b"], format="parquet")
    assert data.dataset.inputs[:, 0].tolist() == [10.0, 20.0, 30.0, 40.0]


def test_parquet_labels_become_classes_in_numeric_order(tmp_path: Path) -> None:
    path = write_table(tmp_path / "c.parquet", {"x": [1.0, 2.0, 3.0], "label": [10, 2, 10]})
    data = load_csv(path, target="label", task="classification")
    assert data.class_names == ["2", "10"] and data.dataset.targets.tolist() == [1, 0, 1]


def test_a_csv_named_parquet_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "data.parquet", CSV)
    with pytest.raises(ConfigError) as caught:
        load_csv(path, target="y")
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert f"dataset.path={path}: its suffix .parquet says Parquet, but the file is not" in message
    assert "set dataset.format=csv" in message


def test_a_parquet_text_column_as_a_feature_is_refused_naming_the_key(tmp_path: Path) -> None:
    columns = {**TABLE, "city": ["Oslo", "Lima", "Pune", "Rome"]}
    path = write_table(tmp_path / "data.parquet", columns)
    with pytest.raises(ConfigError) as caught:
        load_csv(path, target="y")
    message = str(caught.value)
    assert "dataset.features:" in message and "'city' (string) cannot be a feature" in message
    assert "dataset.features=[a,b]" in message


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("a", None, "row 3, column 'a': empty (null) value"),
        ("a", float("nan"), "row 3, column 'a': nan is not a finite number"),
        ("y", 1e39, "row 3, column 'y': 1e+39 is beyond float32's range"),
    ],
)
def test_a_bad_parquet_cell_is_named_by_its_row(
    tmp_path: Path, column: str, value: float | None, message: str
) -> None:
    columns = {name: list(values) for name, values in TABLE.items()}
    columns[column][2] = value
    path = write_table(tmp_path / "data.parquet", columns)
    with pytest.raises(DataError) as caught:
        load_csv(path, target="y")
    assert f"{path}, {message}" in str(caught.value)


# --------------------------------------------------------------------- the fast and slow readers
@pytest.mark.parametrize(
    ("text", "kwargs"),
    [
        (" a , b ,y\n1, 2 ,3\n\n4,5,6\n", {"target": "y"}),
        ("x,label\n1, dog\n2,cat \n3,dog\n", {"target": "label", "task": "classification"}),
        (
            "x,z,label\n1,q,10\n2,q,2\n",
            {"target": "label", "task": "classification", "features": ["x"]},
        ),
        ("a;y\n3.4e38;1e-50\n", {"target": "y", "delimiter": ";"}),
    ],
)
def test_the_columnar_reader_agrees_with_the_cell_by_cell_one(
    tmp_path: Path, text: str, kwargs: dict[str, Any]
) -> None:
    path = _write(tmp_path / "data.csv", text)
    args = {"features": None, "task": "regression", "delimiter": ",", **kwargs}
    fast = _load_fast(path, **args)  # (raises SlowLook if it gave up: it must not here)
    slow = _load_slowly(path, **args)
    assert fast.feature_names == slow.feature_names and fast.class_names == slow.class_names
    assert torch.equal(fast.dataset.inputs, slow.dataset.inputs)
    assert torch.equal(fast.dataset.targets, slow.dataset.targets)


def test_a_latin1_byte_in_an_unused_column_is_still_named(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes("a,note,y\n1,ok,2\n3,caf\xe9,4\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"line 3, column 'note': 'caf\\xe9' is not UTF-8"):
        load_csv(path, target="y", features=["a"])


# ------------------------------------------------------------------ messages that say what to set
def test_text_labels_without_classification_say_to_set_the_task(tmp_path: Path) -> None:
    path = _write(tmp_path / "pets.csv", "weight,kind\n3.5,dog\n4.1,cat\n2.0,dog\n")
    with pytest.raises(DataError) as caught:
        load_csv(path, target="kind")
    message = str(caught.value)
    assert f"{path}, line 2, column 'kind': 'dog' is text" in message
    assert "set dataset.task=classification" in message and "loss=cross_entropy" in message


def test_a_text_feature_column_is_named_with_the_features_to_keep(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "a,city,b,y\n1,Oslo,2,3\n4,Lima,5,6\n7,Pune,8,9\n")
    with pytest.raises(DataError) as caught:
        load_csv(path, target="y")
    message = str(caught.value)
    assert "line 2, column 'city': 'Oslo' is not a number" in message
    assert "column 'city' holds text (3 of 3 values)" in message
    assert "leave it out with dataset.features=[a,b]" in message


def test_a_stray_word_in_a_numeric_column_is_a_cell_to_fix(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "a,y\n1,3\nn/a,6\n7,9\n2,1\n")
    with pytest.raises(DataError) as caught:
        load_csv(path, target="y")
    assert "line 3, column 'a': 'n/a' is not a number; fix or remove the row" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "suggestion"),
    [
        ("a;b;y\n1;2;3\n", "add 'dataset.delimiter=\";\"' to the command"),
        ("a|b|y\n1|2|3\n", "add 'dataset.delimiter=\"|\"' to the command"),
        ("a\tb\ty\n1\t2\t3\n", "add dataset.delimiter=tab to the command"),
    ],
)
def test_another_delimiter_is_detected_and_suggested_as_hydra_reads_it(
    tmp_path: Path, text: str, suggestion: str
) -> None:
    path = _write(tmp_path / "d.csv", text)
    with pytest.raises(DataError) as caught:
        load_csv(path, target="y")
    assert suggestion in str(caught.value)


@pytest.mark.parametrize(
    ("override", "delimiter"),
    [
        ('dataset.delimiter=";"', ";"),
        ("dataset.delimiter=tab", "\t"),
        (r"dataset.delimiter=\t", "\t"),
    ],
)
def test_the_suggested_delimiter_settings_compose_and_validate(
    composed: Compose, override: str, delimiter: str
) -> None:
    raw = composed("experiment=csv_regression", "dataset.path=d.csv", "dataset.target=y", override)
    assert validate_config(raw).dataset.delimiter == delimiter  # type: ignore[union-attr]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
