"""One run: validate the composed config, build the pieces, fit, report.

`train.py` hands this module a plain dict and the run directory; it never sees Hydra objects, so
tests and notebooks can call `run()` directly.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from trainer.build import build_sink, build_trainer
from trainer.config import Config, validate_config
from trainer.errors import GradtrainError
from trainer.files import write_json_atomic
from trainer.loop import FitResult
from trainer.models import VectorModel
from trainer.objective import choose_objective
from trainer.sinks import HParamValue

log = logging.getLogger("gradtrain")

SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"


def run(raw_config: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train as `raw_config` says, writing logs and `summary.json` into `run_dir`.

    Returns the summary. Raises ConfigError (invalid config) or GradtrainError (a problem the
    user can fix) before anything is written.
    """
    cfg = validate_config(raw_config)
    _refuse_to_overwrite(run_dir)
    seed_everything(cfg.seed)
    sink = build_sink(cfg.logger, run_dir / TENSORBOARD_DIR)
    try:
        trainer = build_trainer(cfg, sink)
        sink.log_text("config", "```yaml\n" + _as_yaml(raw_config) + "\n```")
        try:
            result = trainer.fit()
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            failed = {"status": "failed", "error": error, "steps": trainer.state.step}
            write_json_atomic(run_dir / SUMMARY_FILE, failed)
            raise
        summary = _summary(cfg, result, trainer.model, run_dir)
        summary["objective"] = choose_objective(cfg.trainer.objective, summary)
        sink.log_hparams(
            flatten_hparams(raw_config),
            {"summary/final_loss": result.final_loss, "summary/best_loss": result.best_loss},
            step=result.steps,
        )
    finally:
        sink.close()
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
    log.info(format_summary(summary))
    return summary


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _refuse_to_overwrite(run_dir: Path) -> None:
    if (run_dir / SUMMARY_FILE).exists():
        raise GradtrainError(
            f"{run_dir} already holds a finished run ({SUMMARY_FILE}); gradtrain will not "
            "overwrite it. Choose another hydra.run.dir, or leave it unset for a fresh folder."
        )


def _summary(
    cfg: Config, result: FitResult, model: torch.nn.Module, run_dir: Path
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "status": "completed",
        "stop_reason": result.stop_reason,
        "final_loss": result.final_loss,
        "best_loss": result.best_loss,
        "steps": result.steps,
        "epochs": result.epochs,
        "wall_s": round(result.wall_s, 6),
        "steps_per_s": round(result.steps / result.wall_s, 3) if result.wall_s > 0 else None,
        "grad_norm": result.grad_norm,
    }
    if isinstance(model, VectorModel):
        summary["params"] = model.x.detach().cpu().tolist()
    summary["run_dir"] = str(run_dir)
    if cfg.logger.name == "tensorboard":
        summary["tensorboard_dir"] = str(run_dir / TENSORBOARD_DIR)
    return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    lines = [
        f"Finished in {summary['wall_s']:.2f} s: {summary['steps']} steps "
        f"({summary['steps_per_s']:.0f} steps/s), {summary['epochs']} epochs, "
        f"stopped at {summary['stop_reason']}.",
        f"  final loss  {summary['final_loss']:.8g}",
        f"  best loss   {summary['best_loss']:.8g}",
        f"  grad norm   {summary['grad_norm']:.3g}",
    ]
    if "params" in summary:
        shown = ", ".join(f"{v:.6g}" for v in summary["params"][:10])
        more = ", ..." if len(summary["params"]) > 10 else ""
        lines.append(f"  x           [{shown}{more}]")
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
