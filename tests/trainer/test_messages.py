"""Errors that say what to do: a full batch for L-BFGS, the closest real key to a typo, every
mandatory key at once, and gradtrain's own `--help` (in-process here; the subprocess checks of
exit 2 and the printed text are in tests/test_messages_cli.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import QuickRun
from hydra import compose, initialize_config_module

from gradtrain.errors import ConfigError
from gradtrain.plugin_configs import add_plugin_configs
from gradtrain.suggest import closest_key, unknown_override_message

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# Groups a user chooses from; tuning/ (step sizes the defaults list picks) and debug/ are not.
HELP_GROUPS = [
    "experiment",
    "loss",
    "model",
    "dataset",
    "optimizer",
    "scheduler",
    "trainer",
    "logger",
    "landscape",
    "hparams_search",
]


# ------------------------------------------------------------------------------ L-BFGS's batch
def test_lbfgs_takes_a_batch_size_that_covers_the_training_rows(
    quick_run: Callable[..., QuickRun],
) -> None:
    # 100 rows, 80 for training: batch_size=80 and =500 are each the whole split in one batch.
    for batch_size in (80, 500):
        run = quick_run(
            "experiment=linear_regression",
            "optimizer=lbfgs",
            "dataset.n_samples=100",
            "dataset.val_fraction=0.2",
            f"dataset.batch_size={batch_size}",
            "trainer.max_steps=2",
        )
        assert run.summary["status"] == "completed" and run.summary["steps"] == 2


def test_lbfgs_on_minibatches_names_the_training_rows(
    quick_run: Callable[..., QuickRun],
) -> None:
    with pytest.raises(ConfigError) as refused:
        quick_run(
            "experiment=linear_regression",
            "optimizer=lbfgs",
            "dataset.n_samples=100",
            "dataset.val_fraction=0.2",
            "dataset.batch_size=79",
        )
    assert refused.value.problems == [
        "optimizer=lbfgs is full-batch, in one process: set dataset.batch_size=null (or >= 80, "
        "the training rows; it is 79)"
    ]
    assert refused.value.exit_code == 2


# ------------------------------------------------------------------------------ typo'd keys
@pytest.mark.parametrize(
    ("typed", "closest"),
    [
        ("trainer.max_step", "trainer.max_steps"),
        ("trainer.max_epoch", "trainer.max_epochs"),
        ("traner.max_steps", "trainer.max_steps"),  # the section itself mistyped
        ("optimzer", "optimizer"),
        ("dataset.batchsize", "dataset.batch_size"),
        ("trainer.colour", None),  # nothing alike
    ],
)
def test_closest_key_is_the_likely_meant_one(typed: str, closest: str | None) -> None:
    existing = [
        "optimizer",
        "optimizer.lr",
        "trainer",
        "trainer.max_steps",
        "trainer.max_epochs",
        "trainer.device",
        "dataset",
        "dataset.batch_size",
    ]
    assert closest_key(typed, existing) == closest


def test_an_unknown_override_names_the_real_key_and_how_to_set_it() -> None:
    message = unknown_override_message(
        "trainer.max_step", "trainer.max_step=5", ["trainer.max_steps", "trainer.device"]
    )
    assert message.startswith(
        "trainer.max_step: unknown key; did you mean trainer.max_steps? (trainer.max_steps=5 "
        "sets it;"
    )
    # Nothing alike: what the section has, and another option of the group that has it.
    message = unknown_override_message(
        "optimizer.betas", "optimizer.betas=[0.9,0.9]", ["optimizer.lr", "optimizer.name"]
    )
    assert "a key of optimizer=adam, adamw; optimizer has: lr, name" in message


def test_a_typo_added_with_plus_is_refused_naming_the_closest_key(
    composed: Callable[..., dict[str, Any]],
) -> None:
    from gradtrain.config import validate_config

    with pytest.raises(ConfigError) as refused:
        validate_config(
            composed(
                "experiment=mlp_classification", "+trainer.max_step=5", "+model.hiden_sizes=[3]"
            )
        )
    first, second = refused.value.problems
    assert first.startswith("model.hiden_sizes: unknown key; did you mean model.hidden_sizes?")
    assert second.startswith("trainer.max_step: unknown key; did you mean trainer.max_steps?")


# ------------------------------------------------------------------------------ --help
def help_text() -> str:
    """What `python train.py --help` prints, before Hydra fills in its $-variables (the
    template names none: every line is gradtrain's)."""
    add_plugin_configs()  # (its resolver lists installed plugins' options: none here)
    with initialize_config_module("gradtrain.configs", version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    return str(cfg.hydra.help.template)


def group_lines(text: str) -> dict[str, str]:
    """The help's lines between `Groups` and `Examples`, by their first word."""
    section = text.split("Groups (group=option):", 1)[1].split("Examples:", 1)[0]
    return {line.split()[0]: line for line in section.splitlines() if line.strip()}


def test_help_has_one_line_per_group_listing_exactly_its_options() -> None:
    lines = group_lines(help_text())
    assert list(lines) == HELP_GROUPS
    for group in HELP_GROUPS:
        options = sorted(path.stem for path in (CONFIGS / group).glob("*.yaml"))
        listed = lines[group].split(None, 1)[1].split(":", 1)[0]
        assert sorted(listed.split(", ")) == options, group
        assert len(lines[group].split(":", 1)[1].strip()) > 10, f"{group}: what it is for"


def test_help_hides_internal_groups_and_hydras_stock_text() -> None:
    text = help_text()
    assert "tuning" not in group_lines(text) and "debug" not in group_lines(text)
    assert "Powered by Hydra" not in text and "$APP_CONFIG_GROUPS" not in text
    examples = [line.strip() for line in text.splitlines() if "python train.py" in line]
    assert len(examples) >= 4
