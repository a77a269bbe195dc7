"""The schema in trainer/config.py against the real YAML in configs/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gradtrain.config import Config, TensorBoardLoggerConfig, validate_config
from gradtrain.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GROUPS = ["loss", "model", "dataset", "optimizer", "scheduler", "trainer", "logger", "experiment"]
# Options that need a partner from another group to form a valid run.
PARTNERS = {
    ("loss", "mse"): ["dataset=regression", "model=linear"],
    ("loss", "huber"): ["dataset=regression", "model=linear"],
    ("loss", "cross_entropy"): ["dataset=classification", "model=logistic"],
    ("loss", "bce_with_logits"): ["dataset=classification", "model=logistic"],
    ("model", "linear"): ["dataset=regression", "loss=mse"],
    ("model", "logistic"): ["dataset=classification", "loss=cross_entropy"],
    ("model", "mlp"): ["dataset=regression", "loss=mse"],
    ("dataset", "regression"): ["model=linear", "loss=mse"],
    ("dataset", "classification"): ["model=logistic", "loss=cross_entropy"],
    ("dataset", "csv"): ["model=linear", "loss=mse", "dataset.path=x.csv", "dataset.target=y"],
    ("optimizer", "lbfgs"): ["experiment=linear_regression", "dataset.batch_size=null"],
    ("experiment", "csv_regression"): ["dataset.path=x.csv", "dataset.target=y"],
}


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize(
    ("group", "option"), [(group, option) for group in GROUPS for option in options(group)]
)
def test_every_option_of_every_group_composes_and_validates(
    composed: Callable[..., dict[str, Any]], group: str, option: str
) -> None:
    raw = composed(f"{group}={option}", *PARTNERS.get((group, option), []))
    cfg = validate_config(raw)
    assert isinstance(cfg, Config)
    if group in ("loss", "model", "dataset", "optimizer", "scheduler", "logger"):
        assert getattr(cfg, group).name == option


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert options(group), f"configs/{group} is empty"


def test_default_config_is_the_lecture_quadratic(composed: Callable[..., dict[str, Any]]) -> None:
    cfg = validate_config(composed())
    assert (cfg.loss.name, cfg.model.name, cfg.dataset.name) == ("quadratic", "vector", "none")
    assert cfg.loss.reduction == "sum" and cfg.optimizer.name == "manual_sgd"


def test_tuning_gives_rosenbrock_a_stable_step_size(
    composed: Callable[..., dict[str, Any]],
) -> None:
    plain = validate_config(composed("loss=rosenbrock"))
    assert plain.optimizer.name == "manual_sgd" and plain.optimizer.lr < 2 / 1002
    with_adam = validate_config(composed("loss=rosenbrock", "optimizer=adam"))
    assert with_adam.optimizer.lr == 0.05
    mine = validate_config(composed("loss=rosenbrock", "optimizer.lr=0.001"))
    assert mine.optimizer.lr == 0.001  # the command line wins over tuning


@pytest.mark.parametrize("optimizer", ["manual_sgd", "sgd"])
def test_gradient_descent_on_rosenbrock_gets_the_small_step_and_long_budget(
    composed: Callable[..., dict[str, Any]], optimizer: str
) -> None:
    cfg = validate_config(composed("loss=rosenbrock", f"optimizer={optimizer}"))
    assert cfg.optimizer.name == optimizer
    assert (cfg.optimizer.lr, cfg.trainer.max_steps) == (0.0019, 10000)
    mine = validate_config(
        composed("loss=rosenbrock", f"optimizer={optimizer}", "optimizer.lr=0.001")
    )
    assert (mine.optimizer.lr, mine.trainer.max_steps) == (0.001, 10000)


def test_experiment_then_group_override_switches_the_optimizer(
    composed: Callable[..., dict[str, Any]],
) -> None:
    cfg = validate_config(
        composed("experiment=linear_regression", "optimizer=adam", "optimizer.lr=0.01")
    )
    assert cfg.optimizer.name == "adam" and cfg.optimizer.lr == 0.01
    assert cfg.dataset.name == "regression" and cfg.model.name == "linear"


@pytest.mark.parametrize("experiment", [None, *options("experiment")])
def test_debug_fast_caps_every_experiment_at_a_few_steps_without_checkpoints_or_logs(
    composed: Callable[..., dict[str, Any]], experiment: str | None
) -> None:
    # debug first on the command line: the defaults list, not the command line, orders groups.
    chosen = [] if experiment is None else [f"experiment={experiment}"]
    cfg = validate_config(
        composed("debug=fast", *chosen, *PARTNERS.get(("experiment", experiment), []))
    )
    assert cfg.trainer.max_steps is not None and cfg.trainer.max_steps <= 20
    assert not cfg.trainer.save_checkpoints and not cfg.trainer.progress_bar
    assert cfg.logger.name == "none"  # so no event file and no figures


@pytest.mark.parametrize("order", ["logger first", "debug first"])
def test_a_logger_chosen_on_the_command_line_wins_over_debug_fast(
    composed: Callable[..., dict[str, Any]], order: str
) -> None:
    overrides = ["logger=tensorboard", "debug=fast"]
    cfg = validate_config(composed(*(overrides if order == "logger first" else overrides[::-1])))
    assert isinstance(cfg.logger, TensorBoardLoggerConfig)
    assert not cfg.trainer.save_checkpoints


def problems_for(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate_config(raw)
    return caught.value.problems


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optimizer.lr=0"], "optimizer.lr: Input should be greater than 0"),
        (["optimizer.lr=-1"], "optimizer.lr: Input should be greater than 0"),
        (["optimizer.lr=fast"], "optimizer.lr: Input should be a valid number"),
        (["trainer.max_steps=0"], "trainer.max_steps: Input should be greater than 0"),
        (["trainer.device=tpu"], "trainer.device: Input should be 'auto', 'cpu', 'cuda' or 'mps'"),
        (["trainer.precision=fp16"], "trainer.precision: Input should be 'fp32' or 'bf16'"),
        (["loss.reduction=max"], "loss.reduction: Input should be 'sum', 'mean' or 'none'"),
        (
            ["experiment=linear_regression", "dataset.batch_size=0"],
            "dataset.batch_size: Input should be greater than 0",
        ),
        (["+optimizer.betas=[0.9,0.9]"], "optimizer.betas: unknown key; allowed keys: name, lr"),
        (["+sed=1"], "sed: unknown key; allowed keys: seed, loss"),
        (["trainer.max_steps=null"], "set trainer.max_steps or trainer.max_epochs"),
        (["loss=mse"], "loss=mse compares predictions with targets, but dataset=none"),
        (["dataset=regression"], "loss=quadratic is a function of the model's parameters"),
        (["model.init=[1.0,2.0]", "model.size=3"], "model.init has 2 values but model.size is 3"),
        (["optimizer=sgd", "optimizer.nesterov=true"], "nesterov=true needs optimizer.momentum"),
        (
            ["experiment=linear_regression", "loss=cross_entropy"],
            "loss=cross_entropy is a classification loss, but dataset=regression is a regression",
        ),
        (
            ["experiment=logistic_regression", "dataset.n_classes=3", "loss=bce_with_logits"],
            "loss=bce_with_logits is binary but dataset.n_classes=3",
        ),
        (
            ["experiment=logistic_regression", "dataset.n_classes=3", "model.out_features=2"],
            "model.out_features=2 but loss=cross_entropy on 3 classes needs 3",
        ),
        (
            ["experiment=linear_regression", "model=logistic"],
            "model=logistic needs a classification",
        ),
        (["experiment=linear_regression", "optimizer=lbfgs"], "set dataset.batch_size=null"),
        (["experiment=csv_regression", "dataset.target=y"], "dataset.path is required"),
        (
            ["dataset=classification", "dataset.shape=moons", "dataset.n_classes=3"],
            "dataset.shape=moons needs dataset.n_features=2 and n_classes=2",
        ),
        (["dataset=regression", "model=vector", "loss=mse"], "model=vector takes no inputs"),
    ],
)
def test_bad_values_are_reported_by_key(
    composed: Callable[..., dict[str, Any]], overrides: list[str], expected: str
) -> None:
    problems = problems_for(composed(*overrides))
    assert any(expected in problem for problem in problems), problems


def test_every_problem_is_reported_at_once(composed: Callable[..., dict[str, Any]]) -> None:
    problems = problems_for(
        composed("optimizer.lr=-1", "trainer.max_steps=0", "trainer.log_every_n_steps=0")
    )
    keys = sorted(problem.split(":")[0] for problem in problems)
    assert keys == ["optimizer.lr", "trainer.log_every_n_steps", "trainer.max_steps"]


def test_field_and_cross_group_problems_are_reported_together(
    composed: Callable[..., dict[str, Any]],
) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(composed("optimizer.lr=-1", "loss=mse"))
    assert caught.value.problems == [
        "optimizer.lr: Input should be greater than 0 (got -1)",
        "loss=mse compares predictions with targets, but dataset=none has no data; "
        "use experiment=linear_regression, or dataset=regression model=linear",
    ]
    assert str(caught.value).startswith("Invalid configuration (2 problems):\n  - optimizer.lr")


def test_each_cross_group_problem_is_its_own_line(
    composed: Callable[..., dict[str, Any]],
) -> None:
    problems = problems_for(composed("loss=mse", "model=linear"))
    assert len(problems) == 2
    assert problems[0].startswith("loss=mse compares predictions")
    assert problems[1].startswith("model=linear needs inputs")


def test_cross_group_checks_skip_a_section_that_failed(
    composed: Callable[..., dict[str, Any]],
) -> None:
    # With a valid dataset, loss=quadratic and model=vector would not fit it; what the dataset
    # is meant to be is unknown until its own problem is fixed, so only that is reported.
    problems = problems_for(composed("dataset=regression", "dataset.batch_size=0"))
    assert problems == ["dataset.batch_size: Input should be greater than 0 (got 0)"]


def test_unknown_component_name_lists_the_allowed_ones(
    composed: Callable[..., dict[str, Any]],
) -> None:
    raw = composed()
    raw["optimizer"] = {"name": "os.system", "lr": 0.1}
    (problem,) = problems_for(raw)
    assert problem.startswith("optimizer.name:")
    assert "'manual_sgd', 'sgd', 'adam', 'adamw', 'rmsprop', 'lbfgs'" in problem


def test_validated_config_is_frozen(composed: Callable[..., dict[str, Any]]) -> None:
    cfg = validate_config(composed())
    with pytest.raises(Exception, match="frozen"):
        cfg.optimizer.lr = 1.0  # type: ignore[misc]
