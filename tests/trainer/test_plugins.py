"""Plugins: a distribution installed on sys.path (a real `*.dist-info` with `entry_points.txt`
and a real module, written into a temporary folder) adds components that configs choose by
name, validated by the plugin's own config models and built through the registries."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gradtrain import plugins
from gradtrain.config import validate_config
from gradtrain.errors import ConfigError
from gradtrain.models import MODELS
from gradtrain.plugin_configs import add_plugin_configs
from gradtrain.plugins import PluginError

MODULE = "gradtrain_test_plugin"

PLUGIN_SOURCE = """
from typing import Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt
from torch import nn

from gradtrain.config import LoaderSettings, StrictModel
from gradtrain.datasets import InMemoryDataset
from gradtrain.plugins import Component


class ScaledLinearConfig(StrictModel):
    name: Literal["scaled_linear"]
    scale: PositiveFloat = 1.0
    in_features: PositiveInt | None = None


class ScaledLinear(nn.Module):
    def __init__(self, in_features, out_features, scale):
        super().__init__()
        self.scale = scale
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, inputs):
        return (self.scale * self.linear(inputs)).squeeze(-1)


class AbsErrorConfig(StrictModel):
    name: Literal["abs_error"]
    reduction: Literal["mean", "sum"] = "mean"


class PlainSGDConfig(StrictModel):
    name: Literal["plain_sgd"]
    lr: PositiveFloat = 0.1


class LineConfig(LoaderSettings):
    name: Literal["line"]
    task: Literal["regression"] = "regression"
    n_samples: PositiveInt = 64
    slope: float = Field(default=2.0, ge=-10, le=10)


def make_line(n_samples, slope, seed):
    x = torch.linspace(-1, 1, n_samples).unsqueeze(1)
    return InMemoryDataset(x, slope * x.squeeze(1))


class WrongNameConfig(StrictModel):
    name: Literal["something_else"]


scaled_linear = Component(config=ScaledLinearConfig, build=ScaledLinear)
abs_error = Component(config=AbsErrorConfig, build=nn.L1Loss)
plain_sgd = Component(config=PlainSGDConfig, build=lambda params, lr: torch.optim.SGD(params, lr))
line = Component(config=LineConfig, build=make_line)
wrong_name = Component(config=WrongNameConfig, build=nn.Identity)
not_a_component = 42
"""

ENTRY_POINTS = f"""
[gradtrain.plugins]
model.scaled_linear = {MODULE}:scaled_linear
loss.abs_error = {MODULE}:abs_error
optimizer.plain_sgd = {MODULE}:plain_sgd
dataset.line = {MODULE}:line
model.wrong_name = {MODULE}:wrong_name
model.not_a_component = {MODULE}:not_a_component
model.missing_module = {MODULE}_missing:thing
"""

YAML = {
    "model/scaled_linear.yaml": "name: scaled_linear\nscale: 1.0\nin_features: null\n",
    "loss/abs_error.yaml": "name: abs_error\nreduction: mean\n",
    "optimizer/plain_sgd.yaml": "name: plain_sgd\nlr: 0.1\n",
    "dataset/line.yaml": "name: line\nn_samples: 64\nslope: 2.0\nbatch_size: 16\n",
}


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The test plugin installed into a folder on sys.path, as pip would lay it out."""
    site = tmp_path / "site"
    package = site / MODULE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(PLUGIN_SOURCE)
    for name, text in YAML.items():
        (package / "configs" / name).parent.mkdir(parents=True, exist_ok=True)
        (package / "configs" / name).write_text(text)
    dist_info = site / "gradtrain_test_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: gradtrain-test-plugin\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(textwrap.dedent(ENTRY_POINTS))
    monkeypatch.syspath_prepend(str(site))
    plugins.rescan()
    add_plugin_configs()
    yield site
    sys.modules.pop(MODULE, None)
    monkeypatch.undo()
    plugins.rescan()


def _problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate_config(raw)
    return caught.value.problems


def test_plugin_model_is_composed_validated_and_trained(
    installed_plugin: Path, quick_run: Callable[..., Any]
) -> None:
    result = quick_run("experiment=linear_regression", "model=scaled_linear", "model.scale=0.5")
    assert result.summary["status"] == "completed"
    assert result.summary["final_loss"] < result.summary["best_loss"] * 10  # a real loss value
    assert MODULE in sys.modules  # chosen, so loaded


def test_plugin_keys_are_refused_by_key_like_the_builtins(
    installed_plugin: Path, quick_config: Callable[..., dict[str, Any]]
) -> None:
    raw = quick_config("experiment=linear_regression", "model=scaled_linear")
    raw["model"].update(scale=0.0, in_features="four", colour="red")
    problems = _problems(raw)
    assert any(p.startswith("model.scale: Input should be greater than 0") for p in problems)
    assert any(p.startswith("model.in_features: Input should be a valid integer") for p in problems)
    assert "model.colour: unknown key; allowed keys: name, scale, in_features" in problems


def test_an_unknown_name_lists_the_plugins_of_its_section(
    installed_plugin: Path, quick_config: Callable[..., dict[str, Any]]
) -> None:
    raw = quick_config("experiment=linear_regression")
    raw["optimizer"] = {"name": "plain_sdg", "lr": 0.1}
    (problem,) = _problems(raw)
    assert problem.startswith("optimizer.name:")
    assert "'plain_sgd'" in problem and "'adam'" in problem  # the plugin's beside the built-ins


def test_plugin_loss_optimizer_and_dataset_train_together(
    installed_plugin: Path, quick_run: Callable[..., Any]
) -> None:
    result = quick_run(
        "dataset=line",
        "dataset.slope=3.0",
        "model=linear",
        "loss=abs_error",
        "optimizer=plain_sgd",
        "trainer.max_steps=200",
    )
    assert result.summary["status"] == "completed"
    # |prediction - 3x| on x in [-1, 1]: the linear model finds the line.
    assert result.summary["final_loss"] < 0.1


def test_plugin_dataset_keys_and_task_are_checked(
    installed_plugin: Path, quick_config: Callable[..., dict[str, Any]]
) -> None:
    raw = quick_config("dataset=line", "model=linear", "loss=mse")
    raw["dataset"]["slope"] = 11.0
    assert _problems(raw) == ["dataset.slope: Input should be less than or equal to 10 (got 11.0)"]
    # The plugin's `task` takes part in the cross-group checks like a built-in dataset's.
    (problem,) = _problems(quick_config("dataset=line", "model=linear", "loss=cross_entropy"))
    assert problem.startswith("loss=cross_entropy is a classification loss, but dataset=line is")
    assert "regression task; use loss=mse or loss=huber" in problem


def test_plugins_load_only_when_chosen(
    installed_plugin: Path, quick_config: Callable[..., dict[str, Any]]
) -> None:
    validate_config(quick_config("experiment=linear_regression"))
    assert MODULE not in sys.modules  # listed by name, never imported
    assert "scaled_linear" in MODELS.names()
    assert MODULE not in sys.modules


def test_registry_builds_plugin_components_and_refuses_unknown_names(
    installed_plugin: Path,
) -> None:
    model = MODELS.get("scaled_linear")(3, 1, scale=2.0)
    assert sum(p.numel() for p in model.parameters()) == 4
    with pytest.raises(KeyError, match=r"Unknown model 'nope'; choose one of: .*scaled_linear"):
        MODELS.get("nope")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("wrong_name", 'its config needs the key `name: Literal["wrong_name"]`'),
        ("not_a_component", "names a int, not a gradtrain.plugins.Component"),
        ("missing_module", "failed to load: ModuleNotFoundError"),
    ],
)
def test_a_broken_plugin_is_named(installed_plugin: Path, name: str, message: str) -> None:
    with pytest.raises(PluginError) as caught:
        plugins.component("model", name)
    assert f"the plugin model={name} " in str(caught.value)
    assert "from gradtrain-test-plugin 0.1" in str(caught.value)
    assert message in str(caught.value)


def test_without_the_plugin_its_names_are_gone(quick_config: Callable[..., dict[str, Any]]) -> None:
    assert "scaled_linear" not in MODELS.names()
    raw = quick_config("experiment=linear_regression")
    raw["model"] = {"name": "scaled_linear"}
    (problem,) = _problems(raw)
    assert problem.startswith("model.name:") and "'linear'" in problem


# ------------------------------------------------------------------ examples/plugin, in-process
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugin"
EXAMPLE_ENTRY_POINT = '"model.polynomial" = "gradtrain_polynomial:polynomial"'


@pytest.fixture
def example_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """examples/plugin's sources on sys.path with the metadata pip would write for them (the
    slow tests/test_plugin_package.py pip-installs it for real)."""
    assert EXAMPLE_ENTRY_POINT in (EXAMPLE / "pyproject.toml").read_text()
    dist_info = tmp_path / "gradtrain_polynomial-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: gradtrain-polynomial\nVersion: 0.1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[gradtrain.plugins]\nmodel.polynomial = gradtrain_polynomial:polynomial\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    plugins.rescan()
    add_plugin_configs()
    yield
    sys.modules.pop("gradtrain_polynomial", None)
    monkeypatch.undo()
    plugins.rescan()


def test_example_polynomial_trains_and_its_yaml_matches_its_config_model(
    example_plugin: None, quick_run: Callable[..., Any], quick_config: Callable[..., Any]
) -> None:
    from gradtrain.config import schema_for, section_options

    raw = quick_config("experiment=linear_regression", "model=polynomial", "model.degree=3")
    model_options = section_options("model", schema_for(raw))
    assert list(raw["model"]) == list(model_options["polynomial"].model_fields)
    result = quick_run(
        "experiment=linear_regression",
        "model=polynomial",
        "model.degree=3",
        "trainer.max_steps=100",
    )
    assert result.summary["status"] == "completed"
    assert result.summary["final_loss"] < 0.5


def test_example_polynomial_degree_zero_is_refused_by_key(
    example_plugin: None, quick_config: Callable[..., Any]
) -> None:
    raw = quick_config("experiment=linear_regression", "model=polynomial", "model.degree=0")
    assert _problems(raw) == ["model.degree: Input should be greater than 0 (got 0)"]
