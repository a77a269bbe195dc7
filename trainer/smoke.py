"""`trainer.fast_dev_run=true`: does this config train end to end? One training batch and one
validation batch through everything (forward, backward, update, logging, a checkpoint), with the
checkpoint and the event file written to a temporary folder that is removed afterwards: the run
folder keeps only summary.json."""

from __future__ import annotations

from gradtrain.config import Config


def fast_dev_config(cfg: Config) -> Config:
    """`cfg` shrunk to a one-update smoke run that logs, validates and checkpoints that update."""
    trainer = cfg.trainer.model_copy(
        update={
            "max_steps": 1,
            "max_epochs": None,
            "log_every_n_steps": 1,
            "limit_train_batches": 1,
            "limit_val_batches": 1,
            "overfit_batches": None,
            "val_every_n_steps": None,
            "checkpoint_every_n_steps": None,
            "resume": None,
        }
    )
    return cfg.model_copy(update={"trainer": trainer})
