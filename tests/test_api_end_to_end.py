"""The Python API against the command line, in fresh processes: `fit(compose([...]))` trains what
`python train.py ...` trains (the same weights, losses and curves), `compose` refuses what
train.py refuses with its message, and the README's Python API section runs as one script from
an empty folder outside the checkout."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gradtrain.errors import ConfigError
from tests.conftest import ROOT, TrainResult, read_scalars

pytestmark = pytest.mark.slow

OVERRIDES = [
    "experiment=linear_regression",
    "dataset.n_samples=256",
    "dataset.val_fraction=0.25",
    "trainer.max_steps=60",
    "trainer.checkpoint_every_n_steps=25",
    "logger.figures=false",
]
# Run by a fresh interpreter in a folder outside the checkout, as a user would.
FIT_SCRIPT = """
import json, sys
from gradtrain import compose, fit

result = fit(compose(sys.argv[2:]), run_dir=sys.argv[1])
print(json.dumps(result.summary))
"""


def python(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_fit_of_a_composed_config_trains_what_train_py_trains(
    train: object, tmp_path: Path
) -> None:
    cli: TrainResult = train(*OVERRIDES, run_dir=tmp_path / "cli")  # type: ignore[operator]
    assert cli.returncode == 0, cli.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    api = python(["-c", FIT_SCRIPT, str(tmp_path / "api"), *OVERRIDES], cwd=elsewhere)
    assert api.returncode == 0, api.stdout + api.stderr
    api_summary = json.loads(api.stdout.strip().splitlines()[-1])

    for key in ("status", "steps", "epochs", "final_loss", "best_loss", "val_loss", "grad_norm"):
        assert api_summary[key] == cli.summary[key], key
    assert api_summary["final_loss"] is not None and api_summary["steps"] == 60
    saved = {
        name: torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
        for name, folder in (("cli", tmp_path / "cli"), ("api", tmp_path / "api"))
    }
    for name, weights in saved["cli"]["model"].items():
        assert torch.equal(saved["api"]["model"][name], weights), name
    assert saved["api"]["config"] == saved["cli"]["config"]
    # The same curves in both event files, step for step.
    assert read_scalars(tmp_path / "api" / "tensorboard") == read_scalars(
        tmp_path / "cli" / "tensorboard"
    )


@pytest.mark.parametrize(
    "override", ["optimizer.lr=-1", "trainer.max_step=3", "optimizer=nope", "model.size=1.5"]
)
def test_compose_refuses_what_train_py_refuses_with_its_message(
    train: object, override: str
) -> None:
    from gradtrain import compose

    cli: TrainResult = train(override)  # type: ignore[operator]
    assert cli.returncode != 0
    with pytest.raises(ConfigError) as refused:
        compose([override])
    # Every line of each problem is a line train.py printed.
    for problem in refused.value.problems:
        for line in problem.splitlines():
            assert line.strip() in cli.stderr, (line, cli.stderr)


def readme_python_api_script() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Python API\n")
    end = readme.index("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", readme[start:end], flags=re.DOTALL)
    assert len(blocks) >= 5, "the Python API section lost its examples"
    return "\n".join(blocks)


def test_the_readme_python_api_blocks_run_as_one_script_from_an_empty_folder(
    tmp_path: Path,
) -> None:
    script = tmp_path / "readme_api.py"
    script.write_text(readme_python_api_script())
    folder = tmp_path / "empty"
    folder.mkdir()
    completed = python([str(script)], cwd=folder, timeout=600)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    assert "Completed after" in out and "Invalid configuration (2 problems)" in out
    assert "max_step: unknown argument of fit()" in out
    assert "True True" in out and "LinearModel" in out
    # The runs that write logs went to fresh folders under outputs/, or to the run_dir given.
    assert len(list((folder / "outputs").glob("*/*/summary.json"))) == 2
    assert (folder / "runs" / "linear" / "summary.json").exists()


# Run by the scratch venv's interpreter in a folder outside any checkout.
INSTALLED_SCRIPT = """
import json
import gradtrain
from gradtrain import compose, fit

result = fit(compose(["loss=rosenbrock", "optimizer=adam", "trainer.max_steps=50"]))
print(json.dumps({"file": gradtrain.__file__, "steps": result.summary["steps"],
                  "run_dir": str(result.run_dir), "figure": result.figure is not None}))
"""


def test_compose_and_fit_work_from_any_folder_after_a_regular_install(tmp_path: Path) -> None:
    from tests.test_packaging import BUILD_IN_PLACE, ScratchVenv, _copy_checkout

    checkout = _copy_checkout(tmp_path / "checkout")
    env = ScratchVenv(tmp_path / "venv", workdir=tmp_path / "elsewhere", hf_home=tmp_path / "hf")
    isolation = ["--no-build-isolation"] if BUILD_IN_PLACE else []
    env.pip("install", "--no-deps", "--ignore-installed", "--no-compile", *isolation, str(checkout))
    out = json.loads(env._python("-c", INSTALLED_SCRIPT).stdout.strip().splitlines()[-1])
    assert env.is_inside(out["file"])  # the installed copy, not this checkout
    assert out["steps"] == 50 and out["figure"] is True
    run_dir = Path(out["run_dir"])
    assert run_dir.parent.parent == tmp_path / "elsewhere" / "outputs"
    assert (run_dir / "summary.json").exists()
