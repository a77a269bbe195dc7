"""Predictions from a finished run: `predict.py <run_dir> <input.csv> <output.csv>` and
`gradtrain.load_run(run_dir).predict(rows)`, on runs trained on real CSV files."""

from __future__ import annotations

import csv
import importlib.util
import math
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import gradtrain
from gradtrain.errors import CheckpointError, DataError, GradtrainError

ROOT = Path(__file__).resolve().parents[1]
SPECIES = {"setosa": (0.0, 10.0), "versicolor": (3.0, 11.5), "virginica": (6.0, 13.0)}


def _load_predict_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("predict_script", ROOT / "predict.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


predict_script = _load_predict_script()


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def species_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained on a CSV whose classes are text labels, well apart in two features (one
    run for the module's tests, which only read it)."""
    from conftest import compose_config, quick_overrides

    from gradtrain.run import run

    folder = tmp_path_factory.mktemp("species")
    rng = random.Random(0)
    rows = [
        [round(petal + rng.gauss(0, 0.3), 3), round(sepal + rng.gauss(0, 0.3), 3), name]
        for _ in range(40)
        for name, (petal, sepal) in SPECIES.items()
    ]
    data = _write_csv(folder / "species.csv", ["petal", "sepal", "species"], rows)
    overrides = [
        "dataset=csv",
        f"dataset.path={data}",
        "dataset.target=species",
        "dataset.task=classification",
        "dataset.val_fraction=0.2",
        "dataset.batch_size=8",  # (12 steps an epoch: few checkpoints, one per epoch)
        "trainer.keep_checkpoints=0",
        "model=logistic",
        "loss=cross_entropy",
        "optimizer=adam",
        "optimizer.lr=0.2",
        "trainer.max_steps=60",
        "trainer.save_checkpoints=true",
    ]
    run_dir = folder / "run"
    summary = run(compose_config(quick_overrides(overrides)), run_dir)
    assert summary["status"] == "completed"
    return run_dir


def test_predict_writes_the_rows_with_the_training_labels(
    species_run: Path, tmp_path: Path
) -> None:
    # Columns in another order, an extra one, no target column: found by name.
    new = _write_csv(
        tmp_path / "new.csv",
        ["id", "sepal", "petal"],
        [["a", 10.1, 0.2], ["b", 11.4, 3.1], ["c", 13.2, 5.8]],
    )
    out = tmp_path / "out.csv"
    assert predict_script.main([str(species_run), str(new), str(out)]) == 0
    written = _read_csv(out)
    assert [row["id"] for row in written] == ["a", "b", "c"]  # the input rows, as they were
    assert [row["sepal"] for row in written] == ["10.1", "11.4", "13.2"]
    assert [row["prediction"] for row in written] == ["setosa", "versicolor", "virginica"]
    assert list(written[0]) == ["id", "sepal", "petal", "prediction"]


@pytest.mark.slow
def test_predict_script_runs_as_a_command(species_run: Path, tmp_path: Path) -> None:
    new = _write_csv(tmp_path / "new.csv", ["petal", "sepal"], [[6.1, 12.9]])
    out = tmp_path / "out.csv"
    done = subprocess.run(
        [sys.executable, str(ROOT / "predict.py"), str(species_run), str(new), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "1 predictions (classes)" in done.stdout
    assert _read_csv(out) == [{"petal": "6.1", "sepal": "12.9", "prediction": "virginica"}]
    missing = subprocess.run(
        [sys.executable, str(ROOT / "predict.py"), str(tmp_path / "nowhere"), str(new), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"gradtrain: {tmp_path / 'nowhere'}: no such run folder"


def test_a_missing_feature_column_is_refused_naming_the_columns(
    species_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = _write_csv(tmp_path / "new.csv", ["id", "sepal"], [["a", 10.0]])
    out = tmp_path / "out.csv"
    assert predict_script.main([str(species_run), str(new), str(out)]) == DataError.exit_code
    message = capsys.readouterr().err
    assert "no column 'petal'" in message
    assert "needs the columns petal, sepal" in message and "the rows have id, sepal" in message
    assert not out.exists()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("nowhere", "no such run folder"),
        (".", "holds no checkpoints/best.pt or checkpoints/last.pt"),
        ("species.csv", "is not a gradtrain checkpoint"),
    ],
)
def test_a_bad_run_is_refused_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], given: str, expected: str
) -> None:
    new = _write_csv(tmp_path / "species.csv", ["petal", "sepal"], [[1.0, 2.0]])
    code = predict_script.main([str(tmp_path / given), str(new), str(tmp_path / "out.csv")])
    assert code == CheckpointError.exit_code
    assert expected in capsys.readouterr().err


def test_load_run_predicts_from_a_path_or_dicts_alike(species_run: Path, tmp_path: Path) -> None:
    run = gradtrain.load_run(species_run)
    rows = [{"sepal": "10.0", "petal": "0.0", "note": "x"}, {"petal": 6.0, "sepal": 13.0}]
    new = _write_csv(tmp_path / "new.csv", ["sepal", "petal"], [[10.0, 0.0], [13.0, 6.0]])
    assert run.predict(rows) == run.predict(new) == ["setosa", "virginica"]
    assert run.feature_names == ["petal", "sepal"]
    assert run.class_names == ["setosa", "versicolor", "virginica"]
    assert run.config.dataset.name == "csv" and not run.model.training
    with pytest.raises(DataError, match="row 1, column 'petal': 'big' is not a number"):
        run.predict([{"petal": "big", "sepal": 1}])


def test_the_checkpoint_holds_the_training_split_statistics(species_run: Path) -> None:
    payload = torch.load(
        species_run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True
    )
    facts = payload["data"]
    assert facts["feature_names"] == ["petal", "sepal"]
    assert facts["class_names"] == ["setosa", "versicolor", "virginica"]
    # Of the training split (96 of 120 rows), not the file: the means are near the species'
    # average, but not exactly the file's.
    rows = _read_csv(species_run.parent / "species.csv")
    file_mean = torch.tensor([[float(r["petal"]), float(r["sepal"])] for r in rows]).mean(0)
    assert facts["feature_mean"].shape == (2,) and facts["feature_std"].shape == (2,)
    assert torch.allclose(facts["feature_mean"], file_mean, atol=0.3)
    assert not torch.equal(facts["feature_mean"], file_mean)


def test_best_checkpoint_is_preferred_when_the_run_kept_one(
    species_run: Path, tmp_path: Path
) -> None:
    run_dir = shutil.copytree(species_run, tmp_path / "run")
    checkpoints = run_dir / "checkpoints"
    # The run kept best.pt (its monitored metric improved): that is what predicts.
    loaded = gradtrain.load_run(run_dir)
    assert loaded.checkpoint == checkpoints / "best.pt"
    assert loaded.class_names == ["setosa", "versicolor", "virginica"]  # (its data facts too)
    (checkpoints / "best.pt").unlink()
    assert gradtrain.load_run(run_dir).checkpoint == checkpoints / "last.pt"


def test_regression_predictions_undo_nothing_but_apply_the_standardisation(
    tmp_path: Path, quick_run: Callable[..., Any]
) -> None:
    # Features far from 0 and unit scale: without the stored statistics, predictions would be
    # far off.
    rng = random.Random(1)
    rows = []
    for _ in range(200):
        a, b = rng.gauss(100, 10), rng.gauss(-50, 5)
        rows.append([round(a, 4), round(b, 4), round(0.3 * a - 2 * b + 7, 4)])
    data = _write_csv(tmp_path / "houses.csv", ["a", "b", "price"], rows)
    result = quick_run(
        "experiment=csv_regression",
        f"dataset.path={data}",
        "dataset.target=price",
        "optimizer=lbfgs",
        "dataset.batch_size=null",
        "trainer.max_steps=5",
        "trainer.max_epochs=null",
        "trainer.keep_checkpoints=0",
        "trainer.save_checkpoints=true",
    )
    run = gradtrain.load_run(result.run_dir)
    assert run.class_names is None
    predictions = run.predict([{"b": -45.0, "a": 120.0}, {"a": 90.0, "b": -55.0}])
    expected = [0.3 * 120 + 2 * 45 + 7, 0.3 * 90 + 2 * 55 + 7]
    assert all(math.isclose(p, e, abs_tol=0.05) for p, e in zip(predictions, expected, strict=True))


def test_synthetic_classification_is_predicted_by_feature_names_x0_x1(
    quick_run: Callable[..., Any],
) -> None:
    from gradtrain.datasets import ClassificationDataset

    result = quick_run(
        "experiment=logistic_regression", "trainer.max_steps=100", "trainer.save_checkpoints=true"
    )
    run = gradtrain.load_run(result.run_dir)
    cfg = run.config.dataset
    assert run.feature_names == ["x0", "x1"] and run.feature_mean is None
    data = ClassificationDataset(
        cfg.n_samples, cfg.n_features, cfg.n_classes, cfg.shape, cfg.spread, seed=run.config.seed
    )
    rows = [{"x0": x0, "x1": x1} for x0, x1 in data.inputs.tolist()]
    predicted = run.predict(rows)
    accuracy = sum(p == str(t) for p, t in zip(predicted, data.targets.tolist(), strict=True))
    assert accuracy / len(rows) > 0.9


def test_a_run_without_data_has_nothing_to_predict(quick_run: Callable[..., Any]) -> None:
    result = quick_run("loss=quadratic", "trainer.save_checkpoints=true")
    with pytest.raises(GradtrainError, match="trained on no data"):
        gradtrain.load_run(result.run_dir)


def test_exported_weights_predict_the_same_with_torch_alone(
    tmp_path: Path, quick_run: Callable[..., Any]
) -> None:
    """The README's export (Predictions): a plain state_dict and a JSON of the config and the
    data's facts rebuild the model with torch alone."""
    import json

    rng = random.Random(2)
    rows = [
        [a := round(rng.gauss(120, 30), 2), r := rng.randint(1, 6), 3 * a + 20 * r]
        for _ in range(60)
    ]
    data = _write_csv(tmp_path / "houses.csv", ["area", "rooms", "price"], rows)
    result = quick_run(
        "experiment=csv_regression",
        f"dataset.path={data}",
        "dataset.target=price",
        "trainer.max_steps=30",
        "trainer.max_epochs=null",
        "trainer.save_checkpoints=true",
        "trainer.keep_checkpoints=0",
    )
    run = gradtrain.load_run(result.run_dir)
    torch.save(run.model.state_dict(), tmp_path / "houses.pt")

    def plain(t: torch.Tensor | None) -> list[float] | None:
        return None if t is None else t.tolist()

    meta = {
        "config": run.config.model_dump(mode="json"),
        "features": run.feature_names,
        "classes": run.class_names,
        "mean": plain(run.feature_mean),
        "std": plain(run.feature_std),
    }
    (tmp_path / "houses.json").write_text(json.dumps(meta))

    meta = json.loads((tmp_path / "houses.json").read_text())
    model = torch.nn.Linear(len(meta["features"]), 1)
    model.load_state_dict(torch.load(tmp_path / "houses.pt", weights_only=True))
    x = torch.tensor([[120.0, 4.0], [55.0, 2.0]])
    assert meta["mean"] is not None  # csv_regression standardises
    x = (x - torch.tensor(meta["mean"])) / torch.tensor(meta["std"])
    alone = model(x).squeeze(-1).tolist()
    with_gradtrain = run.predict([{"area": 120.0, "rooms": 4}, {"rooms": 2, "area": 55.0}])
    assert alone == pytest.approx(with_gradtrain, rel=1e-6)
    assert meta["config"]["model"]["name"] == "linear"


def test_load_run_predicts_a_pandas_data_frame(species_run: Path) -> None:
    pandas = pytest.importorskip("pandas")
    run = gradtrain.load_run(species_run)
    frame = pandas.DataFrame({"sepal": [10.0, 13.0], "petal": [0.0, 6.0], "id": ["a", "b"]})
    assert run.predict(frame) == ["setosa", "virginica"]


def test_a_header_only_file_gives_a_header_only_output_and_a_prediction_column_is_refused(
    species_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = _write_csv(tmp_path / "empty.csv", ["sepal", "petal"], [])
    out = tmp_path / "out.csv"
    assert predict_script.main([str(species_run), str(empty), str(out)]) == 0
    assert out.read_text() == "sepal,petal,prediction\n"
    taken = _write_csv(tmp_path / "taken.csv", ["sepal", "petal", "prediction"], [[1, 2, "x"]])
    assert predict_script.main([str(species_run), str(taken), str(tmp_path / "o.csv")]) == 1
    assert "already has a column 'prediction'" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()
