"""One run: validate the composed config, build the pieces, fit, report.

`train.py` hands this module a plain dict and the run directory; it never sees Hydra objects, so
tests and notebooks can call `run()` directly.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gradtrain.build import (
    build,
    build_parameter_stats,
    build_sink,
    build_trainer,
    resolve_device,
)
from gradtrain.checkpoint import (
    LAST,
    CheckpointWriter,
    NullCheckpointWriter,
    load_checkpoint,
)
from gradtrain.config import Config, validate_config
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
    TrainingDiverged,
    TrainingInterrupted,
)
from gradtrain.files import write_atomic, write_json_atomic
from gradtrain.insight.explain import explain, explain_batch
from gradtrain.insight.figures import TrajectoryFigures
from gradtrain.loop import FitResult, Trainer
from gradtrain.metrics.sinks import HParamValue, MetricSink, NullSink
from gradtrain.models import VectorModel
from gradtrain.signals import SignalStop
from gradtrain.sweeps.monitor import choose_monitor

log = logging.getLogger("gradtrain")

SUMMARY_FILE = "summary.json"
EXPLAIN_FILE = "explain.md"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_DIR = "checkpoints"


def run(raw_config: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train as `raw_config` says, writing logs, checkpoints and `summary.json` into `run_dir`.

    Returns the summary. Raises ConfigError (invalid config) or GradtrainError (a problem the
    user can fix) before anything is written; TrainingDiverged or TrainingInterrupted after
    writing the summary of a run that stopped early.

    Under torchrun every process calls this; they join one process group for the run, and
    only rank 0 writes (into its `run_dir`, which becomes every rank's).
    """
    cfg = validate_config(raw_config)
    with process_group(resolve_device(cfg.trainer.device), cfg.trainer.dist_timeout_s):
        return _run(cfg, raw_config, run_dir)


def _run(cfg: Config, raw_config: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    main = is_main_process()
    run_dir, resume_from = _agree_on_start(cfg.trainer.resume, run_dir)
    # Every rank loads the checkpoint itself (on several nodes: from a shared file system).
    checkpoint = load_checkpoint(resume_from) if resume_from is not None else None
    seed_everything(cfg.seed)
    # Built before anything is written: what refuses the config only once the data is known (a
    # CSV, a size, an epoch without a batch) leaves the run folder as it was.
    parts = build(cfg)
    checkpointer: CheckpointWriter | NullCheckpointWriter | None = None
    if cfg.trainer.save_checkpoints:
        checkpointer = (
            CheckpointWriter(run_dir / CHECKPOINT_DIR, keep=cfg.trainer.keep_checkpoints)
            if main
            else NullCheckpointWriter()
        )
    resumed_step = checkpoint["step"] if checkpoint is not None else None
    # Steps after the checkpoint's are redone; TensorBoard drops what the killed session logged
    # for them, keeping the checkpoint's own step.
    purge_step = resumed_step + 1 if resumed_step is not None else None
    sink = (
        build_sink(cfg.logger, run_dir / TENSORBOARD_DIR, purge_step=purge_step)
        if main
        else NullSink()
    )
    parts.parameter_stats = build_parameter_stats(cfg.logger, sink, parts.module)
    stop = SignalStop()
    device = local_device(resolve_device(cfg.trainer.device))
    stop_request = (
        CollectiveStop(stop, device, every=cfg.trainer.log_every_n_steps)
        if is_distributed()
        else stop
    )
    try:
        figures = TrajectoryFigures.for_run(cfg, parts, sink) if main else None
        trainer = build_trainer(
            cfg,
            sink,
            checkpointer=checkpointer,
            stop_request=stop_request,
            trajectory=figures.trajectory if figures is not None else None,
            components=parts,
        )
        if checkpoint is not None:
            trainer.load_state_dict(checkpoint)
            log.info("Resuming from %s at step %d.", resume_from, resumed_step)
        else:
            sink.log_text("config", "```yaml\n" + _as_yaml(raw_config) + "\n```")
        # The explanation describes a run's start, so a resumed run does not repeat it.
        explained = cfg.explain and checkpoint is None and main
        gradient_check = _explain(trainer, sink, run_dir) if explained else None
        try:
            with stop:
                result = trainer.fit()
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            error = f"{type(exc).__name__}: {exc}"
            failed = {"status": status, "error": error, "steps": trainer.state.step}
            if main:
                write_json_atomic(run_dir / SUMMARY_FILE, failed)
            raise
        summary = _summary(cfg, result, trainer.module, run_dir)
        summary["monitor"] = choose_monitor(cfg.trainer.monitor, summary)
        if gradient_check is not None:
            summary["gradient_check"] = gradient_check
        if figures is not None:
            figures.finish(result.steps, run_dir)
        sink.log_hparams(
            flatten_hparams(raw_config),
            {"summary/final_loss": result.final_loss, "summary/best_loss": result.best_loss},
            step=result.steps,
        )
    finally:
        sink.close()
    if main:
        write_json_atomic(run_dir / SUMMARY_FILE, summary)
        log.info(format_summary(summary))
    if result.stop_reason == "diverged":
        raise TrainingDiverged(f"{result.message} {_lr_hint(cfg)}")
    if result.stop_reason == "interrupted":
        # Under torchrun a rank may stop because another rank got the signal: it exits as
        # if terminated, the way torchrun stops workers.
        signal_number = stop.signal_number or signal.SIGTERM
        raise TrainingInterrupted(
            f"{result.message}; checkpoint saved. Continue with the same command plus "
            f"trainer.resume=auto hydra.run.dir={run_dir}",
            signal_number,
        )
    return summary


def _explain(trainer: Trainer, sink: MetricSink, run_dir: Path) -> dict[str, Any]:
    """explain=true: autograd on this run's model and first batch, printed, written to
    explain.md and logged as text. Returns the gradient check for the summary; a failed check
    stops the run before training."""
    lr = float(trainer.optimizer.param_groups[0]["lr"])
    batch = explain_batch(trainer.train_loader, trainer.device)
    report = explain(trainer.module, trainer.loss_fn, batch, lr=lr)
    markdown = report.to_markdown()
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
        write_json_atomic(run_dir / SUMMARY_FILE, {**failed, "gradient_check": check.summary()})
        raise error
    return check.summary()


def _lr_hint(cfg: Config) -> str:
    lr = cfg.optimizer.lr
    return f"Lower the learning rate (optimizer.lr={lr:g}; try optimizer.lr={lr / 10:g})."


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _agree_on_start(resume: str | None, run_dir: Path) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint to resume from (or None), as rank 0 decides them.

    Single-process: `run_dir` itself, after the checks. Under torchrun each rank's Hydra made
    its own `run_dir`; rank 0's is the run's, and its decision (or its refusal, raised on every
    rank) reaches all ranks, so none of them waits for a rank that already gave up.
    """
    decision: tuple[Path, Path | None] | GradtrainError | None = None
    if is_main_process():
        try:
            resume_from = _resume_path(resume, run_dir)
            if resume_from is None:
                _refuse_to_overwrite(run_dir)
            decision = (run_dir, resume_from)
        except GradtrainError as exc:
            decision = exc
    decision = broadcast_from_main(decision)
    if isinstance(decision, GradtrainError):
        raise decision
    assert decision is not None
    return decision


def _resume_path(resume: str | None, run_dir: Path) -> Path | None:
    if resume is None:
        return None
    if resume == "auto":
        last = run_dir / CHECKPOINT_DIR / LAST
        return last if last.exists() else None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"trainer.resume={resume}: no such checkpoint file")
    return path


def _refuse_to_overwrite(run_dir: Path) -> None:
    for earlier in (run_dir / SUMMARY_FILE, run_dir / CHECKPOINT_DIR / LAST):
        if earlier.exists():
            raise GradtrainError(
                f"{run_dir} already holds a run ({earlier.relative_to(run_dir)}); gradtrain "
                "will not overwrite it. Add trainer.resume=auto to continue it, or choose "
                "another hydra.run.dir (leave it unset for a fresh folder)."
            )


def _summary(
    cfg: Config, result: FitResult, model: torch.nn.Module, run_dir: Path
) -> dict[str, Any]:
    status = {"diverged": "diverged", "interrupted": "interrupted"}.get(
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
        "steps_per_s": round(result.steps / result.wall_s, 3) if result.wall_s > 0 else None,
        "grad_norm": result.grad_norm,
    }
    for key in ("val_loss", "val_accuracy", "train_accuracy"):
        if getattr(result, key) is not None:
            summary[key] = getattr(result, key)
    if isinstance(model, VectorModel):
        summary["params"] = model.x.detach().cpu().tolist()
    if result.message is not None:
        summary["message"] = result.message
    summary["last_checkpoint_step"] = result.last_checkpoint_step
    summary["run_dir"] = str(run_dir)
    if cfg.logger.name == "tensorboard":
        summary["tensorboard_dir"] = str(run_dir / TENSORBOARD_DIR)
    return _json_safe(summary)


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

    lines = [
        f"{summary['status'].capitalize()} after {summary['wall_s']:.2f} s: "
        f"{summary['steps']} steps ({number('steps_per_s', '.0f')} steps/s), "
        f"{summary['epochs']} epochs, stopped at {summary['stop_reason']}.",
        f"  final loss  {number('final_loss', '.8g')}",
        f"  best loss   {number('best_loss', '.8g')}",
        f"  grad norm   {number('grad_norm', '.3g')}",
    ]
    for key, label in (
        ("val_loss", "val loss"),
        ("train_accuracy", "train acc"),
        ("val_accuracy", "val acc"),
    ):
        if key in summary:
            lines.append(f"  {label:<11} {number(key, '.6g')}")
    if "params" in summary:
        values = summary["params"]
        shown = ", ".join("non-finite" if v is None else f"{v:.6g}" for v in values[:10])
        lines.append(f"  x           [{shown}{', ...' if len(values) > 10 else ''}]")
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
