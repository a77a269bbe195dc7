"""Config sections -> plain objects, through the registries only."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from gradtrain.config import (
    ClassificationDatasetConfig,
    Config,
    CsvDatasetConfig,
    DatasetConfig,
    LinearModelConfig,
    LoaderSettings,
    LoggerConfig,
    LogisticModelConfig,
    LossConfig,
    MLPModelConfig,
    NoDatasetConfig,
    OptimizerConfig,
    RegressionDatasetConfig,
    SchedulerConfig,
    TensorBoardLoggerConfig,
    VectorModelConfig,
    dataset_task,
)
from gradtrain.distributed import (
    is_distributed,
    local_device,
    rank,
    unwrap,
    world_size,
    wrap_model,
)
from gradtrain.errors import ConfigError, GradtrainError
from gradtrain.insight.trajectory import Trajectory
from gradtrain.loop import Checkpointer, StopRequest, Trainer, epoch_batches, total_steps
from gradtrain.losses import LOSSES, ParameterLoss
from gradtrain.memory import memory_report
from gradtrain.metrics.history import TeeSink
from gradtrain.metrics.parameter_stats import ParameterStats
from gradtrain.metrics.sinks import MetricSink, NullSink, TensorBoardSink
from gradtrain.models import MODELS, VectorModel
from gradtrain.optim import OPTIMIZERS
from gradtrain.registry import Registry
from gradtrain.schedulers import SCHEDULERS

if TYPE_CHECKING:
    from gradtrain.datasets import InMemoryDataset

log = logging.getLogger("gradtrain")

# gradtrain's own datasets are built by config type in `build_data`; installed plugins add theirs
# here (gradtrain.plugins), each a factory returning a gradtrain.datasets.InMemoryDataset.
DATASETS: Registry[Callable[..., Any]] = Registry("dataset")


@dataclass
class Data:
    """The loaders and the facts about the data that models and losses are sized by."""

    train_loader: DataLoader[Any] | None = None
    val_loader: DataLoader[Any] | None = None
    test_loader: DataLoader[Any] | None = None  # scored once, at the end of the run
    n_features: int | None = None
    n_classes: int | None = None  # classification only
    class_names: list[str] | None = None  # classification: index -> label in the source
    # What predictions on new rows need (gradtrain.inference): the feature columns by name
    # (x0, x1, ... for generated data), and the training split's statistics the features were
    # standardised with (None: they were not).
    feature_names: list[str] | None = None
    feature_mean: torch.Tensor | None = None
    feature_std: torch.Tensor | None = None

    def inference_facts(self) -> dict[str, Any]:
        """These facts as plain data and tensors (checkpoints store them: weights_only)."""
        return {
            "feature_names": self.feature_names,
            "class_names": self.class_names,
            "feature_mean": self.feature_mean,
            "feature_std": self.feature_std,
        }


@dataclass
class Components:
    """Everything a `Trainer` is built from, made from a validated config."""

    model: nn.Module  # wrapped in DistributedDataParallel under torchrun
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler | None
    data: Data
    device: torch.device

    @property
    def module(self) -> nn.Module:
        """The model itself, unwrapped (parameter names, checkpoints, figures)."""
        return unwrap(self.model)


def build(cfg: Config) -> Components:
    """The model, loss, optimizer, scheduler and data of a validated config (the seed is set by
    the caller). Under torchrun (the process group already joined) the model is wrapped in
    DistributedDataParallel and each process loads its shard of the data.

    Everything that can refuse the config once the data is known (a CSV, sizes, an epoch
    without a batch) happens here, so `run` calls this before it writes anything."""
    device = local_device(resolve_device(cfg.trainer.device))
    loss_fn = build_loss(cfg.loss).to(device)
    with _refused_if_out_of_memory(cfg):
        data = build_data(cfg.dataset, seed=cfg.seed)
        problems = data_problems(cfg, data)
        if problems:
            raise ConfigError(problems)
        model = build_model(cfg, loss_fn, data).to(device)
        optimizer = build_optimizer(cfg.optimizer, model)
    return Components(
        model=wrap_model(model, device),
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=build_scheduler(cfg.scheduler, optimizer, _planned_steps(cfg, data)),
        data=data,
        device=device,
    )


def _planned_steps(cfg: Config, data: Data) -> int:
    """The updates the scheduler plans for (the run's limits, epochs as capped)."""
    loader = data.train_loader
    batches_per_epoch = epoch_batches(cfg.trainer, len(loader)) if loader is not None else 1
    return total_steps(cfg.trainer, batches_per_epoch)


def with_learning_rate(cfg: Config, parts: Components, lr: float) -> Components:
    """`parts` with a fresh optimizer and scheduler at learning rate `lr` (lr_find.apply)."""
    optimizer = build_optimizer(cfg.optimizer.model_copy(update={"lr": lr}), parts.model)
    scheduler = build_scheduler(cfg.scheduler, optimizer, _planned_steps(cfg, parts.data))
    return dataclasses.replace(parts, optimizer=optimizer, scheduler=scheduler)


@contextlib.contextmanager
def _refused_if_out_of_memory(cfg: Config) -> Iterator[None]:
    """An allocation that fails (a size config.py's lower-bound estimate let through, or the
    device's memory) becomes a message naming the keys that size the run."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:
        # torch says "DefaultCPUAllocator: can't allocate memory" on the CPU and raises
        # torch.OutOfMemoryError (a RuntimeError) on CUDA; other RuntimeErrors are not this.
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        if not isinstance(error, MemoryError | torch.OutOfMemoryError) and not any(
            words in first_line for words in ("can't allocate memory", "out of memory")
        ):
            raise
        raise GradtrainError(
            f"Not enough memory to build this run ({first_line}). "
            f"{memory_report(cfg.model, cfg.dataset, cfg.optimizer)}; make it smaller"
        ) from None


def data_problems(cfg: Config, data: Data) -> list[str]:
    """What the config asks of the data that the data, once made or read, cannot give: each
    a line of a ConfigError."""
    problems = []
    loader = data.train_loader
    lbfgs_problem = _lbfgs_problem(cfg, loader)
    if lbfgs_problem is not None:
        problems.append(lbfgs_problem)
    if loader is not None and len(loader) == 0:
        problems.append(_no_batch_problem(cfg.dataset, loader))
    monitor = cfg.trainer.monitor
    if monitor in ("val_loss", "val_accuracy") and loader is not None and data.val_loader is None:
        fraction = getattr(cfg.dataset, "val_fraction", 0.0)
        rows = len(loader.dataset)  # type: ignore[arg-type]
        problems.append(
            f"trainer.monitor={monitor} needs validation rows, but dataset.val_fraction="
            f"{fraction:g} of {rows} rows holds out none (round({fraction:g} x {rows}) = 0); "
            "raise dataset.val_fraction, or set trainer.monitor=train_loss_epoch, final_loss, "
            "best_loss or null"
        )
    test_fraction = getattr(cfg.dataset, "test_fraction", 0.0)
    if test_fraction > 0 and loader is not None and data.test_loader is None:
        problems.append(
            f"dataset.test_fraction={test_fraction:g} holds out no test rows (it rounds to 0 of "
            "the data set's rows); raise dataset.test_fraction, or set it to 0"
        )
    return problems


def _lbfgs_problem(cfg: Config, loader: DataLoader[Any] | None) -> str | None:
    """optimizer=lbfgs needs the whole training split as one batch, in one process: everything
    that must change for it, in one line (known once the data says how many rows it trains on).
    """
    if cfg.optimizer.name != "lbfgs":
        return None
    rows = len(loader.dataset) if loader is not None else 0  # type: ignore[arg-type]
    batch_size = getattr(cfg.dataset, "batch_size", None)
    changes = []
    if is_distributed():
        # L-BFGS's line search decides from each rank's own loss how often to re-evaluate it;
        # ranks would disagree on the number of backward passes (and all-reduces) and hang.
        changes.append("run it in one process (python train.py ..., without torchrun)")
    if loader is not None and batch_size is not None and batch_size < rows:
        changes.append(
            f"set dataset.batch_size=null (or >= {rows}, the training rows; it is {batch_size})"
        )
    if not changes:
        return None
    return f"optimizer=lbfgs is full-batch, in one process: {' and '.join(changes)}"


def _no_batch_problem(cfg: DatasetConfig, loader: DataLoader[Any]) -> str:
    """Why an epoch would have no batch: an empty epoch would repeat forever without a step."""
    rows = len(loader.dataset)  # type: ignore[arg-type]
    per_process = len(loader.sampler)  # type: ignore[arg-type]  # (this process's shard)
    batch_size = getattr(cfg, "batch_size", None)
    drop_last = getattr(cfg, "drop_last", False)
    val_fraction = getattr(cfg, "val_fraction", 0.0)
    n_samples = getattr(cfg, "n_samples", None)
    source = (
        f" ({n_samples} rows less dataset.val_fraction={val_fraction:g})"
        if val_fraction > 0 and n_samples is not None
        else ""
    )
    processes = world_size()
    shard = (
        f", {per_process} for each of {processes} processes (torchrun)," if processes > 1 else ""
    )
    fix = (
        f"set dataset.drop_last=false or dataset.batch_size<={per_process}"
        if per_process > 0
        else "set dataset.drop_last=false, or run fewer processes"
    )
    return (
        f"dataset.batch_size={batch_size} with dataset.drop_last={str(drop_last).lower()} "
        f"leaves an epoch with no batch, so training would never take a step: {rows} training "
        f"rows{source}{shard} are fewer than one batch, and drop_last drops the incomplete "
        f"one; {fix}"
    )


def build_trainer(
    cfg: Config,
    sink: MetricSink,
    checkpointer: Checkpointer | None = None,
    stop_request: StopRequest | None = None,
    trajectory: Trajectory | None = None,
    components: Components | None = None,
) -> Trainer:
    """A Trainer for a validated config: `build(cfg)` (unless the components are given) and
    the parameter statistics that write into `sink`, handed over whole at construction."""
    parts = components if components is not None else build(cfg)
    return Trainer(
        parts.model,
        parts.loss_fn,
        parts.optimizer,
        parts.data.train_loader,
        cfg.trainer,
        parts.device,
        sink,
        scheduler=parts.scheduler,
        val_loader=parts.data.val_loader,
        classification=parts.data.n_classes is not None,
        checkpointer=checkpointer,
        stop_request=stop_request,
        trajectory=trajectory,
        parameter_stats=build_parameter_stats(cfg.logger, sink, parts.module),
    )


def build_loss(cfg: LossConfig) -> nn.Module:
    return LOSSES.get(cfg.name)(**cfg.model_dump(exclude={"name"}))


def build_data(cfg: DatasetConfig, seed: int) -> Data:
    """Generate or read the data set, split off validation rows, and wrap both in loaders."""
    if isinstance(cfg, NoDatasetConfig):
        return Data()
    from gradtrain.datasets import (
        ClassificationDataset,
        RegressionDataset,
        build_dataloader,
        load_csv,
    )

    class_names: list[str] | None = None
    feature_names: list[str] | None = None
    dataset: InMemoryDataset
    if isinstance(cfg, RegressionDatasetConfig):
        dataset = RegressionDataset(cfg.n_samples, cfg.n_features, cfg.noise, seed=seed)
    elif isinstance(cfg, ClassificationDatasetConfig):
        dataset = ClassificationDataset(
            cfg.n_samples, cfg.n_features, cfg.n_classes, cfg.shape, cfg.spread, seed=seed
        )
        class_names = [str(i) for i in range(cfg.n_classes)]
    elif not isinstance(cfg, CsvDatasetConfig):  # an installed plugin's (gradtrain.plugins)
        dataset, class_names = _plugin_dataset(cfg, seed)
    elif cfg.streaming:
        return _streaming_data(cfg, seed)
    else:
        table = load_csv(cfg.path, cfg.target, cfg.features, cfg.task, cfg.delimiter, cfg.format)
        dataset = table.dataset
        feature_names = list(table.feature_names)
        if cfg.task == "classification":
            class_names = table.class_names
            log.info("Classes of '%s': %s", cfg.target, table.describe_classes())

    train, val, test = dataset.split_with_test(cfg.val_fraction, cfg.test_fraction, seed=seed)
    if isinstance(cfg, CsvDatasetConfig) and cfg.test_path is not None:
        test = _read_test_csv(cfg, table.feature_names, class_names)
    if len(train) == 0:
        raise ConfigError(
            [
                f"dataset.val_fraction={cfg.val_fraction:g} leaves no training rows of "
                f"{len(dataset)}; lower it"
            ]
        )
    mean = std = None
    if isinstance(cfg, CsvDatasetConfig) and cfg.standardize:
        mean, std = train.feature_statistics()  # training rows only: no peeking at validation
        train, val = train.standardized(mean, std), val.standardized(mean, std)
        test = test.standardized(mean, std)  # with the training statistics too

    def loader(split: InMemoryDataset, shuffle: bool, train: bool) -> DataLoader[Any]:
        return build_dataloader(
            split,
            batch_size=cfg.batch_size or len(split),  # null: the whole split in one batch
            shuffle=shuffle,
            num_workers=cfg.num_workers,
            seed=seed,
            pin_memory=cfg.pin_memory,
            # Training only, shuffled or not; validation evaluates every held-out row.
            drop_last=cfg.drop_last and train,
            # Under torchrun, this process's share of the rows; training shards are equal.
            num_replicas=world_size(),
            rank=rank(),
            equal_shards=train,
        )

    return Data(
        train_loader=loader(train, cfg.shuffle, train=True),
        val_loader=loader(val, shuffle=False, train=False) if len(val) else None,
        test_loader=loader(test, shuffle=False, train=False) if len(test) else None,
        n_features=dataset.n_features,
        n_classes=len(class_names) if class_names is not None else None,
        class_names=class_names,
        feature_names=feature_names or [f"x{i}" for i in range(dataset.n_features)],
        feature_mean=mean,
        feature_std=std,
    )


# A dataset plugin's keys that gradtrain itself reads (how the rows are split and served).
_LOADER_KEYS = {"name", "task", *LoaderSettings.model_fields}


def _plugin_dataset(cfg: DatasetConfig, seed: int) -> tuple[InMemoryDataset, list[str] | None]:
    """An installed plugin's dataset, built by its factory from its own keys and the seed,
    and its class names (the class indices as text) when it is a classification task."""
    from gradtrain.datasets import InMemoryDataset

    dataset = DATASETS.get(cfg.name)(**cfg.model_dump(exclude=_LOADER_KEYS), seed=seed)
    if not isinstance(dataset, InMemoryDataset):
        raise GradtrainError(
            f"dataset={cfg.name} (a plugin) built a {type(dataset).__name__}, not the "
            "gradtrain.datasets.InMemoryDataset a dataset plugin's factory must return"
        )
    if dataset_task(cfg) != "classification":
        return dataset, None
    n_classes = int(dataset.targets.max()) + 1 if len(dataset) else 0
    return dataset, [str(i) for i in range(n_classes)]


def _read_test_csv(
    cfg: CsvDatasetConfig, feature_names: list[str], class_names: list[str] | None
) -> InMemoryDataset:
    """`dataset.test_path`: read as the training file is (the same feature columns), its
    labels numbered as the training file numbers them."""
    from gradtrain.datasets import InMemoryDataset, load_csv
    from gradtrain.errors import DataError

    assert cfg.test_path is not None
    try:
        table = load_csv(
            cfg.test_path, cfg.target, feature_names, cfg.task, cfg.delimiter, cfg.format
        )
    except DataError as exc:
        # (A test file without rows, or without the training file's columns, is refused like
        # a test_fraction that holds out none: a key to fix, before anything is written.)
        raise ConfigError([f"dataset.test_path={cfg.test_path}: {exc}"]) from None
    dataset = table.dataset
    if class_names is None:
        return dataset
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [name for name in table.class_names if name not in index]
    if unknown:
        raise ConfigError(
            [
                f"dataset.test_path={cfg.test_path}: labels {', '.join(unknown[:5])} of "
                f"'{cfg.target}' are not among the training file's classes "
                f"({', '.join(class_names[:10])}); the model has no output for them"
            ]
        )
    # load_csv numbers the test file's own labels; these become the training file's numbers.
    renumber = torch.tensor([index[name] for name in table.class_names], dtype=torch.int64)
    return InMemoryDataset(dataset.inputs, renumber[dataset.targets])


def _streaming_data(cfg: CsvDatasetConfig, seed: int) -> Data:
    """dataset.streaming=true: loaders that read the table in chunks (datasets/streaming.py)."""
    from gradtrain.datasets.csv_table import describe_classes
    from gradtrain.datasets.streaming import build_streaming_data

    assert cfg.batch_size is not None  # (config.py refuses streaming without a batch size)
    stream = build_streaming_data(
        cfg.path,
        cfg.target,
        cfg.features,
        cfg.task,
        cfg.delimiter,
        cfg.format,
        standardize=cfg.standardize,
        val_fraction=cfg.val_fraction,
        batch_size=cfg.batch_size,
        shuffle=cfg.shuffle,
        shuffle_buffer=cfg.shuffle_buffer,
        drop_last=cfg.drop_last,
        num_workers=cfg.num_workers,
        pin_memory=cfg.pin_memory,
        seed=seed,
        num_replicas=world_size(),
        rank=rank(),
    )
    if stream.class_names is not None:
        log.info("Classes of '%s': %s", cfg.target, describe_classes(stream.class_names))
    return Data(
        train_loader=stream.train_loader,  # type: ignore[arg-type]  # (iterated like one)
        val_loader=stream.val_loader,  # type: ignore[arg-type]
        n_features=stream.n_features,
        n_classes=len(stream.class_names) if stream.class_names is not None else None,
        class_names=stream.class_names,
        # (what predictions need: the columns and statistics the model was trained with)
        feature_names=stream.feature_names,
        feature_mean=stream.feature_mean,
        feature_std=stream.feature_std,
    )


def build_model(cfg: Config, loss: nn.Module, data: Data) -> nn.Module:
    model_cfg = cfg.model
    if isinstance(model_cfg, VectorModelConfig):
        if model_cfg.init is not None:
            return VectorModel(model_cfg.init)
        if model_cfg.size is not None:
            return VectorModel.random(model_cfg.size, seed=cfg.seed)
        if not isinstance(loss, ParameterLoss):
            raise GradtrainError(f"loss={cfg.loss.name} has no standard start; set model.init")
        return VectorModel(loss.standard_start)

    in_features = getattr(model_cfg, "in_features", None) or data.n_features
    if in_features != data.n_features:
        raise GradtrainError(
            f"model.in_features={in_features} but the dataset has {data.n_features} "
            "features; set model.in_features=null to take it from the dataset"
        )
    out_features = _output_size(cfg.loss.name, data)
    given_out = getattr(model_cfg, "out_features", None)
    if given_out is not None and given_out != out_features:
        raise GradtrainError(
            f"model.out_features={given_out} but loss={cfg.loss.name} on this "
            f"data needs {out_features}; set model.out_features=null to infer it"
        )
    model_class = MODELS.get(model_cfg.name)
    if not isinstance(model_cfg, LinearModelConfig | LogisticModelConfig | MLPModelConfig):
        # An installed plugin's model (gradtrain.plugins): sizes first, then its own keys.
        keys = model_cfg.model_dump(exclude={"name", "in_features", "out_features"})
        return model_class(in_features, out_features, **keys)
    if isinstance(model_cfg, MLPModelConfig):
        return model_class(
            in_features,
            out_features,
            hidden_sizes=model_cfg.hidden_sizes,
            activation=model_cfg.activation,
            dropout=model_cfg.dropout,
        )
    bias = model_cfg.bias if isinstance(model_cfg, LinearModelConfig) else True
    return model_class(in_features, out_features, bias=bias)


def _output_size(loss: str, data: Data) -> int:
    if data.n_classes is None or loss == "bce_with_logits":
        if loss == "bce_with_logits" and data.n_classes != 2:
            raise GradtrainError(
                f"loss=bce_with_logits is binary but the data has {data.n_classes} classes "
                f"({', '.join(data.class_names or [])}); use loss=cross_entropy"
            )
        return 1
    return data.n_classes


def build_scheduler(
    cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> LRScheduler | None:
    if cfg.name == "none":
        return None
    return SCHEDULERS.get(cfg.name)(optimizer, total_steps, **cfg.model_dump(exclude={"name"}))


def build_optimizer(cfg: OptimizerConfig, model: nn.Module) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(cfg.name)(model.parameters(), **cfg.model_dump(exclude={"name"}))


def build_sink(cfg: LoggerConfig, log_dir: Path, purge_step: int | None = None) -> MetricSink:
    if cfg.name == "tensorboard":
        return TensorBoardSink(log_dir, flush_secs=cfg.flush_secs, purge_step=purge_step)
    return NullSink()


def build_parameter_stats(
    cfg: LoggerConfig, sink: MetricSink, model: nn.Module
) -> ParameterStats | None:
    """Histograms and update ratios when the TensorBoard logger asks for them, else None."""
    # (A TeeSink: the TensorBoard sink with `gradtrain.fit`'s history beside it.)
    if not isinstance(cfg, TensorBoardLoggerConfig) or not isinstance(
        sink, TensorBoardSink | TeeSink
    ):
        return None
    if cfg.histogram_every_n_steps is None and not cfg.update_ratio:
        return None
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return ParameterStats(named, sink, cfg.histogram_every_n_steps, cfg.update_ratio)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; an explicit device must exist."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        available = ["auto", "cpu"] + (["cuda"] if cuda else []) + (["mps"] if mps else [])
        raise GradtrainError(
            f"trainer.device={name} but this machine has no {name.upper()} device; "
            f"choose one of: {', '.join(available)}"
        )
    return torch.device(name)
