"""The user's own data: a CSV file with a header row, read into an in-memory dataset."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from gradtrain.datasets.tensor import InMemoryDataset
from gradtrain.errors import DataError


@dataclass
class CsvData:
    dataset: InMemoryDataset
    feature_names: list[str]
    # Classification: class index -> the label as written in the file.
    class_names: list[str] = field(default_factory=list)


def load_csv(
    path: str | Path,
    target: str,
    features: list[str] | None = None,
    task: Literal["regression", "classification"] = "regression",
    delimiter: str = ",",
) -> CsvData:
    """Read `path`; `features=None` takes every column but the target.

    Lines are numbered as in an editor (the header is line 1).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (dataset.path)")
    with path.open(newline="") as file:
        reader = csv.reader(file, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: the file is empty; it needs a header row")
        header = [name.strip() for name in header]
        rows = list(reader)
    wanted = [target, *(features if features is not None else [])]
    for name in wanted:
        if name not in header:
            role = "target" if name == target else "feature"
            raise DataError(
                f"{path}: no column '{name}' ({role}); columns are: {', '.join(header)}"
            )
    feature_names = features if features is not None else [n for n in header if n != target]
    if not feature_names:
        raise DataError(f"{path}: no feature columns besides the target '{target}'")
    if not rows:
        raise DataError(f"{path}: the file has a header but no data rows")

    column = {name: index for index, name in enumerate(header)}
    feature_rows: list[list[float]] = []
    labels: list[str] = []
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(
                f"{path}, line {line}: {len(row)} fields, but the header has {len(header)}"
            )
        feature_rows.append(
            [_number(path, line, name, row[column[name]]) for name in feature_names]
        )
        label = row[column[target]].strip()
        if not label:
            raise DataError(f"{path}, line {line}, column '{target}': empty value")
        labels.append(label)

    inputs = torch.tensor(feature_rows, dtype=torch.float32)
    if task == "regression":
        values = [_number(path, line, target, label) for line, label in enumerate(labels, start=2)]
        return CsvData(InMemoryDataset(inputs, torch.tensor(values)), feature_names)

    class_names = _sorted_labels(set(labels))
    if len(class_names) < 2:
        raise DataError(
            f"{path}: target column '{target}' has a single class '{class_names[0]}'; "
            "classification needs at least 2"
        )
    index = {name: i for i, name in enumerate(class_names)}
    targets = torch.tensor([index[label] for label in labels], dtype=torch.int64)
    return CsvData(InMemoryDataset(inputs, targets), feature_names, class_names)


def _number(path: Path, line: int, column: str, text: str) -> float:
    text = text.strip()
    if not text:
        raise DataError(f"{path}, line {line}, column '{column}': empty value")
    try:
        return float(text)
    except ValueError:
        raise DataError(
            f"{path}, line {line}, column '{column}': '{text}' is not a number"
        ) from None


def _sorted_labels(labels: set[str]) -> list[str]:
    """Integer labels in numeric order (so 2 < 10), anything else alphabetically."""
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)
