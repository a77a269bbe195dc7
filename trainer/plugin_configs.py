"""Hydra finds the YAML of installed plugins (`model=polynomial`) through a search path plugin.

`train.py` and `compose` call `add_plugin_configs()` before Hydra composes: from then on, every
composition of gradtrain's configs in this process also searches the `configs/` folder of each
installed plugin (`gradtrain.plugins.config_folders`), after gradtrain's own (a built-in name
wins). Compositions of other applications' configs are left alone.
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

from gradtrain import plugins

GRADTRAIN_CONFIGS = "pkg://gradtrain.configs"


class PluginConfigs(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not any(element.path == GRADTRAIN_CONFIGS for element in search_path.get_path()):
            return  # another Hydra application composing in this process
        for folder in plugins.config_folders():
            search_path.append(provider="gradtrain-plugin", path=f"file://{folder}")


def add_plugin_configs() -> None:
    """Register `PluginConfigs` with Hydra (again: harmless), and the resolver through which
    `--help` (configs/hydra/help/gradtrain.yaml) lists the installed plugins' options."""
    Plugins.instance().register(PluginConfigs)
    OmegaConf.register_new_resolver("gradtrain_plugins", plugin_options, replace=True)


def plugin_options(section: str) -> str:
    """`, polynomial` after a group's built-in options in `--help`: the names installed plugins
    add to `section` (from their entry points: nothing imported), or nothing."""
    names = plugins.names(section) if section in plugins.SECTIONS else []
    return "".join(f", {name}" for name in names)
