"""Reading the user's CSV, and the errors that name the file, line, column and value."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gradtrain.datasets import DataError, load_csv


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_regression_columns_become_float_features_and_targets(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b,y\n1,2,3.5\n4,5,6.5\n")
    data = load_csv(path, target="y")
    assert data.feature_names == ["a", "b"]
    assert torch.equal(data.dataset.inputs, torch.tensor([[1.0, 2.0], [4.0, 5.0]]))
    assert torch.equal(data.dataset.targets, torch.tensor([3.5, 6.5]))


def test_features_can_be_chosen_and_delimiter_set(tmp_path: Path) -> None:
    path = write(tmp_path, "a;b;y\n1;2;3\n4;5;6\n")
    data = load_csv(path, target="y", features=["b"], delimiter=";")
    assert data.dataset.inputs.tolist() == [[2.0], [5.0]]


def test_string_labels_map_to_sorted_class_indices(tmp_path: Path) -> None:
    path = write(tmp_path, "x,label\n1,dog\n2,cat\n3,dog\n")
    data = load_csv(path, target="label", task="classification")
    assert data.class_names == ["cat", "dog"]
    assert data.dataset.targets.tolist() == [1, 0, 1]
    assert data.dataset.targets.dtype == torch.int64


def test_integer_labels_keep_numeric_order(tmp_path: Path) -> None:
    path = write(tmp_path, "x,label\n1,10\n2,2\n3,10\n")
    data = load_csv(path, target="label", task="classification")
    assert data.class_names == ["2", "10"]
    assert data.dataset.targets.tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("a,y\n1,2\n", {"target": "z"}, "no column 'z' (target); columns are: a, y"),
        ("a,y\n1,2\n", {"target": "y", "features": ["q"]}, "no column 'q' (feature)"),
        ("a,y\n1,2\nabc,3\n", {"target": "y"}, "line 3, column 'a': 'abc' is not a number"),
        ("a,y\n1,2\n,3\n", {"target": "y"}, "line 3, column 'a': empty value"),
        ("a,y\n1,2\n3,\n", {"target": "y"}, "line 3, column 'y': empty value"),
        ("a,y\n1,2\n3\n", {"target": "y"}, "line 3: 1 fields, but the header has 2"),
        ("a,y\n1,s\n2,s\n", {"target": "y", "task": "classification"}, "single class 's'"),
        ("", {"target": "y"}, "the file is empty"),
        ("a,y\n", {"target": "y"}, "no data rows"),
    ],
)
def test_bad_files_name_the_file_and_the_place(
    tmp_path: Path, text: str, kwargs: dict[str, object], message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(DataError) as caught:
        load_csv(path, **kwargs)  # type: ignore[arg-type]
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        load_csv(tmp_path / "nope.csv", target="y")
