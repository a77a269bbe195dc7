"""One job of a Hydra sweep (`python train.py -m ...`): it never raises.

Hydra's basic sweeper re-raises the first failed job's exception once its batch is done, which
ends the sweep before the end-of-sweep callbacks run (and Optuna's sweeper does the same beyond its
failure rate). So a job records its failure in its own `summary.json`, logs the reason, and
returns no value; the sweep summary (`trainer/sweeps/summary.py`) then reports it and makes
the sweep exit non-zero.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from gradtrain.errors import GradtrainError
from gradtrain.files import write_json_atomic
from gradtrain.sweeps.monitor import monitored_value

log = logging.getLogger("gradtrain")


def run_sweep_job(
    raw_config: Mapping[str, Any], run_dir: Path, hparam_keys: Collection[str] | None = None
) -> float | None:
    """Run one job; return its monitored metric, or None when it failed or diverged.
    `hparam_keys`: the keys it was swept over, which alone go to the HParams tab.

    None, not NaN: Optuna's sweeper records a value that is not a number as a failed trial and
    carries on, whereas a NaN makes hydra-optuna-sweeper 1.2/1.3 crash the whole search (its
    failure path hands the NaN back to `study.tell`, which refuses values for failed trials).
    """
    from gradtrain.run import SUMMARY_FILE, run

    try:
        summary = run(raw_config, run_dir, hparam_keys=hparam_keys)
    except Exception as exc:
        if isinstance(exc, GradtrainError):
            reason = str(exc)
        else:  # a bug or a numerical error: its traceback goes to the console and train.log
            reason = f"{type(exc).__name__}: {exc}"
            log.exception("Traceback of the failed job:")
        log.error(f"gradtrain: job failed: {reason}")
        # run() writes a failed summary when training itself fails; a config error stops it
        # before anything is written, and the sweep summary must still learn why.
        if not (run_dir / SUMMARY_FILE).exists():
            write_json_atomic(run_dir / SUMMARY_FILE, {"status": "failed", "error": reason})
        return None
    value = monitored_value(summary)
    if summary.get("status") == "pruned":
        log.info(f"gradtrain: trial pruned: {summary.get('message')}")
    elif value is None:
        name = summary.get("monitor", "final_loss")
        log.error(
            f"gradtrain: job {summary['status']} without a finite {name}: {summary.get(name)}"
        )
    return value
