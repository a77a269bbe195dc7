"""One run: validate the composed config, build the pieces, fit, report.

`train.py` hands this module a plain dict and the run directory; it never sees Hydra objects, so
tests and notebooks can call `run()` directly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import signal
import sys
import tempfile
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gradtrain.build import (
    Components,
    build,
    build_sink,
    build_trainer,
    resolve_device,
    with_learning_rate,
)
from gradtrain.checkpoint import (
    BEST,
    CheckpointWriter,
    NullCheckpointWriter,
    load_checkpoint,
    resume_checkpoint_in,
    resume_problems,
)
from gradtrain.config import Config, LoggerConfig, validate_config
from gradtrain.distributed import (
    CollectiveStop,
    broadcast_from_main,
    is_distributed,
    is_main_process,
    local_device,
    process_group,
)
from gradtrain.errors import (
    CheckpointError,
    GradientCheckError,
    GradtrainError,
    ResumeConfigMismatch,
    TrainingDiverged,
    TrainingInterrupted,
)
from gradtrain.files import (
    FolderInUse,
    NoLocking,
    claim_folder,
    os_error_text,
    remove_stale_temporaries,
    write_atomic,
    write_json_atomic,
)
from gradtrain.insight.convergence import distance_record, rate_table_markdown, theory_summary
from gradtrain.insight.explain import explain, explain_batch
from gradtrain.insight.figures import TrajectoryFigures
from gradtrain.insight.landscape import Landscape
from gradtrain.loop import FitResult, Trainer
from gradtrain.metrics.dashboard import select_hparams
from gradtrain.metrics.history import TeeSink
from gradtrain.metrics.sinks import HParamValue, MetricSink, NullSink
from gradtrain.models import VectorModel
from gradtrain.signals import SignalStop
from gradtrain.smoke import fast_dev_config
from gradtrain.suggest import flattened
from gradtrain.sweeps.monitor import choose_monitor, natural_mode

log = logging.getLogger("gradtrain")

SUMMARY_FILE = "summary.json"
LR_FIND_FIGURE = "lr_find.png"
EXPLAIN_FILE = "explain.md"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_DIR = "checkpoints"


@dataclass
class Observer:
    """What `run` shows a caller in the same process (`gradtrain.api.fit`): `sink` receives
    everything the run logs, beside the run's own logger, and `trainer` is the Trainer once
    built (its model, trained, when `run` returns)."""

    sink: MetricSink
    trainer: Trainer | None = None


def run(
    raw_config: Mapping[str, Any],
    run_dir: Path,
    observer: Observer | None = None,
    hparam_keys: Collection[str] | None = None,
) -> dict[str, Any]:
    """Train as `raw_config` says, writing logs, checkpoints and `summary.json` into `run_dir`.

    Returns the summary. Raises ConfigError (invalid config) or GradtrainError (a problem the
    user can fix) before anything is written; TrainingDiverged or TrainingInterrupted after
    writing the summary of a run that stopped early.

    The run holds `run_dir` for itself while it runs (`files.claim_folder`): a second run
    started there meanwhile is refused. Under torchrun every process calls this; they join
    one process group for the run, and only rank 0 claims and writes (into its `run_dir`,
    which becomes every rank's).

    `hparam_keys`: the keys (or groups) logged to TensorBoard's HParams tab, e.g. a sweep job's
    swept keys (`sweeps.names.swept_keys`); None: every key.
    """
    cfg = validate_config(raw_config)
    device = resolve_device(cfg.trainer.device)
    with process_group(device, cfg.trainer.dist_timeout_s), contextlib.ExitStack() as claim:
        if not cfg.trainer.fast_dev_run:
            return _run(cfg, raw_config, run_dir, claim, observer, hparam_keys)
        # A smoke run writes its checkpoint and events here, removed at the end: the run
        # folder keeps only summary.json.
        scratch = Path(claim.enter_context(tempfile.TemporaryDirectory(prefix="gradtrain-smoke-")))
        return _run(
            fast_dev_config(cfg), raw_config, run_dir, claim, observer, hparam_keys, scratch
        )


@dataclass(frozen=True)
class Start:
    """How a run starts, as rank 0 decided it (and sent to the other ranks)."""

    run_dir: Path
    resume_from: Path | None  # the checkpoint to continue from, or None: from scratch
    # Starting from scratch in a folder whose earlier session left no checkpoint: TensorBoard
    # is told to hide that session's events, which would otherwise share its curves.
    hide_earlier_events: bool = False


def _run(
    cfg: Config,
    raw_config: Mapping[str, Any],
    run_dir: Path,
    claim: contextlib.ExitStack,
    observer: Observer | None = None,
    hparam_keys: Collection[str] | None = None,
    scratch: Path | None = None,
) -> dict[str, Any]:
    main = is_main_process()
    start = _agree_on_start(cfg.trainer.resume, run_dir, claim)
    run_dir, resume_from = start.run_dir, start.resume_from
    # Where checkpoints, events and figures go: the run folder, or a smoke run's scratch.
    kept = scratch if scratch is not None else run_dir
    # Every rank loads the checkpoint itself (on several nodes: from a shared file system),
    # and checks, before anything is written, that it continues this very training.
    checkpoint = None
    if resume_from is not None:
        checkpoint = load_checkpoint(resume_from)
        problems = resume_problems(checkpoint)
        if problems:
            raise CheckpointError(f"{resume_from} cannot be resumed: {'; '.join(problems)}")
        _check_same_training(cfg, checkpoint, resume_from)
    seed_everything(cfg.seed)
    # Built before anything is written: what refuses the config only once the data is known (a
    # CSV, a size, an epoch without a batch) leaves the run folder as it was.
    parts = build(cfg)
    if main:
        for stale in remove_stale_temporaries(kept / CHECKPOINT_DIR):
            log.info("Removed %s, left by a session killed while writing a checkpoint.", stale)
    checkpointer: CheckpointWriter | NullCheckpointWriter | None = None
    if cfg.trainer.save_checkpoints:
        checkpointer = (
            CheckpointWriter(
                kept / CHECKPOINT_DIR,
                keep=cfg.trainer.keep_checkpoints,
                config=cfg.model_dump(mode="json"),
                data=parts.data.inference_facts(),
            )
            if main
            else NullCheckpointWriter()
        )
    resumed_step = checkpoint["step"] if checkpoint is not None else None
    # Steps after the checkpoint's are redone; TensorBoard drops what the killed session logged
    # for them, keeping the checkpoint's own step. A fresh start over a session that left no
    # checkpoint drops all of that session's events.
    purge_step = resumed_step + 1 if resumed_step is not None else None
    if start.hide_earlier_events:
        purge_step = 0
    sink = (
        build_sink(cfg.logger, kept / TENSORBOARD_DIR, purge_step=purge_step)
        if main
        else NullSink()
    )
    if observer is not None:
        sink = TeeSink(sink, observer.sink)
    stop = SignalStop(checkpoints=cfg.trainer.save_checkpoints)
    device = local_device(resolve_device(cfg.trainer.device))
    stop_request = (
        CollectiveStop(stop, device, every=cfg.trainer.log_every_n_steps)
        if is_distributed()
        else stop
    )
    try:
        figures = TrajectoryFigures.for_run(cfg, parts, sink) if main and not scratch else None
        trajectory = figures.trajectory if figures is not None else None
        # quadratic_form: ‖x_k - x*‖ at each logging step, for the measured convergence rate.
        distances = distance_record(parts.loss_fn) if main else None
        if distances is not None:
            trajectory = distances.attach(trajectory)
        lr_found = None
        if cfg.lr_find.enabled and checkpoint is None:  # (a resumed run has its lr already)
            lr_found, parts = _find_lr(cfg, parts, sink, kept if main else None)
        # (θ₀ taken before a checkpoint is loaded: a resumed run interpolates from the start.)
        landscape = Landscape.for_run(cfg, parts) if main and not scratch else None
        trainer = build_trainer(
            cfg,
            sink,
            checkpointer=checkpointer,
            stop_request=stop_request,
            trajectory=trajectory,
            components=parts,
        )
        if observer is not None:
            observer.trainer = trainer
        if checkpoint is not None:
            assert resume_from is not None
            _load_into(trainer, checkpoint, resume_from)
            log.info("Resuming from %s at step %d.", resume_from, resumed_step)
        else:
            sink.log_text("config", "```yaml\n" + _as_yaml(raw_config) + "\n```")
        # The explanation describes a run's start, so a resumed run does not repeat it.
        explained = cfg.explain and checkpoint is None and main
        gradient_check = _explain(trainer, sink, kept, cfg) if explained else None
        result = fit_and_report(trainer, stop, run_dir, write_summary=main)
        summary = _summary(cfg.logger, result, trainer.module, run_dir)
        summary["monitor"] = choose_monitor(cfg.trainer.monitor, summary)
        summary["monitor_mode"] = cfg.trainer.mode or natural_mode(summary["monitor"])
        if result.best_checkpoint is not None and scratch is None:
            summary["best_checkpoint"] = result.best_checkpoint
        if lr_found is not None:
            summary["lr_find"] = lr_found
        if scratch is not None:  # (its checkpoint and events went with the scratch folder)
            summary["fast_dev_run"] = True
            summary.pop("tensorboard_dir", None)
        if gradient_check is not None:
            summary["gradient_check"] = gradient_check
        if figures is not None:
            began = time.perf_counter()
            figures.finish(result.steps, run_dir)  # (matplotlib: about a second, once)
            summary["one_time_s"]["figures"] = round(time.perf_counter() - began, 6)
        summary.update(theory_summary(cfg, trainer.loss_fn, trainer.module, distances))
        # (Not for a stopped run: resumed, it evaluates the landscape at its real end.)
        if landscape is not None and result.stop_reason not in ("diverged", "interrupted"):
            summary["landscape"] = landscape.finish(
                trainer.module, trainer.loss_fn, sink, run_dir, result.steps
            )
        test_loader = parts.data.test_loader
        if test_loader is not None and result.stop_reason not in ("diverged", "interrupted"):
            # Last: it may load best.pt's weights into the model.
            summary.update(_score_test(cfg, trainer, test_loader, result, kept / CHECKPOINT_DIR))
        if result.stop_reason != "interrupted":
            # (A stopped run goes on when resumed, and logs them then, at its real end: logged
            # now too, train/loss_best would show a point at the stop as well.)
            # (HParams shows the last value of every scalar: train/loss's is the final loss.)
            sink.log_hparams(
                select_hparams(flatten_hparams(raw_config), hparam_keys),
                {"train/loss_best": result.best_loss},
                step=result.steps,
            )
    finally:
        _close_sink(sink, run_dir)
    if main:
        _write_summary(run_dir, summary)
        log.info(format_summary(summary))
    if result.stop_reason == "diverged":
        raise TrainingDiverged(f"{result.message} {_lr_hint(cfg)}")
    if result.stop_reason == "interrupted":
        # Under torchrun a rank may stop because another rank got the signal: it exits as
        # if terminated, the way torchrun stops workers.
        signal_number = stop.signal_number or signal.SIGTERM
        again = f"the same command plus trainer.resume=auto hydra.run.dir={run_dir}"
        how = how_to_continue(
            result, again, "trainer.save_checkpoints=false", f": {again} starts the run afresh"
        )
        raise TrainingInterrupted(f"{result.message}; {how}", signal_number)
    return summary


def _find_lr(
    cfg: Config, parts: Components, sink: MetricSink, figure_dir: Path | None
) -> tuple[dict[str, Any], Components]:
    """lr_find.enabled: the range test on the run's own model, optimizer and batches (all put
    back afterwards), its figure (rank 0: `figure_dir`), and, with lr_find.apply, the parts
    with an optimizer and scheduler at the suggested lr. Returns summary.json's `lr_find`."""
    from gradtrain import lr_find

    def autocast() -> contextlib.AbstractContextManager[Any]:
        if cfg.trainer.precision == "bf16":
            return torch.autocast(parts.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    result = lr_find.range_test(
        parts.model,
        parts.loss_fn,
        parts.optimizer,
        parts.data.train_loader,
        parts.device,
        cfg.lr_find,
        autocast,
    )
    found = result.summary()
    suggested = result.suggested_lr
    log.info(
        "LR range test: %d steps from %g to %g; suggested lr %s.",
        found["steps"],
        result.min_lr,
        result.max_lr,
        "none (the loss never fell)" if suggested is None else f"{suggested:.3g}",
    )
    if figure_dir is not None:
        from gradtrain.insight.figures import matplotlib_available

        if matplotlib_available():
            png = lr_find.figure_png(result)
            write_atomic(figure_dir / LR_FIND_FIGURE, lambda file: file.write(png))
            sink.log_image("watch/lr_find", png, step=0)
        else:
            log.warning("lr_find.png skipped: matplotlib is not installed")
    if cfg.lr_find.apply:
        if suggested is None:
            log.warning(
                "lr_find.apply=true, but there is no suggestion: training with optimizer.lr=%g.",
                cfg.optimizer.lr,
            )
        else:
            parts = with_learning_rate(cfg, parts, suggested)
            found["applied"] = True
    return found, parts


def _score_test(
    cfg: Config, trainer: Trainer, loader: Any, result: FitResult, checkpoints: Path
) -> dict[str, Any]:
    """The test split, scored with best.pt's weights when this run wrote one (else the last
    ones): summary.json's test_loss (and test_accuracy), logged as test/loss (test/accuracy)."""
    weights = None
    best = result.best_checkpoint
    if best is not None and is_main_process():
        path = checkpoints / BEST
        payload = load_checkpoint(path) if path.is_file() else None
        # (A best.pt of another session of this folder, one that left no last.pt, is not it.)
        if payload is not None and payload["step"] == best["step"]:
            weights = payload["model"]
    weights = broadcast_from_main(weights)  # under torchrun, every rank scores its shard
    if weights is not None:
        trainer.module.load_state_dict(weights)
    max_batches = 1 if cfg.trainer.fast_dev_run else None
    metrics = trainer.evaluate(loader, max_batches=max_batches)
    trainer.sink.log_scalars({f"test/{k}": v for k, v in metrics.items()}, step=result.steps)
    scored = {f"test_{k}": v for k, v in metrics.items()}
    scored["test_weights"] = f"{BEST} (step {best['step']})" if weights is not None else "last"
    return _json_safe(scored)  # type: ignore[no-any-return]


def how_to_continue(result: FitResult, again: str, unsaved: str, afresh: str = "") -> str:
    """The stop message's second half: what was saved, and how to continue (`again`: the
    command or call that does; `unsaved`: the setting that saved nothing, when nothing was;
    `afresh`: what to say then)."""
    last = result.last_checkpoint_step
    if last is not None and last == result.steps:
        return f"checkpoint saved. Continue with {again}"
    if last is not None:
        return f"no checkpoint at this step; {again} continues from step {last}"
    return f"no checkpoint was saved ({unsaved}), so nothing can be continued{afresh}"


def _reported(exc: BaseException, trainer: Trainer, run_dir: Path) -> BaseException:
    """What the user is told about an exception that ended training: a message for a second
    Ctrl-C and for a file that could not be written (a full disk), else `exc` itself."""
    last = trainer.state.last_checkpoint_step
    kept = f"the last checkpoint is from step {last}" if last is not None else "no checkpoint"
    if isinstance(exc, KeyboardInterrupt):
        return TrainingInterrupted(
            f"stopped at once by a second Ctrl-C after step {trainer.state.step}; {kept} "
            f"(continue with the same command plus trainer.resume=auto hydra.run.dir={run_dir})",
            signal.SIGINT,
        )
    if isinstance(exc, OSError):
        where = exc.filename or run_dir
        return GradtrainError(f"could not write {where}: {os_error_text(exc)}; {kept}.")
    return exc


def _write_summary(run_dir: Path, summary: Mapping[str, Any], failing: bool = False) -> None:
    """summary.json. When the disk is full, say so: as an error of its own, or (`failing`:
    while reporting another error, which matters more) as a log line."""
    try:
        write_json_atomic(run_dir / SUMMARY_FILE, summary)
    except OSError as exc:
        _write_failed(f"could not write {run_dir / SUMMARY_FILE}", exc, failing)


def _close_sink(sink: MetricSink, run_dir: Path) -> None:
    """Flush and close the logger; a write that fails then (a full disk) is an error naming
    the folder, or only a log line while another error is on its way to the user."""
    failing = sys.exc_info()[1] is not None
    try:
        sink.close()
    except OSError as exc:
        _write_failed(f"could not write to {run_dir / TENSORBOARD_DIR}", exc, failing)


def _write_failed(what: str, exc: OSError, failing: bool) -> None:
    """A write that failed (a full disk): an error of its own, or, while another error is on
    its way to the user (which matters more), a log line."""
    message = f"{what}: {os_error_text(exc)}"
    if failing:
        log.error("gradtrain: %s", message)
        return
    raise GradtrainError(message) from exc


def _load_into(trainer: Trainer, checkpoint: dict[str, Any], path: Path) -> None:
    """The checkpoint's state into the trainer, or a CheckpointError naming the file: its
    entries are well-formed (`resume_problems`), but they may not fit this model, optimizer
    or data (a checkpoint from before configs were stored in them, or one edited by hand)."""
    position, batches = checkpoint["batch_in_epoch"], trainer.batches_per_epoch
    if position > batches:
        raise CheckpointError(
            f"{path} cannot be resumed: batch_in_epoch={position}, but an epoch of this run "
            f"has {batches} batches (did the data change?)"
        )
    try:
        trainer.load_state_dict(checkpoint)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        # (load_state_dict's first line only says that there are errors; the next names one.)
        detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])
        raise CheckpointError(
            f"{path} does not fit this run ({type(exc).__name__}: {detail[:300]}); resume it "
            "with the config it was saved with, or start afresh"
        ) from None


# ---------------------------------------------------------------- does a resume continue this run
# Keys a resumed run may change: how long it trains, how often it logs, validates and saves,
# where it runs, and what it reports. Any other key changes what is trained (the data, the
# model, the update), so a resume with another value is refused. (A prefix ending in "." stands
# for a whole section.)
MAY_CHANGE_ON_RESUME = (
    "trainer.max_steps",
    "trainer.max_epochs",
    "trainer.tolerance",
    "trainer.log_every_n_steps",
    "trainer.val_every_n_epochs",
    "trainer.save_checkpoints",
    "trainer.checkpoint_every_n_steps",
    "trainer.keep_checkpoints",
    "trainer.resume",
    "trainer.progress_bar",
    "trainer.monitor",
    "trainer.mode",
    "trainer.early_stopping.",
    "trainer.val_every_n_steps",
    "trainer.limit_val_batches",
    "trainer.device",
    "trainer.dist_timeout_s",
    "trainer.detect_anomaly",
    "dataset.num_workers",
    "dataset.pin_memory",
    "dataset.test_path",
    "lr_find.",
    "logger.",
    "explain",
    "landscape.",
)


def _may_change(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in MAY_CHANGE_ON_RESUME)


def _check_same_training(cfg: Config, checkpoint: Mapping[str, Any], path: Path) -> None:
    """Refuse to resume `checkpoint` under a config that trains something else (every
    differing key, with both values); a checkpoint without a stored config is resumed with a
    warning that it cannot be compared."""
    saved = checkpoint.get("config")
    if saved is None:
        log.warning(
            "%s stores no config (saved by an earlier gradtrain): it cannot be compared with "
            "this run's, so make sure the command is the one that started the run.",
            path,
        )
        return
    differences, unknown = config_differences(saved, cfg.model_dump(mode="json"))
    for key in unknown:
        log.warning("%s: not in both configs (another gradtrain version?), not compared.", key)
    if differences:
        allowed = ", ".join(k + ("*" if k.endswith(".") else "") for k in MAY_CHANGE_ON_RESUME)
        raise ResumeConfigMismatch(str(path), differences, allowed)


def config_differences(
    saved: Mapping[str, Any], now: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """(one line per key a resume may not change that differs: `optimizer.lr: 0.1 in the
    checkpoint, 0.001 now`; the keys only one side has, outside sections whose `name`
    differs, which a change of gradtrain's schema explains)."""
    old, new = flattened(saved), flattened(now)
    renamed = {
        key.rsplit(".", 1)[0]
        for key in old.keys() & new.keys()
        if key.endswith(".name") and old[key] != new[key]
    }
    differences, unknown = [], []
    for key in sorted(old.keys() | new.keys()):
        if _may_change(key):
            continue
        if key in old and key in new:
            if old[key] != new[key]:
                differences.append(
                    f"{key}: {_show(old[key])} in the checkpoint, {_show(new[key])} now"
                )
        elif key.rsplit(".", 1)[0] not in renamed:
            unknown.append(key)
    return differences, unknown


def _show(value: Any) -> str:
    """A value as the config spells it (null, true, [32, 32]); numbers and text as they are."""
    if value is None or isinstance(value, bool | list | tuple):
        return json.dumps(value)
    return str(value)


def fit_and_report(
    trainer: Trainer,
    stop: contextlib.AbstractContextManager[Any],
    run_dir: Path,
    write_summary: bool,
) -> FitResult:
    """`trainer.fit()` inside `stop` (the signal handlers); a run that fails or is interrupted
    leaves a summary.json saying so (when `write_summary`), and the error raised is the one
    its message is for (a stop request, a divergence) rather than whatever surfaced."""
    try:
        with stop:
            return trainer.fit()
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        reported = _reported(exc, trainer, run_dir)
        error = str(reported) if reported is not exc else f"{type(exc).__name__}: {exc}"
        failed = {"status": status, "error": error, "steps": trainer.state.step}
        if write_summary:
            _write_summary(run_dir, failed, failing=True)
        if reported is not exc:
            raise reported from (None if isinstance(exc, KeyboardInterrupt) else exc)
        raise


def _explain(
    trainer: Trainer, sink: MetricSink, run_dir: Path, cfg: Config | None = None
) -> dict[str, Any]:
    """explain=true: autograd on this run's model and first batch, printed, written to
    explain.md and logged as text. Returns the gradient check for the summary; a failed check
    stops the run before training."""
    lr = float(trainer.optimizer.param_groups[0]["lr"])
    batch = explain_batch(trainer.train_loader, trainer.device)
    report = explain(trainer.module, trainer.loss_fn, batch, lr=lr)
    markdown = report.to_markdown()
    if cfg is not None and cfg.loss.name == "quadratic_form":  # (None: fit() of user code)
        markdown += "\n" + rate_table_markdown(cfg)
    log.info(markdown)
    write_atomic(run_dir / EXPLAIN_FILE, lambda file: file.write(markdown.encode()))
    sink.log_text("explain", markdown)
    check = report.gradient_check
    if not check.passed:
        error = GradientCheckError(
            f"gradient check FAILED: autograd's gradient is up to {check.max_abs_error:.3g} "
            f"(relative {check.max_rel_error:.3g}) away from a reference, beyond the tolerance "
            f"{check.atol:g} + {check.rtol:g} * |reference|; see {run_dir / EXPLAIN_FILE}"
        )
        failed = {"status": "failed", "error": str(error), "steps": 0}
        _write_summary(run_dir, {**failed, "gradient_check": check.summary()}, failing=True)
        raise error
    return check.summary()


def _lr_hint(cfg: Config) -> str:
    lr = cfg.optimizer.lr
    return f"Lower the learning rate (optimizer.lr={lr:g}; try optimizer.lr={lr / 10:g})."


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _agree_on_start(resume: str | None, run_dir: Path, claim: contextlib.ExitStack) -> Start:
    """How the run starts (`Start`), as rank 0 decides it, holding `run_dir` from then on.

    Single-process: `run_dir` itself, after the checks. Under torchrun each rank's Hydra made
    its own `run_dir`; rank 0's is the run's, and its decision (or its refusal, raised on every
    rank) reaches all ranks, so none of them waits for a rank that already gave up.
    """
    decision: Start | GradtrainError | None = None
    if is_main_process():
        try:
            if resume not in (None, "auto") and not Path(resume).is_file():
                what = "not a file" if Path(resume).exists() else "no such checkpoint file"
                raise CheckpointError(f"trainer.resume={resume}: {what}")
            # Claimed before looking: of two runs started together, the second then sees the
            # first one's claim (and after it ended, its results), never a half-written folder.
            _claim(run_dir, claim)
            decision = _decide_start(resume, run_dir)
        except GradtrainError as exc:
            decision = exc
    decision = broadcast_from_main(decision)
    if isinstance(decision, GradtrainError):
        raise decision
    assert decision is not None
    return decision


def _claim(run_dir: Path, claim: contextlib.ExitStack) -> None:
    """`claim_folder(run_dir)`, held until `claim` closes; its refusals as messages."""
    try:
        claim.enter_context(claim_folder(run_dir))
    except FolderInUse as exc:
        raise GradtrainError(
            f"{run_dir} is in use by {exc.holder}; gradtrain will not let two runs write into "
            "one folder. Wait for it to end (then add trainer.resume=auto to continue it), or "
            "choose another hydra.run.dir (leave it unset for a fresh folder)."
        ) from None
    except NoLocking as exc:
        log.warning(
            "Cannot lock %s (%s): a second run started in it would not be refused.", run_dir, exc
        )
    except (FileExistsError, NotADirectoryError):
        raise GradtrainError(
            f"hydra.run.dir={run_dir} is a file (or lies under one), not a folder; choose "
            "another hydra.run.dir (leave it unset for a fresh folder)."
        ) from None
    except OSError as exc:
        raise GradtrainError(
            f"cannot write into {run_dir}: {os_error_text(exc)}; choose a writable "
            "hydra.run.dir (leave it unset for a fresh folder)."
        ) from None


def _decide_start(resume: str | None, run_dir: Path) -> Start:
    """Where to start: from scratch, or from which checkpoint; refusing whatever would
    overwrite a run this folder already holds."""
    earlier = _earlier_run(run_dir)
    checkpoints = run_dir / CHECKPOINT_DIR
    if resume is None:
        if earlier is not None:
            resumable = resume_checkpoint_in(checkpoints) is not None
            then = "to continue it" if resumable else "to start it afresh (it left no checkpoint)"
            raise GradtrainError(
                f"{run_dir} already holds a run ({earlier}); gradtrain will not overwrite it. "
                f"Add trainer.resume=auto {then}, or choose another hydra.run.dir (leave it "
                "unset for a fresh folder)."
            )
        return Start(run_dir, None)
    if resume != "auto":
        path = Path(resume)
        if earlier is not None and path.resolve().parent != checkpoints.resolve():
            raise GradtrainError(
                f"{run_dir} already holds a run ({earlier}); trainer.resume={resume} would "
                "continue another folder's checkpoint here and overwrite it. Continue that "
                "checkpoint in a new hydra.run.dir (leave it unset for a fresh folder), or "
                "use trainer.resume=auto to continue the run this folder holds."
            )
        return Start(run_dir, path)
    found = resume_checkpoint_in(checkpoints)
    if found is not None:
        return Start(run_dir, found)
    if earlier is None:
        return Start(run_dir, None)  # nothing there yet: the first session of the run
    status = _summary_status(run_dir)
    if status in ("completed", "diverged"):
        raise GradtrainError(
            f"{run_dir} holds a {status} run but no checkpoint to continue it from "
            "(trainer.save_checkpoints=false?); gradtrain will not overwrite it. Choose "
            "another hydra.run.dir (leave it unset for a fresh folder)."
        )
    # Killed, interrupted or failed before its first checkpoint: nothing to continue.
    log.warning(
        "%s holds a run that stopped before its first checkpoint (%s): there is nothing to "
        "continue, so it starts afresh (TensorBoard hides the earlier session's curves).",
        run_dir,
        f"summary.json: {status}" if status else "no summary: it was killed",
    )
    return Start(run_dir, None, hide_earlier_events=True)


def _earlier_run(run_dir: Path) -> str | None:
    """What shows that `run_dir` holds (part of) a run already, or None. Hydra's own `.hydra/`
    and `train.log` do not count: Hydra writes them before every run."""
    if (run_dir / SUMMARY_FILE).exists():
        return SUMMARY_FILE
    checkpoints = run_dir / CHECKPOINT_DIR
    if resume_checkpoint_in(checkpoints) is not None:
        return str(Path(CHECKPOINT_DIR) / "*.pt")
    if any((run_dir / TENSORBOARD_DIR).glob("**/events.out.tfevents.*")):
        return f"{TENSORBOARD_DIR}/ events"
    return None


def _summary_status(run_dir: Path) -> str | None:
    """The `status` in `run_dir`'s summary.json, or None (none, or unreadable)."""
    try:
        status = json.loads((run_dir / SUMMARY_FILE).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    return status if isinstance(status, str) else None


def _summary(
    logger: LoggerConfig, result: FitResult, model: torch.nn.Module, run_dir: Path
) -> dict[str, Any]:
    status = {"diverged": "diverged", "interrupted": "interrupted", "pruned": "pruned"}.get(
        result.stop_reason, "completed"
    )
    summary: dict[str, Any] = {
        "status": status,
        "stop_reason": result.stop_reason,
        "final_loss": result.final_loss,
        "best_loss": result.best_loss,
        "steps": result.steps,
        "epochs": result.epochs,
        "wall_s": round(result.wall_s, 6),
        "steps_per_s": _steps_per_s(result),
        # Time that does not grow with the steps, kept out of steps_per_s: each session's first
        # update (torch.optim's first step imports torch._dynamo) and the figures at the end.
        "one_time_s": {"first_step": round(result.first_step_s, 6)},
        "grad_norm": result.grad_norm,
    }
    for key in ("val_loss", "val_accuracy", "train_accuracy", "train_loss_epoch"):
        if getattr(result, key) is not None:
            summary[key] = getattr(result, key)
    if isinstance(model, VectorModel):
        summary["params"] = model.x.detach().cpu().tolist()
    if result.message is not None:
        summary["message"] = result.message
    if result.diverged_at_step is not None:
        # `steps` counts the updates applied; the guard reads values back in batches, so the
        # run may have gone on past the update that went wrong.
        summary["diverged_at_step"] = result.diverged_at_step
    summary["last_checkpoint_step"] = result.last_checkpoint_step
    summary["run_dir"] = str(run_dir)
    if logger.name == "tensorboard":
        summary["tensorboard_dir"] = str(run_dir / TENSORBOARD_DIR)
    return _json_safe(summary)


def _steps_per_s(result: FitResult) -> float | None:
    """The rate of the updates after each session's first (whose one-time costs would make a
    short run look slow), or None when there are none."""
    steps = result.steps - result.first_steps
    seconds = result.wall_s - result.first_step_s
    return round(steps / seconds, 3) if steps > 0 and seconds > 0 else None


def _json_safe(value: Any) -> Any:
    """NaN and infinity become null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def format_summary(summary: Mapping[str, Any]) -> str:
    def number(key: str, spec: str) -> str:
        value = summary.get(key)
        return "non-finite" if value is None else format(value, spec)

    rate = summary.get("steps_per_s")
    rate_text = f" ({rate:.0f} steps/s)" if rate is not None else ""
    lines = [
        f"{summary['status'].capitalize()} after {summary['wall_s']:.2f} s: "
        f"{summary['steps']} steps{rate_text}, "
        f"{summary['epochs']} epochs, stopped at {summary['stop_reason']}.",
        f"  final loss  {number('final_loss', '.8g')}",
        f"  best loss   {number('best_loss', '.8g')}",
        f"  grad norm   {number('grad_norm', '.3g')}",
    ]
    for key, label in (
        ("train_loss_epoch", "epoch loss"),
        ("val_loss", "val loss"),
        ("train_accuracy", "train acc"),
        ("val_accuracy", "val acc"),
        ("test_loss", "test loss"),
        ("test_accuracy", "test acc"),
    ):
        if key in summary:
            lines.append(f"  {label:<11} {number(key, '.6g')}")
    if "best_checkpoint" in summary:
        best = summary["best_checkpoint"]
        lines.append(
            f"  best        {best['metric']} {best['value']:.6g} at step {best['step']} "
            f"({Path(CHECKPOINT_DIR) / BEST})"
        )
    if "lr_find" in summary:
        suggested = summary["lr_find"]["suggested_lr"]
        shown = "none" if suggested is None else f"{suggested:.3g}"
        applied = " (applied)" if summary["lr_find"].get("applied") else ""
        lines.append(f"  lr_find     suggested lr {shown}{applied} ({LR_FIND_FIGURE})")
    if "params" in summary:
        values = summary["params"]
        shown = ", ".join("non-finite" if v is None else f"{v:.6g}" for v in values[:10])
        lines.append(f"  x           [{shown}{', ...' if len(values) > 10 else ''}]")
    convergence = summary.get("convergence")
    if convergence is not None and convergence["measured_rate"] is not None:
        theory = convergence["theoretical_rate"]
        expected = f"{theory:.6g}" if theory is not None else "no closed form"
        lines.append(f"  rate        {convergence['measured_rate']:.6g} (theory: {expected})")
    one_time = summary.get("one_time_s") or {}
    if one_time:
        parts = ", ".join(
            f"{key.replace('_', ' ')} {value:.2f} s" for key, value in one_time.items()
        )
        lines.append(f"  one-time    {parts}")
    if "tensorboard_dir" in summary:
        lines.append(f"  logs        {summary['tensorboard_dir']}")
    lines.append(f"  summary     {Path(summary['run_dir']) / SUMMARY_FILE}")
    return "\n".join(lines)


def flatten_hparams(config: Mapping[str, Any], prefix: str = "") -> dict[str, HParamValue]:
    """Dotted keys with TensorBoard-friendly values: lists become text, null becomes "null"."""
    flat: dict[str, HParamValue] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_hparams(value, prefix=f"{name}."))
        elif value is None:
            flat[name] = "null"
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def _as_yaml(config: Mapping[str, Any]) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(dict(config))).rstrip()
