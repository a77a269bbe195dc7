"""The table that closes a sweep: one row per job, best monitored metric first, written to
`<sweep dir>/sweep_summary.csv` and `sweep_summary.md` and printed.

`SweepSummary` is a Hydra callback (`hydra.callbacks.sweep_summary` in configs/config.yaml). It
reads the jobs' folders (`.hydra/hydra.yaml`, `summary.json`) rather than the launcher's
in-memory results, so it works the same whichever launcher ran the jobs: in this process, in
joblib workers, or on SLURM nodes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from gradtrain.files import write_atomic
from gradtrain.sweeps.monitor import choose_monitor, monitor_mode, monitored_value

SUMMARY_CSV = "sweep_summary.csv"
SUMMARY_MD = "sweep_summary.md"
JOB_SUMMARY = "summary.json"  # trainer.run.SUMMARY_FILE, without importing torch here

# Hydra ignores what a sweep returns and turns exceptions raised in callbacks into warnings, so
# the jobs that did not complete in the sweep that ended last in this process are kept here, and
# train.py exits with `sweep_exit_status()`.
_unsuccessful_jobs: list[str] = []
# Jobs (by number) that another worker of the same Optuna search is still running when this one
# ends: without a summary.json yet, they are not failures (set by the sweeper, read once).
_running_jobs: set[int] = set()
# A trial the search's pruner stopped is an outcome of the search, not a failure.
FINE_STATUSES = ("completed", "pruned", "running")


@dataclass
class JobRow:
    job: str  # the job's folder, relative to the sweep folder
    number: int | None  # hydra.job.num
    overrides: list[str]
    status: str  # completed, failed, diverged (or any other status summary.json states)
    monitor: str | None  # the summary key the job is judged by, e.g. final_loss
    monitored_value: float | None  # None unless completed with a finite value
    final_loss: float | None = None
    best_loss: float | None = None
    val_metrics: dict[str, float] = field(default_factory=dict)  # every val_* in summary.json
    steps: int | None = None
    wall_s: float | None = None
    reason: str = ""  # why it stopped: the stop reason, or the error
    mode: str = "min"  # the monitored metric is better lower (min) or higher (max)


class SweepSummary(Callback):
    """Claims a fresh folder when a sweep starts; writes and prints the table when it ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.sweeper.get("resume"):
            return  # continuing (or joining) a search in its folder; the sweeper checks it
        claim_sweep_dir(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_rows(sweep_dir)
        _running_jobs.clear()
        table = markdown_table([row for row in rows if row.status != "pruned"])
        pruned = [row for row in rows if row.status == "pruned"]
        if pruned:
            table += (
                f"\n## Pruned trials\n\n{len(pruned)} trials stopped early by the search's "
                "pruner (their val_* columns hold the value at the stop):\n\n"
                + markdown_table(pruned)
            )
        write_atomic(sweep_dir / SUMMARY_CSV, lambda file: file.write(csv_text(rows).encode()))
        write_atomic(sweep_dir / SUMMARY_MD, lambda file: file.write(table.encode()))
        monitors = " / ".join(sorted({row.monitor for row in rows if row.monitor}))
        modes = {row.mode for row in rows if row.monitor}
        best = "highest" if modes == {"max"} else "lowest" if modes <= {"min"} else "best"
        print(
            f"\nSweep summary: {len(rows)} jobs, {best} {monitors or 'monitored metric'} "
            f"first ({sweep_dir / SUMMARY_CSV}, {SUMMARY_MD})\n\n{table}",
            flush=True,
        )
        _unsuccessful_jobs[:] = [row.job for row in rows if row.status not in FINE_STATUSES]
        if _unsuccessful_jobs:
            print(
                f"gradtrain: {len(_unsuccessful_jobs)} of {len(rows)} jobs did not complete: "
                + ", ".join(_unsuccessful_jobs),
                file=sys.stderr,
                flush=True,
            )


def mark_running(job_numbers: list[int]) -> None:
    """Tell the summary about to be written which jobs are still running elsewhere."""
    _running_jobs.clear()
    _running_jobs.update(job_numbers)


def sweep_exit_status() -> int:
    """1 if a job of the sweep that ended last in this process did not complete, else 0."""
    return 1 if _unsuccessful_jobs else 0


def claim_sweep_dir(sweep_dir: Path) -> None:
    """Create the sweep's folder, refusing one that already holds something.

    `mkdir` is atomic: of two sweeps that resolve to the same folder (the same explicit
    `hydra.sweep.dir`, or the same microsecond), one gets it and the other stops here instead of
    mixing its jobs and summary into the first one's.
    """
    try:
        sweep_dir.mkdir(parents=True)
    except FileExistsError:
        if any(sweep_dir.iterdir()):
            # SystemExit, not an exception: Hydra would turn an exception into a warning.
            raise SystemExit(
                f"gradtrain: {sweep_dir} already holds a sweep; gradtrain will not mix two sweeps "
                "in one folder. Choose another hydra.sweep.dir, or leave it unset for a fresh one."
            ) from None


# ------------------------------------------------------------------------------------------ rows
def collect_rows(sweep_dir: Path) -> list[JobRow]:
    """One row per job folder under `sweep_dir`, best first, then failures by number.

    A job folder is one with Hydra's `.hydra/` record or a `summary.json`; it is searched for at
    any depth, since an override value with a `/` nests the folder Hydra names after it.
    """
    job_dirs = {
        p.parent.parent for p in sweep_dir.rglob("overrides.yaml") if p.parent.name == ".hydra"
    }
    job_dirs |= {p.parent for p in sweep_dir.rglob(JOB_SUMMARY)}
    rows = [job_row(job_dir, sweep_dir) for job_dir in job_dirs]
    return sorted(rows, key=_rank)


def _rank(row: JobRow) -> tuple[bool, float, float, str]:
    value = row.monitored_value
    number = math.inf if row.number is None else row.number
    # Best first: the lowest value of a metric minimized, the highest of one maximized.
    sign = -1.0 if row.mode == "max" else 1.0
    return (value is None, 0.0 if value is None else sign * value, number, row.job)


def job_row(job_dir: Path, sweep_dir: Path) -> JobRow:
    number, overrides = _hydra_record(job_dir)
    name = job_dir.relative_to(sweep_dir).as_posix()
    summary_path = job_dir / JOB_SUMMARY
    if not summary_path.exists():
        if number in _running_jobs:
            return JobRow(name, number, overrides, "running", None, None, reason="another worker")
        reason = f"no {JOB_SUMMARY}: the job stopped before writing one (see its train.log)"
        return JobRow(name, number, overrides, "failed", None, None, reason=reason)
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    # Read with .get: summary.json may come from an older or newer gradtrain, or a failed job.
    status = str(summary.get("status", "failed"))
    value = monitored_value(summary)
    monitor: str | None = summary.get("monitor")
    if monitor is None and status == "completed":  # a summary from before `monitor` existed
        monitor = choose_monitor(None, summary)
    reason = str(
        summary.get("error")
        or summary.get("message")
        or summary.get("reason")
        or summary.get("stop_reason")
        or ""
    )
    reason = " ".join(reason.split())  # one line: a config error lists its problems on several
    if status == "completed" and value is None:  # trained to the end, but to a non-finite loss
        status, reason = "diverged", f"{monitor} is {summary.get(str(monitor))}"
    return JobRow(
        job=name,
        number=number,
        overrides=overrides,
        status=status,
        monitor=monitor,
        monitored_value=value,
        final_loss=_number(summary.get("final_loss")),
        best_loss=_number(summary.get("best_loss")),
        val_metrics={
            key: metric
            for key, raw in summary.items()
            if key.startswith("val_") and (metric := _number(raw)) is not None
        },
        steps=summary.get("steps"),
        wall_s=_number(summary.get("wall_s")),
        reason=reason,
        mode=monitor_mode(summary),
    )


def _hydra_record(job_dir: Path) -> tuple[int | None, list[str]]:
    """The job's number and its command-line overrides, from Hydra's copy in `.hydra/`."""
    hydra_yaml = job_dir / ".hydra" / "hydra.yaml"
    if not hydra_yaml.exists():
        return None, []
    hydra = OmegaConf.load(hydra_yaml).hydra  # read two keys; nothing is resolved
    return int(hydra.job.num), [str(item) for item in hydra.overrides.task]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


# ---------------------------------------------------------------------------------------- tables
def _columns(rows: list[JobRow]) -> list[str]:
    val_keys = sorted({key for row in rows for key in row.val_metrics})
    return [
        "job",
        "overrides",
        "status",
        "monitor",
        "monitored_value",
        "final_loss",
        "best_loss",
        *val_keys,
        "steps",
        "wall_s",
        "reason",
    ]


def _record(row: JobRow) -> Mapping[str, Any]:
    return {
        "job": row.job,
        "overrides": " ".join(row.overrides),
        "status": row.status,
        "monitor": row.monitor,
        "monitored_value": row.monitored_value,
        "final_loss": row.final_loss,
        "best_loss": row.best_loss,
        **row.val_metrics,
        "steps": row.steps,
        "wall_s": row.wall_s,
        "reason": row.reason,
    }


def csv_text(rows: list[JobRow]) -> str:
    """Full precision; an empty cell where a job has no value."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in _record(row).items()})
    return buffer.getvalue()


def markdown_table(rows: list[JobRow]) -> str:
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        record = _record(row)
        lines.append("| " + " | ".join(_cell(record.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    # One line per row, and a `|` inside a value must not end its cell.
    return " ".join(str(value).split()).replace("|", "\\|")
