"""landscape=interpolation|filter_normalized: the loss around a real run's weights, checked
against the loss computed directly on the same rows; its refusals; off by default."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import QuickRun

from gradtrain.build import build
from gradtrain.checkpoint import load_checkpoint
from gradtrain.config import validate_config
from gradtrain.errors import ConfigError
from gradtrain.insight.landscape import (
    LANDSCAPE_TAG,
    filter_normalized_directions,
    interpolation_alphas,
    landscape_rows,
)
from gradtrain.models import MLP
from gradtrain.run import seed_everything

QuickRunner = Callable[..., QuickRun]
Compose = Callable[..., dict[str, Any]]
RUN = (
    "experiment=mlp_classification",
    "model.hidden_sizes=[16]",
    "dataset.n_samples=256",
    "trainer.max_steps=60",
    "trainer.save_checkpoints=true",
    "landscape.rows=100",
)


def loss_on_rows(overrides: tuple[str, ...], weights: dict[str, torch.Tensor] | None) -> float:
    """The loss of the run's initial weights (None) or of `weights`, computed directly on the
    landscape's rows: loss_fn(model(inputs), targets)."""
    from conftest import compose_config, quick_overrides

    cfg = validate_config(compose_config(quick_overrides(overrides)))
    seed_everything(cfg.seed)
    parts = build(cfg)  # the run's own build: the same seed gives the same initial weights
    if weights is not None:
        parts.module.load_state_dict(weights)
    inputs, targets = landscape_rows(
        parts.data.train_loader, cfg.landscape.rows, cfg.seed, parts.device
    )
    with torch.no_grad():
        return parts.loss_fn(parts.module.eval()(inputs), targets).item()


def test_interpolation_at_0_and_1_is_the_loss_of_the_initial_and_final_weights(
    quick_run: QuickRunner,
) -> None:
    overrides = (*RUN, "landscape=interpolation", "landscape.points=9")
    run = quick_run(*overrides)
    entry = run.summary["landscape"]
    assert entry["kind"] == "interpolation"
    alphas, losses = entry["alphas"], entry["losses"]
    assert alphas[0] == -0.5 and alphas[-1] == 1.5 and len(alphas) == len(losses) == 9
    final = load_checkpoint(run.run_dir / "checkpoints" / "last.pt")["model"]
    initial_loss, final_loss = loss_on_rows(overrides, None), loss_on_rows(overrides, final)
    assert losses[alphas.index(0.0)] == pytest.approx(initial_loss, rel=1e-6)
    assert losses[alphas.index(1.0)] == pytest.approx(final_loss, rel=1e-6)
    assert final_loss < initial_loss  # it trained
    assert entry["rows"] == 100
    assert (run.run_dir / "landscape.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((run.run_dir / "summary.json").read_text())["landscape"] == entry


def test_filter_normalized_grid_is_centred_on_the_final_weights(quick_run: QuickRunner) -> None:
    overrides = (*RUN, "landscape=filter_normalized", "landscape.points=5", "landscape.span=0.5")
    run = quick_run(*overrides, "logger=tensorboard")
    entry = run.summary["landscape"]
    assert entry["grid"] == {"a": [-0.5, -0.25, 0.0, 0.25, 0.5]} | {
        "b": [-0.5, -0.25, 0.0, 0.25, 0.5]
    }
    losses = torch.tensor(entry["losses"])
    assert losses.shape == (5, 5)
    final = load_checkpoint(run.run_dir / "checkpoints" / "last.pt")["model"]
    assert losses[2, 2].item() == pytest.approx(loss_on_rows(overrides, final), rel=1e-5)
    assert losses.min().item() < losses.max().item()
    # The figure also went to TensorBoard.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    (image,) = events.Images(LANDSCAPE_TAG)
    assert image.step == run.summary["steps"]


def test_directions_are_scaled_filter_by_filter_and_leave_biases_alone() -> None:
    torch.manual_seed(0)
    model = MLP(3, 2, hidden_sizes=[4])
    first, second = filter_normalized_directions(model, seed=1)
    assert not torch.equal(first, second)
    offset = 0
    for parameter in model.parameters():
        piece = first[offset : offset + parameter.numel()].reshape(parameter.shape)
        offset += parameter.numel()
        if parameter.dim() == 1:
            assert torch.equal(piece, torch.zeros_like(piece))
        else:
            assert torch.allclose(piece.norm(dim=1), parameter.detach().norm(dim=1))
    assert torch.equal(filter_normalized_directions(model, seed=1)[0], first)  # seeded


def test_no_landscape_by_default_and_nothing_evaluated(quick_run: QuickRunner) -> None:
    run = quick_run(*RUN[:-1])
    assert "landscape" not in run.summary
    assert not (run.run_dir / "landscape.png").exists()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["landscape=interpolation"], "landscape=interpolation draws a network's loss over data"),
        (
            [
                "experiment=mlp_classification",
                "model.hidden_sizes=[2048,2048]",
                "landscape=filter_normalized",
                "landscape.points=41",
            ],
            "landscape=filter_normalized would cost about",
        ),
        (
            ["experiment=linear_regression", "landscape=interpolation", "landscape.points=1"],
            "landscape.points",
        ),
        (
            ["experiment=linear_regression", "landscape=interpolation", "landscape.rows=0"],
            "landscape.rows",
        ),
    ],
)
def test_a_landscape_that_makes_no_sense_or_costs_too_much_is_refused_by_key(
    composed: Compose, overrides: list[str], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(composed(*overrides))
    assert caught.value.exit_code == 2
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


def test_the_cost_refusal_states_the_estimate_and_the_keys(composed: Compose) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(
            composed(
                "experiment=mlp_classification",
                "model.hidden_sizes=[2048,2048]",
                "landscape=filter_normalized",
                "landscape.points=41",
            )
        )
    (problem,) = caught.value.problems
    assert "41²=1681 grid points" in problem or "1681 grid points" in problem
    assert "landscape.rows=256" in problem and "lower landscape.points or landscape.rows" in problem


def test_a_resumed_run_interpolates_from_the_initial_weights_not_the_checkpoint(
    quick_run: QuickRunner, tmp_path: Path
) -> None:
    run_dir = tmp_path / "resumed"
    first = (*RUN[:3], "trainer.max_steps=30", "trainer.save_checkpoints=true")
    quick_run(*first, run_dir=run_dir)
    overrides = (*RUN, "landscape=interpolation", "landscape.points=5")
    resumed = quick_run(*overrides, "trainer.resume=auto", run_dir=run_dir)
    entry = resumed.summary["landscape"]
    assert resumed.summary["steps"] == 60
    initial_loss = loss_on_rows(overrides, None)
    assert entry["losses"][entry["alphas"].index(0.0)] == pytest.approx(initial_loss, rel=1e-6)


@pytest.mark.parametrize("points", [2, 9, 10, 21, 41, 101])
def test_alphas_span_the_range_with_0_and_1_once_each(points: int) -> None:
    alphas = interpolation_alphas(points)
    assert alphas[0] == -0.5 and alphas[-1] == 1.5
    assert alphas.count(0.0) == 1 and alphas.count(1.0) == 1
    assert not any(0 < abs(a) < 1e-9 or 0 < abs(a - 1) < 1e-9 for a in alphas)
    assert points <= len(alphas) <= points + 2
