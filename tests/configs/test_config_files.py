"""configs/ against the schema and the registries: one source of truth for names and defaults.

Each component YAML (configs/<group>/<option>.yaml) lists every key of its schema model, with
comments, so that a user browsing configs/ sees what can be set; its values must be the schema's
defaults, so the two never drift. Presets (experiment/, tuning/, debug/, hparams_search/) differ
on purpose and are not checked here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf
from pydantic import BaseModel

from gradtrain.config import Config, TrainerConfig, section_options, validate_config
from gradtrain.losses import LOSSES
from gradtrain.models import MODELS
from gradtrain.optim import OPTIMIZERS
from gradtrain.registry import Registry
from gradtrain.schedulers import SCHEDULERS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
UNION_GROUPS = ["loss", "model", "dataset", "optimizer", "scheduler", "logger"]
REGISTRIES: dict[str, Registry[Any]] = {
    "loss": LOSSES,
    "model": MODELS,
    "optimizer": OPTIMIZERS,
    "scheduler": SCHEDULERS,
}
# Hydra's marker for a value the user must give (`dataset.path: ???`).
MANDATORY = "???"


def schema_options(group: str) -> dict[str, type[BaseModel]]:
    """What configs/<group>/ must hold: the schema's options by name (the trainer has one)."""
    if group == "trainer":
        return {"default": TrainerConfig}
    return dict(section_options(group))


def yaml_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIGS / group).glob("*.yaml"))


def as_yaml(value: Any) -> Any:
    """A schema default as YAML spells it (YAML has lists, not tuples)."""
    return list(value) if isinstance(value, tuple) else value


def drift(values: dict[str, Any], model: type[BaseModel], option: str) -> list[str]:
    """Each way an option's YAML values disagree with its model's keys and defaults."""
    problems = [f"{key} is not in the schema" for key in values if key not in model.model_fields]
    for key, field in model.model_fields.items():
        if key == "name":
            expected = option
        elif field.is_required():
            expected = MANDATORY
        else:
            expected = as_yaml(field.get_default(call_default_factory=True))
        if key not in values:
            problems.append(f"{key} is missing (the schema says {expected!r})")
        elif values[key] != expected:
            problems.append(f"{key} is {values[key]!r} but the schema says {expected!r}")
    return problems


def load(path: Path) -> dict[str, Any]:
    values = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(values, dict)
    return {str(key): value for key, value in values.items()}


@pytest.mark.parametrize("group", [*UNION_GROUPS, "trainer"])
def test_every_schema_option_has_a_yaml_file_and_every_yaml_file_is_an_option(
    group: str,
) -> None:
    assert yaml_options(group) == sorted(schema_options(group))


@pytest.mark.parametrize(
    ("group", "option"),
    [(group, option) for group in [*UNION_GROUPS, "trainer"] for option in schema_options(group)],
)
def test_option_yaml_lists_every_key_at_the_schema_default(group: str, option: str) -> None:
    values = load(CONFIGS / group / f"{option}.yaml")
    model = schema_options(group)[option]
    assert drift(values, model, option) == [], f"configs/{group}/{option}.yaml"


@pytest.mark.parametrize("group", sorted(REGISTRIES))
def test_registry_builds_exactly_the_schema_options(group: str) -> None:
    # `none` (no scheduler) is the absence of a component: build.py returns None for it.
    buildable = sorted(set(schema_options(group)) - {"none"})
    assert REGISTRIES[group].names() == buildable


def test_primary_config_chooses_the_schema_defaults(
    composed: Callable[..., dict[str, Any]],
) -> None:
    """configs/config.yaml's defaults list and top-level keys agree with Config's defaults
    (scheduler, trainer, logger, seed, explain), so leaving a section out of a hand-written
    config means the same as leaving it to Hydra."""
    cfg = validate_config(composed())
    defaulted = {
        name: field.get_default()
        for name, field in Config.model_fields.items()
        if not field.is_required()
    }
    assert {name: getattr(cfg, name) for name in defaulted} == defaulted


def test_drift_check_names_each_key_that_disagrees() -> None:
    values = {"name": "sgd", "lr": 0.01, "momentum": 0.0, "nesterov": False, "extra": 1}
    assert drift(values, section_options("optimizer")["sgd"], "sgd") == [
        "extra is not in the schema",
        "lr is 0.01 but the schema says 0.1",
        "weight_decay is missing (the schema says 0.0)",
    ]
