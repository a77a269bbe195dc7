"""Public tables (scikit-learn's bundled copies, written to CSV) trained through the presets
with `dataset=csv`: validation accuracy and error close to scikit-learn's LogisticRegression and
LinearRegression fitted on the same split (slow: about a minute)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import compose_config

from gradtrain.datasets import InMemoryDataset
from gradtrain.run import run

pytestmark = pytest.mark.slow
datasets = pytest.importorskip("sklearn.datasets", reason='pip install -e ".[dev]"')
linear_model = pytest.importorskip("sklearn.linear_model")

VAL_FRACTION = 0.2
SEED = 0  # the config's default seed, which also seeds the split


def wine_alcohol() -> tuple[np.ndarray, np.ndarray]:
    """The wine table's alcohol content from its 12 other measurements: a regression."""
    wine = datasets.load_wine()
    return wine.data[:, 1:], wine.data[:, 0]


TABLES: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "iris": lambda: datasets.load_iris(return_X_y=True),  # 150 rows, 3 classes
    "wine": lambda: datasets.load_wine(return_X_y=True),  # 178 rows, 3 classes
    "breast_cancer": lambda: datasets.load_breast_cancer(return_X_y=True),  # 569 rows, 2
    "digits": lambda: datasets.load_digits(return_X_y=True),  # 1797 rows, 64 pixels, 10
    "diabetes": lambda: datasets.load_diabetes(return_X_y=True, scaled=False),  # 442 rows
    "wine_alcohol": wine_alcohol,  # 178 rows
}
CLASSIFICATION = [
    ("iris", "logistic_regression"),
    ("wine", "logistic_regression"),
    ("breast_cancer", "logistic_regression"),
    ("digits", "logistic_regression"),
    ("iris", "mlp_classification"),
    ("wine", "mlp_classification"),
]
REGRESSION = [
    ("diabetes", "csv_regression"),
    ("diabetes", "linear_regression"),
    ("wine_alcohol", "csv_regression"),
    ("wine_alcohol", "linear_regression"),
]


def write_csv(path: Path, features: np.ndarray, target: np.ndarray) -> None:
    header = [f"x{i}" for i in range(features.shape[1])] + ["target"]
    rows = [
        ",".join(map(repr, [*map(float, x), t.item()]))
        for x, t in zip(features, target, strict=True)
    ]
    path.write_text(",".join(header) + "\n" + "\n".join(rows) + "\n")


def same_split(n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The (train, validation) row indices gradtrain's seeded split takes, from its own code."""
    rows = InMemoryDataset(torch.arange(n_rows, dtype=torch.float64)[:, None], torch.zeros(n_rows))
    train, val = rows.split(VAL_FRACTION, seed=SEED)
    return train.inputs[:, 0].long().numpy(), val.inputs[:, 0].long().numpy()


def standardized(train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z-scores with the training rows' statistics, as dataset.standardize=true does."""
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std == 0] = 1.0
    return (train - mean) / std, (val - mean) / std


def gradtrain_summary(
    table: str, preset: str, tmp_path: Path, *extra: str
) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    features, target = TABLES[table]()
    write_csv(tmp_path / f"{table}.csv", features, target)
    raw = compose_config(
        [
            f"experiment={preset}",
            "dataset=csv",
            f"dataset.path={tmp_path / f'{table}.csv'}",
            "dataset.target=target",
            f"dataset.val_fraction={VAL_FRACTION}",
            "logger=none",
            "trainer.save_checkpoints=false",
            "trainer.progress_bar=false",
            *extra,
        ]
    )
    summary = run(raw, tmp_path / "run")
    assert summary["status"] == "completed", summary
    train, val = same_split(len(target))
    x_train, x_val = standardized(features[train], features[val])
    return summary, x_train, target[train], x_val, target[val]


@pytest.mark.parametrize(("table", "preset"), CLASSIFICATION)
def test_classification_presets_match_scikit_learns_accuracy(
    table: str, preset: str, tmp_path: Path
) -> None:
    summary, x_train, y_train, x_val, y_val = gradtrain_summary(
        table, preset, tmp_path, "dataset.task=classification"
    )
    reference = linear_model.LogisticRegression(max_iter=5000).fit(x_train, y_train)
    correct = round(summary["val_accuracy"] * len(y_val))
    reference_correct = round(reference.score(x_val, y_val) * len(y_val))
    print(f"{table} {preset}: {correct}/{len(y_val)}, scikit-learn {reference_correct}")
    assert correct >= reference_correct - 2  # at most two validation rows fewer right


@pytest.mark.parametrize(("table", "preset"), REGRESSION)
def test_regression_presets_match_scikit_learns_error(
    table: str, preset: str, tmp_path: Path
) -> None:
    summary, x_train, y_train, x_val, y_val = gradtrain_summary(table, preset, tmp_path)
    errors = {}
    for name, model in [
        ("LinearRegression", linear_model.LinearRegression()),
        ("Ridge", linear_model.Ridge(alpha=1.0)),
    ]:
        predicted = model.fit(x_train, y_train).predict(x_val)
        errors[name] = float(np.mean((predicted - y_val) ** 2))
    print(f"{table} {preset}: val MSE {summary['val_loss']:.4g}, scikit-learn {errors}")
    assert summary["val_loss"] <= 1.08 * min(errors.values())
