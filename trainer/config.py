"""The one schema of every config key gradtrain reads.

Hydra composes YAML from `configs/`; `validate_config` turns the result into these frozen pydantic
models, reporting every problem at once. After that, code sees typed objects only.
"""

from __future__ import annotations

import functools
import inspect
import operator
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


class QuadraticFormLossConfig(StrictModel):
    """`½ (x - x*)ᵀ A (x - x*)`: A = Q diag(λ) Qᵀ (Q a seeded random rotation, λ evenly from 1
    to `condition_number`), x* seeded; the run's convergence rate is compared with theory."""

    name: Literal["quadratic_form"]
    # A is dim x dim and made by a QR decomposition in float64: 4096 is 128 MiB and seconds.
    dim: Annotated[int, Field(ge=1, le=4096)] = 10
    condition_number: Annotated[float, Field(ge=1)] = 10.0
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0  # (the range of the run's own seed)


class BealeLossConfig(StrictModel):
    """Beale's function of two parameters, minimum 0 at (3, 0.5)."""

    name: Literal["beale"]


class HimmelblauLossConfig(StrictModel):
    """Himmelblau's function of two parameters, four minima of value 0."""

    name: Literal["himmelblau"]


class BoothLossConfig(StrictModel):
    """Booth's function of two parameters, minimum 0 at (1, 3)."""

    name: Literal["booth"]


class SaddleLossConfig(StrictModel):
    """x² - y² + y⁴/4: a saddle at the origin, minima -1 at (0, ±√2)."""

    name: Literal["saddle"]


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
    | QuadraticFormLossConfig
    | BealeLossConfig
    | HimmelblauLossConfig
    | BoothLossConfig
    | SaddleLossConfig
    | MSELossConfig
    | HuberLossConfig
    | CrossEntropyLossConfig
    | BCEWithLogitsLossConfig,
    Field(discriminator="name"),
]
# Losses of the model's parameters alone (no data), and the task each data loss expects.
PARAMETER_LOSSES = (
    "quadratic",
    "rosenbrock",
    "quadratic_form",
    "beale",
    "himmelblau",
    "booth",
    "saddle",
)
# Classic test functions of exactly two parameters (x, y).
TWO_PARAMETER_LOSSES = ("beale", "himmelblau", "booth", "saddle")
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
    # A seeded share held out for the test score at the end of the run, disjoint from the
    # validation and training rows (`dataset.test_path` instead: a second CSV file).
    test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0

    @model_validator(mode="after")
    def _splits_leave_training_rows(self) -> LoaderSettings:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"dataset.test_fraction={self.test_fraction:g} plus dataset.val_fraction="
                f"{self.val_fraction:g} is {self.val_fraction + self.test_fraction:g}, which "
                "leaves no training rows; their sum must be below 1 (e.g. 0.2 and 0.2)"
            )
        return self


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
    # A second table with the same columns, scored at the end (standardised with the training
    # rows' statistics); null: none, or `test_fraction` of this file.
    test_path: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_test_split(self) -> CsvDatasetConfig:
        if self.test_path is not None and self.test_fraction > 0:
            raise ValueError(
                f"dataset.test_path={self.test_path} and dataset.test_fraction="
                f"{self.test_fraction:g} both ask for a test split; give one of them"
            )
        if self.streaming and (self.test_path is not None or self.test_fraction > 0):
            raise ValueError(
                "dataset.streaming=true has no test split yet (its validation rows are picked "
                "by a hash of the row index): set dataset.test_fraction=0 and "
                "dataset.test_path=null, or dataset.streaming=false"
            )
        return self


DatasetConfig = Annotated[
    NoDatasetConfig | RegressionDatasetConfig | ClassificationDatasetConfig | CsvDatasetConfig,
    Field(discriminator="name"),
]


def dataset_task(cfg: DatasetConfig) -> str | None:
    task = getattr(cfg, "task", None)  # csv's key, or a plugin dataset's (gradtrain.plugins)
    if task in ("regression", "classification"):
        return cast(str, task)
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
class EarlyStoppingConfig(StrictModel):
    """Stop when `trainer.monitor` has not improved by more than `min_delta` for `patience`
    evaluations in a row (null patience: never)."""

    patience: PositiveInt | None = None
    min_delta: NonNegativeFloat = 0.0


# The metrics `trainer.monitor` can name. Evaluated during training (early stopping, best.pt):
# the validation metrics at each validation, the epoch-mean training loss at each epoch's end.
# Known only at the end (a sweep's ranking only): the final and the best step loss.
MONITORED_DURING_TRAINING = ("val_loss", "val_accuracy", "train_loss_epoch")
MONITORED_AT_THE_END = ("final_loss", "best_loss")
Monitor = Literal["val_loss", "val_accuracy", "train_loss_epoch", "final_loss", "best_loss"]


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
    # What the run returns to a sweeper and what a sweep summary is sorted by, what early
    # stopping watches and best.pt keeps. null: val_loss when the run has validation data, else
    # train_loss_epoch (the mean training loss of each epoch), else (dataset=none) final_loss.
    monitor: Monitor | None = None
    mode: Literal["min", "max"] | None = None  # null: max for val_accuracy, else min
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    # Validate every n updates (mid-epoch too) instead of every val_every_n_epochs epochs.
    val_every_n_steps: PositiveInt | None = None
    # Smoke runs. fast_dev_run: one training and one validation batch through everything,
    # nothing kept but summary.json. limit_*: at most n batches per epoch (per validation).
    # overfit_batches: the same first n batches every epoch (can the model fit at all?).
    fast_dev_run: bool = False
    limit_train_batches: PositiveInt | None = None
    limit_val_batches: PositiveInt | None = None
    overfit_batches: PositiveInt | None = None
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
        if self.overfit_batches is not None and self.limit_train_batches is not None:
            raise ValueError(
                "trainer.overfit_batches and trainer.limit_train_batches both cap the training "
                "batches; give one of them"
            )
        return self


class LRFindConfig(StrictModel):
    """The learning-rate range test before training (trainer/lr_find.py)."""

    enabled: bool = False
    min_lr: PositiveFloat = 1e-6
    max_lr: PositiveFloat = 10.0
    num_steps: Annotated[int, Field(ge=5)] = 100
    # Stop once the (smoothed) loss exceeds this multiple of the best one seen.
    stop_factor: Annotated[float, Field(gt=1)] = 4.0
    apply: bool = False  # train with the suggested lr instead of optimizer.lr

    @model_validator(mode="after")
    def _range_is_increasing(self) -> LRFindConfig:
        if self.min_lr >= self.max_lr:
            raise ValueError(
                f"lr_find.min_lr={self.min_lr:g} must be below lr_find.max_lr={self.max_lr:g} "
                "(the lr grows from the one to the other), e.g. lr_find.min_lr=1e-6 "
                "lr_find.max_lr=10"
            )
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


# ------------------------------------------------------------------------------------- landscape
class NoLandscapeConfig(StrictModel):
    name: Literal["none"]


class InterpolationLandscapeConfig(StrictModel):
    """After training: the loss along θ(α) = (1 - α) θ₀ + α θ_final, α from -0.5 to 1.5, on
    `rows` seeded training rows, at `points` values of α (0 and 1 always among them)."""

    name: Literal["interpolation"]
    points: Annotated[int, Field(ge=2)] = 41
    rows: PositiveInt = 256


class FilterNormalizedLandscapeConfig(StrictModel):
    """After training: the loss on a `points` x `points` grid around θ_final, θ_final + a d₁ +
    b d₂ for a, b in [-span, span], along two seeded random directions scaled filter by filter
    to the weights' norms (Li et al., 2018), on `rows` seeded training rows."""

    name: Literal["filter_normalized"]
    points: Annotated[int, Field(ge=2)] = 21
    rows: PositiveInt = 256
    span: PositiveFloat = 1.0


LandscapeConfig = Annotated[
    NoLandscapeConfig | InterpolationLandscapeConfig | FilterNormalizedLandscapeConfig,
    Field(discriminator="name"),
]


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
    # After training: the network's loss surface along or around the path (insight/landscape.py).
    landscape: LandscapeConfig = NoLandscapeConfig(name="none")
    lr_find: LRFindConfig = LRFindConfig()  # the learning-rate range test before training

    @model_validator(mode="after")
    def _components_fit_together(self) -> Config:
        problems = compatibility_problems(dict(self))
        if problems:
            raise ValueError("; ".join(problems))
        return self


def section_options(section: str, schema: type[Config] = Config) -> dict[str, type[StrictModel]]:
    """The models a config group can choose, by `name`: `optimizer` -> {"sgd": SGDConfig, ...}
    (`schema`: Config, or `schema_for`'s with installed plugins' models)."""
    return {
        get_args(option.model_fields["name"].annotation)[0]: option
        for option in get_args(schema.model_fields[section].annotation)
    }


# ------------------------------------------------------------------------ installed plugins
def schema_for(raw: Mapping[str, Any]) -> type[Config]:
    """Config, or, when `raw` chooses a component an installed plugin adds (gradtrain.plugins),
    a subclass whose section takes that plugin's config model too; a name that is neither
    built in nor a plugin's brings in all of the section's plugins, so the error lists them."""
    from gradtrain import plugins

    added: dict[str, tuple[type[StrictModel], ...]] = {}
    for section in plugins.SECTIONS:
        chosen = raw.get(section)
        name = chosen.get("name") if isinstance(chosen, Mapping) else None
        if not isinstance(name, str) or name in section_options(section):
            continue
        installed = plugins.names(section)
        wanted = [name] if name in installed else installed
        loaded = [found for n in wanted if (found := plugins.component(section, n)) is not None]
        if loaded:
            added[section] = tuple(found.config for found in loaded)
    return _with_plugins(tuple(added.items())) if added else Config


@functools.cache
def _with_plugins(added: tuple[tuple[str, tuple[type[StrictModel], ...]], ...]) -> type[Config]:
    from pydantic import create_model

    fields: dict[str, Any] = {}
    for section, models in added:
        field = Config.model_fields[section]
        options: Any = functools.reduce(operator.or_, (*get_args(field.annotation), *models))
        default = ... if field.is_required() else field.get_default()
        fields[section] = (Annotated[options, Field(discriminator="name")], default)
    return cast(type[Config], create_model("Config", __base__=Config, **fields))


# ------------------------------------------------------------------------------ cross-group checks
# Combinations that would fail at the first step, said before anything is built. (Facts known
# only once the data is read, like a CSV's classes, are checked at build time.) Each check's
# parameters name the sections it reads, so it can run whenever those validated, whatever else
# failed.
def _components_fit_data(loss: LossConfig, model: ModelConfig, dataset: DatasetConfig) -> list[str]:
    """Whether the loss and the model take the data the dataset gives (none, or its task): one
    line per cause, naming what to change, however many of the two it trips (a preset picks
    both, so `experiment=quadratic dataset=classification` is one mistake, not two)."""
    has_data, task = dataset.name != "none", dataset_task(dataset)
    if not has_data:
        return _data_wanted(loss, model)
    return _no_data_wanted(loss, model, dataset) + _task_mismatch(loss, model, dataset, task)


def _data_wanted(loss: LossConfig, model: ModelConfig) -> list[str]:
    """dataset=none, but the loss compares with targets or the model takes inputs."""
    loss_wants = loss.name in LOSS_TASK
    model_wants = model.name not in DATA_FREE_MODELS
    if loss_wants and not model_wants:
        return [
            f"loss={loss.name} compares predictions with targets, but dataset=none has no data; "
            "use experiment=linear_regression, or dataset=regression model=linear"
        ]
    if model_wants and not loss_wants:
        return [
            f"model={model.name} needs inputs, but dataset=none has none; use model=vector, "
            "or a dataset (regression, classification, csv)"
        ]
    if loss_wants and model_wants:
        kind = LOSS_TASK[loss.name]
        return [
            f"loss={loss.name} and model={model.name} train on data, but dataset=none has none; "
            f"choose a dataset: dataset={kind} or dataset=csv (your file)"
        ]
    return []


def _no_data_wanted(loss: LossConfig, model: ModelConfig, dataset: DatasetConfig) -> list[str]:
    """A dataset, but a loss of the parameters alone or a model without inputs."""
    loss_refuses = loss.name in PARAMETER_LOSSES
    model_refuses = model.name in DATA_FREE_MODELS
    if loss_refuses and model_refuses:
        return [
            f"loss={loss.name} and model={model.name} take no data (a function of the "
            f"parameters alone), but dataset={dataset.name} feeds batches; use dataset=none"
        ]
    if loss_refuses:
        return [
            f"loss={loss.name} is a function of the model's parameters and takes no data, but "
            f"dataset={dataset.name}; use dataset=none model=vector (or experiment={loss.name})"
        ]
    if model_refuses:
        return [
            f"model={model.name} takes no inputs, but dataset={dataset.name} feeds it batches; "
            "use model=linear, logistic or mlp"
        ]
    return []


def _task_mismatch(
    loss: LossConfig, model: ModelConfig, dataset: DatasetConfig, task: str | None
) -> list[str]:
    """The loss or the model is for the other task than the dataset's."""
    loss_task = LOSS_TASK.get(loss.name)
    loss_wrong = loss_task is not None and loss_task != task
    model_wrong = model.name == "logistic" and task != "classification"
    # A CSV file's task is a key of its own: setting it is the likely fix (a preset chose the
    # loss and the model for labels).
    csv = isinstance(dataset, CsvDatasetConfig)
    if loss_wrong and model_wrong:  # (then both are for classification)
        fix = (
            "set dataset.task=classification"
            if csv
            else "use dataset=classification (or dataset=csv dataset.task=classification)"
        )
        return [
            f"loss={loss.name} and model=logistic are for classification, but "
            f"dataset={dataset.name} is a {task} task; {fix}"
        ]
    if loss_wrong:
        fitting = [name for name, kind in LOSS_TASK.items() if kind == task]
        task_fix = f"set dataset.task={loss_task}, or " if csv else ""
        return [
            f"loss={loss.name} is a {loss_task} loss, but dataset={dataset.name} is a {task} "
            f"task; {task_fix}use loss={' or loss='.join(fitting)}"
        ]
    if model_wrong:
        task_fix = "; set dataset.task=classification, or use model=linear or mlp" if csv else ""
        return [
            f"model=logistic needs a classification dataset; dataset={dataset.name} is "
            f"{task}{task_fix}"
        ]
    return []


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


def _vector_fits_loss(loss: LossConfig, model: ModelConfig) -> list[str]:
    """quadratic_form's size is `dim`; the classic test functions take (x, y)."""
    if not isinstance(model, VectorModelConfig):
        return []
    size = len(model.init) if model.init is not None else model.size
    if isinstance(loss, QuadraticFormLossConfig) and size is not None and size != loss.dim:
        return [
            f"loss=quadratic_form has loss.dim={loss.dim} parameters but the model has {size} "
            f"(model.init or model.size); set model.size=null and model.init=null to start at "
            "the origin, or make them agree"
        ]
    if loss.name in TWO_PARAMETER_LOSSES and size is not None and size != 2:
        return [
            f"loss={loss.name} is a function of 2 parameters (x, y) but the model has {size} "
            "(model.init or model.size)"
        ]
    return []


# What a landscape may cost: evaluations x rows x weights, about the multiply-adds of its
# forward passes (1e10: seconds on a laptop CPU).
LANDSCAPE_BUDGET = 10**10


def _landscape_fits(
    landscape: LandscapeConfig, model: ModelConfig, dataset: DatasetConfig
) -> list[str]:
    if isinstance(landscape, NoLandscapeConfig):
        return []
    if dataset.name == "none":
        return [
            f"landscape={landscape.name} draws a network's loss over data rows, but dataset=none "
            "has none (a loss of the parameters alone is drawn with the path by "
            "logger.figures=true); set landscape=none, or choose a dataset"
        ]
    from gradtrain import memory  # (it reads these config models: imported when checked)

    weights = memory.parameter_count(model, dataset)
    evaluations = landscape.points + 2  # (α = 0 and 1 joined to the grid)
    shape = f"landscape.points={landscape.points} values of α"
    if isinstance(landscape, FilterNormalizedLandscapeConfig):
        evaluations = landscape.points**2
        shape = f"landscape.points²={evaluations} grid points"
    rows = landscape.rows
    rows_given = getattr(dataset, "n_samples", None)
    if rows_given is not None:
        rows = min(rows, rows_given)
    cost = evaluations * rows * weights
    if cost <= LANDSCAPE_BUDGET:
        return []
    return [
        f"landscape={landscape.name} would cost about {cost:.2g} multiply-adds ({shape} x "
        f"landscape.rows={rows} x {weights:,} weights), more than its budget of "
        f"{LANDSCAPE_BUDGET:.0e}; lower landscape.points or landscape.rows"
    ]


def _lbfgs_does_not_accumulate(optimizer: OptimizerConfig, trainer: TrainerConfig) -> list[str]:
    if optimizer.name == "lbfgs" and trainer.accumulate_grad_batches != 1:
        return [
            "optimizer=lbfgs re-evaluates the loss itself; set trainer.accumulate_grad_batches=1"
        ]
    return []


def default_monitor(has_validation: bool, has_data: bool) -> str:
    """`trainer.monitor=null`: the validation loss, else the epoch-mean training loss, else
    (a loss of the parameters alone, no epochs of data) the final loss."""
    if has_validation:
        return "val_loss"
    return "train_loss_epoch" if has_data else "final_loss"


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
    monitor = trainer.monitor
    val_fraction = getattr(dataset, "val_fraction", 0.0)
    has_data = dataset.name != "none"
    problems = []
    if monitor in ("val_loss", "val_accuracy") and not (has_data and val_fraction > 0):
        why = (
            "dataset=none has no data"
            if not has_data
            else f"dataset.val_fraction={val_fraction:g} holds out no rows"
        )
        problems.append(
            f"trainer.monitor={monitor} needs validation data, but {why}; set "
            "dataset.val_fraction (e.g. 0.2) on a dataset, or trainer.monitor=train_loss_epoch, "
            "final_loss, best_loss or null"
        )
    if monitor == "val_accuracy" and has_data and dataset_task(dataset) != "classification":
        problems.append(
            f"trainer.monitor=val_accuracy needs a classification dataset; dataset="
            f"{dataset.name} is {dataset_task(dataset)}: use trainer.monitor=val_loss"
        )
    if monitor == "train_loss_epoch" and not has_data:
        problems.append(
            "trainer.monitor=train_loss_epoch needs epochs of data, but dataset=none has none "
            "(each step is an epoch); use trainer.monitor=final_loss, best_loss or null"
        )
    return problems


def _early_stopping_has_a_metric(trainer: TrainerConfig, dataset: DatasetConfig) -> list[str]:
    if trainer.early_stopping.patience is None:
        return []
    has_data = dataset.name != "none"
    monitor = trainer.monitor or default_monitor(getattr(dataset, "val_fraction", 0) > 0, has_data)
    if monitor in MONITORED_DURING_TRAINING:
        return []
    return [
        f"trainer.early_stopping.patience={trainer.early_stopping.patience} watches the "
        f"monitored metric at each evaluation, but trainer.monitor={monitor} is known only at "
        "the end of the run; monitor val_loss, val_accuracy or train_loss_epoch (a dataset), "
        "or stop a loss of the parameters alone with trainer.tolerance"
    ]


def _lr_find_fits(
    trainer: TrainerConfig, optimizer: OptimizerConfig, lr_find: LRFindConfig
) -> list[str]:
    if not lr_find.enabled:
        return []
    problems = []
    if trainer.fast_dev_run:
        problems.append(
            "lr_find.enabled=true and trainer.fast_dev_run=true: a smoke run takes one batch, "
            "the range test many; set one of them to false"
        )
    if optimizer.name == "lbfgs":
        problems.append(
            "lr_find.enabled=true needs an optimizer with a fixed step size; optimizer=lbfgs "
            "searches its own step: set lr_find.enabled=false"
        )
    return problems


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
    _components_fit_data,
    _binary_loss_has_two_classes,
    _outputs_fit_classes,
    _rosenbrock_has_two_parameters,
    _vector_fits_loss,
    _landscape_fits,
    _lbfgs_does_not_accumulate,
    _streaming_takes_minibatches,
    _monitor_is_reported,
    _early_stopping_has_a_metric,
    _lr_find_fits,
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
_UNION_SECTIONS = ("loss", "model", "dataset", "optimizer", "scheduler", "logger", "landscape")


def _error_key(loc: tuple[int | str, ...], raw: Mapping[str, Any]) -> str:
    parts = list(loc)
    if len(parts) >= 2 and parts[0] in _UNION_SECTIONS:
        section = raw.get(str(parts[0]))
        if isinstance(section, Mapping) and section.get("name") == parts[1]:
            del parts[1]
    return ".".join(str(p) for p in parts)


def _describe(error: Any, raw: Mapping[str, Any], schema: type[Config] = Config) -> str:
    key = _error_key(tuple(error["loc"]), raw)
    kind = error["type"]
    if kind == "extra_forbidden":
        section = key.rsplit(".", 1)[0] if "." in key else ""
        if section == "dataset" and key.rpartition(".")[2] in LoaderSettings.model_fields:
            # (what a preset for data leaves when dataset=none replaces its dataset)
            return (
                f"{key}: dataset=none has no data to batch or split; choose a dataset with "
                "data (dataset=regression, classification or csv), or leave the key out"
            )
        hint = _closest_key_hint(key, section, raw, schema)
        return f"{key}: unknown key{hint}{_allowed_keys_hint(section, raw, schema)}"
    if kind == "union_tag_invalid":
        return f"{key}.name: {error['msg']}"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    got = "" if kind in ("missing", "value_error") else f" (got {error['input']!r})"
    return f"{key}: {message}{got}" if key else message


def _closest_key_hint(
    key: str, section: str, raw: Mapping[str, Any], schema: type[Config] = Config
) -> str:
    """`; did you mean trainer.max_steps?` for a typo of one of the section's keys."""
    from gradtrain.suggest import closest_key

    model = _section_model(section, raw, schema)
    if model is None:
        return ""
    closest = closest_key(key, (f"{section}.{f}" if section else f for f in model.model_fields))
    if closest is not None:
        return f"; did you mean {closest}?"
    name = key.rpartition(".")[2]
    options = section_options(section, schema) if section in _UNION_SECTIONS else {}
    owners = [option for option, other in options.items() if name in other.model_fields]
    if owners:  # (optimizer.betas with optimizer=sgd: Adam's key)
        chosen = raw[section]["name"]
        return f"; it is a key of {section}={', '.join(owners)}, not of {section}={chosen}"
    return ""


def _allowed_keys_hint(section: str, raw: Mapping[str, Any], schema: type[Config] = Config) -> str:
    model = _section_model(section, raw, schema)
    if model is None:
        return ""
    return f"; allowed keys: {', '.join(model.model_fields)}"


def _section_model(
    section: str, raw: Mapping[str, Any], schema: type[Config] = Config
) -> type[BaseModel] | None:
    """The model whose fields a section's keys are ("" is the top level), or None."""
    if not section:
        return schema
    if section == "trainer":
        return TrainerConfig
    if section == "trainer.early_stopping":
        return EarlyStoppingConfig
    if section == "lr_find":
        return LRFindConfig
    if section in _UNION_SECTIONS:
        chosen = raw.get(section)
        name = chosen.get("name") if isinstance(chosen, Mapping) else None
        return section_options(section, schema).get(name) if isinstance(name, str) else None
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


def _missing_problem(key: str, raw: Mapping[str, Any], schema: type[Config] = Config) -> str:
    section, _, name = key.rpartition(".")
    model = _section_model(section, raw, schema)
    field = model.model_fields.get(name) if model is not None else None
    example = field.examples[0] if field is not None and field.examples else "<value>"
    return (
        f"{key}: no value given (the config leaves it {MISSING}); add it to the command, "
        f"e.g. {key}={example}"
    )


def _missing_problems(
    missing: list[str], raw: Mapping[str, Any], schema: type[Config] = Config
) -> list[str]:
    """One line naming every key left MISSING, with the overrides that give them all."""
    if len(missing) <= 1:
        return [_missing_problem(key, raw, schema) for key in missing]
    examples = [_missing_problem(key, raw, schema).rpartition("e.g. ")[2] for key in missing]
    return [
        f"{', '.join(missing)}: no values given (the config leaves them {MISSING}); add them to "
        f"the command, e.g. python train.py ... {' '.join(examples)}"
    ]


def validate_config(raw: Mapping[str, Any]) -> Config:
    """Validate a composed config (plain dicts and lists) or raise one ConfigError listing all
    problems by key: mandatory values left out, each field's, then the cross-group ones among
    the sections that validated."""
    missing = list(_missing_keys(raw))
    given = _without_missing(raw)
    schema = schema_for(given)
    try:
        config = schema.model_validate(given)
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
        name: _validate_section(name, given, schema)
        for name in schema.model_fields
        if name not in failed
    }
    problems = _missing_problems(missing, given, schema)
    problems += [_describe(error, given, schema) for error in field_errors]
    raise ConfigError(problems + compatibility_problems(valid))


def _validate_section(name: str, raw: Mapping[str, Any], schema: type[Config] = Config) -> object:
    """One top-level key of Config on its own (its default when `raw` leaves it out)."""
    if name not in raw:
        return schema.model_fields[name].get_default()
    return _field_adapter(name, schema).validate_python(raw[name])


@functools.cache  # built only when a config fails, once per key
def _field_adapter(name: str, schema: type[Config] = Config) -> TypeAdapter[Any]:
    field = schema.model_fields[name]
    # Annotated with its FieldInfo, the type keeps the field's discriminator and constraints.
    return TypeAdapter(cast(Any, Annotated[field.annotation, field]))
