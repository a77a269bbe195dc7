"""examples/lecture.ipynb runs top to bottom in a fresh Jupyter kernel (nbconvert --execute), and
shows what the lecture says: SubBackward0, the gradient 2x, gradtrain's run with its progress bar,
explain report and trajectory figure, and a model of the user's own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

NOTEBOOK = ROOT / "examples" / "lecture.ipynb"


def outputs_of(cell: Any, kind: str) -> str:
    """Text of a code cell's outputs of one kind: "stdout", "stderr" or a MIME type."""
    texts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream" and output["name"] == kind:
            texts.append(output["text"])
        elif output["output_type"] in ("execute_result", "display_data") and kind in output["data"]:
            texts.append(str(output["data"][kind]))
    return "".join(texts)


def test_the_committed_notebook_holds_no_outputs() -> None:
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")


def test_the_lecture_notebook_runs_top_to_bottom_in_a_fresh_kernel(tmp_path: Path) -> None:
    import nbformat

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    # A kernel of this very interpreter (not whatever `python3` kernel the machine has).
    prefix = tmp_path / "jupyter"
    subprocess.run(
        [sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", "gt"],
        check=True,
        capture_output=True,
    )
    env = {
        **os.environ,
        "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        # One intra-op thread, as the other in-process tests: a second one on busy shared cores
        # waits at every op (the notebook's MLP then takes 30 s instead of 1 s).
        "OMP_NUM_THREADS": "1",
    }
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter",
            "nbconvert",
            "--to",
            "notebook",
            "--execute",
            NOTEBOOK.name,
            "--output",
            "executed.ipynb",
            "--ExecutePreprocessor.kernel_name=gt",
            "--ExecutePreprocessor.timeout=300",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    cells = [
        cell
        for cell in nbformat.read(work / "executed.ipynb", as_version=4).cells
        if cell.cell_type == "code"
    ]
    assert not [o for c in cells for o in c.outputs if o["output_type"] == "error"]
    stdout = "".join(outputs_of(cell, "stdout") for cell in cells)
    assert "grad_fn=<SubBackward0>" in stdout
    assert "SubBackward0 <- PowBackward0 <- x" in stdout
    assert "x.grad: tensor([ 2.,  4.,  6.,  8., 10.])" in stdout
    assert "gradient check passed: True" in stdout
    # The gradtrain run: a progress bar on the cell's stderr, the summary as its result, the
    # explain report as Markdown, and the trajectory figure as an image.
    fitted = next(cell for cell in cells if "explain=True" in cell.source)
    progress = outputs_of(fitted, "stderr")
    assert "100/100" in progress and "step/s" in progress and "\r" in progress
    assert "final loss  -25" in outputs_of(fitted, "text/plain")
    assert any("## The backward graph" in outputs_of(cell, "text/markdown") for cell in cells)
    assert sum(bool(outputs_of(cell, "image/png")) for cell in cells) >= 2  # path, curves
    assert "val acc" in stdout and "Invalid configuration (1 problem)" in stdout
    # The runs that log went where a notebook's go: outputs/ beside it.
    assert list((work / "outputs").glob("*/*/summary.json"))
