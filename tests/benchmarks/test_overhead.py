"""The overhead benchmark runs end to end. Its numbers are the proof of speed, not a test's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_prints_every_workload_and_the_start_up() -> None:
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr
    table = completed.stdout
    for workload in ("quadratic, 5 elements", "quadratic, 1e6", "linear regression", "MLP"):
        rows = [line for line in table.splitlines() if line.startswith(f"| {workload}")]
        assert len(rows) >= 4, workload  # the hand-written baseline and 3 logging intervals
        assert any("| 1.00x |" in row for row in rows), workload
    assert "`python train.py trainer.max_steps=1 logger=none`" in table
