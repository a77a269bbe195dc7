"""The one schema of every config key gradtrain reads.

Hydra composes YAML from `configs/`; `validate_config` turns the result into these frozen pydantic
models, reporting every problem at once. After that, code sees typed objects only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from trainer.errors import ConfigError


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, values never change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------------------- losses
class QuadraticLossConfig(StrictModel):
    """The lecture's `x**2 - offset`, elementwise over the parameter vector."""

    name: Literal["quadratic"]
    reduction: Literal["sum", "mean", "none"] = "sum"
    offset: float = 5.0


class RosenbrockLossConfig(StrictModel):
    """`sum (a - x_i)**2 + b * (x_{i+1} - x_i**2)**2`, minimum 0 at (a, a**2, ...)."""

    name: Literal["rosenbrock"]
    a: float = 1.0
    b: PositiveFloat = 100.0


class MSELossConfig(StrictModel):
    name: Literal["mse"]
    reduction: Literal["mean", "sum"] = "mean"


LossConfig = Annotated[
    QuadraticLossConfig | RosenbrockLossConfig | MSELossConfig, Field(discriminator="name")
]
# Losses of the model's parameters alone (no data) versus losses of predictions against targets.
OBJECTIVE_LOSSES = ("quadratic", "rosenbrock")
SUPERVISED_LOSSES = ("mse",)


# ----------------------------------------------------------------------------------------- models
class VectorModelConfig(StrictModel):
    """A free parameter tensor. `init` wins; else `size` values from N(0, 1) with the run's seed;
    else the loss's standard starting point."""

    name: Literal["vector"]
    init: list[float] | None = Field(default=None, min_length=1)
    size: PositiveInt | None = None

    @model_validator(mode="after")
    def _init_matches_size(self) -> VectorModelConfig:
        if self.init is not None and self.size is not None and len(self.init) != self.size:
            raise ValueError(
                f"model.init has {len(self.init)} values but model.size is {self.size}; "
                "give one of them"
            )
        return self


class LinearModelConfig(StrictModel):
    name: Literal["linear"]
    in_features: PositiveInt | None = None  # null: the dataset's number of features
    out_features: PositiveInt = 1
    bias: bool = True


ModelConfig = Annotated[VectorModelConfig | LinearModelConfig, Field(discriminator="name")]
DATA_FREE_MODELS = ("vector",)


# --------------------------------------------------------------------------------------- datasets
class NoDatasetConfig(StrictModel):
    name: Literal["none"]


class RegressionDatasetConfig(StrictModel):
    name: Literal["regression"]
    n_samples: PositiveInt = 1024
    n_features: PositiveInt = 8
    noise: NonNegativeFloat = 0.1
    batch_size: PositiveInt = 64
    shuffle: bool = True
    num_workers: NonNegativeInt = 0


DatasetConfig = Annotated[NoDatasetConfig | RegressionDatasetConfig, Field(discriminator="name")]


# ------------------------------------------------------------------------------------- optimizers
class ManualSGDConfig(StrictModel):
    name: Literal["manual_sgd"]
    lr: PositiveFloat = 0.1


class SGDConfig(StrictModel):
    name: Literal["sgd"]
    lr: PositiveFloat = 0.1
    momentum: NonNegativeFloat = 0.0
    nesterov: bool = False
    weight_decay: NonNegativeFloat = 0.0

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDConfig:
        if self.nesterov and self.momentum == 0:
            raise ValueError("optimizer.nesterov=true needs optimizer.momentum > 0")
        return self


class AdamConfig(StrictModel):
    name: Literal["adam"]
    lr: PositiveFloat = 1e-3
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9,
        0.999,
    )
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.0


OptimizerConfig = Annotated[ManualSGDConfig | SGDConfig | AdamConfig, Field(discriminator="name")]


# ---------------------------------------------------------------------------------- trainer, logs
class TrainerConfig(StrictModel):
    max_steps: PositiveInt | None = 200
    max_epochs: PositiveInt | None = None
    log_every_n_steps: PositiveInt = 10
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    grad_clip: PositiveFloat | None = None
    tolerance: NonNegativeFloat | None = None
    progress_bar: bool = True
    # What the run returns to a sweeper and what a sweep summary is sorted by (lower is better).
    # null: the final validation loss when the run has one, else the final training loss.
    objective: Literal["val_loss", "final_loss", "best_loss"] | None = None

    @model_validator(mode="after")
    def _has_a_limit(self) -> TrainerConfig:
        if self.max_steps is None and self.max_epochs is None:
            raise ValueError("set trainer.max_steps or trainer.max_epochs (or both)")
        return self


class TensorBoardLoggerConfig(StrictModel):
    name: Literal["tensorboard"]
    flush_secs: PositiveInt = 30
    # Optional views, off by default; each costs device time only at its own steps.
    histogram_every_n_steps: PositiveInt | None = None  # parameter and gradient histograms
    update_ratio: bool = False  # |update| / |weight| per parameter, at logging steps


class NoLoggerConfig(StrictModel):
    name: Literal["none"]


LoggerConfig = Annotated[TensorBoardLoggerConfig | NoLoggerConfig, Field(discriminator="name")]


# ------------------------------------------------------------------------------------------- root
class Config(StrictModel):
    seed: int = 0
    loss: LossConfig
    model: ModelConfig
    dataset: DatasetConfig
    optimizer: OptimizerConfig
    trainer: TrainerConfig = TrainerConfig()
    logger: LoggerConfig = TensorBoardLoggerConfig(name="tensorboard")

    @model_validator(mode="after")
    def _components_fit_together(self) -> Config:
        problems = compatibility_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def compatibility_problems(cfg: Config) -> list[str]:
    """Combinations that would fail at the first step, said before anything is built."""
    problems = []
    has_data = cfg.dataset.name != "none"
    loss, model, dataset = cfg.loss.name, cfg.model.name, cfg.dataset.name
    if loss in SUPERVISED_LOSSES and not has_data:
        problems.append(
            f"loss={loss} compares predictions with targets, but dataset=none has no data; "
            "use experiment=linear_regression, or dataset=regression model=linear"
        )
    if loss in OBJECTIVE_LOSSES and has_data:
        problems.append(
            f"loss={loss} is a function of the model's parameters and takes no data, but "
            f"dataset={dataset}; use dataset=none model=vector (or experiment={loss})"
        )
    if model in DATA_FREE_MODELS and has_data:
        problems.append(
            f"model={model} takes no inputs, but dataset={dataset} feeds it batches; "
            "use model=linear"
        )
    if model not in DATA_FREE_MODELS and not has_data:
        problems.append(
            f"model={model} needs inputs, but dataset=none has none; use model=vector, "
            "or dataset=regression"
        )
    if loss == "rosenbrock" and isinstance(cfg.model, VectorModelConfig):
        size = len(cfg.model.init) if cfg.model.init is not None else cfg.model.size
        if size is not None and size < 2:
            problems.append("loss=rosenbrock needs at least 2 parameters (model.size >= 2)")
    return problems


# Discriminated unions put the chosen option's name into error locations
# (`optimizer.manual_sgd.lr`); users wrote `optimizer.lr`, so that is what errors say.
_UNION_SECTIONS = ("loss", "model", "dataset", "optimizer", "logger")


def _error_key(loc: tuple[int | str, ...], raw: Mapping[str, Any]) -> str:
    parts = list(loc)
    if len(parts) >= 2 and parts[0] in _UNION_SECTIONS:
        section = raw.get(str(parts[0]))
        if isinstance(section, Mapping) and section.get("name") == parts[1]:
            del parts[1]
    return ".".join(str(p) for p in parts)


def _describe(error: Any, raw: Mapping[str, Any]) -> str:
    key = _error_key(tuple(error["loc"]), raw)
    kind = error["type"]
    if kind == "extra_forbidden":
        section = key.rsplit(".", 1)[0] if "." in key else ""
        return f"{key}: unknown key{_allowed_keys_hint(section, raw)}"
    if kind == "union_tag_invalid":
        return f"{key}.name: {error['msg']}"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    got = "" if kind in ("missing", "value_error") else f" (got {error['input']!r})"
    return f"{key}: {message}{got}" if key else message


def _allowed_keys_hint(section: str, raw: Mapping[str, Any]) -> str:
    model: type[BaseModel] | None = Config if not section else None
    if section in _UNION_SECTIONS:
        chosen = raw.get(section)
        name = chosen.get("name") if isinstance(chosen, Mapping) else None
        annotation = Config.model_fields[section].annotation
        for option in getattr(annotation, "__args__", ()):
            if option.model_fields["name"].annotation.__args__ == (name,):
                model = option
    elif section == "trainer":
        model = TrainerConfig
    if model is None:
        return ""
    return f"; allowed keys: {', '.join(model.model_fields)}"


def validate_config(raw: Mapping[str, Any]) -> Config:
    """Validate a composed config (plain dicts and lists) or raise one ConfigError listing all
    problems by key."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(error, raw) for error in exc.errors()]
        raise ConfigError(lines) from None
