"""Presets compose with any data: every `experiment` with every `dataset` and every `optimizer`
either trains or is refused with one line that names what to change."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from conftest import compose_config, quick_overrides

from gradtrain.errors import ConfigError
from gradtrain.run import run

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# (the package `configs` is YAML; the file names are the options)
EXPERIMENTS = sorted(path.stem for path in (CONFIGS / "experiment").glob("*.yaml"))
DATASETS = sorted(path.stem for path in (CONFIGS / "dataset").glob("*.yaml"))
OPTIMIZERS = sorted(path.stem for path in (CONFIGS / "optimizer").glob("*.yaml"))
STEPS = 3


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 rows, two numeric features and an integer target (0/1): a regression target as it is
    read by default, and labels with dataset.task=classification."""
    path = tmp_path_factory.mktemp("csv") / "small.csv"
    rows = [f"{i % 7 - 3},{(i * 5) % 11 - 5},{int(i % 7 > 3)}" for i in range(40)]
    path.write_text("a,b,y\n" + "\n".join(rows) + "\n")
    return path


def shrunk(dataset: str, csv: Path) -> list[str]:
    """What each dataset needs to be tiny (and, for csv, a file): the tests' knowledge, not the
    preset's."""
    if dataset == "csv":
        return [f"dataset.path={csv}", "dataset.target=y"]
    if dataset == "none":
        return []
    return ["dataset.n_samples=40"]


def outcome(overrides: list[str], run_dir: Path) -> tuple[str, Any]:
    """("trained", summary) or ("refused", the ConfigError's problems)."""
    raw = compose_config(quick_overrides([*overrides, f"trainer.max_steps={STEPS}"]))
    try:
        return "trained", run(raw, run_dir)
    except ConfigError as refused:
        return "refused", refused.problems


def check(experiment: str, dataset: str, optimizer: str, csv: Path, run_dir: Path) -> str:
    overrides = [f"experiment={experiment}", f"dataset={dataset}", f"optimizer={optimizer}"]
    kind, result = outcome([*overrides, *shrunk(dataset, csv)], run_dir)
    if kind == "trained":
        assert result["status"] == "completed", (overrides, result)
        assert result["steps"] == STEPS, (overrides, result)
    else:
        assert len(result) == 1, (overrides, result)  # one cause, one line
        (problem,) = result
        assert "\n" not in problem
        # ... that names what to change: a group choice or a key to set
        assert any(f"{group}=" in problem for group in ("dataset", "loss", "model")), problem
    return kind


# The default suite's share (one composition takes 0.1-0.3 s, so the full matrix's 180 are
# slow): every preset on your CSV and on no data, every dataset under one preset, and the
# full-batch optimizer (whose batch covers these 32 training rows) on each preset with data.
DATA_PRESETS = {
    "csv_regression": "regression",
    "linear_regression": "regression",
    "logistic_regression": "classification",
    "mlp_classification": "moons",
}
FULL_BATCH = {(e, d, "lbfgs") for e, d in DATA_PRESETS.items()}
REPRESENTATIVE = sorted(
    {(e, d, "sgd") for e in EXPERIMENTS for d in ("csv", "none")}
    | {("logistic_regression", d, "sgd") for d in DATASETS}
    | FULL_BATCH
)


@pytest.mark.parametrize(("experiment", "dataset", "optimizer"), REPRESENTATIVE)
def test_preset_with_any_dataset_trains_or_says_what_to_change(
    experiment: str, dataset: str, optimizer: str, small_csv: Path, tmp_path: Path
) -> None:
    kind = check(experiment, dataset, optimizer, small_csv, tmp_path / "run")
    if (experiment, dataset, optimizer) in FULL_BATCH:
        assert kind == "trained"  # batch_size=64 covers the 32 training rows: a full batch


@pytest.mark.slow
def test_every_preset_dataset_and_optimizer_trains_or_says_what_to_change(
    small_csv: Path, tmp_path: Path
) -> None:
    combinations = itertools.product(EXPERIMENTS, DATASETS, OPTIMIZERS)
    for number, (experiment, dataset, optimizer) in enumerate(combinations):
        check(experiment, dataset, optimizer, small_csv, tmp_path / f"run{number}")


@pytest.mark.parametrize("experiment", ["logistic_regression", "mlp_classification"])
def test_a_classification_preset_trains_on_a_csv_of_labels(
    experiment: str, small_csv: Path, tmp_path: Path
) -> None:
    # The command: python train.py experiment=logistic_regression dataset=csv
    # dataset.path=iris.csv dataset.target=species dataset.task=classification
    kind, result = outcome(
        [
            f"experiment={experiment}",
            "dataset=csv",
            f"dataset.path={small_csv}",
            "dataset.target=y",
            "dataset.task=classification",
        ],
        tmp_path / "run",
    )
    assert kind == "trained", result
    assert result["status"] == "completed" and "val_accuracy" in result


def test_a_classification_preset_on_a_regression_csv_says_set_the_task(
    small_csv: Path, tmp_path: Path
) -> None:
    overrides = ["experiment=logistic_regression", "dataset=csv", *shrunk("csv", small_csv)]
    kind, problems = outcome(overrides, tmp_path / "run")
    assert kind == "refused"
    assert problems == [
        "loss=cross_entropy and model=logistic are for classification, but dataset=csv is a "
        "regression task; set dataset.task=classification"
    ]


def test_mlp_classification_keeps_its_moons(tmp_path: Path) -> None:
    raw = compose_config(["experiment=mlp_classification"])
    assert raw["dataset"]["name"] == "classification"
    assert (raw["dataset"]["shape"], raw["dataset"]["spread"]) == ("moons", 0.1)
    assert raw["dataset"]["val_fraction"] == 0.2


def test_a_data_preset_with_dataset_none_says_choose_a_dataset(tmp_path: Path) -> None:
    kind, problems = outcome(["experiment=logistic_regression", "dataset=none"], tmp_path / "r")
    assert kind == "refused"
    assert problems == [
        "dataset.val_fraction: dataset=none has no data to batch or split; choose a dataset "
        "with data (dataset=regression, classification or csv), or leave the key out"
    ]
