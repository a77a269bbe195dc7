"""The training loop: forward, backward, gradient norm, update, log. Read `Trainer.fit` top to
bottom; everything it owns between steps lives in `TrainState` and the objects it was given."""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Iterable, Sized
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

from trainer.config import TrainerConfig
from trainer.progress import ProgressBar
from trainer.sinks import MetricSink

StopReason = Literal["max_steps", "max_epochs", "tolerance"]


@dataclass
class TrainState:
    """Where training is: the counters a checkpoint or a resumed run needs."""

    step: int = 0  # optimizer updates done so far
    epoch: int = 0  # complete passes over the training data
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
    val_loss: float | None = None
    val_accuracy: float | None = None
    train_accuracy: float | None = None  # over the last (possibly partial) epoch


class Trainer:
    """Minimizes `loss_fn(model(inputs), targets)` (or `loss_fn(model())` with no data).

    Args:
        model: the module whose parameters are optimized.
        loss_fn: called as `loss_fn(prediction, target)`; may return a non-scalar loss, whose
            backward is then the vector-Jacobian product with a vector of ones.
        optimizer: any `torch.optim.Optimizer` (including `ManualSGD` and `LBFGS`).
        train_loader: an iterable of `(inputs, targets)` batches with a length, or None for an
            objective of the parameters alone (each step is then one epoch).
        settings: the validated `trainer` config section.
        device: where the model lives and batches are moved to.
        sink: receives scalars at logging steps.
        scheduler: stepped after every optimizer step, or None for a constant lr.
        val_loader: batches evaluated every `settings.val_every_n_epochs` epochs, or None.
        classification: count correct predictions (train/accuracy, val/accuracy).
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
        scheduler: LRScheduler | None = None,
        val_loader: Iterable[Any] | None = None,
        classification: bool = False,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.train_loader = train_loader
        self.settings = settings
        self.device = device
        self.sink = sink
        self.scheduler = scheduler
        self.val_loader = val_loader
        self.classification = classification
        self.state = TrainState()
        self.named_parameters = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        # LBFGS re-evaluates the loss several times per step through a closure.
        self.needs_closure = isinstance(optimizer, torch.optim.LBFGS)
        # The correct-prediction count of a batch when nothing is classified: made once, not
        # allocated on every step.
        self._no_count = torch.zeros((), dtype=torch.int64, device=device)

    # ---------------------------------------------------------------------------------- the loop
    def fit(self) -> FitResult:
        settings, state = self.settings, self.state
        params = [p for _, p in self.named_parameters]
        best_loss = torch.tensor(math.inf, device=self.device)
        window_loss: Tensor | None = None  # loss summed over the accumulated batches, on device
        objective = grad_norm = torch.tensor(math.nan)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)  # this epoch, on device
        seen = 0
        val_metrics: dict[str, float] = {}
        train_accuracy: float | None = None
        last_logged: float | None = None
        stop_reason: StopReason | None = None
        started = time.perf_counter()
        self.model.train()

        with ProgressBar(self._total_steps(), enabled=settings.progress_bar) as progress:
            while stop_reason is None:
                for batch in self._batches():
                    # Forward.
                    loss, batch_correct, batch_size = self._forward(batch)
                    if self.classification:
                        correct += batch_correct
                        seen += batch_size
                    # Backward. Gradients of several batches add up in .grad; dividing each loss
                    # by the window makes the sum their mean, as one larger batch would give.
                    window = self._accumulation_window()
                    if window > 1:  # (skipped otherwise: one op less in every step's graph)
                        loss = loss / window
                    self._backward(loss)
                    batch_loss = self._scalar(loss.detach())
                    window_loss = batch_loss if window_loss is None else window_loss + batch_loss
                    state.batch_in_epoch += 1
                    if not self._update_due():
                        continue

                    is_last = self._limit_reached(step=state.step + 1) is not None
                    log_now = is_last or (state.step + 1) % settings.log_every_n_steps == 0

                    # Gradient norms: one fused kernel over all parameters, only when needed.
                    param_norms: dict[str, Tensor] = {}
                    if log_now or settings.grad_clip is not None:
                        param_norms = self._gradient_norms()
                        grad_norm = self._global_norm(param_norms)
                        if settings.grad_clip is not None:
                            torch.nn.utils.clip_grads_with_norm_(
                                params, settings.grad_clip, grad_norm
                            )

                    # Update (optimizers run it under torch.no_grad()), then clear the
                    # gradients, which backward() would otherwise keep accumulating into.
                    lr = float(self.optimizer.param_groups[0]["lr"])  # the lr this step used
                    if self.needs_closure:
                        closure = functools.partial(self._closure, batch)
                        self.optimizer.step(closure)  # type: ignore[arg-type]
                    else:
                        self.optimizer.step()
                    self.optimizer.zero_grad()
                    if self.scheduler is not None:
                        self.scheduler.step()
                    state.step += 1
                    assert window_loss is not None  # the batch just consumed added to it
                    objective, window_loss = window_loss, None
                    best_loss = torch.minimum(best_loss, objective)  # stays on the device

                    if log_now:
                        # Scalars go to the sink as device tensors; it reads them back in
                        # batches. Only the tolerance check and a visible progress bar need the
                        # value now: the one host synchronisation, once per logging interval.
                        self._log(objective, grad_norm, param_norms, lr)
                        if settings.tolerance is not None or progress.visible:
                            loss_value = objective.item()
                            progress.show_loss(loss_value)
                            if self._converged(last_logged, loss_value):
                                stop_reason = "tolerance"
                            last_logged = loss_value
                    progress.update()

                    if is_last or stop_reason is not None:
                        stop_reason = stop_reason or self._limit_reached()
                        break

                epoch_done = state.batch_in_epoch == self._batches_per_epoch()
                if epoch_done:
                    state.epoch += 1
                    state.batch_in_epoch = 0
                if self.classification and seen and (epoch_done or stop_reason is not None):
                    train_accuracy = correct.item() / seen
                    self.sink.log_scalars({"train/accuracy": train_accuracy}, step=state.step)
                    correct.zero_()
                    seen = 0
                # Validate every val_every_n_epochs epochs, and at the end unless just done.
                due = epoch_done and state.epoch % settings.val_every_n_epochs == 0
                fresh = val_metrics.get("step") == state.step
                if self.val_loader is not None and (due or stop_reason is not None) and not fresh:
                    val_metrics = {"step": state.step, **self.evaluate(self.val_loader)}
                    self.sink.log_scalars(
                        {f"val/{k}": v for k, v in val_metrics.items() if k != "step"},
                        step=state.step,
                    )

        return FitResult(
            stop_reason=stop_reason,
            steps=state.step,
            epochs=state.epoch,
            wall_s=time.perf_counter() - started,
            final_loss=objective.item(),
            best_loss=best_loss.item(),
            grad_norm=grad_norm.item(),
            val_loss=val_metrics.get("loss"),
            val_accuracy=val_metrics.get("accuracy"),
            train_accuracy=train_accuracy,
        )

    @torch.no_grad()
    def evaluate(self, loader: Iterable[Any]) -> dict[str, float]:
        """Mean loss per sample (and accuracy) over `loader`, in eval mode, building no graph."""
        self.model.eval()
        total_loss = torch.zeros((), device=self.device)
        total_correct = torch.zeros((), dtype=torch.int64, device=self.device)
        count = 0
        for batch in loader:
            loss, correct, batch_size = self._forward(batch)
            total_loss += self._scalar(loss) * batch_size
            total_correct += correct
            count += batch_size
        self.model.train()
        metrics = {"loss": total_loss.item() / max(count, 1)}
        if self.classification:
            metrics["accuracy"] = total_correct.item() / max(count, 1)
        return metrics

    # -------------------------------------------------------------------------------- the pieces
    def _forward(self, batch: Any) -> tuple[Tensor, Tensor, int]:
        """The loss of one batch, how many of its predictions are right (classification), and
        its size."""
        if batch is None:  # an objective of the parameters alone
            with self._autocast():
                return self.loss_fn(self.model()), self._no_count, 1
        inputs, targets = batch
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        with self._autocast():
            prediction = self.model(inputs)
            loss = self.loss_fn(prediction, targets)
        correct = self._no_count
        if self.classification:
            # One logit per sample (bce_with_logits) means class 1 when positive.
            labels = prediction > 0 if prediction.dim() == 1 else prediction.argmax(dim=-1)
            correct = (labels == targets).sum()
        return loss, correct, targets.shape[0]  # (len() of a tensor is a slower Python call)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        # An autocast context costs microseconds even when disabled; fp32 takes a no-op one.
        if self.settings.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @staticmethod
    def _backward(loss: Tensor) -> None:
        # A scalar loss seeds the chain rule with 1; a vector loss needs the vector of the
        # vector-Jacobian product: ones, i.e. the gradient of its sum.
        if loss.dim() == 0:
            loss.backward()
        else:
            loss.backward(gradient=torch.ones_like(loss))

    @staticmethod
    def _scalar(loss: Tensor) -> Tensor:
        """The number a loss stands for: itself, or the sum a vector loss's backward follows."""
        return loss if loss.dim() == 0 else loss.sum()

    def _closure(self, batch: Any) -> Tensor:
        """Re-evaluate loss and gradients at the current parameters (for LBFGS's line search)."""
        self.optimizer.zero_grad()
        loss = self._forward(batch)[0]
        self._backward(loss)
        return self._scalar(loss.detach())

    def _batches(self) -> Iterable[Any]:
        return [None] if self.train_loader is None else self.train_loader

    def _batches_per_epoch(self) -> int:
        if self.train_loader is None:
            return 1
        if not isinstance(self.train_loader, Sized):
            raise TypeError("train_loader must have a length")
        return len(self.train_loader)

    def _accumulation_window(self) -> int:
        """Batches in the current update: accumulate_grad_batches, or fewer at an epoch's end."""
        k = self.settings.accumulate_grad_batches
        start = self.state.batch_in_epoch - self.state.batch_in_epoch % k
        return min(k, self._batches_per_epoch() - start)

    def _update_due(self) -> bool:
        """Whether the batch just consumed closes an accumulation window."""
        done = self.state.batch_in_epoch
        return done % self.settings.accumulate_grad_batches == 0 or (
            done == self._batches_per_epoch()
        )

    def _total_steps(self) -> int:
        limits = []
        if self.settings.max_steps is not None:
            limits.append(self.settings.max_steps)
        if self.settings.max_epochs is not None:
            per_epoch = math.ceil(self._batches_per_epoch() / self.settings.accumulate_grad_batches)
            limits.append(self.settings.max_epochs * per_epoch)
        return min(limits)

    def _limit_reached(self, step: int | None = None) -> StopReason | None:
        """Whether `step` (default: the current one) ends the run, once the batch just
        consumed has been used."""
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

    def _gradient_norms(self) -> dict[str, Tensor]:
        """L2 norm of each parameter's gradient, from one fused kernel (no loop of norms)."""
        names = [n for n, p in self.named_parameters if p.grad is not None]
        grads = [p.grad for _, p in self.named_parameters if p.grad is not None]
        return dict(zip(names, torch._foreach_norm(grads), strict=True))

    @staticmethod
    def _global_norm(param_norms: dict[str, Tensor]) -> Tensor:
        """The L2 norm of all gradients together: the norm of the per-parameter norms."""
        norms = list(param_norms.values())
        if len(norms) == 1:  # one parameter tensor (the objective problems): its own norm
            return norms[0]
        return torch.linalg.vector_norm(torch.stack(norms))

    def _log(
        self, loss: Tensor, grad_norm: Tensor, param_norms: dict[str, Tensor], lr: float
    ) -> None:
        scalars: dict[str, Tensor | float] = {"train/loss": loss, "train/grad_norm": grad_norm}
        for name, norm in param_norms.items():
            scalars[f"train/grad_norm/{name}"] = norm
        scalars["optim/lr"] = lr
        self.sink.log_scalars(scalars, step=self.state.step)
