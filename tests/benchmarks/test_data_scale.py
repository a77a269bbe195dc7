"""benchmarks/data_scale.py runs end to end and reports what the README quotes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "data_scale.py"


@pytest.mark.slow  # about 30 s on two cores: four processes, each importing torch
def test_quick_data_benchmark_reports_both_runs_the_ratios_and_the_streamed_peak(
    tmp_path: Path,
) -> None:
    pytest.importorskip("pandas")  # the baseline (pip install -e ".[bench]")
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    base = re.search(r"\| pandas \+ hand loop \| ([\d.]+) s \| (\d+) MiB \|", out)
    ours = re.search(r"\| gradtrain \| ([\d.]+) s \| (\d+) MiB \| \(([\d.]+)x, ([\d.]+)x\)", out)
    assert base is not None and ours is not None, out
    # The ratios printed are those of the figures printed (rounded as printed).
    assert float(ours[3]) == pytest.approx(float(ours[1]) / float(base[1]), abs=0.01)
    assert float(ours[4]) == pytest.approx(int(ours[2]) / int(base[2]), abs=0.01)
    assert re.search(r"target \(<= 1\.2x time and memory\): (met|NOT met)", out)
    assert re.search(r"streamed epoch, 50,000 rows x 20 Parquet .* peak \d+ MiB", out)
