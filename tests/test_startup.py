"""`python train.py` loads only what the run uses: start-up is most of a short run's time."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each costs 0.1 to 1 s of import time and is needed only by some runs. (tqdm is not on the list:
# `import torch` loads it anyway.)
OPTIONAL_MODULES = ("torch._dynamo", "tensorboard", "torch.utils.tensorboard", "matplotlib")


def test_a_run_without_logger_imports_no_dynamo_tensorboard_or_plotting(
    tmp_path: Path,
) -> None:
    script = textwrap.dedent(
        f"""
        import runpy, sys
        sys.argv = ["train.py", "trainer.max_steps=3", "logger=none",
                    "hydra.run.dir={tmp_path / "run"}"]
        try:
            runpy.run_path("train.py", run_name="__main__")
        finally:
            print(sorted(m for m in {OPTIONAL_MODULES!r} if m in sys.modules))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "run" / "summary.json").exists()
