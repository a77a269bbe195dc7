"""Reading the user's CSV, and the errors that name the file, line, column and value."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import QuickRun, TrainResult

from gradtrain.datasets import DataError, InMemoryDataset, load_csv
from gradtrain.errors import ConfigError

Quick = Callable[..., QuickRun]


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
        ("a,y\n1,2\n3\n", {"target": "y"}, "line 3: 1 field, but the header has 2"),
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


# ------------------------------------------ reading the file: what used to end in a traceback
def test_lines_are_counted_across_quoted_line_breaks_and_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, 'a,note,y\n1,"two\nlines",2\n\nq,x,3\n')
    with pytest.raises(DataError, match=r"line 5, column 'a': 'q' is not a number"):
        load_csv(path, target="y", features=["a"])


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    data = load_csv(write(tmp_path, "a,y\n1,2\n\n3,4\n\n\n"), target="y")
    assert data.dataset.inputs.tolist() == [[1.0], [3.0]]


def test_a_utf8_byte_order_mark_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfa,y\n1,2\n3,4\n")
    data = load_csv(path, target="a")
    assert data.feature_names == ["y"] and data.dataset.targets.tolist() == [1.0, 3.0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("x,label\n1,caf\xe9\n2,tea\n", "line 2, column 'label': 'caf\\xe9' is not UTF-8"),
        ("x,\xe9t\xe9\n1,a\n2,b\n", "line 1, column 2: '\\xe9t\\xe9' is not UTF-8"),
    ],
)
def test_a_latin1_file_is_named_with_the_encoding_expected(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(DataError) as caught:
        load_csv(path, target="label", task="classification")
    assert f"{path}, {message}" in str(caught.value)
    assert "gradtrain reads CSV files as UTF-8" in str(caught.value)


def test_a_utf16_file_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "utf16.csv"
    path.write_bytes("a,y\n1,2\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"utf16\.csv: the file is UTF-16 or UTF-32 .* as UTF-8"):
        load_csv(path, target="y")


def test_a_nul_byte_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nul.csv"
    path.write_bytes(b"a,y\n1,2\n3\x00,4\n")
    with pytest.raises(DataError, match=r"line 3, column 'a': '3\\x00' holds a NUL byte"):
        load_csv(path, target="y")


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"{tmp_path}: a directory, not a file \(dataset.path\)"):
        load_csv(tmp_path, target="y")


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "a,y\n1,2\n")
    path.chmod(0)
    if os.access(path, os.R_OK):  # root (with CAP_DAC_OVERRIDE) reads it whatever its mode
        pytest.skip("this process can read a file of mode 000")
    with pytest.raises(DataError, match=r"data\.csv: cannot read the file: Permission denied"):
        load_csv(path, target="y")


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="Linux's /proc")
def test_a_read_error_is_named() -> None:
    """Reading /proc/self/mem from offset 0 fails with EIO, even for root."""
    with pytest.raises(DataError, match=r"/proc/self/mem: cannot read the file: Input/output"):
        load_csv("/proc/self/mem", target="y")


@pytest.mark.parametrize(
    ("row", "column"),
    [
        ("1" * 200_000 + ",3", "column 'a'"),
        ('1,"' + "x,y\n" * 50_000 + '"', "column 'y'"),  # quoted: its commas are not delimiters
    ],
)
def test_a_cell_over_the_csv_field_limit_is_named(tmp_path: Path, row: str, column: str) -> None:
    path = write(tmp_path, f"a,y\n1,2\n{row}\n")
    with pytest.raises(DataError) as caught:
        load_csv(path, target="y")
    message = str(caught.value)
    assert f"{path}, line 3, {column}: a cell of more than 131072 characters" in message
    assert "characters)" not in message  # the length is not known: it was read only that far
    assert len(message) < 400  # the value is cut short, not quoted whole


def test_an_unclosed_quote_is_suspected(tmp_path: Path) -> None:
    path = write(tmp_path, 'a,y\n1,2\n"3,4\n5,6\n')
    with pytest.raises(DataError) as caught:
        load_csv(path, target="y")
    assert "line 3: 1 field, but the header has 2 (a quoted cell runs on to line 5: an " in str(
        caught.value
    )


def test_a_header_holding_another_delimiter_suggests_it(tmp_path: Path) -> None:
    path = write(tmp_path, "a;y\n1;2\n")
    with pytest.raises(DataError) as caught:
        load_csv(path, target="y")
    # Quoted as Hydra needs it on a shell's command line.
    expected = "columns are: a;y (one column: is the delimiter ';'? add 'dataset.delimiter=\";\"'"
    assert expected in str(caught.value)


def test_train_py_reports_a_latin1_file_in_one_paragraph(
    train: Callable[..., TrainResult], tmp_path: Path
) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("a,y\n1,2\n2,caf\xe9\n".encode("latin-1"))
    result = train("experiment=csv_regression", f"dataset.path={path}", "dataset.target=y")
    assert result.returncode == 1
    assert "Traceback" not in result.output
    assert f"gradtrain: {path}, line 3, column 'y': 'caf\\xe9' is not UTF-8" in result.stderr
    assert not (result.run_dir / "summary.json").exists()


# ------------------------------------------------------------------------------ headers and cells
@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("a,a,y", "line 1: column 'a' appears twice in the header (columns 1 and 2)"),
        ("a, a,y", "line 1: column 'a' appears twice in the header (columns 1 and 2)"),
        ("a,y,y", "line 1: column 'y' appears twice in the header (columns 2 and 3)"),
        ("a,,y", "line 1, column 2: the header gives this column no name"),
        ("a,y,", "line 1, column 3: the header gives this column no name"),
    ],
)
def test_header_names_every_column_once(tmp_path: Path, header: str, message: str) -> None:
    path = write(tmp_path, f"{header}\n1,2,3\n4,5,6\n")
    with pytest.raises(DataError) as caught:
        load_csv(path, target="y")
    assert f"{path}, {message}" in str(caught.value)


def test_a_duplicate_column_is_refused_even_when_unused(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b,b,y\n1,2,3,4\n5,6,7,8\n")
    with pytest.raises(DataError, match="column 'b' appears twice"):
        load_csv(path, target="y", features=["a"])


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (["a", "y"], "dataset.features lists the target 'y'"),
        (["a", "a"], "dataset.features lists 'a' twice"),
    ],
)
def test_features_that_leak_the_target_or_repeat_are_a_config_error(
    tmp_path: Path, features: list[str], message: str
) -> None:
    path = write(tmp_path, "a,b,y\n1,2,3\n4,5,6\n")
    with pytest.raises(ConfigError) as caught:
        load_csv(path, target="y", features=features)
    assert caught.value.exit_code == 2
    assert message in str(caught.value) and str(path) in str(caught.value)
    assert "a, b" in str(caught.value)  # the columns there are to choose from


def test_an_unknown_feature_names_the_columns_there_are(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b,y\n1,2,3\n")
    with pytest.raises(DataError, match=r"no column 'q' \(feature\); columns are: a, b, y"):
        load_csv(path, target="y", features=["a", "q"])


@pytest.mark.parametrize(
    ("cell", "reason"),
    [
        ("nan", "is not a finite number"),
        ("NaN", "is not a finite number"),
        ("inf", "is not a finite number"),
        ("-Infinity", "is not a finite number"),
        ("1e400", "is not a finite number"),  # too big even for Python's float64
        ("1e39", "is beyond float32's range"),
        ("-3.5e38", "is beyond float32's range"),
    ],
)
@pytest.mark.parametrize("column", ["a", "y"])
def test_non_finite_and_float32_overflowing_cells_are_refused(
    tmp_path: Path, cell: str, reason: str, column: str
) -> None:
    row = f"{cell},3" if column == "a" else f"3,{cell}"
    path = write(tmp_path, f"a,y\n1,2\n{row}\n4,5\n")
    with pytest.raises(DataError) as caught:
        load_csv(path, target="y")
    assert f"{path}, line 3, column '{column}': '{cell}' {reason}" in str(caught.value)


def test_the_largest_float32_and_underflow_to_zero_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "a,y\n3.4e38,1\n1e-50,2\n")
    data = load_csv(path, target="y")
    assert data.dataset.inputs[:, 0].tolist() == [pytest.approx(3.4e38), 0.0]


def test_the_first_bad_cell_in_file_order_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b,y\n1,2,3\n1,nan,3\ninf,2,3\n")
    with pytest.raises(DataError, match=r"line 3, column 'b': 'nan'"):
        load_csv(path, target="y")


@pytest.mark.parametrize("label", ["nan", "NaN", "inf"])
def test_a_missing_value_marker_is_not_a_class(tmp_path: Path, label: str) -> None:
    path = write(tmp_path, f"x,label\n1,0\n2,{label}\n3,1\n")
    with pytest.raises(DataError, match=rf"line 3, column 'label': '{label}' is not a finite"):
        load_csv(path, target="label", task="classification")


@pytest.mark.parametrize("split", ["training", "validation"])
def test_a_non_finite_cell_stops_the_run_before_training(
    quick_run: Quick, quick_config: Callable[..., dict[str, Any]], tmp_path: Path, split: str
) -> None:
    """Before: a NaN in a training row "diverged" (lower the learning rate), and one in a
    validation row completed with val_loss null."""
    overrides = ["experiment=csv_regression", "dataset.target=y"]
    cfg = quick_config(*overrides, "dataset.path=x")
    rows = torch.arange(20.0)  # row i holds the value i, so the split says which rows it took
    train_rows, val_rows = InMemoryDataset(rows[:, None], rows).split(
        cfg["dataset"]["val_fraction"], seed=cfg["seed"]
    )
    row = int((train_rows if split == "training" else val_rows).targets[0])
    lines = [f"{i},{2 * i}" if i != row else "nan,1" for i in range(20)]
    path = write(tmp_path, "a,y\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataError) as caught:
        quick_run(*overrides, f"dataset.path={path}", run_dir=tmp_path / "run")
    assert caught.value.exit_code == 1
    line = row + 2  # the header is line 1
    assert f"{path}, line {line}, column 'a': 'nan' is not a finite number" in str(caught.value)
    assert not (tmp_path / "run" / "summary.json").exists()


# -------------------------------------------------------------------------------------- classes
def test_many_classes_are_summarised_on_the_log_line(
    quick_run: Quick, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [f"{i},class{i:04d}" for i in range(1000)]
    path = write(tmp_path, "a,y\n" + "\n".join(rows * 2) + "\n")
    with caplog.at_level(logging.INFO, logger="gradtrain"):
        quick_run(
            "experiment=csv_regression",
            f"dataset.path={path}",
            "dataset.target=y",
            "dataset.task=classification",
            "loss=cross_entropy",
        )
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Classes")]
    assert line.startswith("Classes of 'y': {0: 'class0000', 1: 'class0001'")
    assert line.endswith(", ..., 999: 'class0999'} (1000 classes)")
    assert len(line) < 200


def test_few_classes_are_all_listed(tmp_path: Path) -> None:
    data = load_csv(
        write(tmp_path, "x,label\n1,dog\n2,cat\n"), target="label", task="classification"
    )
    assert data.describe_classes() == "{0: 'cat', 1: 'dog'}"


def test_a_target_with_about_one_row_per_class_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [f"{i},{i * 0.37:.2f}" for i in range(300)]
    path = write(tmp_path, "a,y\n" + "\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="gradtrain"):
        load_csv(path, target="y", task="classification")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{path}: target 'y' has 300 classes in 300 rows" in warning
    assert "dataset.task=regression" in warning


def test_classes_with_several_rows_each_are_not_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [f"{i},{i % 50}" for i in range(300)]
    with caplog.at_level(logging.WARNING, logger="gradtrain"):
        load_csv(
            write(tmp_path, "a,y\n" + "\n".join(rows) + "\n"), target="y", task="classification"
        )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
