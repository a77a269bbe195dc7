"""gradtrain: a config-driven PyTorch training loop that shows gradient-based minimization.

This folder (`trainer/`) is the package `gradtrain`. Its rooms:

- the core: `config` (every key), `registry`, `build`, `run`, `loop` (the Trainer: `train_step`
  is the lecture's step, `fit` the bookkeeping), `step` (forward and backward of a batch),
  `guard` (non-finite values), `checkpoint`, `distributed`, `signals`, `progress`, `errors`,
  `memory` (what a config needs), `hydra_keys` (what Hydra's own keys may name),
  `losses`, `models`, `optim` (the lecture's `ManualSGD`), `schedulers`; around the loop:
  `early_stopping` (the monitored metric's best and patience), `evaluation` (the epoch loss),
  `lr_find` (the LR range test), `smoke` (`trainer.fast_dev_run`);
- `metrics`: where numbers go (sinks, the event file, the dashboard layout, parameter stats);
- `insight`: the lecture made visible (explain, the autograd graph, the gradient check, figures);
- `sweeps`: one job of a sweep, the monitored metric, the sweep summary and figure;
- `plugins` (installed packages' components, entry points `gradtrain.plugins`) and
  `plugin_configs` (their YAML on Hydra's search path); `inference` (`load_run`: predictions);
- `gradtrain.datasets` (the `datasets/` folder) and `gradtrain.configs` (`configs/`);
- `api`: the Python API, `compose`, `fit` and their `Result` (README: Python API).

`from gradtrain import compose, fit, load_run, Result, Trainer` imports them on first use:
nothing is imported by `import gradtrain` itself, so `import gradtrain.config` does not load
torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradtrain.api import Result, compose, fit
    from gradtrain.inference import load_run
    from gradtrain.loop import Trainer

# name -> the module it comes from (PEP 562: loaded when first asked for)
_PUBLIC = {
    "compose": "gradtrain.api",
    "fit": "gradtrain.api",
    "Result": "gradtrain.api",
    "load_run": "gradtrain.inference",
    "Trainer": "gradtrain.loop",  # the loop itself: `train_step` is the update, `fit` the rest
}
__all__ = ["Result", "Trainer", "compose", "fit", "load_run"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'gradtrain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
