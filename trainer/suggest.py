"""The closest real key to one a user mistyped, for messages that say what to type instead.

Two places meet a typo: Hydra, when `trainer.max_step=5` overrides a key no config has (it
suggests `+trainer.max_step=5`, which adds the typo), and the schema, when `+trainer.max_step=5`
did add it. Both name the key the user most likely meant, found with difflib among the keys that
exist next to it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

# How alike (difflib's ratio, 0..1) a real key must be to a typed one to be suggested.
_CUTOFF = 0.6


def closest_key(typed: str, existing: Iterable[str]) -> str | None:
    """The dotted key of `existing` most like `typed`, or None when none is alike.

    `trainer.max_step` is matched against the keys beside it (`trainer.*`) by its last part,
    so the shared prefix does not make every `trainer` key look alike; a key whose section does
    not exist (`traner.max_steps`) is matched whole.
    """
    keys = list(existing)
    parent, _, name = typed.rpartition(".")
    siblings = {key.rpartition(".")[2]: key for key in keys if key.rpartition(".")[0] == parent}
    if siblings:
        found = difflib.get_close_matches(name, list(siblings), n=1, cutoff=_CUTOFF)
        return siblings[found[0]] if found else None
    found = difflib.get_close_matches(typed, keys, n=1, cutoff=_CUTOFF)
    return found[0] if found else None


def dotted_keys(node: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Every key of a nested mapping, sections and values alike: `trainer`, `trainer.max_steps`."""
    for key, value in node.items():
        yield f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from dotted_keys(value, f"{prefix}{key}.")


def flattened(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping's values by dotted key (`{"trainer.max_steps": 200, ...}`), sections
    left out: how the command line and a YAML file name them."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping):
            flat.update(flattened(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unknown_override_message(key: str, override: str, existing: Iterable[str]) -> str:
    """What to say when Hydra cannot override `key` (given as `override`) because no config has
    it: the closest real key, and the command-line override that sets it."""
    keys = sorted(existing)
    closest = closest_key(key, keys)
    value = override.partition("=")[2]
    if closest is not None:
        return (
            f"{key}: unknown key; did you mean {closest}? ({closest}={value} sets it; "
            f"`python train.py --help` lists the groups, configs/ every key)"
        )
    parent, _, name = key.rpartition(".")
    beside = sorted(k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent)
    listed = f"; {parent or 'the top level'} has: {', '.join(beside)}" if beside else ""
    where = _other_options(parent, name)
    return f"{key}: unknown key{where}{listed} (`python train.py --help` lists the groups)"


def _other_options(section: str, name: str) -> str:
    """`; a key of optimizer=adam, adamw` when another option of the group has the key."""
    from gradtrain.config import Config, section_options

    if section not in Config.model_fields:
        return ""
    options = section_options(section)  # (none for trainer or seed: one model, no options)
    owners = [option for option, model in options.items() if name in model.model_fields]
    return f"; a key of {section}={', '.join(owners)}" if owners else ""


def unknown_override_problem(
    error: str, overrides: list[str], compose: Callable[[list[str]], Mapping[str, Any]]
) -> str | None:
    """The message for Hydra's "Could not override 'trainer.max_step'" (an override of a key no
    config has): the closest real key, found by composing once more without that override with
    `compose`. None for any other error, or when the config fails without it too."""
    match = re.match(r"Could not override '([^']+)'\.", error)
    typed = [o for o in overrides if match and o.split("=", 1)[0] == match[1]]
    if match is None or not typed:
        return None
    try:
        composed = compose([o for o in overrides if o not in typed])
    except Exception:
        return None  # (another override fails too: Hydra's own message, for the first one)
    keys = dotted_keys({k: v for k, v in composed.items() if k != "hydra"})
    return unknown_override_message(match[1], typed[0], keys)
