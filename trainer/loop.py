"""The training loop: forward, backward, gradient norm, update, log, checkpoint.

Read `Trainer.fit` and `Trainer._train_epoch` top to bottom. Everything the loop owns between
steps lives in `TrainState` and the objects it was given, and `Trainer.state_dict` gathers all
of it, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import random
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

from gradtrain.config import TrainerConfig
from gradtrain.distributed import (
    all_reduce_mean,
    all_reduce_sum,
    sync_gradients,
    unwrap,
    world_size,
)
from gradtrain.guard import NonFinite, UpdateRecord
from gradtrain.insight.trajectory import Trajectory
from gradtrain.metrics.parameter_stats import ParameterViews
from gradtrain.metrics.sinks import MetricSink
from gradtrain.progress import ProgressBar

StopReason = Literal["max_steps", "max_epochs", "tolerance", "interrupted", "diverged"]


class StopRequest(Protocol):
    """Asked at every step boundary whether to stop early (e.g. a signal arrived)."""

    @property
    def requested(self) -> bool: ...


class Checkpointer(Protocol):
    """Where `Trainer.state_dict()` goes at checkpoint time."""

    def save(self, payload: dict[str, Any], step: int) -> Any: ...


@dataclass
class TrainState:
    """Where training is; device tensors stay on the device until a checkpoint or the end."""

    step: int = 0  # optimizer updates done so far
    epoch: int = 0  # complete passes over the training data
    batch_in_epoch: int = 0  # batches of the current epoch consumed
    best_loss: Tensor = field(default_factory=lambda: torch.tensor(math.inf))
    correct: Tensor = field(default_factory=lambda: torch.tensor(0))  # this epoch's right answers
    seen: int = 0  # this epoch's samples (classification)
    train_accuracy: float | None = None  # of the last finished (or final partial) epoch
    last_logged_loss: float | None = None  # for trainer.tolerance
    val_metrics: dict[str, float] = field(default_factory=dict)  # the latest, with its "step"
    elapsed_s: float = 0.0  # training time of earlier sessions of this run
    nonfinite_skips: int = 0  # consecutive skipped updates (trainer.on_nonfinite=skip)
    last_checkpoint_step: int | None = None


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
    train_accuracy: float | None = None
    message: str | None = None  # why training stopped early (divergence, signal)
    last_checkpoint_step: int | None = None


class Trainer:
    """Minimizes `loss_fn(model(inputs), targets)` (or `loss_fn(model())` with no data).

    Args:
        model: the module whose parameters are optimized.
        loss_fn: called as `loss_fn(prediction, target)`; may return a non-scalar loss, whose
            backward is then the vector-Jacobian product with a vector of ones.
        optimizer: any `torch.optim.Optimizer` (including `ManualSGD` and `LBFGS`).
        train_loader: an iterable of `(inputs, targets)` batches with a length, or None for an
            objective of the parameters alone (each step is then one epoch). A sampler with
            `set_epoch` gets the epoch number before each epoch.
        settings: the validated `trainer` config section.
        device: where the model lives and batches are moved to.
        sink: receives scalars at logging steps.
        scheduler: stepped after every optimizer step, or None for a constant lr.
        val_loader: batches evaluated every `settings.val_every_n_epochs` epochs, or None.
        classification: count correct predictions (train/accuracy, val/accuracy).
        checkpointer: receives `state_dict()` at checkpoint steps, or None for no checkpoints.
        stop_request: polled at step boundaries; when set, the run checkpoints and stops.
        trajectory: if given, records the parameters at the start and at logging steps (for
            figures of the path).
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
        scheduler: LRScheduler | None = None,
        val_loader: Iterable[Any] | None = None,
        classification: bool = False,
        checkpointer: Checkpointer | None = None,
        stop_request: StopRequest | None = None,
        trajectory: Trajectory | None = None,
        views: ParameterViews | None = None,
    ) -> None:
        self.model = model
        # Under torchrun `model` is a DistributedDataParallel wrapper: batches go through it
        # (that is what averages the gradients over ranks), while names and weights are the
        # wrapped module's, so tags and checkpoints are the same as a single process's.
        self.module = unwrap(model)
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.train_loader = train_loader
        self.settings = settings
        self.device = device
        self.sink = sink
        self.scheduler = scheduler
        self.val_loader = val_loader
        self.classification = classification
        self.checkpointer = checkpointer
        self.stop_request = stop_request
        self.trajectory = trajectory
        self.views = views
        self.state = TrainState()
        self.named_parameters = [
            (n, p) for n, p in self.module.named_parameters() if p.requires_grad
        ]
        self.params: list[Tensor] = [p for _, p in self.named_parameters]
        self.world_size = world_size()  # processes training together (torchrun), or 1
        self._grad_norm_tags = {n: f"train/grad_norm/{n}" for n, _ in self.named_parameters}
        if train_loader is not None and not isinstance(train_loader, Sized):
            raise TypeError("train_loader must have a length")
        # LBFGS re-evaluates the loss several times per step through a closure.
        self.needs_closure = isinstance(optimizer, torch.optim.LBFGS)
        # The correct-prediction count of a batch when nothing is classified: made once, not
        # allocated on every step.
        self._no_count = torch.zeros((), dtype=torch.int64, device=device)
        # Each update's loss and gradient finiteness, settled at logging and checkpoint steps.
        self.updates = UpdateRecord(check_finite=settings.on_nonfinite != "off")
        self._stop_reason: StopReason | None = None
        self._message: str | None = None
        self._objective = torch.tensor(math.nan)  # the last update's loss, on the device
        self._grad_norm = torch.tensor(math.nan)

    # ---------------------------------------------------------------------------------- the loop
    def fit(self) -> FitResult:
        settings, state = self.settings, self.state
        state.best_loss = state.best_loss.to(self.device)
        state.correct = state.correct.to(self.device)
        started = time.perf_counter()
        self.model.train()
        if self.trajectory is not None:
            self.trajectory.record(state.step, self.params)  # the start
        anomaly = (
            torch.autograd.detect_anomaly() if settings.detect_anomaly else contextlib.nullcontext()
        )
        progress = ProgressBar(self.total_steps(), enabled=settings.progress_bar)
        progress.update(state.step)  # a resumed run starts part way
        with progress, anomaly:
            self._stop_reason = self._limit_reached()  # a resumed run may have nothing left
            while self._stop_reason is None:
                self._train_epoch(progress)
                epoch_done = state.batch_in_epoch == self._batches_per_epoch()
                if epoch_done:
                    state.epoch += 1
                    state.batch_in_epoch = 0
                self._end_of_epoch_metrics(epoch_done)
                # With data, checkpoint each finished epoch; objective problems' "epochs" are
                # single steps, checkpointed by trainer.checkpoint_every_n_steps and at the end.
                if epoch_done and self.train_loader is not None:
                    self._checkpoint()
            if self._stop_reason != "diverged":
                # The end of the run, or the point a signal stopped it. The checkpoint first
                # checks the updates and the weights; without one, the same check runs here.
                self._checkpoint()
                if self.checkpointer is None:
                    self._check_updates(parameters=True)
        state.elapsed_s += time.perf_counter() - started
        return self._result()

    def _train_epoch(self, progress: ProgressBar) -> None:
        """Steps over the rest of the current epoch, until it ends or the run must stop."""
        settings, state, params = self.settings, self.state, self.params
        epoch_length, accumulate = self._batches_per_epoch(), settings.accumulate_grad_batches
        window_loss: Tensor | None = None  # the loss over the accumulated batches, on device

        for batch in self._epoch_batches():
            # An update every `accumulate` batches, and at the end of the epoch.
            batches_done = state.batch_in_epoch + 1
            closes_window = batches_done % accumulate == 0 or batches_done == epoch_length
            # Under torchrun, backward also averages the gradients over ranks, but only on the
            # batch that closes an accumulation window; before it they add up locally, as .grad
            # does in one process. (DDP decides this in forward, so both are inside.)
            with sync_gradients(self.model, closes_window):
                # Forward.
                loss, batch_correct, batch_size = self._forward(batch)
                if self.classification:
                    state.correct += batch_correct
                    state.seen += batch_size
                # Backward. Gradients of several batches add up in .grad; dividing each loss by
                # the window makes the sum their mean, as one larger batch would give.
                window = self._accumulation_window() if accumulate > 1 else 1
                if window > 1:  # (skipped otherwise: one op less in every step's graph)
                    loss = loss / window
                try:
                    self._backward(loss)
                except RuntimeError as error:
                    if not settings.detect_anomaly:
                        raise
                    self._diverged(f"autograd anomaly at step {state.step + 1}: {error}")
                    return
            batch_loss = self._scalar(loss.detach())
            window_loss = batch_loss if window_loss is None else window_loss + batch_loss
            if self.train_loader is None:
                state.epoch += 1  # an objective's "epoch" is its one step
            else:
                state.batch_in_epoch += 1
            if not closes_window:
                continue
            # The loss of the global batch: the mean over ranks (equal batches), one scalar
            # all-reduce per update under torchrun (no host sync on CUDA). Every rank then sees
            # the same loss, so finiteness checks, tolerance and best_loss agree across ranks.
            if self.world_size > 1:
                window_loss = all_reduce_mean(window_loss)

            is_last = self._limit_reached(step=state.step + 1) is not None
            log_now = is_last or (state.step + 1) % settings.log_every_n_steps == 0

            # Gradient norms: one fused kernel over all parameters, at logging steps, and at
            # every step when clipping or when trainer.on_nonfinite=skip must look before the
            # update. Where taken, the global norm is also the gradients' finiteness check.
            param_norms: dict[str, Tensor] = {}
            if log_now or settings.grad_clip is not None or settings.on_nonfinite == "skip":
                param_norms = self._gradient_norms()
                self._grad_norm = self._global_norm(param_norms)
            self.updates.record(
                state.step + 1, window_loss, self._grad_norm if param_norms else None
            )
            if settings.on_nonfinite == "skip":
                # Settles every step (a host sync): the price of deciding before the update.
                bad = self._settle()
                if bad is not None:
                    self._skip_update(bad)
                    window_loss = None
                    if self._stop_reason is not None:
                        return
                    continue
                state.nonfinite_skips = 0
            if settings.grad_clip is not None:
                torch.nn.utils.clip_grads_with_norm_(params, settings.grad_clip, self._grad_norm)

            # The lr this update uses (the scheduler moves it after), read only when logged.
            lr = float(self.optimizer.param_groups[0]["lr"]) if log_now else math.nan
            # Update (optimizers run it under torch.no_grad()), then clear the gradients,
            # which backward() would otherwise keep accumulating into. Optional views look at
            # the weights around the update, only at their own steps.
            if self.views is not None:
                self.views.before_update(state.step + 1, log_now)
            if self.needs_closure:
                self.optimizer.step(functools.partial(self._closure, batch))  # type: ignore[arg-type]
            else:
                self.optimizer.step()
            if self.views is not None:
                self.views.after_update()
            self.optimizer.zero_grad()
            if self.scheduler is not None:
                self.scheduler.step()
            state.step += 1
            self._objective, window_loss = window_loss, None

            if log_now:
                # Scalars go to the sink as device tensors; it reads them back in batches.
                self._log(self._objective, self._grad_norm, param_norms, lr)
                if self.trajectory is not None:
                    self.trajectory.record(state.step, params)
                if settings.tolerance is not None or progress.visible:
                    # A host synchronisation at every logging step, asked for by these two.
                    loss_value = self._objective.item()
                    progress.show_loss(loss_value)
                    if self._converged(state.last_logged_loss, loss_value):
                        self._stop_reason = "tolerance"
                    state.last_logged_loss = loss_value
            progress.update()

            if self.stop_request is not None and self.stop_request.requested:
                self._stop_reason = self._stop_reason or "interrupted"
                self._message = f"stopped by a signal after step {state.step}"
            checkpoint_due = self._checkpoint_due()
            settle_due = self.updates.settle_due(logging_step=log_now)
            if settle_due or checkpoint_due or is_last or self._stop_reason is not None:
                self._check_updates()  # before anything is saved from a possibly bad step
            if self._stop_reason == "diverged":
                return
            if checkpoint_due and self._stop_reason is None and not is_last:
                self._checkpoint()
            if is_last or self._stop_reason is not None:
                self._stop_reason = self._stop_reason or self._limit_reached()
                return

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
        # Under torchrun each rank saw its shard of the rows: add up the shards.
        totals = all_reduce_sum(
            torch.stack(
                [total_loss, total_correct.to(total_loss), torch.tensor(count).to(total_loss)]
            )
        ).tolist()
        total_loss_sum, total_correct_sum, count_sum = totals
        metrics = {"loss": total_loss_sum / max(count_sum, 1)}
        if self.classification:
            metrics["accuracy"] = total_correct_sum / max(count_sum, 1)
        return metrics

    # ------------------------------------------------------------------------ state and resume
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly: weights, optimizer and scheduler
        state, counters, and every random number generator the run draws from."""
        state = self.state
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        if "numpy" in sys.modules:
            kind, keys, position, has_gauss, cached = sys.modules["numpy"].random.get_state()
            rng["numpy"] = [kind, torch.from_numpy(keys.copy()), position, has_gauss, cached]
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "step": state.step,
            "epoch": state.epoch,
            "batch_in_epoch": state.batch_in_epoch,
            "rng": rng,
            "running": {
                "best_loss": state.best_loss.detach().cpu(),
                "correct": state.correct.detach().cpu(),
                "seen": state.seen,
                "train_accuracy": state.train_accuracy,
                "last_logged_loss": state.last_logged_loss,
                "val_metrics": dict(state.val_metrics),
                "elapsed_s": state.elapsed_s,
                "objective": self._objective.detach().cpu(),
                "grad_norm": self._grad_norm.detach().cpu(),
            },
        }

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        self.module.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scheduler is not None and checkpoint["scheduler"] is not None:
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        running = checkpoint["running"]
        self.state = TrainState(
            step=checkpoint["step"],
            epoch=checkpoint["epoch"],
            batch_in_epoch=checkpoint["batch_in_epoch"],
            best_loss=running["best_loss"].to(self.device),
            correct=running["correct"].to(self.device),
            seen=running["seen"],
            train_accuracy=running["train_accuracy"],
            last_logged_loss=running["last_logged_loss"],
            val_metrics=running["val_metrics"],
            elapsed_s=running["elapsed_s"],
            last_checkpoint_step=checkpoint["step"],
        )
        self._objective = running["objective"].to(self.device)
        self._grad_norm = running["grad_norm"].to(self.device)
        rng = checkpoint["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(_as_python_random_state(rng["python"]))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if "numpy" in rng:
            import numpy

            kind, keys, position, has_gauss, cached = rng["numpy"]
            numpy.random.set_state((kind, keys.numpy(), position, has_gauss, cached))

    # -------------------------------------------------------------------------------- the pieces
    def _epoch_batches(self) -> Iterator[Any]:
        """The current epoch's batches, minus those a resumed run already consumed."""
        if self.train_loader is None:
            # An objective of the parameters alone has no data: one stream of steps, each of
            # which counts as an epoch (see the loop), until the run stops.
            yield from itertools.repeat(None)
            return
        for sampler_kind in ("batch_sampler", "sampler"):
            set_epoch = getattr(getattr(self.train_loader, sampler_kind, None), "set_epoch", None)
            if set_epoch is not None:
                set_epoch(self.state.epoch)  # the order is a function of the epoch alone
                break
        batches = iter(self.train_loader)
        for _ in range(self.state.batch_in_epoch):
            next(batches)
        yield from batches

    def _forward(self, batch: Any) -> tuple[Tensor, Tensor, int]:
        """The loss of one batch, how many of its predictions are right (classification), and
        its size."""
        if batch is None:  # an objective of the parameters alone
            with self._autocast():
                return self.loss_fn(self.model()), self._no_count, 1
        inputs, targets = batch
        if inputs.device != self.device:  # (a call to .to costs microseconds even as a no-op)
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
        return _NO_CONTEXT

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

    def _batches_per_epoch(self) -> int:
        if self.train_loader is None:
            return 1
        return len(self.train_loader)  # type: ignore[arg-type]  # (checked Sized in __init__)

    def _accumulation_window(self) -> int:
        """Batches in the current update: accumulate_grad_batches, or fewer at an epoch's end."""
        k = self.settings.accumulate_grad_batches
        start = self.state.batch_in_epoch - self.state.batch_in_epoch % k
        return min(k, self._batches_per_epoch() - start)

    def total_steps(self) -> int:
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
        if settings.max_epochs is not None and (
            self.state.epoch >= settings.max_epochs
            or (
                self.state.epoch + 1 >= settings.max_epochs
                and self.state.batch_in_epoch >= self._batches_per_epoch()
            )
        ):
            return "max_epochs"
        return None

    def _converged(self, previous: float | None, current: float) -> bool:
        tolerance = self.settings.tolerance
        if tolerance is None or previous is None:
            return False
        return abs(current - previous) < tolerance

    def _checkpoint_due(self) -> bool:
        every = self.settings.checkpoint_every_n_steps
        return every is not None and self.state.step % every == 0

    def _checkpoint(self) -> None:
        if self.checkpointer is None or self.state.last_checkpoint_step == self.state.step:
            return
        self._check_updates(parameters=True)  # never save the weights of a bad update
        if self._stop_reason == "diverged":
            return
        self.sink.flush()  # the event file holds every step the checkpoint covers
        self.checkpointer.save(self.state_dict(), self.state.step)
        self.state.last_checkpoint_step = self.state.step

    def _end_of_epoch_metrics(self, epoch_done: bool) -> None:
        """train/accuracy of the epoch, and validation when it is due or the run ends."""
        state, ending = self.state, self._stop_reason is not None
        if self.classification and state.seen and (epoch_done or ending):
            correct, seen = all_reduce_sum(
                torch.stack([state.correct, torch.tensor(state.seen).to(state.correct)])
            ).tolist()
            state.train_accuracy = correct / seen
            self.sink.log_scalars({"train/accuracy": state.train_accuracy}, step=state.step)
            state.correct.zero_()
            state.seen = 0
        due = epoch_done and state.epoch % self.settings.val_every_n_epochs == 0
        fresh = state.val_metrics.get("step") == state.step
        if self.val_loader is not None and (due or ending) and not fresh:
            if self._stop_reason == "diverged":
                return
            state.val_metrics = {"step": state.step, **self.evaluate(self.val_loader)}
            self.sink.log_scalars(
                {f"val/{k}": v for k, v in state.val_metrics.items() if k != "step"},
                step=state.step,
            )

    # ------------------------------------------------------------------------- non-finite values
    def _gradient_norms(self) -> dict[str, Tensor]:
        """L2 norm of each parameter's gradient by its tag, from one fused kernel (no loop of
        norms)."""
        tags = self._grad_norm_tags
        with_grad = [(tags[n], p.grad) for n, p in self.named_parameters if p.grad is not None]
        norms = torch._foreach_norm([grad for _, grad in with_grad])
        return {tag: norm for (tag, _), norm in zip(with_grad, norms, strict=True)}

    @staticmethod
    def _global_norm(param_norms: dict[str, Tensor]) -> Tensor:
        """The L2 norm of all gradients together: the norm of the per-parameter norms."""
        norms = list(param_norms.values())
        if len(norms) == 1:  # one parameter tensor (the objective problems): its own norm
            return norms[0]
        return torch.linalg.vector_norm(torch.stack(norms))

    def _check_updates(self, parameters: bool = False) -> None:
        """Settle the updates since the last check and stop at the first with a non-finite loss
        or gradient norm (trainer.on_nonfinite=stop); with `parameters`, then also at
        non-finite weights (which a gradient no norm was taken of can leave)."""
        bad = self._settle()
        if bad is not None:
            self._diverged(f"non-finite {self._describe(bad)} at step {bad.step}")
            return
        if parameters and self.updates.check_finite:
            name = self._non_finite_parameter()
            if name is not None:
                self._diverged(f"non-finite parameter '{name}' after step {self.state.step}")

    def _non_finite_parameter(self) -> str | None:
        """The first parameter holding a NaN or an infinity (one transfer). Checked element by
        element: a norm of finite weights can overflow."""
        finite = torch.stack([torch.isfinite(p).all() for p in self.params]).tolist()
        for (name, _), ok in zip(self.named_parameters, finite, strict=True):
            if not ok:
                return name
        return None

    def _settle(self) -> NonFinite | None:
        """Fold the recorded updates' losses into best_loss (up to the first non-finite one) and
        return that one, if any."""
        settled = self.updates.settle()
        if settled.lowest_loss is not None:
            self.state.best_loss = torch.minimum(self.state.best_loss, settled.lowest_loss)
        return settled.first_non_finite

    def _describe(self, bad: NonFinite) -> str:
        """'loss', or the gradient and the parameter it belongs to. That parameter's gradient
        is non-finite now (before the update), or, once updated with it, its values are."""
        if bad.what == "loss":
            return "loss"
        for name, p in self.named_parameters:
            if not bool(torch.isfinite(p).all()) or (
                p.grad is not None and not bool(torch.isfinite(p.grad).all())
            ):
                return f"gradient of parameter '{name}'"
        return "gradient"

    def _skip_update(self, bad: NonFinite) -> None:
        """trainer.on_nonfinite=skip: drop this update, keep the step count where it was."""
        culprit = self._describe(bad)
        self.optimizer.zero_grad()
        self.state.nonfinite_skips += 1
        if self.state.nonfinite_skips > self.settings.max_nonfinite_skips:
            self._diverged(
                f"non-finite {culprit} in {self.state.nonfinite_skips} consecutive updates "
                f"after step {self.state.step} (trainer.max_nonfinite_skips="
                f"{self.settings.max_nonfinite_skips})"
            )

    def _diverged(self, what: str) -> None:
        self._stop_reason = "diverged"
        last = self.state.last_checkpoint_step
        kept = f"the last checkpoint is from step {last}" if last is not None else "no checkpoint"
        self._message = f"Training diverged: {what}; {kept}."

    # ------------------------------------------------------------------------------- reporting
    def _log(
        self, loss: Tensor, grad_norm: Tensor, param_norms: dict[str, Tensor], lr: float
    ) -> None:
        scalars: dict[str, Tensor | float] = {
            "train/loss": loss,
            "train/grad_norm": grad_norm,
            **param_norms,
            "optim/lr": lr,
        }
        self.sink.log_scalars(scalars, step=self.state.step)

    def _result(self) -> FitResult:
        assert self._stop_reason is not None
        state = self.state
        return FitResult(
            stop_reason=self._stop_reason,
            steps=state.step,
            epochs=state.epoch,
            wall_s=state.elapsed_s,
            final_loss=self._objective.item(),
            best_loss=state.best_loss.item(),
            grad_norm=self._grad_norm.item(),
            val_loss=state.val_metrics.get("loss"),
            val_accuracy=state.val_metrics.get("accuracy"),
            train_accuracy=state.train_accuracy,
            message=self._message,
            last_checkpoint_step=state.last_checkpoint_step,
        )


_NO_CONTEXT = contextlib.nullcontext()  # reusable, and cheaper than a new one every step


def _as_python_random_state(saved: Any) -> tuple[Any, ...]:
    """`random.getstate()` is (version, tuple of ints, gauss); a checkpoint may hold lists."""
    version, internal, gauss = saved
    return (version, tuple(internal), gauss)
