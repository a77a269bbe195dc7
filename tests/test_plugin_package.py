"""examples/plugin as users get it: `pip install`ed for real (into a folder of its own, put on
PYTHONPATH, so the test environment is left as it was), then `train.py` and `predict.py` in
subprocesses choose `model=polynomial`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    # Built from a copy: a build leaves build/ and *.egg-info beside the sources it builds.
    source = shutil.copytree(ROOT / "examples" / "plugin", tmp_path_factory.mktemp("src") / "p")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site)]
    installed = subprocess.run(
        [*pip, str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    assert (site / "gradtrain_polynomial" / "configs" / "model" / "polynomial.yaml").is_file()
    return site


def _run(script: str, site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_installed_plugin_trains_polynomial_and_predicts(plugin_site: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "poly"
    trained = _run(
        "train.py",
        plugin_site,
        tmp_path,
        "experiment=linear_regression",
        "model=polynomial",
        "model.degree=3",
        "trainer.progress_bar=false",
        f"hydra.run.dir={run_dir}",
    )
    assert trained.returncode == 0, trained.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["final_loss"] < 0.05  # the data is linear: degree 3 fits it too
    saved = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "name: polynomial" in saved and "degree: 3" in saved

    rows = tmp_path / "rows.csv"
    rows.write_text("x7,x6,x5,x4,x3,x2,x1,x0\n" + "0.5,1,0,0,0,0,0,-1\n" + "0,0,0,0,0,0,0,0\n")
    predicted = _run("predict.py", plugin_site, tmp_path, str(run_dir), str(rows), "out.csv")
    assert predicted.returncode == 0, predicted.stderr
    with (tmp_path / "out.csv").open(newline="") as file:
        values = [float(row["prediction"]) for row in csv.DictReader(file)]
    assert len(values) == 2 and values[0] != values[1]


@pytest.mark.slow
def test_installed_plugin_keys_are_validated_and_listed(plugin_site: Path, tmp_path: Path) -> None:
    refused = _run(
        "train.py",
        plugin_site,
        tmp_path,
        "experiment=linear_regression",
        "model=polynomial",
        "model.degree=0",
        f"hydra.run.dir={tmp_path / 'refused'}",
    )
    assert refused.returncode == 2
    assert "model.degree: Input should be greater than 0 (got 0)" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "refused" / "summary.json").exists()
    helped = _run("train.py", plugin_site, tmp_path, "--help")
    (models,) = [line for line in helped.stdout.splitlines() if line.split()[:1] == ["model"]]
    listed = models.split(None, 1)[1].split(":", 1)[0].split(", ")
    assert "polynomial" in listed and "linear" in listed
    # Without the plugin on the path, the name is unknown again.
    bare = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "model=polynomial"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bare.returncode != 0 and "Could not find 'model/polynomial'" in bare.stderr
