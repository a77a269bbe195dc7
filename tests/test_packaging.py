"""gradtrain installs next to Hugging Face's `datasets` without touching it.

gradtrain's folders keep the design card's names (trainer/, datasets/, configs/), and `datasets` is
also the import name of Hugging Face's library. When those folders were installed as top-level
packages, a regular `pip install .` wrote gradtrain's `datasets/__init__.py` over Hugging Face's
and `pip uninstall gradtrain` then deleted it. pyproject.toml now installs them as `gradtrain`,
`gradtrain.datasets` and `gradtrain.configs`; this test proves, with real pip installs into one
site-packages folder that already holds Hugging Face's `datasets`:

(a) a regular install of this checkout writes only under `gradtrain/`, its Hydra plugin's shim
    `hydra_plugins/gradtrain_optuna_sweeper/` and its dist-info (every
    YAML of configs/ included), leaves every file of Hugging Face's `datasets` byte for byte as
    pip recorded it, `datasets.load_dataset` still reads a CSV, and gradtrain trains from the
    packaged configs, both from a folder outside the checkout;
(b) `pip uninstall gradtrain` removes gradtrain and nothing of Hugging Face's;
(c) after an editable install, `import datasets` is still Hugging Face's and
    `import gradtrain.datasets` is this checkout's.

To stay fast, the test venv reaches the outer environment's site-packages through a `.pth` file
(torch, Hydra and Hugging Face's dependencies are not installed again), while Hugging Face's
`datasets` and gradtrain are installed into the test venv's own site-packages, so they really share
one folder. `import datasets` is checked to find that folder's copy every time: one deleted there
would otherwise be hidden by the outer environment's copy, and the test would pass falsely.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sysconfig
import venv
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


HF_DATASETS_VERSION = _installed_version("datasets")
SETUPTOOLS_VERSION = _installed_version("setuptools")
# pyproject.toml asks for setuptools>=68; from 70.1 on it builds wheels without the `wheel` package.
BUILD_IN_PLACE = SETUPTOOLS_VERSION is not None and tuple(
    int(part) for part in re.findall(r"\d+", SETUPTOOLS_VERSION)[:2]
) >= (70, 1)

# Run in the test venv from a folder outside the checkout; prints one JSON object.
PROBE = """
import importlib, json, sys
from pathlib import Path

todo = json.loads(sys.argv[1])
out = {"modules": {}}
for name in todo.get("modules", []):
    try:
        module = importlib.import_module(name)
    except ImportError:
        out["modules"][name] = None
    else:
        out["modules"][name] = {
            "file": module.__file__,
            "load_dataset": hasattr(module, "load_dataset"),
        }
if todo.get("sweepers"):
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    found = Plugins.instance().discover(Sweeper)
    out["sweepers"] = [f"{c.__module__}.{c.__name__}" for c in found]
if "csv" in todo:
    import datasets

    table = datasets.load_dataset("csv", data_files=todo["csv"], split="train")
    out["csv"] = {"file": datasets.__file__, "columns": table.column_names, "x": list(table["x"])}
if "run_dir" in todo:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    import gradtrain.configs
    import gradtrain.run

    with initialize_config_module("gradtrain.configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=todo["overrides"])
    raw = OmegaConf.to_container(cfg, resolve=True)
    summary = gradtrain.run.run(raw, Path(todo["run_dir"]))
    out["train"] = {
        "configs": gradtrain.configs.__file__,
        "status": summary["status"],
        "steps": summary["steps"],
    }
print(json.dumps(out))
"""

# The one folder gradtrain installs outside `gradtrain/`: its Hydra sweeper's shim, in the
# `hydra_plugins` namespace where Hydra looks for plugins (trainer/sweeps/optuna_sweeper.py).
PLUGIN_DIR = "hydra_plugins/gradtrain_optuna_sweeper/"

# The packaged configs, through the dataset package whose name used to clash.
TRAIN_OVERRIDES = [
    "experiment=linear_regression",
    "trainer.max_steps=5",
    "logger=none",
    "trainer.save_checkpoints=false",
]


class ScratchVenv:
    """A venv whose own site-packages starts empty and which imports the outer environment's."""

    def __init__(self, path: Path, workdir: Path, hf_home: Path) -> None:
        venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(path)
        scripts = "Scripts" if os.name == "nt" else "bin"
        self.python = str(path / scripts / ("python.exe" if os.name == "nt" else "python"))
        self.workdir = workdir
        workdir.mkdir()
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"}
        }
        self.env.update(
            PYTHONNOUSERSITE="1",
            HF_HOME=str(hf_home),
            HF_DATASETS_CACHE=str(hf_home / "datasets"),
            HF_DATASETS_OFFLINE="1",
            HF_HUB_OFFLINE="1",
        )
        self.site_packages = Path(
            self._python(
                "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"
            ).stdout.strip()
        )
        outer = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
        (self.site_packages / "_outer_environment.pth").write_text("\n".join(outer) + "\n")

    def _python(self, *args: str) -> subprocess.CompletedProcess[str]:
        completed = subprocess.run(
            [self.python, *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        command = " ".join("<probe>" if arg == PROBE else arg for arg in args)
        assert completed.returncode == 0, f"{command}\n{completed.stdout}\n{completed.stderr}"
        return completed

    def pip(self, *args: str) -> str:
        completed = self._python("-m", "pip", "--disable-pip-version-check", "--no-input", *args)
        return completed.stdout + completed.stderr

    def probe(self, **todo: Any) -> dict[str, Any]:
        out = self._python("-c", PROBE, json.dumps(todo)).stdout
        return json.loads(out.strip().splitlines()[-1])

    def dist_info(self, name: str) -> Path | None:
        found = sorted(self.site_packages.glob(f"{name}-*.dist-info"))
        assert len(found) <= 1, found
        return found[0] if found else None

    def record(self, name: str) -> dict[str, str]:
        """The dist's RECORD in this venv's site-packages: path -> hash ("" when not recorded)."""
        dist_info = self.dist_info(name)
        assert dist_info is not None, f"{name} is not installed in {self.site_packages}"
        with (dist_info / "RECORD").open(newline="") as file:
            return {row[0]: row[1] for row in csv.reader(file) if row}

    def changed_files(self, record: dict[str, str]) -> list[str]:
        """The recorded files that are missing or differ from the hash pip recorded."""
        changed = []
        for path, recorded in record.items():
            file = self.site_packages / path
            if not file.is_file():
                changed.append(f"{path} (missing)")
            elif recorded:
                algorithm, _, expected = recorded.partition("=")
                digest = hashlib.new(algorithm, file.read_bytes()).digest()
                if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != expected:
                    changed.append(f"{path} (changed)")
        return changed

    def is_inside(self, file: str | None) -> bool:
        return file is not None and Path(file).resolve().is_relative_to(
            self.site_packages.resolve()
        )


def _copy_checkout(destination: Path) -> Path:
    """The checkout's sources, without its venv or build output (a stale build/lib could leak
    files from an older layout into the wheel)."""
    shutil.copytree(
        ROOT,
        destination,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
            "outputs", "multirun",
        ),
    )  # fmt: skip
    return destination


@pytest.mark.slow
@pytest.mark.skipif(
    HF_DATASETS_VERSION is None,
    reason="Hugging Face `datasets` is not installed here: `pip install datasets` (.ci/run does)",
)
def test_gradtrain_installs_next_to_hugging_face_datasets(tmp_path: Path) -> None:
    checkout = _copy_checkout(tmp_path / "checkout")
    env = ScratchVenv(tmp_path / "venv", workdir=tmp_path / "elsewhere", hf_home=tmp_path / "hf")
    table = tmp_path / "table.csv"
    table.write_text("x,y\n1,2\n3,4\n5,6\n")
    # Without build isolation when the outer setuptools will do: no download, no fresh setuptools.
    isolation = ["--no-build-isolation"] if BUILD_IN_PLACE else []
    install = ["install", "--no-deps", "--ignore-installed", "--no-compile"]

    env.pip(*install, f"datasets=={HF_DATASETS_VERSION}")
    hugging_face = env.record("datasets")
    assert "datasets/__init__.py" in hugging_face
    assert not env.changed_files(hugging_face)

    # (a) A regular install of the checkout into the same site-packages.
    output = env.pip(*install, *isolation, "--verbose", str(checkout))
    warnings = re.findall(r"\w*Warning: .*", output)
    assert not warnings, f"setuptools warned while building the wheel: {warnings}"
    changed = env.changed_files(hugging_face)
    assert not changed, f"gradtrain's install changed Hugging Face's files: {changed}"
    gradtrain = env.record("gradtrain")
    dist_info = env.dist_info("gradtrain")
    assert dist_info is not None
    own = ("gradtrain/", PLUGIN_DIR, f"{dist_info.name}/")
    strays = [p for p in gradtrain if not p.startswith(own)]
    assert not strays, f"gradtrain installed files outside its own package: {strays}"
    assert f"{PLUGIN_DIR}__init__.py" in gradtrain
    # `hydra_plugins` is a namespace package every Hydra plugin shares: no __init__.py of ours.
    assert not [p for p in gradtrain if p.startswith("hydra_plugins/__init__")]
    assert not set(gradtrain) & set(hugging_face)
    yaml = sorted(
        f"gradtrain/configs/{path.relative_to(checkout / 'configs').as_posix()}"
        for path in (checkout / "configs").rglob("*.yaml")
    )
    assert "gradtrain/configs/hydra/launcher/slurm.yaml" in yaml
    assert "gradtrain/configs/hparams_search/optuna.yaml" in yaml
    assert [p for p in yaml if p not in gradtrain] == [], "configs missing from the wheel"

    seen = env.probe(
        modules=["datasets", "gradtrain", "gradtrain.datasets"],
        csv=str(table),
        run_dir=str(tmp_path / "run"),
        overrides=TRAIN_OVERRIDES,
        sweepers=True,
    )
    # Hydra finds the installed sweeper by walking the `hydra_plugins` namespace.
    assert "hydra_plugins.gradtrain_optuna_sweeper.GradtrainOptunaSweeper" in seen["sweepers"]
    modules = seen["modules"]
    assert modules["datasets"]["load_dataset"] and env.is_inside(modules["datasets"]["file"])
    assert env.is_inside(modules["gradtrain"]["file"])
    assert env.is_inside(modules["gradtrain.datasets"]["file"])
    assert not modules["gradtrain.datasets"]["load_dataset"]
    assert seen["csv"] == {
        "file": modules["datasets"]["file"],
        "columns": ["x", "y"],
        "x": [1, 3, 5],
    }
    assert env.is_inside(seen["train"]["configs"])
    assert seen["train"]["status"] == "completed" and seen["train"]["steps"] == 5

    # (b) Uninstalling gradtrain removes its files and none of Hugging Face's.
    env.pip("uninstall", "--yes", "gradtrain")
    assert env.dist_info("gradtrain") is None
    assert not (env.site_packages / "gradtrain").exists()
    assert not (env.site_packages / PLUGIN_DIR).exists()
    changed = env.changed_files(hugging_face)
    assert not changed, f"gradtrain's uninstall changed Hugging Face's files: {changed}"
    seen = env.probe(modules=["datasets", "gradtrain"], csv=str(table))
    assert env.is_inside(seen["modules"]["datasets"]["file"])
    assert seen["csv"]["x"] == [1, 3, 5]
    assert seen["modules"]["gradtrain"] is None

    # (c) An editable install: each name still finds its own package.
    env.pip(*install, *isolation, "--editable", str(checkout))
    seen = env.probe(modules=["datasets", "gradtrain", "gradtrain.datasets", "gradtrain.configs"])
    modules = seen["modules"]
    assert modules["datasets"]["load_dataset"] and env.is_inside(modules["datasets"]["file"])
    assert (
        Path(modules["gradtrain"]["file"]).resolve()
        == checkout.resolve() / "trainer" / "__init__.py"
    )
    assert (
        Path(modules["gradtrain.datasets"]["file"]).resolve()
        == checkout.resolve() / "datasets" / "__init__.py"
    )
    assert (
        Path(modules["gradtrain.configs"]["file"]).resolve()
        == checkout.resolve() / "configs" / "__init__.py"
    )
    assert env.changed_files(hugging_face) == []
