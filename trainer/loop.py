"""The training loop: `Trainer.train_step` is one update, `Trainer.fit` is everything around it.

Read `train_step` for the lecture's step (forward, backward, clip, the update under
`torch.no_grad()`, zero_grad, the scheduler), and `fit` / `_train_epoch` for the bookkeeping
(logging cadence, trajectory, progress, tolerance, stop requests, checkpoint timing). What the
loop owns between steps lives in `TrainState` and the objects it was given, and
`Trainer.state_dict` gathers all of it, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import time
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

from gradtrain.checkpoint import capture_rng_state, restore_rng_state
from gradtrain.config import MONITORED_DURING_TRAINING, TrainerConfig, default_monitor
from gradtrain.distributed import all_reduce_mean, all_reduce_sum, sync_gradients, unwrap
from gradtrain.distributed import world_size as process_count
from gradtrain.early_stopping import MonitorTracker
from gradtrain.evaluation import EpochLoss
from gradtrain.guard import NonFiniteGuard
from gradtrain.insight.trajectory import Trajectory
from gradtrain.metrics.parameter_stats import ParameterStats
from gradtrain.metrics.sinks import MetricSink
from gradtrain.progress import ProgressBar
from gradtrain.step import backward, forward, summed
from gradtrain.sweeps import trial_report
from gradtrain.sweeps.monitor import natural_mode

StopReason = Literal[
    "max_steps", "max_epochs", "tolerance", "early_stopping", "interrupted", "diverged", "pruned"
]


class StopRequest(Protocol):
    """Asked at every step boundary whether to stop early (e.g. a signal arrived)."""

    @property
    def requested(self) -> bool: ...


class Checkpointer(Protocol):
    """Where `Trainer.state_dict()` goes at checkpoint time."""

    def save(self, payload: dict[str, Any], step: int) -> Any: ...

    def save_best(self, payload: dict[str, Any], step: int) -> Any:
        """`state_dict()` when the monitored metric improves (checkpoints/best.pt)."""


@dataclass
class TrainState:
    """Where training is; device tensors stay on the device until a checkpoint or the end."""

    step: int = 0  # optimizer updates done so far
    epoch: int = 0  # complete passes over the training data
    batch_in_epoch: int = 0  # batches of the current epoch consumed
    correct: Tensor = field(default_factory=lambda: torch.tensor(0))  # this epoch's right answers
    seen: int = 0  # this epoch's samples (classification)
    train_accuracy: float | None = None  # of the last finished (or final partial) epoch
    last_logged_loss: float | None = None  # for trainer.tolerance
    val_metrics: dict[str, float] = field(default_factory=dict)  # the latest, with its "step"
    elapsed_s: float = 0.0  # training time of earlier sessions of this run
    # The first update of each session pays one-time costs (torch.optim's first step imports
    # torch._dynamo, about 1 s): their time and number, kept apart from the rate.
    first_step_s: float = 0.0
    first_steps: int = 0
    last_checkpoint_step: int | None = None


@dataclass(slots=True)
class StepOutput:
    """What one update leaves for the bookkeeping: device tensors, read only when logged."""

    loss: Tensor  # 0-d: the loss of the update's batches (their mean over ranks)
    grad_norm: Tensor | None  # the global L2 norm of the gradients, where it was taken
    grad_norms: dict[str, Tensor]  # per parameter, by tag (empty where not taken)


@dataclass
class FitResult:
    stop_reason: StopReason
    steps: int
    epochs: int
    wall_s: float
    final_loss: float
    best_loss: float
    grad_norm: float
    first_step_s: float = 0.0  # of `wall_s`: the first update of each session (one-time costs)
    first_steps: int = 0  # how many such first updates (one per session)
    val_loss: float | None = None
    val_accuracy: float | None = None
    train_accuracy: float | None = None
    message: str | None = None  # why training stopped early (divergence, signal)
    last_checkpoint_step: int | None = None
    diverged_at_step: int | None = None  # the update found non-finite (steps may be later)
    train_loss_epoch: float | None = None  # the last finished epoch's mean (else the steps')
    # best.pt: {"step", "metric", "value"} of the best evaluation, when it was written.
    best_checkpoint: dict[str, Any] | None = None


def epoch_batches(settings: TrainerConfig, loader_batches: int) -> int:
    """The batches of one epoch: the loader's, capped by limit_train_batches or
    overfit_batches."""
    cap = settings.limit_train_batches or settings.overfit_batches
    return min(loader_batches, cap) if cap is not None else loader_batches


def total_steps(settings: TrainerConfig, batches_per_epoch: int) -> int:
    """The updates the run makes unless it stops early: the nearer of its two limits."""
    limits = []
    if settings.max_steps is not None:
        limits.append(settings.max_steps)
    if settings.max_epochs is not None:
        per_epoch = math.ceil(batches_per_epoch / settings.accumulate_grad_batches)
        limits.append(settings.max_epochs * per_epoch)
    return min(limits)


class Trainer:
    """Minimizes `loss_fn(model(inputs), targets)` (or `loss_fn(model())` with no data).

    Args:
        model: the module whose parameters are optimized.
        loss_fn: called as `loss_fn(prediction, target)`; may return a non-scalar loss, whose
            backward is then the vector-Jacobian product with a vector of ones.
        optimizer: any `torch.optim.Optimizer` (including `ManualSGD` and `LBFGS`).
        train_loader: an iterable of `(inputs, targets)` batches with a length, or None for a
            loss of the parameters alone (each step is then one epoch). A sampler with
            `set_epoch` gets the epoch number before each epoch.
        settings: the validated `trainer` config section.
        device: where the model lives and batches are moved to.
        sink: receives scalars at logging steps.
        scheduler: stepped after every optimizer step, or None for a constant lr.
        val_loader: batches evaluated every `settings.val_every_n_epochs` epochs (or every
            `settings.val_every_n_steps` updates), or None.
        classification: count correct predictions (train/accuracy, val/accuracy).
        checkpointer: receives `state_dict()` at checkpoint steps (and, as best.pt, whenever
            the monitored metric improves), or None for no checkpoints.
        stop_request: polled at step boundaries; when set, the run checkpoints and stops.
        trajectory: if given, records the parameters at the start and at logging steps (for
            figures of the path).
        parameter_stats: optional histograms and update-to-weight ratios (None: off).
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
        parameter_stats: ParameterStats | None = None,
    ) -> None:
        if train_loader is not None and not isinstance(train_loader, Sized):
            raise TypeError("train_loader must have a length")
        if train_loader is not None and len(train_loader) == 0:
            # Epochs of no batch would follow each other forever without a step.
            raise ValueError("train_loader has no batch: an epoch would never take a step")
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
        self.parameter_stats = parameter_stats
        self.state = TrainState()
        self.named_parameters = [
            (n, p) for n, p in self.module.named_parameters() if p.requires_grad
        ]
        self.params: list[Tensor] = [p for _, p in self.named_parameters]
        self.batches_per_epoch = (
            epoch_batches(settings, len(train_loader)) if train_loader is not None else 1
        )
        self.total_steps = total_steps(settings, self.batches_per_epoch)
        self.guard = NonFiniteGuard(
            settings.on_nonfinite, self.named_parameters, settings.max_nonfinite_skips, device
        )
        self._grad_norm_tags = {n: f"watch/grad_norm/{n}" for n, _ in self.named_parameters}
        # Clipping, and the guard under `skip`, need the gradient norms of every update.
        self._norms_every_step = (
            settings.grad_clip is not None or self.guard.decides_before_each_update
        )
        self._world_size = process_count()  # processes training together (torchrun), or 1
        self._stop_reason: StopReason | None = None
        self._message: str | None = None
        self._diverged_at: int | None = None
        self._last_loss = torch.tensor(math.nan)  # of the last update, on the device
        self._last_grad_norm = torch.tensor(math.nan)  # the last one taken
        self._session_started: float | None = None  # perf_counter() at fit()'s start, while fitting
        self._first_update_pending = False  # the session's first update is yet to be timed
        # The monitored metric (trainer.monitor, or its default for this data), followed at each
        # evaluation for best.pt and early stopping; read on the host only where they need it.
        self.monitor = settings.monitor or default_monitor(
            val_loader is not None, train_loader is not None
        )
        self.tracker: MonitorTracker | None = None
        if self.monitor in MONITORED_DURING_TRAINING and (
            settings.early_stopping.patience is not None or checkpointer is not None
        ):
            self.tracker = MonitorTracker(
                self.monitor,
                settings.mode or natural_mode(self.monitor),
                settings.early_stopping.patience,
                settings.early_stopping.min_delta,
            )
        self.epoch_loss = EpochLoss() if train_loader is not None else None
        self._last_epoch_loss: Tensor | None = None  # train/loss_epoch of the last epoch

    # ---------------------------------------------------------------------------------- the step
    def train_step(self, batches: list[Any], log_now: bool) -> StepOutput | None:
        """One update from `batches` (one batch, or an accumulation window of them): forward,
        backward, clip, update, zero_grad, scheduler. Returns the loss and gradient norms, or
        None when the non-finite guard (trainer.on_nonfinite=skip) dropped the update."""
        loss = self._forward_backward(batches)  # every .grad now holds d loss / d parameter
        # Gradient norms, where they are logged, clipped by, or checked before the update.
        grad_norms: dict[str, Tensor] = {}
        grad_norm = None
        if log_now or self._norms_every_step:
            grad_norms = self._gradient_norms()
            grad_norm = _global_norm(grad_norms)
        self.guard.watch(self.state.step + 1, loss, grad_norm)
        if self.guard.decides_before_each_update and self._skip_update():
            return None
        if self.settings.grad_clip is not None and grad_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.settings.grad_clip, grad_norm)
        if self.parameter_stats is not None:
            self.parameter_stats.before_update(self.state.step + 1, log_now)
        # The update, under torch.no_grad() inside the optimizer (ManualSGD: p -= lr * p.grad).
        # L-BFGS re-evaluates the loss in its line search, through a closure.
        if isinstance(self.optimizer, torch.optim.LBFGS):
            self.optimizer.step(functools.partial(self._closure, batches[0]))  # type: ignore[arg-type]
        else:
            self.optimizer.step()
        if self.parameter_stats is not None:
            self.parameter_stats.after_update()
        self.optimizer.zero_grad()  # backward adds into .grad: clear it for the next update
        if self.scheduler is not None:
            self.scheduler.step()
        return StepOutput(loss, grad_norm, grad_norms)

    def _skip_update(self) -> bool:
        """trainer.on_nonfinite=skip: drop this update if the guard finds it non-finite (and
        stop the run when too many were dropped in a row)."""
        skip, why = self.guard.skip_update(self.state.step)
        if skip:
            self.optimizer.zero_grad()
            if why is not None:
                self._diverged(why, at_step=self.state.step + 1)
        return skip

    def _forward_backward(self, batches: list[Any]) -> Tensor:
        """Forward and backward of each batch; `.grad` adds their gradients up. Returns the loss
        over all of them (0-d, detached), the same on every rank."""
        if len(batches) == 1:  # one batch per update: nothing to average or to keep local
            loss = self._forward(batches[0])
            backward(loss)
            total = summed(loss.detach())
        else:
            total = self._accumulate(batches)
        # The mean over ranks (equal batches), one scalar all-reduce per update under torchrun
        # (no host sync on CUDA): every rank then sees the same loss, so the guard, tolerance
        # and best_loss agree across ranks.
        return all_reduce_mean(total) if self._world_size > 1 else total

    def _accumulate(self, batches: list[Any]) -> Tensor:
        """Gradient accumulation: forward and backward of several batches, whose gradients add
        up in `.grad`; each loss is divided by their number, so the sum is their mean, as one
        larger batch would give. Returns the summed loss (0-d, detached)."""
        total = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            # Under torchrun, backward also averages the gradients over ranks, but only on the
            # last batch of the window; before it they add up locally, as .grad does in one
            # process. (DDP decides this in forward, so both are inside.)
            with sync_gradients(self.model, i == len(batches) - 1):
                loss = self._forward(batch) / len(batches)
                backward(loss)
            total += summed(loss.detach())
        return total

    def _forward(self, batch: Any) -> Tensor:
        """`step.forward` on this device and precision, counting right answers (classification)."""
        if batch is not None and batch[0].device != self.device:
            # (A call to .to costs microseconds even as a no-op: skipped when already there.)
            batch = tuple(t.to(self.device, non_blocking=True) for t in batch)
        with self._autocast():
            loss, prediction = forward(self.model, self.loss_fn, batch)
        if self.classification and prediction is not None:
            self.state.correct += _correct(prediction, batch[1])
            self.state.seen += batch[1].shape[0]
        return loss

    def _closure(self, batch: Any) -> Tensor:
        """Re-evaluate loss and gradients at the current parameters (for LBFGS's line search)."""
        self.optimizer.zero_grad()
        with self._autocast():
            loss = forward(self.model, self.loss_fn, batch)[0]
        backward(loss)
        return summed(loss.detach())

    # ---------------------------------------------------------------------------------- the loop
    def fit(self) -> FitResult:
        settings, state = self.settings, self.state
        state.correct = state.correct.to(self.device)
        started = self._session_started = time.perf_counter()
        self._first_update_pending = True
        self.model.train()
        if self.trajectory is not None:
            self.trajectory.record(state.step, self.params)  # the start
        anomaly = (
            torch.autograd.detect_anomaly() if settings.detect_anomaly else contextlib.nullcontext()
        )
        progress = ProgressBar(self.total_steps, enabled=settings.progress_bar)
        progress.update(state.step)  # a resumed run starts part way
        with progress, anomaly:
            self._stop_reason = self._limit_reached(state.step, state.batch_in_epoch)
            if self._stop_reason is None and self._patience_ran_out():
                self._stop_reason = "early_stopping"  # a resumed run that had stopped so
            while self._stop_reason is None:
                where = (state.epoch, state.batch_in_epoch)
                self._train_epoch(progress)
                epoch_done = state.batch_in_epoch == self.batches_per_epoch
                if epoch_done:
                    state.epoch += 1
                    state.batch_in_epoch = 0
                elif (state.epoch, state.batch_in_epoch) == where and self._stop_reason is None:
                    # A loader that claims batches but yields none: retrying would spin.
                    raise RuntimeError(
                        f"the training data yielded no batch in epoch {state.epoch} "
                        f"({self.batches_per_epoch} expected)"
                    )
                self._end_of_epoch_metrics(epoch_done)
                # With data, checkpoint each finished epoch; a loss of the parameters alone has
                # one-step "epochs", checkpointed every checkpoint_every_n_steps and at the end.
                if epoch_done and self.train_loader is not None:
                    self._checkpoint()
            if self._stop_reason != "diverged":
                # The end of the run, or the point a signal stopped it. The checkpoint first
                # checks the updates and the weights; without one, the same check runs here.
                self._checkpoint()
                if self.checkpointer is None:
                    self._check(parameters=True)
        state.elapsed_s += time.perf_counter() - started
        self._session_started = None
        return self._result()

    def _train_epoch(self, progress: ProgressBar) -> None:
        """Updates over the rest of the current epoch, until it ends or the run must stop."""
        settings, state = self.settings, self.state
        for batches in self._epoch_windows():
            step = state.step + 1  # the number this update will have
            if self.train_loader is None:
                state.epoch += 1  # a loss of the parameters alone: each step is an epoch
            else:
                state.batch_in_epoch += len(batches)
            is_last = self._limit_reached(step, state.batch_in_epoch) is not None
            # Step 1 too: the starting loss is the first point a learner looks for on a curve.
            log_now = is_last or step == 1 or step % settings.log_every_n_steps == 0
            # The lr this update uses (the scheduler moves it after), read only when logged.
            lr = float(self.optimizer.param_groups[0]["lr"]) if log_now else math.nan
            first_update = self._first_update_pending
            began = time.perf_counter() if first_update else 0.0
            try:
                output = self.train_step(batches, log_now)
            except RuntimeError as error:
                if not settings.detect_anomaly:
                    raise
                self._diverged(f"autograd anomaly at step {step}: {error}", at_step=step)
                return
            if first_update:
                self._first_update_pending = False
                state.first_step_s += time.perf_counter() - began
                state.first_steps += 1
            if output is None:  # skipped: the step count stays where it was
                if self._stop_reason is not None:
                    return
                continue
            state.step = step
            self._last_loss = output.loss
            if self.epoch_loss is not None:
                self.epoch_loss.add(output.loss)  # (kept on the device: no sync)
            if output.grad_norm is not None:
                self._last_grad_norm = output.grad_norm
            if log_now:
                self._log(output, lr, progress)
            progress.update()
            if self._must_stop_after(log_now, is_last):
                return

    def _must_stop_after(self, log_now: bool, is_last: bool) -> bool:
        """Stop requests, the guard's checks and checkpoints due after an update; True when
        the run ends here."""
        state = self.state
        if self.stop_request is not None and self.stop_request.requested:
            self._stop_reason = self._stop_reason or "interrupted"
            self._message = f"stopped by a signal after step {state.step}"
        every_n_steps = self.settings.val_every_n_steps
        if (
            every_n_steps is not None
            and state.step % every_n_steps == 0
            and self.val_loader is not None
            and self._stop_reason not in ("interrupted", "diverged")
        ):
            self._validate(final=is_last)  # (may stop the run: early stopping, pruning)
        every = self.settings.checkpoint_every_n_steps
        checkpoint_due = every is not None and state.step % every == 0
        stopping = is_last or self._stop_reason is not None
        if checkpoint_due or stopping or self.guard.check_due(logging_step=log_now):
            self._check()  # before anything is saved from a possibly bad update
        if self._stop_reason == "diverged":
            return True
        # An update that closes an epoch is checkpointed by `fit` once the epoch's metrics are
        # logged and its counters reset; saved before that, a resumed run would close the epoch
        # again and log its metrics twice at this step.
        closes_epoch = (
            self.train_loader is not None and state.batch_in_epoch == self.batches_per_epoch
        )
        if checkpoint_due and not stopping and not closes_epoch:
            self._checkpoint()  # (which stops the run if the weights it checks are not finite)
        if is_last or self._stop_reason is not None:
            self._stop_reason = self._stop_reason or self._limit_reached(
                state.step, state.batch_in_epoch
            )
            return True
        return False

    def _epoch_windows(self) -> Iterator[list[Any]]:
        """The current epoch's batches, minus those a resumed run already consumed, grouped
        into the batches of one update: `accumulate_grad_batches` (fewer at the epoch's end)."""
        if self.train_loader is None:
            # A loss of the parameters alone has no data: one stream of steps, each of which
            # counts as an epoch (see the loop), until the run stops.
            yield from itertools.repeat([None])
            return
        # The order is a function of the epoch alone; overfit_batches keeps epoch 0's.
        epoch = 0 if self.settings.overfit_batches is not None else self.state.epoch
        for sampler_kind in ("batch_sampler", "sampler"):
            set_epoch = getattr(getattr(self.train_loader, sampler_kind, None), "set_epoch", None)
            if set_epoch is not None:
                set_epoch(epoch)
                break
        batches: Iterator[Any] = iter(self.train_loader)
        if self.batches_per_epoch < len(self.train_loader):  # type: ignore[arg-type]
            batches = itertools.islice(batches, self.batches_per_epoch)  # limit/overfit
        for _ in range(self.state.batch_in_epoch):
            next(batches)
        accumulate = self.settings.accumulate_grad_batches
        if accumulate == 1:
            yield from ([batch] for batch in batches)
            return
        while window := list(itertools.islice(batches, accumulate)):
            yield window

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        # An autocast context costs microseconds even when disabled; fp32 takes a no-op one.
        if self.settings.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return _NO_CONTEXT

    def _limit_reached(self, step: int, batch_in_epoch: int) -> StopReason | None:
        """Whether the run ends after `step` updates, `batch_in_epoch` batches into the current
        epoch."""
        settings = self.settings
        if settings.max_steps is not None and step >= settings.max_steps:
            return "max_steps"
        if settings.max_epochs is not None and (
            self.state.epoch >= settings.max_epochs
            or (
                self.state.epoch + 1 >= settings.max_epochs
                and batch_in_epoch >= self.batches_per_epoch
            )
        ):
            return "max_epochs"
        return None

    def _checkpoint(self) -> None:
        if self.checkpointer is None or self.state.last_checkpoint_step == self.state.step:
            return
        self._check(parameters=True)  # never save the weights of a bad update
        if self._stop_reason == "diverged":
            return
        self.sink.flush()  # the event file holds every step the checkpoint covers
        self.checkpointer.save(self.state_dict(), self.state.step)
        self.state.last_checkpoint_step = self.state.step

    def _check(self, parameters: bool = False) -> None:
        """The guard's verdict on the updates since its last check (and on the weights)."""
        problem = self.guard.check(self.state.step, parameters=parameters)
        if problem is not None:
            self._diverged(problem, at_step=self.guard.problem_step or self.state.step)

    def _diverged(self, what: str, at_step: int) -> None:
        """Stop: update `at_step` went wrong. The guard reads values back in batches, so the
        updates after it up to `state.step` have run too (on non-finite values)."""
        self._stop_reason = "diverged"
        self._diverged_at = at_step
        state = self.state
        last = state.last_checkpoint_step
        kept = f"the last checkpoint is from step {last}" if last is not None else "no checkpoint"
        self._message = f"Training diverged: {what}; {kept}."
        if state.step > at_step:
            self._message += (
                f" Found at the check after step {state.step}: the updates in between ran on "
                "non-finite values."
            )

    def _end_of_epoch_metrics(self, epoch_done: bool) -> None:
        """train/accuracy of the epoch, and validation when it is due or the run ends.

        A stop request (a signal) does not end the run: it goes on after a resume. So mid-epoch
        its accuracy so far is only kept for the summary: nothing is logged at that step, no
        validation is run there, and the epoch's counts stay (into the checkpoint) until the
        epoch ends; a resumed run then reports what an uninterrupted one would."""
        state, ending = self.state, self._stop_reason is not None
        paused = self._stop_reason == "interrupted" and not epoch_done
        if self.classification and state.seen and (epoch_done or ending):
            correct, seen = all_reduce_sum(
                torch.stack([state.correct, torch.tensor(state.seen).to(state.correct)])
            ).tolist()
            state.train_accuracy = correct / seen
            if not paused:
                self.sink.log_scalars({"train/accuracy": state.train_accuracy}, step=state.step)
            if epoch_done:  # (a run ending mid-epoch keeps them, should it be continued)
                state.correct.zero_()
                state.seen = 0
        if paused:
            return
        if epoch_done and self.epoch_loss is not None and self.epoch_loss.count:
            self._end_of_epoch_loss()
        due = (
            epoch_done
            and self.settings.val_every_n_steps is None
            and state.epoch % self.settings.val_every_n_epochs == 0
        )
        fresh = state.val_metrics.get("step") == state.step
        if self.val_loader is not None and (due or ending) and not fresh:
            if self._stop_reason == "diverged":
                return
            self._validate(final=ending)

    def _end_of_epoch_loss(self) -> None:
        """train/loss_epoch: the mean loss of the epoch's updates, summed on the device; read
        on the host only when it is the monitored metric of best.pt or early stopping."""
        assert self.epoch_loss is not None
        mean = self.epoch_loss.mean()
        assert mean is not None
        self.epoch_loss.reset()
        self._last_epoch_loss = mean
        self.sink.log_scalars({"train/loss_epoch": mean}, step=self.state.step)
        if self.monitor == "train_loss_epoch" and self.tracker is not None:
            self._monitored(mean.item())  # a host sync, once per epoch

    def _validate(self, final: bool) -> None:
        """Evaluate the validation data, log val/*, and hand the monitored value on."""
        assert self.val_loader is not None
        state = self.state
        metrics = self.evaluate(self.val_loader, max_batches=self.settings.limit_val_batches)
        state.val_metrics = {"step": state.step, **metrics}
        self.sink.log_scalars({f"val/{k}": v for k, v in metrics.items()}, step=state.step)
        if self.monitor in ("val_loss", "val_accuracy") and self.tracker is not None:
            self._monitored(metrics[self.monitor.removeprefix("val_")])
        # In a search, the trial reports its monitored metric here and its pruner may stop it
        # (gradtrain/sweeps/trial_report.py; always False outside a search).
        pruned = trial_report.should_prune(state.step, self.monitor, state.val_metrics, final=final)
        if pruned and self._stop_reason is None:
            self._stop_reason = "pruned"
            self._message = f"pruned by the search's pruner after step {state.step}"

    def _monitored(self, value: float) -> None:
        """Where an evaluation becomes the monitored value (validation, or an epoch's mean
        training loss): best.pt when it improved, and early stopping. (The one place a
        sweeper that prunes by the monitored value would hook into.)"""
        assert self.tracker is not None
        verdict = self.tracker.observe(value, self.state.step)
        if verdict.improved and self.checkpointer is not None:
            self._check(parameters=True)  # never save the weights of a bad update
            if self._stop_reason == "diverged":
                return
            self.checkpointer.save_best(self.state_dict(), self.state.step)
        if verdict.stop and self._stop_reason is None:
            self._stop_early()

    def _patience_ran_out(self) -> bool:
        tracker = self.tracker
        return (
            tracker is not None
            and tracker.patience is not None
            and tracker.evaluations_without_improvement >= tracker.patience
        )

    def _stop_early(self) -> None:
        tracker = self.tracker
        assert tracker is not None
        self._stop_reason = "early_stopping"
        self._message = (
            f"early stopping: {tracker.metric} did not improve by more than "
            f"{self.settings.early_stopping.min_delta:g} for {tracker.patience} evaluations "
            f"(best {tracker.best:.6g} at step {tracker.best_step})"
        )

    def _gradient_norms(self) -> dict[str, Tensor]:
        """L2 norm of each parameter's gradient by its tag, from one fused kernel (no loop of
        norms)."""
        tags = self._grad_norm_tags
        with_grad = [(tags[n], p.grad) for n, p in self.named_parameters if p.grad is not None]
        norms = torch._foreach_norm([grad for _, grad in with_grad])
        return {tag: norm for (tag, _), norm in zip(with_grad, norms, strict=True)}

    # ------------------------------------------------------------------------------- reporting
    def _log(self, output: StepOutput, lr: float, progress: ProgressBar) -> None:
        """A logging step: scalars to the sink (as device tensors, read back in batches), the
        trajectory, and, when asked for, the loss on the host for the progress bar and
        trainer.tolerance."""
        state = self.state
        scalars: dict[str, Tensor | float] = {
            "train/loss": output.loss,
            "watch/grad_norm": output.grad_norm if output.grad_norm is not None else math.nan,
            **output.grad_norms,
            "watch/lr": lr,
        }
        self.sink.log_scalars(scalars, step=state.step)
        if self.trajectory is not None:
            self.trajectory.record(state.step, self.params)
        if self.settings.tolerance is not None or progress.visible:
            loss = output.loss.item()  # a host synchronisation, asked for by these two
            progress.show_loss(loss)
            tolerance, previous = self.settings.tolerance, state.last_logged_loss
            if tolerance is not None and previous is not None and abs(loss - previous) < tolerance:
                self._stop_reason = "tolerance"
            state.last_logged_loss = loss

    @torch.no_grad()
    def evaluate(self, loader: Iterable[Any], max_batches: int | None = None) -> dict[str, float]:
        """Mean loss per sample (and accuracy) over `loader` (its first `max_batches`), in eval
        mode, building no graph."""
        self.model.eval()
        total_loss = torch.zeros((), device=self.device)
        total_correct = torch.zeros((), dtype=torch.int64, device=self.device)
        count = 0
        for batch in itertools.islice(loader, max_batches):
            inputs, targets = (t.to(self.device, non_blocking=True) for t in batch)
            with self._autocast():
                loss, prediction = forward(self.model, self.loss_fn, (inputs, targets))
            total_loss += summed(loss) * targets.shape[0]
            if self.classification and prediction is not None:
                total_correct += _correct(prediction, targets)
            count += targets.shape[0]
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
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "step": state.step,
            "epoch": state.epoch,
            "batch_in_epoch": state.batch_in_epoch,
            "rng": capture_rng_state(self.device),
            "running": {
                "best_loss": self.guard.best_loss.detach().cpu(),
                "correct": state.correct.detach().cpu(),
                "seen": state.seen,
                "train_accuracy": state.train_accuracy,
                "last_logged_loss": state.last_logged_loss,
                "val_metrics": dict(state.val_metrics),
                # This session's time so far too: a run killed after this checkpoint, or
                # stopped by a signal (checkpointed before fit returns), resumes its clock here.
                "elapsed_s": state.elapsed_s + self._session_elapsed_s(),
                "first_step_s": state.first_step_s,
                "first_steps": state.first_steps,
                "last_loss": self._last_loss.detach().cpu(),
                "grad_norm": self._last_grad_norm.detach().cpu(),
                "monitor": self.tracker.state_dict() if self.tracker is not None else None,
                "epoch_loss": self.epoch_loss.state_dict() if self.epoch_loss is not None else None,
                "last_epoch_loss": (
                    self._last_epoch_loss.detach().cpu()
                    if self._last_epoch_loss is not None
                    else None
                ),
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
            correct=running["correct"].to(self.device),
            seen=running["seen"],
            train_accuracy=running["train_accuracy"],
            last_logged_loss=running["last_logged_loss"],
            val_metrics=running["val_metrics"],
            elapsed_s=running["elapsed_s"],
            # (Checkpoints of gradtrain 0.1 did not time first updates.)
            first_step_s=running.get("first_step_s", 0.0),
            first_steps=running.get("first_steps", 0),
            last_checkpoint_step=checkpoint["step"],
        )
        self.guard.best_loss = running["best_loss"].to(self.device)
        # ("objective": the name of the last loss in checkpoints of gradtrain 0.1.)
        last_loss = running["last_loss"] if "last_loss" in running else running["objective"]
        self._last_loss = last_loss.to(self.device)
        self._last_grad_norm = running["grad_norm"].to(self.device)
        # (Checkpoints from before early stopping and train/loss_epoch have none of these.)
        if self.tracker is not None and running.get("monitor") is not None:
            self.tracker.load_state_dict(running["monitor"])
        if self.epoch_loss is not None and running.get("epoch_loss") is not None:
            self.epoch_loss.load_state_dict(running["epoch_loss"], self.device)
        if running.get("last_epoch_loss") is not None:
            self._last_epoch_loss = running["last_epoch_loss"].to(self.device)
        restore_rng_state(checkpoint["rng"])

    def _session_elapsed_s(self) -> float:
        """Seconds since this session's fit() began (0 outside fit)."""
        if self._session_started is None:
            return 0.0
        return time.perf_counter() - self._session_started

    def _result(self) -> FitResult:
        assert self._stop_reason is not None
        state = self.state
        return FitResult(
            stop_reason=self._stop_reason,
            steps=state.step,
            epochs=state.epoch,
            wall_s=state.elapsed_s,
            final_loss=self._last_loss.item(),
            best_loss=self.guard.best_loss.item(),
            grad_norm=self._last_grad_norm.item(),
            first_step_s=state.first_step_s,
            first_steps=state.first_steps,
            val_loss=state.val_metrics.get("loss"),
            val_accuracy=state.val_metrics.get("accuracy"),
            train_accuracy=state.train_accuracy,
            message=self._message,
            last_checkpoint_step=state.last_checkpoint_step,
            diverged_at_step=self._diverged_at,
            train_loss_epoch=self._train_loss_epoch(),
            best_checkpoint=self._best_checkpoint(),
        )

    def _train_loss_epoch(self) -> float | None:
        """The last finished epoch's mean loss, or the mean so far when none finished."""
        if self._last_epoch_loss is not None:
            return self._last_epoch_loss.item()
        partial = self.epoch_loss.mean() if self.epoch_loss is not None else None
        return partial.item() if partial is not None else None

    def _best_checkpoint(self) -> dict[str, Any] | None:
        tracker = self.tracker
        if self.checkpointer is None or tracker is None or tracker.best_step is None:
            return None
        return {"step": tracker.best_step, "metric": tracker.metric, "value": tracker.best}


_NO_CONTEXT = contextlib.nullcontext()  # reusable, and cheaper than a new one every step


def _global_norm(grad_norms: dict[str, Tensor]) -> Tensor:
    """The L2 norm of all gradients together: the norm of the per-parameter norms."""
    norms = list(grad_norms.values())
    if len(norms) == 1:  # one parameter tensor (a loss of the parameters alone): its own norm
        return norms[0]
    return torch.linalg.vector_norm(torch.stack(norms))


def _correct(prediction: Tensor, targets: Tensor) -> Tensor:
    """How many predictions name the target class (0-d, on the device)."""
    # One logit per sample (bce_with_logits) means class 1 when positive.
    labels = prediction > 0 if prediction.dim() == 1 else prediction.argmax(dim=-1)
    return (labels == targets).sum()
