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
- `gradtrain.datasets` (the `datasets/` folder) and `gradtrain.configs` (`configs/`).

Nothing is imported here, so `import gradtrain.config` does not load torch.
"""
