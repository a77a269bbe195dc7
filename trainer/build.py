"""Config sections -> plain objects, through the registries only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from trainer.config import (
    Config,
    DatasetConfig,
    LinearModelConfig,
    LoggerConfig,
    LossConfig,
    OptimizerConfig,
    TensorBoardLoggerConfig,
    VectorModelConfig,
)
from trainer.errors import GradtrainError
from trainer.loop import Trainer
from trainer.losses import LOSSES, ObjectiveLoss
from trainer.models import MODELS, VectorModel
from trainer.optim import OPTIMIZERS
from trainer.sinks import MetricSink, NullSink, TensorBoardSink
from trainer.views import ParameterViews


@dataclass
class Data:
    train_loader: DataLoader[Any] | None
    n_features: int | None


def build_trainer(cfg: Config, sink: MetricSink) -> Trainer:
    """Everything a run needs, built from a validated config (the seed is set by the caller)."""
    device = resolve_device(cfg.trainer.device)
    loss_fn = build_loss(cfg.loss).to(device)
    data = build_data(cfg.dataset, seed=cfg.seed)
    model = build_model(cfg, loss_fn, data).to(device)
    optimizer = build_optimizer(cfg.optimizer, model)
    views = build_views(cfg.logger, sink, model)
    return Trainer(model, loss_fn, optimizer, data.train_loader, cfg.trainer, device, sink, views)


def build_loss(cfg: LossConfig) -> nn.Module:
    return LOSSES.get(cfg.name)(**cfg.model_dump(exclude={"name"}))


def build_data(cfg: DatasetConfig, seed: int) -> Data:
    if cfg.name == "none":
        return Data(train_loader=None, n_features=None)
    from datasets import RegressionDataset, build_dataloader

    dataset = RegressionDataset(cfg.n_samples, cfg.n_features, cfg.noise, seed=seed)
    loader = build_dataloader(dataset, cfg.batch_size, cfg.shuffle, cfg.num_workers, seed=seed)
    return Data(train_loader=loader, n_features=dataset.n_features)


def build_model(cfg: Config, loss: nn.Module, data: Data) -> nn.Module:
    model_cfg = cfg.model
    if isinstance(model_cfg, VectorModelConfig):
        if model_cfg.init is not None:
            return VectorModel(model_cfg.init)
        if model_cfg.size is not None:
            return VectorModel.random(model_cfg.size, seed=cfg.seed)
        if not isinstance(loss, ObjectiveLoss):
            raise GradtrainError(f"loss={cfg.loss.name} has no standard start; set model.init")
        return VectorModel(loss.standard_start)
    if isinstance(model_cfg, LinearModelConfig):
        in_features = model_cfg.in_features or data.n_features
        if data.n_features is not None and in_features != data.n_features:
            raise GradtrainError(
                f"model.in_features={in_features} but the dataset has {data.n_features} "
                "features; set model.in_features=null to take it from the dataset"
            )
        return MODELS.get("linear")(in_features, model_cfg.out_features, bias=model_cfg.bias)
    raise AssertionError(f"no builder for model {model_cfg.name}")


def build_optimizer(cfg: OptimizerConfig, model: nn.Module) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(cfg.name)(model.parameters(), **cfg.model_dump(exclude={"name"}))


def build_sink(cfg: LoggerConfig, log_dir: Path) -> MetricSink:
    if cfg.name == "tensorboard":
        return TensorBoardSink(log_dir, flush_secs=cfg.flush_secs)
    return NullSink()


def build_views(cfg: LoggerConfig, sink: MetricSink, model: nn.Module) -> ParameterViews | None:
    """Histograms and update ratios when the TensorBoard logger asks for them, else None."""
    if not isinstance(cfg, TensorBoardLoggerConfig) or not isinstance(sink, TensorBoardSink):
        return None
    if cfg.histogram_every_n_steps is None and not cfg.update_ratio:
        return None
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return ParameterViews(named, sink, cfg.histogram_every_n_steps, cfg.update_ratio)


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
