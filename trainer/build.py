"""Config sections -> plain objects, through the registries only."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    LoggerConfig,
    LossConfig,
    MLPModelConfig,
    NoDatasetConfig,
    OptimizerConfig,
    RegressionDatasetConfig,
    SchedulerConfig,
    TensorBoardLoggerConfig,
    VectorModelConfig,
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
from gradtrain.loop import Checkpointer, StopRequest, Trainer, total_steps
from gradtrain.losses import LOSSES, ParameterLoss
from gradtrain.memory import memory_report
from gradtrain.metrics.parameter_stats import ParameterStats
from gradtrain.metrics.sinks import MetricSink, NullSink, TensorBoardSink
from gradtrain.models import MODELS, VectorModel
from gradtrain.optim import OPTIMIZERS
from gradtrain.schedulers import SCHEDULERS

log = logging.getLogger("gradtrain")


@dataclass
class Data:
    """The loaders and the facts about the data that models and losses are sized by."""

    train_loader: DataLoader[Any] | None = None
    val_loader: DataLoader[Any] | None = None
    n_features: int | None = None
    n_classes: int | None = None  # classification only
    class_names: list[str] | None = None  # classification: index -> label in the source


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
    if is_distributed() and cfg.optimizer.name == "lbfgs":
        # LBFGS's line search decides from each rank's own loss how often to re-evaluate it;
        # ranks would disagree on the number of backward passes (and all-reduces) and hang.
        raise GradtrainError("optimizer=lbfgs is full-batch and cannot run under torchrun")
    device = local_device(resolve_device(cfg.trainer.device))
    loss_fn = build_loss(cfg.loss).to(device)
    with _refused_if_out_of_memory(cfg):
        data = build_data(cfg.dataset, seed=cfg.seed)
        problems = data_problems(cfg, data)
        if problems:
            raise ConfigError(problems)
        model = build_model(cfg, loss_fn, data).to(device)
        optimizer = build_optimizer(cfg.optimizer, model)
    batches_per_epoch = len(data.train_loader) if data.train_loader is not None else 1
    steps = total_steps(cfg.trainer, batches_per_epoch)
    return Components(
        model=wrap_model(model, device),
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=build_scheduler(cfg.scheduler, optimizer, steps),
        data=data,
        device=device,
    )


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
    if loader is not None and len(loader) == 0:
        problems.append(_no_batch_problem(cfg.dataset, loader))
    if cfg.trainer.monitor == "val_loss" and loader is not None and data.val_loader is None:
        fraction = getattr(cfg.dataset, "val_fraction", 0.0)
        rows = len(loader.dataset)  # type: ignore[arg-type]
        problems.append(
            f"trainer.monitor=val_loss needs validation rows, but dataset.val_fraction="
            f"{fraction:g} of {rows} rows holds out none (round({fraction:g} x {rows}) = 0); "
            "raise dataset.val_fraction, or set trainer.monitor=final_loss, best_loss or null"
        )
    return problems


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
        InMemoryDataset,
        RegressionDataset,
        build_dataloader,
        load_csv,
    )

    class_names: list[str] | None = None
    dataset: InMemoryDataset
    if isinstance(cfg, RegressionDatasetConfig):
        dataset = RegressionDataset(cfg.n_samples, cfg.n_features, cfg.noise, seed=seed)
    elif isinstance(cfg, ClassificationDatasetConfig):
        dataset = ClassificationDataset(
            cfg.n_samples, cfg.n_features, cfg.n_classes, cfg.shape, cfg.spread, seed=seed
        )
        class_names = [str(i) for i in range(cfg.n_classes)]
    elif cfg.streaming:
        return _streaming_data(cfg, seed)
    else:
        table = load_csv(cfg.path, cfg.target, cfg.features, cfg.task, cfg.delimiter, cfg.format)
        dataset = table.dataset
        if cfg.task == "classification":
            class_names = table.class_names
            log.info("Classes of '%s': %s", cfg.target, table.describe_classes())

    train, val = dataset.split(cfg.val_fraction, seed=seed)
    if len(train) == 0:
        raise ConfigError(
            [
                f"dataset.val_fraction={cfg.val_fraction:g} leaves no training rows of "
                f"{len(dataset)}; lower it"
            ]
        )
    if isinstance(cfg, CsvDatasetConfig) and cfg.standardize:
        mean, std = train.feature_statistics()  # training rows only: no peeking at validation
        train, val = train.standardized(mean, std), val.standardized(mean, std)

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
        n_features=dataset.n_features,
        n_classes=len(class_names) if class_names is not None else None,
        class_names=class_names,
    )


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

    in_features = model_cfg.in_features or data.n_features
    if in_features != data.n_features:
        raise GradtrainError(
            f"model.in_features={in_features} but the dataset has {data.n_features} "
            "features; set model.in_features=null to take it from the dataset"
        )
    out_features = _output_size(cfg.loss.name, data)
    if model_cfg.out_features is not None and model_cfg.out_features != out_features:
        raise GradtrainError(
            f"model.out_features={model_cfg.out_features} but loss={cfg.loss.name} on this "
            f"data needs {out_features}; set model.out_features=null to infer it"
        )
    model_class = MODELS.get(model_cfg.name)
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
    if not isinstance(cfg, TensorBoardLoggerConfig) or not isinstance(sink, TensorBoardSink):
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
