"""The training loop: forward, backward, gradient norm, update, log. Read `Trainer.fit` top to
bottom; everything it owns between steps lives in `TrainState` and the objects it was given."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sized
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from trainer.config import TrainerConfig
from trainer.progress import ProgressBar
from trainer.sinks import MetricSink
from trainer.views import ParameterViews

StopReason = Literal["max_steps", "max_epochs", "tolerance"]


@dataclass
class TrainState:
    """Where training is: the counters a checkpoint or a resumed run needs."""

    step: int = 0  # optimizer updates done so far
    epoch: int = 0  # complete passes over the data
    batch_in_epoch: int = 0  # batches of the current epoch consumed


@dataclass
class FitResult:
    stop_reason: StopReason
    steps: int
    epochs: int
    wall_s: float
    final_loss: float
    best_loss: float
    grad_norm: float
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) when logged


class Trainer:
    """Minimizes `loss_fn(model(inputs), targets)` (or `loss_fn(model())` with no data).

    Args:
        model: the module whose parameters are optimized.
        loss_fn: called as `loss_fn(prediction, target)`; may return a non-scalar loss, whose
            backward is then the vector-Jacobian product with a vector of ones.
        optimizer: any `torch.optim.Optimizer` (including `ManualSGD`).
        train_loader: an iterable of `(inputs, targets)` batches, or None for an objective of the
            parameters alone (each step is then one epoch).
        settings: the validated `trainer` config section.
        device: where the model lives and batches are moved to.
        sink: receives scalars at logging steps.
        views: optional histograms and update-to-weight ratios (None: off, the default).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_loader: Iterable[Any] | None,
        settings: TrainerConfig,
        device: torch.device,
        sink: MetricSink,
        views: ParameterViews | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.train_loader = train_loader
        self.settings = settings
        self.device = device
        self.sink = sink
        self.views = views
        self.state = TrainState()
        self.named_parameters = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    # ---------------------------------------------------------------------------------- the loop
    def fit(self) -> FitResult:
        settings = self.settings
        state = self.state
        params = [p for _, p in self.named_parameters]
        best_loss = torch.tensor(math.inf, device=self.device)
        objective = grad_norm = torch.tensor(math.nan)
        last_logged: float | None = None
        history: list[tuple[int, float]] = []
        stop_reason: StopReason | None = None
        started = time.perf_counter()
        self.model.train()

        with ProgressBar(self._total_steps(), enabled=settings.progress_bar) as progress:
            while stop_reason is None:
                for batch in self._batches():
                    # Forward.
                    loss = self._forward(batch)
                    # Backward. A scalar loss seeds the chain rule with 1; a vector loss needs the
                    # vector of the vector-Jacobian product: ones, i.e. the gradient of its sum.
                    if loss.dim() == 0:
                        loss.backward()
                        objective = loss.detach()
                    else:
                        loss.backward(gradient=torch.ones_like(loss))
                        objective = loss.detach().sum()

                    state.batch_in_epoch += 1
                    is_last = self._is_last_batch_of_run()
                    log_now = is_last or (state.step + 1) % settings.log_every_n_steps == 0

                    # Gradient norms: one fused kernel over all parameters, only when needed.
                    param_norms: dict[str, Tensor] = {}
                    if log_now or settings.grad_clip is not None:
                        param_norms = self._gradient_norms()
                        grad_norm = torch.linalg.vector_norm(torch.stack([*param_norms.values()]))
                        if settings.grad_clip is not None:
                            torch.nn.utils.clip_grads_with_norm_(
                                params, settings.grad_clip, grad_norm
                            )

                    # Update (the optimizer runs it under torch.no_grad()), then clear the
                    # gradients, which backward() would otherwise accumulate into. Optional views
                    # look at the weights around the update, only at their own steps.
                    if self.views is not None:
                        self.views.before_update(state.step + 1, log_now)
                    self.optimizer.step()
                    if self.views is not None:
                        self.views.after_update()
                    self.optimizer.zero_grad()
                    state.step += 1
                    best_loss = torch.minimum(best_loss, objective)  # stays on the device

                    if log_now:
                        # The only host synchronisation: once per logging interval.
                        loss_value = objective.item()
                        history.append((state.step, loss_value))
                        self._log(loss_value, grad_norm, param_norms)
                        progress.show_loss(loss_value)
                        if self._converged(last_logged, loss_value):
                            stop_reason = "tolerance"
                        last_logged = loss_value
                    progress.update()

                    if is_last or stop_reason is not None:
                        stop_reason = stop_reason or self._limit_reached()
                        break
                if state.batch_in_epoch == self._batches_per_epoch():
                    state.epoch += 1
                    state.batch_in_epoch = 0

        return FitResult(
            stop_reason=stop_reason,
            steps=state.step,
            epochs=state.epoch,
            wall_s=time.perf_counter() - started,
            final_loss=objective.item(),
            best_loss=best_loss.item(),
            grad_norm=grad_norm.item(),
            history=history,
        )

    # -------------------------------------------------------------------------------- the pieces
    def _forward(self, batch: Any) -> Tensor:
        if batch is None:  # an objective of the parameters alone
            return self.loss_fn(self.model())
        inputs, targets = batch
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        return self.loss_fn(self.model(inputs), targets)

    def _batches(self) -> Iterable[Any]:
        return [None] if self.train_loader is None else self.train_loader

    def _batches_per_epoch(self) -> int:
        if self.train_loader is None:
            return 1
        if not isinstance(self.train_loader, Sized):
            raise TypeError("train_loader must have a length")
        return len(self.train_loader)

    def _gradient_norms(self) -> dict[str, Tensor]:
        """L2 norm of each parameter's gradient, from one fused kernel (no loop of norms)."""
        names = [n for n, p in self.named_parameters if p.grad is not None]
        grads = [p.grad for _, p in self.named_parameters if p.grad is not None]
        return dict(zip(names, torch._foreach_norm(grads), strict=True))

    def _total_steps(self) -> int:
        limits = []
        if self.settings.max_steps is not None:
            limits.append(self.settings.max_steps)
        if self.settings.max_epochs is not None:
            limits.append(self.settings.max_epochs * self._batches_per_epoch())
        return min(limits)

    def _is_last_batch_of_run(self) -> bool:
        """Whether the step in progress (state.batch_in_epoch already counts it) is the last."""
        return self._limit_reached(step=self.state.step + 1) is not None

    def _limit_reached(self, step: int | None = None) -> StopReason | None:
        step = self.state.step if step is None else step
        settings = self.settings
        if settings.max_steps is not None and step >= settings.max_steps:
            return "max_steps"
        if (
            settings.max_epochs is not None
            and self.state.epoch + 1 >= settings.max_epochs
            and self.state.batch_in_epoch >= self._batches_per_epoch()
        ):
            return "max_epochs"
        return None

    def _converged(self, previous: float | None, current: float) -> bool:
        tolerance = self.settings.tolerance
        if tolerance is None or previous is None:
            return False
        return abs(current - previous) < tolerance

    def _log(self, loss: float, grad_norm: Tensor, param_norms: dict[str, Tensor]) -> None:
        scalars = {"train/loss": loss, "train/grad_norm": grad_norm.item()}
        norms = torch.stack(list(param_norms.values())).tolist()  # one transfer for all
        for name, norm in zip(param_norms, norms, strict=True):
            scalars[f"train/grad_norm/{name}"] = norm
        scalars["optim/lr"] = float(self.optimizer.param_groups[0]["lr"])
        self.sink.log_scalars(scalars, step=self.state.step)
