"""The one schema of every config key gradtrain reads.

Hydra composes YAML from `configs/`; `validate_config` turns the result into these frozen pydantic
models, reporting every problem at once. After that, code sees typed objects only.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Literal, cast, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from gradtrain.errors import ConfigError


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, values never change after validation.

    Every key of every section takes its own type only (`strict`): a boolean is not a number
    (YAML's `true` as `max_steps=1`), a float is not a count (`n_samples=1e11`), a string is not
    a number. An int is still a float (YAML writes `lr: 1`). And no float is infinite or NaN
    (`allow_inf_nan=False`): every float key here means a finite quantity; the ones that can be
    switched off (`grad_clip`, `tolerance`) say so with null.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


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


class HuberLossConfig(StrictModel):
    name: Literal["huber"]
    delta: PositiveFloat = 1.0


class CrossEntropyLossConfig(StrictModel):
    name: Literal["cross_entropy"]
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0


class BCEWithLogitsLossConfig(StrictModel):
    name: Literal["bce_with_logits"]


LossConfig = Annotated[
    QuadraticLossConfig
    | RosenbrockLossConfig
    | MSELossConfig
    | HuberLossConfig
    | CrossEntropyLossConfig
    | BCEWithLogitsLossConfig,
    Field(discriminator="name"),
]
# Losses of the model's parameters alone (no data), and the task each data loss expects.
PARAMETER_LOSSES = ("quadratic", "rosenbrock")
LOSS_TASK = {
    "mse": "regression",
    "huber": "regression",
    "cross_entropy": "classification",
    "bce_with_logits": "classification",
}


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
    """`nn.Linear`. Sizes left null come from the data: features in; 1 output for regression
    and bce_with_logits, one per class for cross_entropy."""

    name: Literal["linear"]
    in_features: PositiveInt | None = None
    out_features: PositiveInt | None = None
    bias: bool = True


class LogisticModelConfig(StrictModel):
    """Logistic (softmax) regression: a linear layer producing class logits."""

    name: Literal["logistic"]
    in_features: PositiveInt | None = None
    out_features: PositiveInt | None = None


class MLPModelConfig(StrictModel):
    name: Literal["mlp"]
    in_features: PositiveInt | None = None
    out_features: PositiveInt | None = None
    hidden_sizes: list[PositiveInt] = Field(default=[64, 64], min_length=1)
    activation: Literal["relu", "tanh", "gelu", "sigmoid"] = "relu"
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0


ModelConfig = Annotated[
    VectorModelConfig | LinearModelConfig | LogisticModelConfig | MLPModelConfig,
    Field(discriminator="name"),
]
DATA_FREE_MODELS = ("vector",)


# --------------------------------------------------------------------------------------- datasets
class NoDatasetConfig(StrictModel):
    name: Literal["none"]


class LoaderSettings(StrictModel):
    """How every data set is split and served (shared by all datasets with data)."""

    batch_size: PositiveInt | None = 64  # null: the whole training split in one batch
    shuffle: bool = True
    num_workers: NonNegativeInt = 0
    pin_memory: bool = False
    drop_last: bool = False
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0


class RegressionDatasetConfig(LoaderSettings):
    name: Literal["regression"]
    n_samples: PositiveInt = 1024
    n_features: PositiveInt = 8
    noise: NonNegativeFloat = 0.1


class ClassificationDatasetConfig(LoaderSettings):
    name: Literal["classification"]
    n_samples: PositiveInt = 1024
    n_features: PositiveInt = 2
    n_classes: Annotated[int, Field(ge=2)] = 2
    shape: Literal["blobs", "moons"] = "blobs"
    spread: NonNegativeFloat = 1.0

    @model_validator(mode="after")
    def _moons_are_flat(self) -> ClassificationDatasetConfig:
        if self.shape == "moons" and (self.n_features != 2 or self.n_classes != 2):
            raise ValueError("dataset.shape=moons needs dataset.n_features=2 and n_classes=2")
        return self


def _named_delimiter(value: Any) -> Any:
    return "\t" if value in ("tab", "\\t") else value


class CsvDatasetConfig(LoaderSettings):
    name: Literal["csv"]
    # Mandatory (??? in configs/dataset/csv.yaml); the examples are what a missing one's message
    # suggests.
    path: str = Field(min_length=1, examples=["data.csv"])
    target: str = Field(min_length=1, examples=["price"])
    features: list[str] | None = None  # null: every column but the target
    task: Literal["regression", "classification"] = "regression"
    standardize: bool = True
    # One character; `tab` (or `\t`, which Hydra passes on as two characters) is a tab.
    delimiter: Annotated[str, BeforeValidator(_named_delimiter)] = Field(
        default=",", min_length=1, max_length=1
    )
    # auto: by the suffix (.parquet/.pq: Parquet, .arrow/.feather/.ipc: Arrow IPC, else CSV).
    format: Literal["auto", "csv", "parquet", "arrow"] = "auto"
    # Read the file in chunks while training instead of into memory (datasets/streaming.py).
    streaming: bool = False
    shuffle_buffer: PositiveInt = 10_000  # streaming: rows a batch is drawn from at random


DatasetConfig = Annotated[
    NoDatasetConfig | RegressionDatasetConfig | ClassificationDatasetConfig | CsvDatasetConfig,
    Field(discriminator="name"),
]


def dataset_task(cfg: DatasetConfig) -> str | None:
    if isinstance(cfg, CsvDatasetConfig):
        return cfg.task
    return {"regression": "regression", "classification": "classification"}.get(cfg.name)


# ------------------------------------------------------------------------------------- optimizers
class ManualSGDConfig(StrictModel):
    name: Literal["manual_sgd"]
    lr: PositiveFloat = 0.1
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0


class SGDConfig(StrictModel):
    name: Literal["sgd"]
    lr: PositiveFloat = 0.1
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    nesterov: bool = False
    weight_decay: NonNegativeFloat = 0.0

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDConfig:
        if self.nesterov and self.momentum == 0:
            raise ValueError("optimizer.nesterov=true needs optimizer.momentum > 0")
        return self


Beta = Annotated[float, Field(ge=0, lt=1)]


def _list_as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


# YAML and the command line have lists, not tuples, and strict validation takes only a tuple for
# a tuple: the list becomes one first, then its items are checked.
Betas = Annotated[tuple[Beta, Beta], BeforeValidator(_list_as_tuple)]


class AdamConfig(StrictModel):
    name: Literal["adam"]
    lr: PositiveFloat = 1e-3
    betas: Betas = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.0


class AdamWConfig(StrictModel):
    name: Literal["adamw"]
    lr: PositiveFloat = 1e-3
    betas: Betas = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.01


class RMSpropConfig(StrictModel):
    name: Literal["rmsprop"]
    lr: PositiveFloat = 1e-2
    alpha: Beta = 0.99
    eps: PositiveFloat = 1e-8
    momentum: Beta = 0.0
    weight_decay: NonNegativeFloat = 0.0
    centered: bool = False


class LBFGSConfig(StrictModel):
    """Full-batch quasi-Newton; the trainer hands it a closure that re-evaluates the loss."""

    name: Literal["lbfgs"]
    lr: PositiveFloat = 1.0
    max_iter: PositiveInt = 20
    history_size: PositiveInt = 100
    line_search_fn: Literal["strong_wolfe"] | None = "strong_wolfe"
    tolerance_grad: NonNegativeFloat = 1e-7
    tolerance_change: NonNegativeFloat = 1e-9


OptimizerConfig = Annotated[
    ManualSGDConfig | SGDConfig | AdamConfig | AdamWConfig | RMSpropConfig | LBFGSConfig,
    Field(discriminator="name"),
]


# ------------------------------------------------------------------------------------- schedulers
class NoSchedulerConfig(StrictModel):
    name: Literal["none"]


class StepSchedulerConfig(StrictModel):
    """Multiply the lr by `gamma` every `step_size` optimizer steps."""

    name: Literal["step"]
    step_size: PositiveInt = 100
    gamma: PositiveFloat = 0.5


class CosineSchedulerConfig(StrictModel):
    """Cosine decay to `eta_min` over `t_max` steps (null: the run's total steps)."""

    name: Literal["cosine"]
    t_max: PositiveInt | None = None
    eta_min: NonNegativeFloat = 0.0


class ExponentialSchedulerConfig(StrictModel):
    name: Literal["exponential"]
    gamma: PositiveFloat = 0.99


class LinearWarmupSchedulerConfig(StrictModel):
    """Ramp the lr linearly from lr / warmup_steps to lr over `warmup_steps`, then hold it."""

    name: Literal["linear_warmup"]
    warmup_steps: PositiveInt = 100


SchedulerConfig = Annotated[
    NoSchedulerConfig
    | StepSchedulerConfig
    | CosineSchedulerConfig
    | ExponentialSchedulerConfig
    | LinearWarmupSchedulerConfig,
    Field(discriminator="name"),
]


# ---------------------------------------------------------------------------------- trainer, logs
class TrainerConfig(StrictModel):
    max_steps: PositiveInt | None = 200
    max_epochs: PositiveInt | None = None
    log_every_n_steps: PositiveInt = 10
    val_every_n_epochs: PositiveInt = 1
    accumulate_grad_batches: PositiveInt = 1
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    grad_clip: PositiveFloat | None = None
    tolerance: NonNegativeFloat | None = None
    progress_bar: bool = True
    # Checkpoints (<run_dir>/checkpoints): every n steps, each finished epoch, and the end.
    save_checkpoints: bool = True
    checkpoint_every_n_steps: PositiveInt | None = None
    keep_checkpoints: NonNegativeInt = 2  # step_<N>.pt files kept beside last.pt
    resume: str | None = None  # null, "auto" (last.pt of this run dir if any), or a path
    # Non-finite loss, gradient or weights: stop (every loss, and the gradients at logging
    # steps, kept on the device and read back at a logging step once per 64 updates or per
    # second, at checkpoints and at the end), skip the update (reads back every step), or off.
    on_nonfinite: Literal["stop", "skip", "off"] = "stop"
    max_nonfinite_skips: PositiveInt = 10
    detect_anomaly: bool = False
    # What the run returns to a sweeper and what a sweep summary is sorted by (lower is better).
    # null: the final validation loss when the run has one, else the final training loss.
    monitor: Literal["val_loss", "final_loss", "best_loss"] | None = None
    # Under torchrun: how long a collective (an all-reduce, a broadcast) may wait for the other
    # ranks before the job fails, so a dead or stuck rank ends the job instead of hanging it.
    dist_timeout_s: PositiveInt = 300
    # bf16: forward and loss under torch.autocast (matmuls in bfloat16); parameters,
    # gradients and the optimizer stay float32.
    precision: Literal["fp32", "bf16"] = "fp32"

    @model_validator(mode="after")
    def _has_a_limit(self) -> TrainerConfig:
        if self.max_steps is None and self.max_epochs is None:
            raise ValueError("set trainer.max_steps or trainer.max_epochs (or both)")
        return self


class TensorBoardLoggerConfig(StrictModel):
    name: Literal["tensorboard"]
    flush_secs: PositiveInt = 30
    # The optimizer's path as an image: on the loss landscape for 1 or 2 parameters, else on the
    # path's two principal directions. Needs matplotlib; without it the run goes on without.
    figures: bool = True
    figure_every_n_steps: PositiveInt | None = None  # null: one figure, at the end of the run
    # Optional views, off by default; each costs device time only at its own steps.
    histogram_every_n_steps: PositiveInt | None = None  # parameter and gradient histograms
    update_ratio: bool = False  # |update| / |weight| per parameter, at logging steps


class NoLoggerConfig(StrictModel):
    name: Literal["none"]


LoggerConfig = Annotated[TensorBoardLoggerConfig | NoLoggerConfig, Field(discriminator="name")]


# ------------------------------------------------------------------------------------------- root
# torch's generators take 64-bit seeds, but NumPy's (Optuna's TPE sampler, seeded by `seed` in
# hparams_search=optuna) take 0 .. 2**32 - 1: the range every generator a run seeds accepts.
MAX_SEED = 2**32 - 1


class Config(StrictModel):
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    loss: LossConfig
    model: ModelConfig
    dataset: DatasetConfig
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig = NoSchedulerConfig(name="none")
    trainer: TrainerConfig = TrainerConfig()
    logger: LoggerConfig = TensorBoardLoggerConfig(name="tensorboard")
    explain: bool = False  # before training, show autograd at work on it (trainer/explain.py)

    @model_validator(mode="after")
    def _components_fit_together(self) -> Config:
        problems = compatibility_problems(dict(self))
        if problems:
            raise ValueError("; ".join(problems))
        return self


def section_options(section: str) -> dict[str, type[StrictModel]]:
    """The models a config group can choose, by `name`: `optimizer` -> {"sgd": SGDConfig, ...}."""
    return {
        get_args(option.model_fields["name"].annotation)[0]: option
        for option in get_args(Config.model_fields[section].annotation)
    }


# ------------------------------------------------------------------------------ cross-group checks
# Combinations that would fail at the first step, said before anything is built. (Facts known
# only once the data is read, like a CSV's classes, are checked at build time.) Each check's
# parameters name the sections it reads, so it can run whenever those validated, whatever else
# failed.
def _loss_fits_data(loss: LossConfig, dataset: DatasetConfig) -> list[str]:
    problems = []
    has_data, task = dataset.name != "none", dataset_task(dataset)
    if loss.name in LOSS_TASK and not has_data:
        problems.append(
            f"loss={loss.name} compares predictions with targets, but dataset=none has no data; "
            "use experiment=linear_regression, or dataset=regression model=linear"
        )
    if loss.name in LOSS_TASK and has_data and LOSS_TASK[loss.name] != task:
        fitting = [name for name, kind in LOSS_TASK.items() if kind == task]
        problems.append(
            f"loss={loss.name} is a {LOSS_TASK[loss.name]} loss, but dataset={dataset.name} is a "
            f"{task} task; use loss={' or loss='.join(fitting)}"
        )
    if loss.name in PARAMETER_LOSSES and has_data:
        problems.append(
            f"loss={loss.name} is a function of the model's parameters and takes no data, but "
            f"dataset={dataset.name}; use dataset=none model=vector (or experiment={loss.name})"
        )
    return problems


def _model_fits_data(model: ModelConfig, dataset: DatasetConfig) -> list[str]:
    problems = []
    has_data, task = dataset.name != "none", dataset_task(dataset)
    if model.name in DATA_FREE_MODELS and has_data:
        problems.append(
            f"model={model.name} takes no inputs, but dataset={dataset.name} feeds it batches; "
            "use model=linear, logistic or mlp"
        )
    if model.name not in DATA_FREE_MODELS and not has_data:
        problems.append(
            f"model={model.name} needs inputs, but dataset=none has none; use model=vector, "
            "or a dataset (regression, classification, csv)"
        )
    if model.name == "logistic" and has_data and task != "classification":
        problems.append(
            f"model=logistic needs a classification dataset; dataset={dataset.name} is {task}"
        )
    return problems


def _binary_loss_has_two_classes(loss: LossConfig, dataset: DatasetConfig) -> list[str]:
    if not isinstance(dataset, ClassificationDatasetConfig):
        return []
    if loss.name == "bce_with_logits" and dataset.n_classes != 2:
        return [
            f"loss=bce_with_logits is binary but dataset.n_classes={dataset.n_classes}; "
            "use loss=cross_entropy"
        ]
    return []


def _outputs_fit_classes(loss: LossConfig, model: ModelConfig, dataset: DatasetConfig) -> list[str]:
    if not isinstance(dataset, ClassificationDatasetConfig):
        return []
    n_classes = dataset.n_classes
    out = getattr(model, "out_features", None)
    expected = 1 if loss.name == "bce_with_logits" else n_classes
    if out is not None and loss.name in LOSS_TASK and out != expected:
        return [
            f"model.out_features={out} but loss={loss.name} on {n_classes} classes needs "
            f"{expected}; set model.out_features=null to infer it"
        ]
    return []


def _rosenbrock_has_two_parameters(loss: LossConfig, model: ModelConfig) -> list[str]:
    if loss.name == "rosenbrock" and isinstance(model, VectorModelConfig):
        size = len(model.init) if model.init is not None else model.size
        if size is not None and size < 2:
            return ["loss=rosenbrock needs at least 2 parameters (model.size >= 2)"]
    return []


def _lbfgs_gets_one_batch(optimizer: OptimizerConfig, dataset: DatasetConfig) -> list[str]:
    if optimizer.name == "lbfgs" and getattr(dataset, "batch_size", None) is not None:
        return [
            "optimizer=lbfgs is full-batch: set dataset.batch_size=null (the whole "
            "training split in one batch)"
        ]
    return []


def _lbfgs_does_not_accumulate(optimizer: OptimizerConfig, trainer: TrainerConfig) -> list[str]:
    if optimizer.name == "lbfgs" and trainer.accumulate_grad_batches != 1:
        return [
            "optimizer=lbfgs re-evaluates the loss itself; set trainer.accumulate_grad_batches=1"
        ]
    return []


def _streaming_takes_minibatches(optimizer: OptimizerConfig, dataset: DatasetConfig) -> list[str]:
    if not isinstance(dataset, CsvDatasetConfig) or not dataset.streaming:
        return []
    if optimizer.name == "lbfgs":
        return [
            "optimizer=lbfgs is full-batch, but dataset.streaming=true never holds the whole "
            "table: set dataset.streaming=false (if it fits in memory) or choose another "
            "optimizer (sgd, adam, ...)"
        ]
    if dataset.batch_size is None:
        return [
            "dataset.batch_size=null takes the whole table as one batch, which "
            "dataset.streaming=true never holds: set a batch size (e.g. dataset.batch_size=1024)"
        ]
    return []


def _monitor_is_reported(trainer: TrainerConfig, dataset: DatasetConfig) -> list[str]:
    # Said now, not when the summary is written after training. (A share too small to hold a
    # row is known once the data is: build.py checks that.)
    if trainer.monitor != "val_loss":
        return []
    val_fraction = getattr(dataset, "val_fraction", 0.0)
    if dataset.name != "none" and val_fraction > 0:
        return []
    why = (
        "dataset=none has no data"
        if dataset.name == "none"
        else f"dataset.val_fraction={val_fraction:g} holds out no rows"
    )
    return [
        f"trainer.monitor=val_loss needs validation data, but {why}; set dataset.val_fraction "
        "(e.g. 0.2) on a dataset, or trainer.monitor=final_loss, best_loss or null"
    ]


# ------------------------------------------------------------------------ fits in memory
def _fits_in_memory(
    model: ModelConfig, dataset: DatasetConfig, optimizer: OptimizerConfig
) -> list[str]:
    from gradtrain import memory  # (it reads these config models: imported when checked)

    available = memory.available_memory()
    needed = memory.memory_needed(model, dataset, optimizer)
    if available is None or sum(needed.values()) <= available:
        return []
    processes = memory.processes_on_this_machine()
    shared = f" (this machine's, shared by {processes} torchrun processes)" if processes > 1 else ""
    return [
        f"{memory.memory_report(model, dataset, optimizer)}, more than the "
        f"{memory.format_bytes(available)} "
        f"this process can have{shared}; make it smaller"
    ]


_CHECKS: tuple[Callable[..., list[str]], ...] = (
    _loss_fits_data,
    _model_fits_data,
    _binary_loss_has_two_classes,
    _outputs_fit_classes,
    _rosenbrock_has_two_parameters,
    _lbfgs_gets_one_batch,
    _lbfgs_does_not_accumulate,
    _streaming_takes_minibatches,
    _monitor_is_reported,
    _fits_in_memory,
)


def compatibility_problems(sections: Mapping[str, object]) -> list[str]:
    """The cross-group problems among `sections` (validated section models by key, as in
    Config); a check that reads a section missing from `sections` is skipped."""
    problems: list[str] = []
    for check in _CHECKS:
        reads = inspect.signature(check).parameters
        if all(name in sections for name in reads):
            problems += check(**{name: sections[name] for name in reads})
    return problems


# Discriminated unions put the chosen option's name into error locations
# (`optimizer.manual_sgd.lr`); users wrote `optimizer.lr`, so that is what errors say.
_UNION_SECTIONS = ("loss", "model", "dataset", "optimizer", "scheduler", "logger")


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
    model = _section_model(section, raw)
    if model is None:
        return ""
    return f"; allowed keys: {', '.join(model.model_fields)}"


def _section_model(section: str, raw: Mapping[str, Any]) -> type[BaseModel] | None:
    """The model whose fields a section's keys are ("" is the top level), or None."""
    if not section:
        return Config
    if section == "trainer":
        return TrainerConfig
    if section in _UNION_SECTIONS:
        chosen = raw.get(section)
        name = chosen.get("name") if isinstance(chosen, Mapping) else None
        return section_options(section).get(name) if isinstance(name, str) else None
    return None


# ------------------------------------------------------------------------ mandatory values
# OmegaConf's marker for a value the user must give (`path: ???` in configs/dataset/csv.yaml).
# `OmegaConf.to_container` keeps it as this string, which would otherwise pass as a file name or
# a column name and fail later with a message about '???'.
MISSING = "???"


def _missing_keys(raw: Mapping[str, Any] | list[Any], prefix: str = "") -> Iterator[str]:
    """The dotted key of every value left at MISSING, in the config's order."""
    items = raw.items() if isinstance(raw, Mapping) else enumerate(raw)
    for key, value in items:
        if isinstance(value, str) and value == MISSING:
            yield f"{prefix}{key}"
        elif isinstance(value, Mapping | list):
            yield from _missing_keys(value, f"{prefix}{key}.")


def _without_missing(raw: Any) -> Any:
    """`raw` without its MISSING values: each is then what it is, a key not given."""
    if isinstance(raw, Mapping):
        return {k: _without_missing(v) for k, v in raw.items() if v != MISSING}
    if isinstance(raw, list):
        return [_without_missing(v) for v in raw]
    return raw


def _missing_problem(key: str, raw: Mapping[str, Any]) -> str:
    section, _, name = key.rpartition(".")
    model = _section_model(section, raw)
    field = model.model_fields.get(name) if model is not None else None
    example = field.examples[0] if field is not None and field.examples else "<value>"
    return (
        f"{key}: no value given (the config leaves it {MISSING}); add it to the command, "
        f"e.g. {key}={example}"
    )


def validate_config(raw: Mapping[str, Any]) -> Config:
    """Validate a composed config (plain dicts and lists) or raise one ConfigError listing all
    problems by key: mandatory values left out, each field's, then the cross-group ones among
    the sections that validated."""
    missing = list(_missing_keys(raw))
    given = _without_missing(raw)
    try:
        config = Config.model_validate(given)
    except ValidationError as exc:
        errors = exc.errors()
    else:
        if not missing:
            return config
        errors = []  # (a key left MISSING that has a default: still the user's to give)
    # Errors with a key are the fields'. Pydantic runs the cross-group checks (Config's model
    # validator, the error without a key) only when every field validated, so they run here
    # again, over every section that did: a typo in one place must not hide a wrong combination.
    # A MISSING key is reported as such, not again as pydantic's "Field required".
    field_errors = [
        error
        for error in errors
        if error["loc"] and _error_key(tuple(error["loc"]), given) not in missing
    ]
    failed = {error["loc"][0] for error in field_errors} | {k.split(".")[0] for k in missing}
    # (A required key left out is an error under its own name, so it is in `failed`.)
    valid = {
        name: _validate_section(name, given) for name in Config.model_fields if name not in failed
    }
    problems = [_missing_problem(key, given) for key in missing]
    problems += [_describe(error, given) for error in field_errors]
    raise ConfigError(problems + compatibility_problems(valid))


def _validate_section(name: str, raw: Mapping[str, Any]) -> object:
    """One top-level key of Config on its own (its default when `raw` leaves it out)."""
    if name not in raw:
        return Config.model_fields[name].get_default()
    return _field_adapter(name).validate_python(raw[name])


@functools.cache  # built only when a config fails, once per key
def _field_adapter(name: str) -> TypeAdapter[Any]:
    field = Config.model_fields[name]
    # Annotated with its FieldInfo, the type keeps the field's discriminator and constraints.
    return TypeAdapter(cast(Any, Annotated[field.annotation, field]))
