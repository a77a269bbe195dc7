"""gradtrain: a config-driven PyTorch training loop that shows gradient-based minimization.

This folder (`trainer/`) is the package `gradtrain`. Its rooms:

- the core: `config` (every key), `registry`, `build`, `run`, `loop` (the Trainer: `train_step`
  is the lecture's step, `fit` the bookkeeping), `step` (forward and backward of a batch),
  `guard` (non-finite values), `checkpoint`, `distributed`, `signals`, `progress`, `errors`,
  `memory` (what a config needs), `hydra_keys` (what Hydra's own keys may name),
  `losses`, `models`, `optim` (the lecture's `ManualSGD`), `schedulers`;
- `metrics`: where numbers go (sinks, the event file, the dashboard layout, parameter stats);
- `insight`: the lecture made visible (explain, the autograd graph, the gradient check, figures);
- `sweeps`: one job of a sweep, the monitored metric, the sweep summary and figure;
- `plugins` (installed packages' components, entry points `gradtrain.plugins`) and
  `plugin_configs` (their YAML on Hydra's search path); `inference` (`load_run`: predictions);
- `gradtrain.datasets` (the `datasets/` folder) and `gradtrain.configs` (`configs/`).

Nothing heavy is imported here, so `import gradtrain.config` does not load torch.
"""

import importlib as _importlib

# The public API, imported on first use (`gradtrain.load_run`), so that importing the package
# (or `gradtrain.config`) still loads nothing heavy: name -> the module that defines it.
_PUBLIC = {"load_run": "gradtrain.inference"}
__all__ = list(_PUBLIC)


def __getattr__(name: str) -> object:
    if name in _PUBLIC:
        return getattr(_importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'gradtrain' has no attribute {name!r}")
