"""gradtrain's Python API in this process: `compose` is train.py's composition, `fit` runs the
command line's path for a config and the same loop for a model of the user's, and the `Result`
holds the model, the summary and every logged scalar."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from gradtrain import Result, Trainer, compose, fit
from gradtrain.config import validate_config
from gradtrain.errors import (
    ConfigError,
    ResumeConfigMismatch,
    TrainingDiverged,
    TrainingInterrupted,
)
from gradtrain.loop import Trainer as LoopTrainer
from gradtrain.metrics.sinks import PNG_SIGNATURE
from tests.conftest import StopAfter, compose_config, read_scalars

QUIET = {"progress_bar": False}  # (stderr is no terminal under pytest anyway)
NOTHING_WRITTEN = {**QUIET, "logger": "none", "save_checkpoints": False}


def linear_data(n: int = 128, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Rows of y = 2 x0 - x1 + 0.5 x2 + 0.3, without noise: a linear model can fit it exactly."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 3, generator=generator)
    targets = inputs @ torch.tensor([2.0, -1.0, 0.5]) + 0.3
    return inputs, targets[:, None]


def linear_model(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(3, 1)


class TwoBlobs(Dataset[tuple[Tensor, Tensor]]):
    """A user's own map-style Dataset: two separable classes, one sample at a time."""

    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 2
        self.points = torch.randn(n, 2, generator=generator) * 0.5 + (self.labels[:, None] * 3.0)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.points[index], self.labels[index]


# ------------------------------------------------------------------------------------ compose
def test_compose_gives_the_validated_config_train_py_composes_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the packaged configs, not a configs/ folder next to the caller
    overrides = ["experiment=linear_regression", "optimizer=adam", "optimizer.lr=0.05"]
    cfg = compose(overrides)
    assert cfg == validate_config(compose_config(overrides))
    assert cfg.optimizer.name == "adam" and cfg.optimizer.lr == 0.05
    assert cfg.dataset.name == "regression"
    assert not GlobalHydra.instance().is_initialized()  # nothing left for the next call
    assert compose(["loss=rosenbrock"]).loss.name == "rosenbrock"
    assert compose().loss.name == "quadratic"


def test_compose_raises_config_errors_with_the_command_line_messages() -> None:
    with pytest.raises(ConfigError) as invalid:
        compose(["optimizer.lr=-1", "trainer.max_steps=0"])
    assert invalid.value.problems == [
        "optimizer.lr: Input should be greater than 0 (got -1)",
        "trainer.max_steps: Input should be greater than 0 (got 0)",
    ]
    with pytest.raises(ConfigError, match="optimizer/nope"):
        compose(["optimizer=nope"])  # Hydra's own refusal, its message kept
    with pytest.raises(
        ConfigError, match=r"trainer\.max_step: unknown key; did you mean trainer\.max_steps"
    ):
        compose(["trainer.max_step=3"])
    with pytest.raises(ConfigError, match=r"hydra\.run\.dir=elsewhere: .*run_dir"):
        compose(["hydra.run.dir=elsewhere"])
    with pytest.raises(TypeError, match=r"compose\(\['loss=rosenbrock'\]\)"):
        compose("loss=rosenbrock")  # type: ignore[arg-type]
    assert not GlobalHydra.instance().is_initialized()


# ----------------------------------------------------------------------------- fit a config
def test_fit_of_a_config_is_run_of_it(tmp_path: Path) -> None:
    from gradtrain.run import run

    overrides = ["debug=fast", "experiment=linear_regression", "dataset.n_samples=128"]
    by_run = run(compose_config(overrides), tmp_path / "by_run")
    result = fit(compose(overrides), run_dir=tmp_path / "by_fit")
    assert result.summary["final_loss"] == by_run["final_loss"]
    assert result.summary["best_loss"] == by_run["best_loss"]
    assert result.summary["steps"] == by_run["steps"] == 20
    assert result.run_dir == tmp_path / "by_fit" and (result.run_dir / "summary.json").exists()
    assert isinstance(result.model, nn.Linear)
    assert result.config is not None and result.config.dataset.name == "regression"
    # A list of overrides is composed first: the same run.
    again = fit(overrides, run_dir=tmp_path / "by_list")
    assert again.summary["final_loss"] == by_run["final_loss"]


def test_history_holds_every_scalar_of_the_event_file_without_reading_it(tmp_path: Path) -> None:
    result = fit(
        compose(
            [
                "debug=fast",
                "experiment=logistic_regression",
                "dataset.n_samples=128",
                "logger=tensorboard",
                "logger.figures=false",
                "trainer.log_every_n_steps=5",
            ]
        ),
        run_dir=tmp_path,
    )
    written = read_scalars(tmp_path / "tensorboard")
    assert set(result.history) == set(written)
    assert {"train/loss", "watch/grad_norm", "watch/lr", "val/loss", "val/accuracy"} <= set(
        result.history
    )
    for tag, points in written.items():
        steps = [step for step, _ in points]
        assert [step for step, _ in result.history[tag]] == steps, tag
        # (The event file stores float32.)
        assert [v for _, v in result.history[tag]] == pytest.approx(
            [v for _, v in points], rel=1e-6, nan_ok=True
        ), tag
    assert result.history["train/loss"][-1] == (20, pytest.approx(result.summary["final_loss"]))


def test_fit_of_a_config_that_writes_nothing_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = fit(compose(["debug=fast", "explain=true"]))  # no logger, no checkpoints
    assert result.run_dir is None and list(tmp_path.iterdir()) == []
    assert "run_dir" not in result.summary
    assert result.summary["status"] == "completed" and result.summary["steps"] == 20
    assert result.explain is not None and "SubBackward0" in result.explain
    assert "final loss" in str(result) and "summary.json" not in str(result)


def test_fit_takes_a_config_or_user_code_not_both() -> None:
    with pytest.raises(TypeError, match=r"not both.*trainer.max_steps=100.*model, max_steps"):
        fit(compose(["debug=fast"]), model=nn.Linear(1, 1), max_steps=3)
    with pytest.raises(TypeError, match="model and a loss: loss missing"):
        fit(model=nn.Linear(1, 1))


# ------------------------------------------------------------------------ a user's own model
def test_fit_trains_a_users_module_on_tensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    model = linear_model()
    result = fit(
        model=model,
        data=linear_data(),
        loss=nn.MSELoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        max_steps=150,
        **NOTHING_WRITTEN,
    )
    assert result.model is model
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[2.0, -1.0, 0.5]]))
    torch.testing.assert_close(model.bias.detach(), torch.tensor([0.3]))
    assert result.summary["status"] == "completed" and result.summary["steps"] == 150
    assert result.summary["epochs"] == 75  # 128 rows in batches of 64
    losses = [value for _, value in result.history["train/loss"]]
    assert [step for step, _ in result.history["train/loss"]] == [1, *range(10, 151, 10)]
    assert losses[-1] < 1e-6 < losses[0]
    assert result.final_loss == pytest.approx(losses[-1])
    assert result.run_dir is None and list(tmp_path.iterdir()) == []  # nothing written


def test_fit_trains_a_users_dataset_with_validation_and_accuracy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    result = fit(
        model=model,
        data=TwoBlobs(200, seed=1),
        val_data=DataLoader(TwoBlobs(60, seed=2), batch_size=30),
        loss=nn.CrossEntropyLoss(),
        optimizer=functools.partial(torch.optim.Adam, lr=0.05),  # called with the parameters
        batch_size=32,
        max_epochs=5,
        max_steps=None,
        run_dir=tmp_path,
        logger={"name": "tensorboard", "figures": False},
        **QUIET,
    )
    summary = result.summary
    assert summary["stop_reason"] == "max_epochs" and summary["steps"] == 5 * 7  # ceil(200/32)
    assert summary["val_accuracy"] > 0.95 and summary["train_accuracy"] > 0.9
    assert summary["monitor"] == "val_loss"
    assert [step for step, _ in result.history["val/loss"]] == [7, 14, 21, 28, 35]
    assert "train/accuracy" in result.history
    # The run's folder is the command line's: events, checkpoints, summary.json.
    assert set(read_scalars(tmp_path / "tensorboard")) == set(result.history)
    assert (tmp_path / "checkpoints" / "last.pt").exists()
    assert (tmp_path / "summary.json").exists()


def test_fit_minimizes_a_loss_of_the_parameters_alone_as_the_lecture(tmp_path: Path) -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    result = fit(model=x, loss=lambda x: x**2 - 5, max_steps=100, **NOTHING_WRITTEN)
    trained = result.model.x.detach()
    assert torch.allclose(trained, torch.zeros(5), atol=1e-6)
    assert result.final_loss == pytest.approx(-25.0)
    assert result.summary["params"] == pytest.approx([0.0] * 5, abs=1e-6)
    assert torch.equal(x, torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))  # the start is the user's
    # The default optimizer is the lecture's update, x -= 0.1 * 2x: x shrinks by 0.8 a step.
    # (Step 1 logs the starting loss; step 10 the loss its update started from: after 9.)
    start = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert result.history["train/loss"][0] == (1, pytest.approx(((start**2) - 5).sum().item()))
    expected = ((start * 0.8**9) ** 2 - 5).sum().item()
    assert result.history["train/loss"][1] == (10, pytest.approx(expected))


def test_explain_and_the_trajectory_figure_of_a_users_loss(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = fit(
        model=torch.tensor([1.5, -2.0]),
        loss=lambda x: x**2 - 5,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        explain=True,
        max_steps=30,
        run_dir=tmp_path,
        **QUIET,
    )
    assert result.explain is not None
    assert "SubBackward0 <- PowBackward0 <- x" in result.explain
    assert "backward(gradient=" in result.explain  # the vector loss's vector-Jacobian product
    assert "PASS" in result.explain and "FAIL" not in result.explain
    assert (tmp_path / "explain.md").read_text() == result.explain
    assert result.summary["gradient_check"]["passed"] is True
    assert result.figure is not None and result.figure.startswith(PNG_SIGNATURE)
    assert (tmp_path / "trajectory.json").exists()


def test_each_fit_gets_a_fresh_folder_and_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    results = [
        fit(
            model=linear_model(),
            data=linear_data(),
            loss=nn.MSELoss(),
            logger={"name": "tensorboard", "figures": False},
            max_steps=20,
            **QUIET,
        )
        for _ in range(2)
    ]
    first, second = (result.run_dir for result in results)
    assert first is not None and second is not None and first != second
    assert first.parent.parent == tmp_path / "outputs"  # outputs/<date>/<time>, as train.py
    assert (first / "summary.json").exists() and (second / "summary.json").exists()
    assert results[0].history == results[1].history  # seeded alike: nothing carried over


def test_resume_auto_continues_a_users_run_as_if_never_stopped(tmp_path: Path) -> None:
    def session(max_steps: int, run_dir: Path, **more: Any) -> Result:
        model = linear_model()
        return fit(
            model=model,
            data=linear_data(),
            loss=nn.MSELoss(),
            optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
            batch_size=48,  # 3 batches an epoch, the last one short: resumes mid-epoch
            max_steps=max_steps,
            checkpoint_every_n_steps=4,
            logger="none",
            run_dir=run_dir,
            **QUIET,
            **more,
        )

    straight = session(20, tmp_path / "straight")
    session(10, tmp_path / "stopped")
    resumed = session(20, tmp_path / "stopped", resume="auto")
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    assert resumed.summary["final_loss"] == straight.summary["final_loss"]
    assert [step for step, _ in resumed.history["train/loss"]] == [20]  # only the new steps
    with pytest.raises(ResumeConfigMismatch, match=r"optimizer\.lr: 0\.05 in the checkpoint"):
        model = linear_model()
        fit(
            model=model,
            data=linear_data(),
            loss=nn.MSELoss(),
            optimizer=torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9),
            batch_size=48,
            max_steps=30,
            logger="none",
            run_dir=tmp_path / "stopped",
            resume="auto",
            **QUIET,
        )


def test_a_signal_stops_fit_with_a_checkpoint_that_resume_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gradtrain.api

    def session(run_dir: Path, **more: Any) -> Result:
        model = linear_model()
        return fit(
            model=model,
            data=linear_data(),
            loss=nn.MSELoss(),
            optimizer=torch.optim.Adam(model.parameters(), lr=0.01),
            max_steps=30,
            logger="none",
            run_dir=run_dir,
            **QUIET,
            **more,
        )

    straight = session(tmp_path / "straight")
    with monkeypatch.context() as patched:  # as if Ctrl-C (Jupyter's interrupt) came at step 12
        patched.setattr(gradtrain.api, "SignalStop", StopAfter(12))
        with pytest.raises(TrainingInterrupted) as stopped:
            session(tmp_path / "stopped")
    message = str(stopped.value)
    assert "stopped by a signal after step 12; checkpoint saved" in message
    assert f"run_dir={str(tmp_path / 'stopped')!r}, resume='auto'" in message
    assert stopped.value.result.summary["status"] == "interrupted"  # type: ignore[attr-defined]
    resumed = session(tmp_path / "stopped", resume="auto")
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def test_bad_settings_raise_one_config_error_naming_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as refused:
        fit(
            model=linear_model(),
            data=linear_data(),
            loss=nn.MSELoss(),
            max_steps=0,
            max_step=3,
            logger={"name": "tensorboard", "figure": True},
            batch_size=0,
            seed=-1,
        )
    problems = refused.value.problems
    assert "max_steps: Input should be greater than 0 (got 0)" in problems
    unknown = "max_step: unknown argument of fit(); it takes model, data, loss"
    assert any(p.startswith(unknown) for p in problems)
    assert any(
        p.startswith("logger.figure: unknown key; did you mean logger.figures?") for p in problems
    )
    assert "batch_size: Input should be greater than 0 (got 0)" in problems
    assert "seed: Input should be greater than or equal to 0 (got -1)" in problems
    assert len(problems) == 5
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_an_optimizer_of_other_tensors_is_refused() -> None:
    elsewhere = torch.optim.SGD(nn.Linear(3, 1).parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"updates none of the model's parameters \(weight, bias"):
        fit(model=linear_model(), data=linear_data(), loss=nn.MSELoss(), optimizer=elsewhere)


def test_divergence_raises_with_the_result_so_far() -> None:
    with pytest.raises(TrainingDiverged) as diverged:
        fit(
            model=torch.tensor([1.0, 2.0]),
            loss=lambda x: x**2 - 5,
            optimizer=lambda params: torch.optim.SGD(params, lr=1.5),  # x <- x - 3x: |x| doubles
            max_steps=500,
            **NOTHING_WRITTEN,
        )
    assert "Lower the learning rate (lr=1.5; try lr=0.15)" in str(diverged.value)
    so_far: Result = diverged.value.result  # type: ignore[attr-defined]
    assert so_far.summary["status"] == "diverged"
    assert not math.isfinite(so_far.history["train/loss"][-1][1])


def test_the_public_trainer_is_the_loop() -> None:
    assert Trainer is LoopTrainer  # one loop: fit() builds it, `train_step` is the update
