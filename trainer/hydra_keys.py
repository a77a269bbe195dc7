"""Hydra's own keys (`hydra.*`): which objects a composed config may have Hydra create.

Not gradtrain's schema (that is config.py): these keys configure Hydra itself, and train.py
screens them before Hydra acts on them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Hydra instantiates objects named under `hydra.*` itself, before gradtrain sees the config:
# each `hydra.callbacks` entry's `_target_` (any importable callable), the launcher's and the
# sweeper's arguments (recursively, wherever a `_target_` appears), Optuna's sampler and
# `custom_search_space`, and the logging configs' factories (`()`) and classes, through
# `logging.config.dictConfig`. So that a config reaches only gradtrain's own objects, train.py
# screens the composed `hydra` node with `hydra_config_problems` before Hydra acts on it.
HYDRA_CALLBACKS = (
    "gradtrain.sweeps.summary.SweepSummary",
    "gradtrain.sweeps.figure_callback.TrajectoryFigureCallback",
    "gradtrain.sweeps.names.SweepNames",
)
# The samplers hydra-optuna-sweeper's own configs name (hydra/sweeper/sampler=tpe, ...).
OPTUNA_SAMPLERS = tuple(
    f"optuna.samplers.{name}"
    for name in (
        "TPESampler",
        "RandomSampler",
        "GridSampler",
        "CmaEsSampler",
        "NSGAIISampler",
        "MOTPESampler",
        "QMCSampler",
    )
)
# Hydra itself instantiates only installed Hydra plugins for these two.
_PLUGIN_TARGETS = ("launcher._target_", "sweeper._target_")


def hydra_config_problems(hydra: Mapping[str, Any]) -> list[str]:
    """One line per object the `hydra` node (plain data) would have Hydra create that is not
    gradtrain's callbacks, a Hydra plugin, one of Optuna's samplers or a logging class."""
    problems = hydra_callback_problems(hydra.get("callbacks"))
    for key, value in _leaves(hydra):
        name = key.rsplit(".", 1)[-1]
        if key.startswith("callbacks.") or key in _PLUGIN_TARGETS:
            continue
        if name == "_target_" and not (
            key == "sweeper.sampler._target_" and value in OPTUNA_SAMPLERS
        ):
            allowed = " (one of Optuna's samplers)" if key == "sweeper.sampler._target_" else ""
            problems.append(
                f"hydra.{key}={value}: Hydra would instantiate it{allowed}; a config names "
                "only gradtrain's own objects"
            )
        elif key == "sweeper.custom_search_space" and value is not None:
            problems.append(
                f"hydra.{key}={value}: the Optuna sweeper would call it; a config names only "
                "gradtrain's own objects (give the search space in hydra.sweeper.params)"
            )
        elif key.startswith(("hydra_logging.", "job_logging.")) and (
            name == "()" or (name == "class" and not _is_logging_class(value))
        ):
            problems.append(
                f"hydra.{key}={value}: logging's configuration may name the logging module's "
                "handlers, formatters and filters by `class` only (logging.StreamHandler, "
                "logging.FileHandler, logging.Formatter, ...), no factory `()`"
            )
    return problems


def hydra_callback_problems(callbacks: Mapping[str, Any] | None) -> list[str]:
    """One line per `hydra.callbacks` entry that is not exactly one of HYDRA_CALLBACKS (without
    arguments, which Hydra would instantiate too, recursively)."""
    problems = []
    for name, entry in (callbacks or {}).items():
        if entry is None:  # (what `hydra.callbacks.x=null` leaves; Hydra creates nothing)
            continue
        target = entry.get("_target_") if isinstance(entry, Mapping) else None
        if target in HYDRA_CALLBACKS and set(entry) == {"_target_"}:
            continue
        shown = f"_target_={target}" if target is not None else f"{entry!r}"
        problems.append(
            f"hydra.callbacks.{name}: {shown} is not one of gradtrain's callbacks; a config "
            f"names only gradtrain's own objects: {', '.join(HYDRA_CALLBACKS)} (without "
            f"arguments); remove it with ~hydra.callbacks.{name}"
        )
    return problems


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every value that is not a mapping or a list, at any depth."""
    items = node.items() if isinstance(node, Mapping) else enumerate(node)
    for key, value in items:
        if isinstance(value, Mapping | list):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _is_logging_class(name: Any) -> bool:
    """Whether `name` is `logging.<Class>` or `logging.handlers.<Class>`, a Handler, Formatter
    or Filter: a dotted name is not enough (`logging.os.system` reaches `os` through it)."""
    import importlib
    import logging
    import re

    match = (
        re.fullmatch(r"(logging(?:\.handlers)?)\.(\w+)", name) if isinstance(name, str) else None
    )
    if match is None:
        return False
    found = getattr(importlib.import_module(match[1]), match[2], None)
    kinds = (logging.Handler, logging.Formatter, logging.Filter)
    return isinstance(found, type) and issubclass(found, kinds)
