"""The schema in trainer/config.py against the real YAML in configs/."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel, ValidationError

from gradtrain.config import (
    Config,
    TensorBoardLoggerConfig,
    TrainerConfig,
    section_options,
    validate_config,
)
from gradtrain.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GROUPS = [
    "loss",
    "model",
    "dataset",
    "optimizer",
    "scheduler",
    "trainer",
    "logger",
    "experiment",
    "landscape",
]
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
    ("dataset", "moons"): ["model=mlp", "loss=cross_entropy"],
    ("dataset", "csv"): ["model=linear", "loss=mse", "dataset.path=x.csv", "dataset.target=y"],
    ("optimizer", "lbfgs"): ["experiment=linear_regression", "dataset.batch_size=null"],
    ("experiment", "csv_regression"): ["dataset.path=x.csv", "dataset.target=y"],
    ("landscape", "interpolation"): ["experiment=linear_regression"],
    ("landscape", "filter_normalized"): ["experiment=mlp_classification"],
}


# Option files that are another option with other values (configs/dataset/moons.yaml).
VARIANT_OF = {"moons": "classification"}


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
    if group in ("loss", "model", "dataset", "optimizer", "scheduler", "logger", "landscape"):
        assert getattr(cfg, group).name == VARIANT_OF.get(option, option)


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
        (
            ["+optimizer.betas=[0.9,0.9]"],
            "optimizer.betas: unknown key; it is a key of optimizer=adam, adamw, not of "
            "optimizer=manual_sgd; allowed keys: name, lr",
        ),
        (["+sed=1"], "sed: unknown key; did you mean seed?; allowed keys: seed, loss"),
        (
            ["+trainer.max_step=5"],
            "trainer.max_step: unknown key; did you mean trainer.max_steps?; allowed keys:",
        ),
        (["trainer.max_steps=null"], "set trainer.max_steps or trainer.max_epochs"),
        (["loss=mse"], "loss=mse compares predictions with targets, but dataset=none"),
        (["dataset=regression"], "loss=quadratic and model=vector take no data"),
        (
            ["dataset=regression", "model=linear"],
            "loss=quadratic is a function of the model's parameters",
        ),
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
        (["experiment=csv_regression", "dataset.target=y"], "dataset.path: no value given"),
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
    problems = problems_for(composed("loss=mse", "model=linear", "trainer.monitor=val_loss"))
    assert len(problems) == 2
    assert problems[0].startswith("loss=mse and model=linear train on data")
    assert problems[1].startswith("trainer.monitor=val_loss needs validation data")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["loss=mse", "model=linear"],
            "loss=mse and model=linear train on data, but dataset=none has none; choose a "
            "dataset: dataset=regression or dataset=csv (your file)",
        ),
        (
            ["experiment=quadratic", "dataset=classification"],
            "loss=quadratic and model=vector take no data (a function of the parameters "
            "alone), but dataset=classification feeds batches; use dataset=none",
        ),
        (
            ["experiment=logistic_regression", "dataset=regression"],
            "loss=cross_entropy and model=logistic are for classification, but "
            "dataset=regression is a regression task; use dataset=classification (or "
            "dataset=csv dataset.task=classification)",
        ),
        (
            [
                "experiment=csv_regression",
                "dataset.path=x.csv",
                "dataset.target=y",
                "loss=cross_entropy",
            ],
            "loss=cross_entropy is a classification loss, but dataset=csv is a regression task; "
            "set dataset.task=classification, or use loss=mse or loss=huber",
        ),
    ],
)
def test_one_cause_in_two_groups_is_one_line_naming_what_to_change(
    composed: Callable[..., dict[str, Any]], overrides: list[str], expected: str
) -> None:
    assert problems_for(composed(*overrides)) == [expected]


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


# ------------------------------------------------------------------ values that pass for others
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optimizer.lr=inf"], "optimizer.lr: Input should be a finite number"),
        (["loss.offset=nan"], "loss.offset: Input should be a finite number"),
        (["model.init=[1,nan,3]"], "model.init.1: Input should be a finite number"),
        (
            ["experiment=logistic_regression", "dataset.spread=inf"],
            "dataset.spread: Input should be a finite number",
        ),
        (["trainer.grad_clip=inf"], "trainer.grad_clip: Input should be a finite number"),
        (["trainer.tolerance=inf"], "trainer.tolerance: Input should be a finite number"),
        (
            ["optimizer=adam", "optimizer.betas=[0.9,nan]"],
            "optimizer.betas.1: Input should be a finite number",
        ),
        # YAML and Hydra write booleans as true/false; one taken as 1 would change the run.
        (["trainer.max_steps=true"], "trainer.max_steps: Input should be a valid integer"),
        (["optimizer.lr=true"], "optimizer.lr: Input should be a valid number"),
        (["explain=1"], "explain: Input should be a valid boolean"),
        (["trainer.progress_bar=0"], "trainer.progress_bar: Input should be a valid boolean"),
        # A float for a count: 1e11 would otherwise become the integer it rounds to.
        (
            ["experiment=linear_regression", "dataset.n_samples=1e11"],
            "dataset.n_samples: Input should be a valid integer",
        ),
        (["trainer.max_steps=20.0"], "trainer.max_steps: Input should be a valid integer"),
        # Seeds: NumPy (Optuna's sampler) takes 0 .. 2**32 - 1.
        (["seed=4294967296"], "seed: Input should be less than or equal to 4294967295"),
        (["seed=-1"], "seed: Input should be greater than or equal to 0"),
    ],
)
def test_non_finite_and_mistyped_values_are_refused_by_key(
    composed: Callable[..., dict[str, Any]], overrides: list[str], expected: str
) -> None:
    problems = problems_for(composed(*overrides))
    assert any(problem.startswith(expected) for problem in problems), problems


def _schema_models() -> list[type[BaseModel]]:
    """Every model of the schema: Config, each section's options, the trainer."""
    models: list[type[BaseModel]] = [Config, TrainerConfig]
    for section in ("loss", "model", "dataset", "optimizer", "scheduler", "logger"):
        models += section_options(section).values()
    return models


def _field_kinds(annotation: Any) -> set[type]:
    """The scalar types a field's annotation admits (through Optional, Annotated, list, tuple)."""
    if annotation in (int, float, bool, str):
        return {annotation}
    return set().union(*(_field_kinds(arg) for arg in get_args(annotation)), set())


@pytest.mark.parametrize("model", _schema_models(), ids=lambda model: model.__name__)
def test_no_key_of_the_schema_takes_a_non_finite_float_or_a_boolean_for_a_number(
    model: type[BaseModel],
) -> None:
    # The rule holds for the schema as a whole (StrictModel), not field by field: a key added
    # tomorrow gets it too.
    for name, field in model.model_fields.items():
        kinds = _field_kinds(field.annotation)
        if float in kinds:
            for bad in (math.inf, -math.inf, math.nan):
                assert _refused(model, name, bad), f"{model.__name__}.{name} took {bad}"
        if int in kinds or float in kinds:
            assert _refused(model, name, True), f"{model.__name__}.{name} took True"
        if bool in kinds:
            assert _refused(model, name, 1), f"{model.__name__}.{name} took 1"


def _refused(model: type[BaseModel], name: str, value: Any) -> bool:
    annotation = model.model_fields[name].annotation
    is_list = get_origin(annotation) is list or list in map(get_origin, get_args(annotation))
    is_pair = "tuple" in str(annotation)
    given = [value, value] if (is_list or is_pair) else value
    try:
        model.model_validate({"name": _option_name(model), name: given})
    except ValidationError as error:
        return any(error_["loc"][0] == name for error_ in error.errors())
    return False


def _option_name(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("name")
    return get_args(field.annotation)[0] if field is not None else None


def test_yaml_values_still_validate_as_their_types(composed: Callable[..., dict[str, Any]]) -> None:
    # YAML has ints for floats, lists for tuples; both are what the keys mean.
    cfg = validate_config(
        composed("optimizer=adam", "optimizer.lr=1", "optimizer.betas=[0.8,0.9]", "seed=4294967295")
    )
    assert cfg.optimizer.lr == 1.0 and isinstance(cfg.optimizer.lr, float)
    assert cfg.optimizer.betas == (0.8, 0.9)
    assert cfg.seed == 2**32 - 1


# --------------------------------------------------------------------------- trainer.monitor
@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=linear_regression", "trainer.monitor=val_loss"],
        ["experiment=logistic_regression", "dataset.val_fraction=0", "trainer.monitor=val_loss"],
        ["trainer.monitor=val_loss"],  # dataset=none
    ],
)
def test_monitoring_val_loss_without_validation_data_is_refused(
    composed: Callable[..., dict[str, Any]], overrides: list[str]
) -> None:
    problems = problems_for(composed(*overrides))
    assert any(
        problem.startswith("trainer.monitor=val_loss needs validation data")
        and "dataset.val_fraction" in problem
        for problem in problems
    ), problems


def test_monitoring_val_loss_with_validation_data_is_fine(
    composed: Callable[..., dict[str, Any]],
) -> None:
    cfg = validate_config(composed("experiment=logistic_regression", "trainer.monitor=val_loss"))
    assert cfg.trainer.monitor == "val_loss"


# ---------------------------------------------------------------------- sizes beyond memory
@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.size=100000000000"], "model.size=100000000000"),
        (
            ["experiment=linear_regression", "dataset.n_samples=100000000000"],
            "dataset.n_samples=100000000000",
        ),
        (
            ["experiment=mlp_classification", "model.hidden_sizes=[200000,200000]"],
            "model.hidden_sizes=[200000, 200000]",
        ),
        (["model.init=null", "model.size=100000000000", "optimizer=adam"], "model.size"),
    ],
)
def test_sizes_beyond_this_machines_memory_are_refused_by_key(
    composed: Callable[..., dict[str, Any]], overrides: list[str], key: str
) -> None:
    problems = problems_for(composed(*overrides))
    assert any(key in problem and "memory" in problem for problem in problems), problems


def test_the_memory_estimate_counts_weights_gradients_optimizer_state_and_data(
    composed: Callable[..., dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradtrain import memory

    cfg = validate_config(composed("experiment=linear_regression", "optimizer=adam"))
    # nn.Linear(8, 1): 9 parameters; weights, gradients and Adam's two moments: 4 copies.
    # The data: 1024 rows of 8 float32 features and a float32 target, and their split.
    needed = memory.memory_needed(cfg.model, cfg.dataset, cfg.optimizer)
    assert needed == {"model": 9 * 4 * 4, "dataset": 2 * 1024 * 9 * 4}
    monkeypatch.setattr(memory, "available_memory", lambda: 2 * 1024 * 9 * 4 + 9 * 16 - 1)
    (problem,) = problems_for(composed("experiment=linear_regression", "optimizer=adam"))
    assert problem.startswith("dataset.n_samples=1024 x dataset.n_features=8 needs at least")
    monkeypatch.setattr(memory, "available_memory", lambda: 2 * 1024 * 9 * 4 + 9 * 16)
    validate_config(composed("experiment=linear_regression", "optimizer=adam"))


# ----------------------------------------------------------------------- mandatory values
def test_every_mandatory_value_left_out_is_named_with_how_to_give_it(
    composed: Callable[..., dict[str, Any]],
) -> None:
    assert problems_for(composed("experiment=csv_regression")) == [
        "dataset.path, dataset.target: no values given (the config leaves them ???); add them "
        "to the command, e.g. python train.py ... dataset.path=data.csv dataset.target=price"
    ]
    (only,) = problems_for(composed("experiment=csv_regression", "dataset.path=x.csv"))
    assert only.startswith("dataset.target: no value given") and "dataset.target=price" in only


def test_a_mandatory_value_left_out_is_reported_beside_other_problems(
    composed: Callable[..., dict[str, Any]],
) -> None:
    problems = problems_for(
        composed("experiment=csv_regression", "dataset.path=x.csv", "optimizer.lr=-1")
    )
    keys = sorted(problem.split(":")[0] for problem in problems)
    assert keys == ["dataset.target", "optimizer.lr"]
