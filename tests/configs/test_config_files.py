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

from gradtrain.config import (
    Config,
    LRFindConfig,
    TrainerConfig,
    section_options,
    validate_config,
)
from gradtrain.hydra_keys import hydra_config_problems
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
    """What configs/<group>/ must hold: the schema's options by name (the trainer and lr_find
    have one)."""
    if group == "trainer":
        return {"default": TrainerConfig}
    if group == "lr_find":
        return {"default": LRFindConfig}
    return dict(section_options(group))


def yaml_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIGS / group).glob("*.yaml"))


def as_yaml(value: Any) -> Any:
    """A schema default as YAML spells it (YAML has lists, not tuples; a nested section such as
    trainer.early_stopping is a mapping)."""
    if isinstance(value, BaseModel):
        return value.model_dump()
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


def variants(group: str) -> dict[str, str]:
    """YAML files of a group that are a variant of one schema option (configs/dataset/moons.yaml
    is `classification` with shape=moons): their name, and the option their defaults list names."""
    found = {}
    for option in yaml_options(group):
        defaults = load(CONFIGS / group / f"{option}.yaml").get("defaults")
        if defaults:
            found[option] = next(entry for entry in defaults if entry != "_self_")
    return found


@pytest.mark.parametrize("group", [*UNION_GROUPS, "trainer", "lr_find"])
def test_every_schema_option_has_a_yaml_file_and_every_yaml_file_is_an_option(
    group: str,
) -> None:
    options = [option for option in yaml_options(group) if option not in variants(group)]
    assert options == sorted(schema_options(group))
    assert set(variants(group).values()) <= set(schema_options(group))


@pytest.mark.parametrize(
    ("group", "variant"),
    [(group, variant) for group in UNION_GROUPS for variant in variants(group)],
)
def test_a_variant_sets_only_keys_of_its_option(group: str, variant: str) -> None:
    values = load(CONFIGS / group / f"{variant}.yaml")
    model = schema_options(group)[variants(group)[variant]]
    assert set(values) - {"defaults"} <= set(model.model_fields)


@pytest.mark.parametrize(
    ("group", "option"),
    [
        (group, option)
        for group in [*UNION_GROUPS, "trainer", "lr_find"]
        for option in schema_options(group)
    ],
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


# ---------------------------------------------------------------------- Hydra's own keys
def _hydra_node(*overrides: str) -> dict[str, Any]:
    """The composed `hydra` node as train.py screens it (interpolations of values Hydra sets
    only when a job starts stay as text)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("gradtrain.configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    return _plain(cfg.hydra)


def _plain(node: Any) -> Any:
    # (train.py's _plain; train.py is a script, not importable from the package)
    from omegaconf import DictConfig, ListConfig
    from omegaconf.errors import OmegaConfBaseException

    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    plain = {}
    for key in keys:
        try:
            value = node[key]
        except OmegaConfBaseException:
            value = OmegaConf.to_container(node, resolve=False)[key]
        plain[key] = _plain(value) if isinstance(value, DictConfig | ListConfig) else value
    return plain if isinstance(node, DictConfig) else list(plain.values())


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["hydra/job_logging=stdout"],  # what torchrun's workers other than rank 0 use
        ["hparams_search=optuna"],  # gradtrain's Optuna sweeper
        ["hydra/launcher=joblib"],
    ],
)
def test_gradtrains_own_configs_pass_the_screen_of_hydra_keys(overrides: list[str]) -> None:
    if overrides == ["hydra/launcher=joblib"]:
        pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason='pip install ".[sweeps]"')
    assert hydra_config_problems(_hydra_node(*overrides)) == []


@pytest.mark.parametrize(
    ("hydra", "named"),
    [
        ({"callbacks": {"x": {"_target_": "builtins.open", "_args_": ["m", "w"]}}}, "callbacks.x"),
        # gradtrain's, but not a callback
        (
            {"callbacks": {"x": {"_target_": "gradtrain.sweeps.summary.write_json_atomic"}}},
            "callbacks.x",
        ),
        # One of gradtrain's callbacks, with an argument Hydra would instantiate first.
        (
            {
                "callbacks": {
                    "x": {
                        "_target_": "gradtrain.sweeps.summary.SweepSummary",
                        "y": {"_target_": "shutil.rmtree", "path": "."},
                    }
                }
            },
            "callbacks.x",
        ),
        ({"callbacks": {"x": "${evil}"}}, "callbacks.x"),  # an interpolation left unresolved
        (
            {"launcher": {"_target_": "hydra_plugins.x.Launcher", "y": {"_target_": "os.system"}}},
            "launcher.y._target_=os.system",
        ),
        (
            {"sweeper": {"sampler": {"_target_": "optuna.samplers._tpe.sampler.np.save"}}},
            "sweeper.sampler._target_",
        ),
        ({"sweeper": {"custom_search_space": "os.system"}}, "sweeper.custom_search_space"),
        (
            {"job_logging": {"filters": {"x": {"()": "builtins.open", "file": "m"}}}},
            "job_logging.filters.x.()=builtins.open",
        ),
        (
            {"hydra_logging": {"handlers": {"x": {"class": "logging.os.system"}}}},
            "hydra_logging.handlers.x.class=logging.os.system",
        ),
    ],
)
def test_an_object_hydra_would_create_that_is_not_allowed_is_a_problem_naming_it(
    hydra: dict[str, Any], named: str
) -> None:
    (problem,) = hydra_config_problems(hydra)
    assert problem.startswith(f"hydra.{named}"), problem
    assert "gradtrain's own objects" in problem or "logging" in problem


def test_a_callback_turned_off_or_a_logging_class_is_fine() -> None:
    hydra = {
        "callbacks": {"trajectory_figure": None},
        "job_logging": {"handlers": {"f": {"class": "logging.handlers.RotatingFileHandler"}}},
    }
    assert hydra_config_problems(hydra) == []


@pytest.mark.slow
def test_train_py_refuses_a_foreign_callback_before_hydra_instantiates_it(
    train: Callable[..., Any], tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    result = train(f"+hydra.callbacks.x={{_target_:builtins.open,_args_:[{marker},w]}}")
    assert result.returncode == 2, result.output
    assert "gradtrain: Invalid configuration (1 problem)" in result.stderr
    assert "hydra.callbacks.x: _target_=builtins.open" in result.stderr
    assert not marker.exists()  # never instantiated
    assert not result.run_dir.exists()  # Hydra had not made the run folder yet


@pytest.mark.slow
def test_train_py_refuses_a_logging_factory_from_a_config_directory(
    train: Callable[..., Any], tmp_path: Path
) -> None:
    # A config file from --config-dir, applied while Hydra composes: before any callback.
    marker = tmp_path / "marker"
    group = tmp_path / "mine" / "hydra" / "hydra_logging"
    group.mkdir(parents=True)
    (group / "evil.yaml").write_text(
        "version: 1\nroot: {level: INFO}\n"
        f"filters: {{x: {{'()': builtins.open, file: '{marker}', mode: w}}}}\n"
    )
    result = train(f"--config-dir={tmp_path / 'mine'}", "hydra/hydra_logging=evil")
    assert result.returncode == 2, result.output
    assert "hydra.hydra_logging.filters.x.()=builtins.open" in result.stderr
    assert not marker.exists()
