"""The learning-rate range test (`lr_find.enabled=true`), run before training.

The lr grows exponentially from `min_lr` to `max_lr`, one real training step per value, and the
loss of each step is recorded (smoothed, since one batch is noisy). While the lr is too small the
loss barely moves; in a useful range it falls fast; past it the loss climbs and soon explodes, so
the test stops once the smoothed loss exceeds `stop_factor` times the best one. The suggestion is
the lr where the smoothed loss falls fastest against log(lr), before its minimum.

Afterwards the weights, the optimizer's state, every random generator and the loader's generator
are put back exactly: training then is bit-identical to a run without the test (unless
`lr_find.apply=true`, which trains with the suggestion).
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradtrain.checkpoint import capture_rng_state, restore_rng_state
from gradtrain.config import LRFindConfig
from gradtrain.distributed import all_reduce_mean, is_distributed, unwrap
from gradtrain.step import backward, forward, summed

SMOOTHING = 0.9  # the exponential moving average's weight of the past
SKIP_START = 10  # the first smoothed values still lean on few steps: no suggestion among them
SLOPE_SPAN = 2  # the slope at a step: over this many steps either side (one step is noisy)


@dataclass
class RangeTestResult:
    lrs: list[float]  # the lr of each step taken
    losses: list[float]  # the smoothed (bias-corrected) loss after each step
    suggested_lr: float | None  # None when the curve shows no descent to suggest from
    min_lr: float
    max_lr: float

    def summary(self) -> dict[str, Any]:
        """What summary.json records under `lr_find`."""
        return {
            "suggested_lr": self.suggested_lr,
            "min_lr": self.min_lr,
            "max_lr": self.max_lr,
            "steps": len(self.lrs),
        }


def range_test(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    device: torch.device,
    settings: LRFindConfig,
    autocast: Callable[[], Any],
) -> RangeTestResult:
    """Run the range test on `model` (DDP-wrapped under torchrun) with `optimizer` and batches
    of `loader` (None: a loss of the parameters alone), then restore everything it changed."""
    module = unwrap(model)
    saved = _snapshot(module, optimizer, loader, device)
    try:
        lrs, losses = _sweep(model, loss_fn, optimizer, loader, device, settings, autocast)
    finally:
        _restore(saved, module, optimizer, loader)
    return RangeTestResult(lrs, losses, suggest(lrs, losses), settings.min_lr, settings.max_lr)


def _sweep(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    device: torch.device,
    settings: LRFindConfig,
    autocast: Callable[[], Any],
) -> tuple[list[float], list[float]]:
    growth = (settings.max_lr / settings.min_lr) ** (1 / (settings.num_steps - 1))
    batches = _endless(loader, device)
    lrs: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf
    model.train()
    for i in range(settings.num_steps):
        lr = settings.min_lr * growth**i
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast():
            loss = forward(model, loss_fn, next(batches))[0]
        backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        value = summed(loss.detach())
        if is_distributed():
            value = all_reduce_mean(value)  # every rank decides to stop at the same step
        raw = value.item()  # a host sync per step: this is a test, not training
        if not math.isfinite(raw):
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * raw
        smoothed = average / (1 - SMOOTHING ** (i + 1))
        lrs.append(lr)
        losses.append(smoothed)
        if smoothed > settings.stop_factor * best and i > SKIP_START:
            break
        best = min(best, smoothed)
    return lrs, losses


def suggest(lrs: list[float], losses: list[float]) -> float | None:
    """The lr of the steepest fall of the smoothed loss against log(lr), before its minimum;
    None when there is no fall to read (too few steps, or a loss that only rises)."""
    lowest = min(range(len(losses)), key=losses.__getitem__, default=0)
    if lowest <= SKIP_START + SLOPE_SPAN:
        return None
    span = SLOPE_SPAN
    slopes = [
        (losses[min(i + span, lowest)] - losses[i - span])
        / math.log(lrs[min(i + span, lowest)] / lrs[i - span])
        for i in range(SKIP_START, lowest)
    ]
    steepest = min(range(len(slopes)), key=slopes.__getitem__)
    if slopes[steepest] >= 0:
        return None
    return lrs[SKIP_START + steepest]


def _endless(loader: Any, device: torch.device) -> Iterator[Any]:
    """Batches on `device`, epoch after epoch (in each epoch's seeded order); None forever for
    a loss of the parameters alone."""
    if loader is None:
        while True:
            yield None
    epoch = 0
    while True:
        _set_epoch(loader, epoch)
        for batch in loader:
            yield tuple(t.to(device, non_blocking=True) for t in batch)
        epoch += 1


def _set_epoch(loader: Any, epoch: int) -> None:
    for sampler_kind in ("batch_sampler", "sampler"):
        set_epoch = getattr(getattr(loader, sampler_kind, None), "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
            return


def _snapshot(
    module: nn.Module, optimizer: torch.optim.Optimizer, loader: Any, device: torch.device
) -> dict[str, Any]:
    """Copies (not references) of everything the test changes."""
    generator = getattr(loader, "generator", None)
    return {
        "model": copy.deepcopy(module.state_dict()),
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "rng": capture_rng_state(device),
        # A DataLoader draws its workers' base seed from its generator for every new iterator.
        "loader_generator": generator.get_state() if generator is not None else None,
    }


def _restore(
    saved: dict[str, Any], module: nn.Module, optimizer: torch.optim.Optimizer, loader: Any
) -> None:
    with torch.no_grad():
        module.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])  # the lr, and no momentum from the test
    optimizer.zero_grad()  # .grad back to None, as before any backward
    restore_rng_state(saved["rng"])
    if saved["loader_generator"] is not None:
        loader.generator.set_state(saved["loader_generator"])
    _set_epoch(loader, 0)


def figure_png(result: RangeTestResult) -> bytes:
    """Loss against lr on a log axis, the suggestion marked (matplotlib, imported here)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    ax.plot(result.lrs, result.losses, color="tab:blue", label="loss (smoothed)")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    if result.suggested_lr is not None:
        ax.axvline(result.suggested_lr, color="tab:red", linestyle="--")
        ax.plot(
            [], [], color="tab:red", linestyle="--", label=f"suggested {result.suggested_lr:.3g}"
        )
    ax.set_title(f"LR range test: {len(result.lrs)} steps", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
