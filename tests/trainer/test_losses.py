"""The classic test functions (beale, himmelblau, booth, saddle): their gradients, their known
minima reached by real runs, and which minimum a run ends in."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import QuickRun, TrainResult

from gradtrain.config import validate_config
from gradtrain.errors import ConfigError
from gradtrain.insight.figures import loss_landscape, trajectory_png
from gradtrain.insight.gradient_check import check_gradients
from gradtrain.losses import LOSSES, ParameterLoss, known_minima
from gradtrain.models import VectorModel

QuickRunner = Callable[..., QuickRun]
CLASSIC = ["beale", "himmelblau", "booth", "saddle"]


def classic(name: str) -> Any:
    loss = LOSSES.get(name)()
    assert isinstance(loss, ParameterLoss)
    return loss


@pytest.mark.parametrize("name", CLASSIC)
def test_gradient_check_passes_at_the_start_and_at_random_points(name: str) -> None:
    loss = classic(name)
    generator = torch.Generator().manual_seed(0)
    points = [list(loss.standard_start)] + [
        (2 * torch.randn(2, generator=generator)).tolist() for _ in range(3)
    ]
    for point in points:
        check = check_gradients(VectorModel(point), loss, None, loss.analytic_gradient)
        assert check.passed, (point, check)
        assert [c.reference.split(" ")[0] for c in check.comparisons] == [
            "analytic",
            "central",
        ]


@pytest.mark.parametrize("name", CLASSIC)
def test_known_minima_are_stationary_points_with_the_stated_value(name: str) -> None:
    loss = classic(name)
    for value, point in known_minima(loss, 2):
        x = torch.tensor(point, dtype=torch.float64)
        assert loss.double()(x).item() == pytest.approx(value, abs=1e-10)
        assert loss.analytic_gradient(x).abs().max().item() < 1e-9


@pytest.mark.parametrize(
    ("name", "steps", "init"),
    [
        ("beale", 800, None),
        ("himmelblau", 400, None),
        ("booth", 1500, None),
        # Off the saddle's stable manifold, where Adam has a y-gradient to follow.
        ("saddle", 400, "model.init=[1.5,0.001]"),
    ],
)
def test_adam_reaches_the_known_minimum(
    quick_run: QuickRunner, name: str, steps: int, init: str | None
) -> None:
    # configs/tuning/<name>_adam.yaml gives the step size; the steps lift debug=fast's cap.
    overrides = [f"loss={name}", "optimizer=adam", f"trainer.max_steps={steps}"]
    summary = quick_run(*overrides, *([init] if init else [])).summary
    nearest = summary["nearest_minimum"]
    assert nearest["distance"] < 1e-3, nearest
    assert summary["final_loss"] == pytest.approx(nearest["value"], abs=1e-6)
    assert summary["params"] == pytest.approx(nearest["point"], abs=1e-3)


@pytest.mark.parametrize(
    ("start", "index"), [((4, 3), 0), ((-3, 3), 1), ((-4, -4), 2), ((4, -2), 3)]
)
def test_himmelblau_reports_which_of_its_four_minima_was_reached(
    quick_run: QuickRunner, start: tuple[int, int], index: int
) -> None:
    # Gradient descent (configs/tuning/himmelblau_manual_sgd.yaml) from a start in each quadrant.
    summary = quick_run(
        "loss=himmelblau",
        "trainer.max_steps=100",
        f"model.init=[{start[0]},{start[1]}]",
    ).summary
    assert summary["nearest_minimum"]["index"] == index
    assert summary["nearest_minimum"]["distance"] < 1e-3


def test_gradient_descent_on_the_stable_manifold_stays_in_the_saddle(
    quick_run: QuickRunner,
) -> None:
    for optimizer in (["optimizer=manual_sgd"], ["optimizer=sgd", "optimizer.momentum=0.9"]):
        summary = quick_run("loss=saddle", *optimizer, "trainer.max_steps=200").summary
        x, y = summary["params"]
        assert y == 0.0  # no y-gradient on y = 0, with momentum or without
        assert x == pytest.approx(0.0, abs=1e-4)
        assert summary["final_loss"] == pytest.approx(0.0, abs=1e-8)  # the saddle, not -1
        assert summary["nearest_minimum"]["distance"] == pytest.approx(math.sqrt(2), abs=1e-5)
    # A perturbation of y grows (the y-curvature is -2) and carries the run to a minimum.
    escaped = quick_run(
        "loss=saddle", "optimizer=manual_sgd", "model.init=[1.5,-0.000001]", "trainer.max_steps=200"
    ).summary
    assert escaped["nearest_minimum"]["point"] == pytest.approx([0.0, -math.sqrt(2)])
    assert escaped["final_loss"] == pytest.approx(-1.0, abs=1e-6)


@pytest.mark.slow  # four matplotlib renders; the landscape they draw is checked above
@pytest.mark.parametrize("name", CLASSIC)
def test_contour_figure_draws_each_function(name: str) -> None:
    loss = classic(name)
    points = torch.tensor([loss.standard_start, known_minima(loss, 2)[0][1]], dtype=torch.float64)
    png = trajectory_png([0, 1], points, loss_landscape(loss), known_minima(loss, 2)[0][1], name)
    assert png.startswith(b"\x89PNG")


@pytest.mark.parametrize("name", CLASSIC)
def test_test_functions_take_exactly_two_parameters(
    composed: Callable[..., dict[str, Any]], name: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(composed(f"loss={name}", "model.size=3"))
    assert any(f"loss={name} is a function of 2 parameters" in p for p in caught.value.problems)


@pytest.mark.parametrize("name", [*CLASSIC, "quadratic_form"])
def test_explain_checks_the_analytic_gradient_of_each(quick_run: QuickRunner, name: str) -> None:
    run = quick_run(f"loss={name}", "explain=true", "trainer.max_steps=2")
    assert run.summary["gradient_check"]["passed"]
    text = (run.run_dir / "explain.md").read_text()
    loss_class = type(LOSSES.get(name)()).__name__
    size = 10 if name == "quadratic_form" else 2  # (configs/loss/quadratic_form.yaml: dim 10)
    assert f"| {loss_class}.analytic_gradient | {size} of {size} |" in text


def test_the_sweep_figure_races_optimizers_on_a_test_function(
    quick_run: QuickRunner, tmp_path: Path
) -> None:
    from gradtrain.insight.figures import draw_sweep_comparison

    sweep = tmp_path / "sweep"
    for job, optimizer in enumerate(("manual_sgd", "adam")):
        quick_run(
            "loss=himmelblau",
            f"optimizer={optimizer}",
            "trainer.max_steps=100",
            "logger=tensorboard",
            "logger.figures=true",
            run_dir=sweep / f"{job}_optimizer={optimizer}",
        )
    figure = draw_sweep_comparison(sweep)
    assert figure is not None and figure.read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow  # train.py in a subprocess: the exit status and the message a user sees
@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["loss=quadratic_form", "loss.condition_number=0.5"], "loss.condition_number"),
        (["loss=quadratic_form", "loss.dim=0"], "loss.dim"),
        (["landscape=interpolation"], "landscape=interpolation"),
        (
            [
                "experiment=mlp_classification",
                "model.hidden_sizes=[2048,2048]",
                "landscape=filter_normalized",
                "landscape.points=41",
            ],
            "landscape.points",
        ),
    ],
)
def test_bad_theory_settings_exit_2_naming_the_key(
    train: Callable[..., TrainResult], args: list[str], key: str
) -> None:
    result = train(*args)
    assert result.returncode == 2, result.output
    assert key in result.stderr
    assert "Traceback" not in result.output
    assert not (result.run_dir / "summary.json").exists()
