"""Learning-rate schedules, stepped once per optimizer step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, ExponentialLR, LambdaLR, LRScheduler, StepLR

from gradtrain.registry import Registry

SchedulerFactory = Callable[..., LRScheduler]
SCHEDULERS: Registry[SchedulerFactory] = Registry("scheduler")


class LinearWarmup:
    """lr factor (step + 1) / warmup_steps, capped at 1: a picklable LambdaLR rule."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup_steps)


@SCHEDULERS.register("step")
def step_schedule(optimizer: torch.optim.Optimizer, total_steps: int, **cfg: Any) -> LRScheduler:
    return StepLR(optimizer, step_size=cfg["step_size"], gamma=cfg["gamma"])


@SCHEDULERS.register("cosine")
def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, **cfg: Any) -> LRScheduler:
    return CosineAnnealingLR(optimizer, T_max=cfg["t_max"] or total_steps, eta_min=cfg["eta_min"])


@SCHEDULERS.register("exponential")
def exponential_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, **cfg: Any
) -> LRScheduler:
    return ExponentialLR(optimizer, gamma=cfg["gamma"])


@SCHEDULERS.register("linear_warmup")
def linear_warmup_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, **cfg: Any
) -> LRScheduler:
    return LambdaLR(optimizer, LinearWarmup(cfg["warmup_steps"]))
