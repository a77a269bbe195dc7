"""What a newcomer sees from `python train.py`: gradtrain's own --help, exit 2 with the closest
real key for a typo and with every mandatory key, a classification preset on their own CSV, and
L-BFGS under torchrun told everything to change at once (real subprocesses: slow)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TrainResult

pytestmark = pytest.mark.slow

Train = Callable[..., TrainResult]


def test_help_is_gradtrains_own(train: Train) -> None:
    result = train("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("gradtrain: minimize a loss by gradient descent")
    assert "  dataset         none, regression, classification, moons, csv:" in result.stdout
    assert "python train.py experiment=logistic_regression dataset=csv" in result.stdout
    assert "tuning" not in result.stdout and "Powered by Hydra" not in result.stdout


def test_a_typo_in_an_override_names_the_closest_real_key(train: Train) -> None:
    result = train("trainer.max_step=5")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "gradtrain: Invalid configuration (1 problem):",
        "  - trainer.max_step: unknown key; did you mean trainer.max_steps? (trainer.max_steps=5 "
        "sets it; `python train.py --help` lists the groups, configs/ every key)",
    ]
    assert not result.run_dir.exists()  # refused before Hydra makes the run folder


def test_a_typo_added_with_plus_names_the_closest_real_key(train: Train) -> None:
    result = train("+trainer.max_step=5")
    assert result.returncode == 2
    assert "trainer.max_step: unknown key; did you mean trainer.max_steps?" in result.stderr


def test_every_missing_key_is_named_with_the_command_to_add_them(train: Train) -> None:
    result = train("experiment=csv_regression")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "  - dataset.path, dataset.target: no values given (the config leaves them ???); add "
        "them to the command, e.g. python train.py ... dataset.path=data.csv dataset.target=price"
    )


@pytest.mark.parametrize("experiment", ["logistic_regression", "mlp_classification"])
def test_a_classification_preset_trains_on_iris_with_text_labels(
    train: Train, tmp_path: Path, experiment: str
) -> None:
    datasets = pytest.importorskip("sklearn.datasets", reason='pip install -e ".[dev]"')
    iris = datasets.load_iris()
    rows = [
        ",".join([*map(str, features), iris.target_names[label]])
        for features, label in zip(iris.data, iris.target, strict=True)
    ]
    header = ",".join(name.replace(" (cm)", "").replace(" ", "_") for name in iris.feature_names)
    (tmp_path / "iris.csv").write_text(f"{header},species\n" + "\n".join(rows) + "\n")
    result = train(
        f"experiment={experiment}",
        "dataset=csv",
        "dataset.path=iris.csv",
        "dataset.target=species",
        "dataset.task=classification",
        "debug=fast",
    )
    assert result.returncode == 0, result.stderr
    assert result.summary["status"] == "completed" and "val_accuracy" in result.summary


def test_lbfgs_under_torchrun_says_everything_to_change_in_one_line(tmp_path: Path) -> None:
    from test_distributed import run_to_end, torchrun

    run_dir = tmp_path / "run"
    result = run_to_end(
        torchrun(run_dir, "experiment=linear_regression", "optimizer=lbfgs", "debug=fast"),
        tmp_path,
    )
    assert result.returncode != 0
    assert (
        "optimizer=lbfgs is full-batch, in one process: run it in one process (python train.py "
        "..., without torchrun) and set dataset.batch_size=null (or >= 1024, the training rows; "
        "it is 64)"
    ) in result.stderr
    assert not (run_dir / "summary.json").exists()
