"""Components of installed packages: the entry-point group `gradtrain.plugins`.

An installed distribution adds a model, loss, dataset, optimizer or scheduler with one entry
point per component, named `<section>.<name>` (the section of the config and the name a config
chooses it by):

    [project.entry-points."gradtrain.plugins"]
    "model.polynomial" = "gradtrain_polynomial:polynomial"

The object it names is a `Component`: the pydantic model of the section's keys (a
`gradtrain.config.StrictModel` with `name: Literal["polynomial"]`, validated like the built-ins')
and the factory that builds it. Its Hydra YAML (`configs/model/polynomial.yaml`) lies in the
folder `configs/` of the entry point's top-level package (see `config_folders`).

Nothing is imported from a name typed on the command line: a config can only choose among the
entry points installed distributions declare, and one loads (imports its module) only when a
config chooses it, or when an error lists a section's choices.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast, get_args

from gradtrain.errors import GradtrainError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

log = logging.getLogger("gradtrain")

GROUP = "gradtrain.plugins"
# The sections a plugin can add to, and how build.py calls each factory (README: Plugins).
SECTIONS = ("loss", "model", "dataset", "optimizer", "scheduler")


@dataclass(frozen=True)
class Component:
    """What an entry point of `gradtrain.plugins` names.

    `config`: the section's keys, a subclass of `gradtrain.config.StrictModel` whose `name` is
    `Literal["<the entry point's name>"]` (a dataset's subclasses `LoaderSettings` and says its
    `task`, "regression" or "classification"). `build`: the factory, called with the section's
    keys but `name` as keyword arguments (a model's first with `in_features, out_features`, an
    optimizer's with the parameters, a scheduler's with the optimizer and the run's total steps,
    a dataset's with `seed` too, returning a `gradtrain.datasets.InMemoryDataset`).
    """

    config: type[Any]
    build: Callable[..., Any]


class PluginError(GradtrainError):
    """An installed plugin is broken: it fails to import, or names the wrong things."""


@functools.cache
def _entry_points() -> dict[tuple[str, str], EntryPoint]:
    """(section, name) -> entry point, for every installed distribution's entry point in
    GROUP. Read from the installed metadata only: nothing is imported."""
    from importlib.metadata import entry_points

    found: dict[tuple[str, str], EntryPoint] = {}
    for point in entry_points(group=GROUP):
        section, _, name = point.name.partition(".")
        if section not in SECTIONS or not name:
            log.warning(
                "Ignoring the entry point '%s' of %s in %s: its name must be <section>.<name> "
                "with a section of: %s",
                point.name,
                _distribution(point),
                GROUP,
                ", ".join(SECTIONS),
            )
            continue
        if (section, name) in found:
            log.warning(
                "Two installed plugins add %s=%s (%s and %s); the first is used",
                section,
                name,
                _distribution(found[section, name]),
                _distribution(point),
            )
            continue
        found[section, name] = point
    return found


def rescan() -> None:
    """Forget what was found and loaded, so that the next lookup reads the installed
    distributions again (after installing one into a running process, as tests do)."""
    _entry_points.cache_clear()
    component.cache_clear()


def names(section: str) -> list[str]:
    """The names the installed plugins add to `section` (nothing is imported)."""
    return sorted(name for kind, name in _entry_points() if kind == section)


@functools.cache
def component(section: str, name: str) -> Component | None:
    """The installed plugin's component `section=name` (its module imported now), or None
    when no installed distribution declares one."""
    point = _entry_points().get((section, name))
    if point is None:
        return None
    where = f"the plugin {section}={name} ({point.value}, from {_distribution(point)})"
    try:
        loaded = point.load()
    except Exception as exc:  # a broken plugin: said as such, whatever it raised
        raise PluginError(f"{where} failed to load: {type(exc).__name__}: {exc}") from exc
    if not isinstance(loaded, Component):
        raise PluginError(
            f"{where} names a {type(loaded).__name__}, not a gradtrain.plugins.Component"
        )
    _check_config_model(where, loaded.config, name)
    return loaded


def _check_config_model(where: str, config: Any, name: str) -> None:
    from gradtrain.config import StrictModel

    if not (isinstance(config, type) and issubclass(config, StrictModel)):
        raise PluginError(f"{where}: its config must be a subclass of gradtrain.config.StrictModel")
    field = cast(type[StrictModel], config).model_fields.get("name")
    if field is None or get_args(field.annotation) != (name,):
        raise PluginError(f'{where}: its config needs the key `name: Literal["{name}"]`')


def config_folders() -> list[Path]:
    """The `configs/` folder of each installed plugin's top-level package, where its Hydra
    YAML lies (`configs/model/polynomial.yaml`). Found without importing the plugin."""
    folders: list[Path] = []
    for point in _entry_points().values():
        package = point.module.split(".")[0]
        try:
            spec = importlib.util.find_spec(package)  # (a top-level name: imports nothing)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            folder = Path(location) / "configs"
            if folder.is_dir() and folder not in folders:
                folders.append(folder)
    return folders


def _distribution(point: EntryPoint) -> str:
    dist = getattr(point, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "an installed distribution"
