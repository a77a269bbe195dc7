"""Figures of the optimizer's path: recorded at logging steps, drawn as PNG, read back from the
real event files; and one figure for a whole sweep."""

from __future__ import annotations

import io
import itertools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import QuickRun, TrainResult

from gradtrain.insight.figures import (
    FIGURE_TAG,
    draw_sweep_comparison,
    loss_landscape,
    principal_projection,
    trajectory_png,
)
from gradtrain.insight.trajectory import Trajectory, load_trajectory, save_trajectory
from gradtrain.losses import QuadraticLoss, RosenbrockLoss
from gradtrain.metrics.sinks import TensorBoardSink, png_size

Compose = Callable[..., dict[str, Any]]
Quick = Callable[..., QuickRun]
FIGURES = ("logger=tensorboard", "logger.figures=true")  # quick runs draw none otherwise


def read_images(log_dir: Path) -> list[tuple[int, bytes]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    accumulator.Reload()
    if FIGURE_TAG not in accumulator.Tags()["images"]:
        return []
    return [(event.step, event.encoded_image_string) for event in accumulator.Images(FIGURE_TAG)]


def decode(png: bytes) -> tuple[int, int]:
    """Width and height of a PNG, decoded in full by Pillow (matplotlib's own dependency)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    image.load()
    return image.size


# ------------------------------------------------------------------------------ in a run
def test_rosenbrock_run_logs_its_path_every_n_steps_and_at_the_end(quick_run: Quick) -> None:
    result = quick_run(
        *FIGURES,
        "loss=rosenbrock",
        "trainer.max_steps=45",
        "trainer.log_every_n_steps=10",
        "logger.figure_every_n_steps=20",
    )
    images = read_images(result.run_dir / "tensorboard")
    assert [step for step, _ in images] == [20, 40, 45]
    for _, png in images:
        assert decode(png) == png_size(png) == (640, 480)
    _, steps, points = load_trajectory(result.run_dir / "trajectory.json")
    assert steps == [0, 1, 10, 20, 30, 40, 45]  # the start, then the logging steps
    assert points[0].tolist() == [-1.5, 2.0]
    assert points[-1].tolist() == pytest.approx(
        json.loads((result.run_dir / "summary.json").read_text())["params"]
    )


@pytest.mark.parametrize(
    "overrides",
    [["model.size=1"], ["model.size=2"], [], ["experiment=linear_regression"]],
    ids=["1-d curve", "2-d contour", "5-d projection", "linear model projection"],
)
def test_every_problem_gets_one_figure_at_the_end(quick_run: Quick, overrides: list[str]) -> None:
    result = quick_run(*FIGURES, "trainer.max_steps=30", *overrides)
    ((step, png),) = read_images(result.run_dir / "tensorboard")
    assert step == result.summary["steps"]
    assert decode(png) == (640, 480)


def test_figures_false_draws_nothing_and_records_no_path(quick_run: Quick) -> None:
    result = quick_run(
        "logger=tensorboard", "logger.figures=false", "loss=rosenbrock", "trainer.max_steps=20"
    )
    assert read_images(result.run_dir / "tensorboard") == []
    assert not (result.run_dir / "trajectory.json").exists()


def test_without_matplotlib_the_run_says_so_in_one_line_and_goes_on(
    quick_run: Quick, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    with caplog.at_level(logging.WARNING, logger="gradtrain"):
        result = quick_run(*FIGURES, "loss=rosenbrock", "trainer.max_steps=20")
    assert result.summary["status"] == "completed"
    (message,) = [r.getMessage() for r in caplog.records if "matplotlib" in r.getMessage()]
    assert message.startswith("figures skipped: matplotlib is not installed")
    assert "\n" not in message
    assert read_images(result.run_dir / "tensorboard") == []
    assert (result.run_dir / "trajectory.json").exists()  # the path itself needs no matplotlib


# ------------------------------------------------------------------------------- the pieces
def test_trajectory_keeps_at_most_max_points_evenly_and_always_the_latest() -> None:
    trajectory = Trajectory(max_points=8)
    parameter = torch.zeros(3)
    for step in range(0, 1001, 10):  # 101 logging steps
        parameter += 1
        trajectory.record(step, [parameter])
    steps, points = trajectory.path()
    assert steps[0] == 0 and steps[-1] == 1000
    assert len(steps) <= 9
    gaps = {b - a for a, b in itertools.pairwise(steps[:-1])}
    assert len(gaps) == 1  # evenly spaced, but for the latest
    assert points.shape == (len(steps), 3) and points.dtype == torch.float64
    assert points[-1].tolist() == [101.0, 101.0, 101.0]


def test_recorded_points_are_copies_not_views_of_the_parameter() -> None:
    trajectory = Trajectory()
    parameter = torch.tensor([1.0, 2.0])
    trajectory.record(0, [parameter])
    parameter.mul_(10)
    trajectory.record(1, [parameter])
    assert trajectory.path()[1].tolist() == [[1.0, 2.0], [10.0, 20.0]]


def test_principal_projection_of_a_straight_path_has_one_direction() -> None:
    line = torch.linspace(0, 1, 11, dtype=torch.float64)[:, None] * torch.arange(1.0, 6.0)
    (coords,), shares = principal_projection([line.double()])
    assert shares[0] == pytest.approx(1.0) and shares[1] == pytest.approx(0.0, abs=1e-12)
    assert coords.shape == (11, 2)
    assert coords[:, 1].abs().max() < 1e-12
    # Distances along the path are kept: it is a rotation of the line onto the first axis.
    assert (coords[-1, 0] - coords[0, 0]).abs().item() == pytest.approx(55**0.5)


def test_landscape_evaluates_the_loss_at_many_points_at_once() -> None:
    points = torch.tensor([[1.0, 1.0], [-1.5, 2.0], [0.0, 0.0]], dtype=torch.float64)
    assert loss_landscape(RosenbrockLoss())(points).tolist() == [0.0, 12.5, 1.0]
    vector = loss_landscape(QuadraticLoss(reduction="none"))
    assert vector(torch.tensor([[0.0, 1.0]])).tolist() == [-9.0]  # summed: (0 - 5) + (1 - 5)


def test_diverged_paths_are_drawn_up_to_their_last_finite_point() -> None:
    points = torch.tensor([[-1.5, 2.0], [10.0, -30.0], [float("inf"), float("nan")]])
    png = trajectory_png(
        [0, 10, 20], points.double(), loss_landscape(RosenbrockLoss()), [1.0, 1.0], "t"
    )
    assert decode(png) == (640, 480)


def _paths_with_one_gone(dim: int) -> list[tuple[str, list[int], torch.Tensor]]:
    """Two paths that stay near the start and one that leaves for 1e21 and then for NaN."""
    start = torch.linspace(-1.5, 2.0, dim, dtype=torch.float64)
    calm = torch.stack([start, start * 0.5, start * 0.1 + 0.9])
    gone = torch.stack([start, start * 3, start * 1e21, torch.full((dim,), float("nan"))])
    return [
        ("lr=0.001", [0, 10, 20], calm),
        ("lr=0.01", [0, 10, 20], calm * 0.9),
        ("lr=1.5", [0, 10, 20, 30], gone.double()),
    ]


@pytest.mark.parametrize("dim", [1, 2, 5])  # on the loss curve, on contours, projected
def test_a_diverged_path_leaves_the_frame_marked_and_does_not_set_its_scale(dim: int) -> None:
    from gradtrain.insight.figures import comparison_figure, diverged_paths

    paths = _paths_with_one_gone(dim)
    landscape = loss_landscape(RosenbrockLoss()) if dim == 2 else None
    if dim == 1:
        landscape = loss_landscape(QuadraticLoss())
    assert diverged_paths(paths, None) == [False, False, True]
    ax = comparison_figure(paths, landscape, None, "t").axes[0]
    x_low, x_high = ax.get_xlim()
    assert x_low > -10 and x_high < 10  # the frame of the calm paths, not 1e21
    labels = ax.get_legend_handles_labels()[1]
    # Its point at step 10, 3 times its start, is already beyond the calm paths' frame.
    assert "lr=1.5 (diverged: left the frame at step 10)" in labels
    assert "lr=0.001" in labels and "where a diverged path leaves the frame" in ax.get_title()


def test_tensorboard_sink_stores_the_png_as_it_is(tmp_path: Path) -> None:
    png = trajectory_png([0, 1], torch.tensor([[0.0], [1.0]]).double(), None, None, "t")
    sink = TensorBoardSink(tmp_path)
    sink.log_image(FIGURE_TAG, png, step=7)
    sink.close()
    assert read_images(tmp_path) == [(7, png)]
    with pytest.raises(ValueError, match="not a PNG"):
        png_size(b"GIF89a...")


def test_sweep_figure_labels_jobs_by_what_sets_them_apart(tmp_path: Path) -> None:
    problem = {"loss": {"name": "rosenbrock", "a": 1.0, "b": 100.0}, "parameter_loss": True}
    for number, optimizer in enumerate(["sgd", "adam"]):
        job = tmp_path / f"{number}_optimizer={optimizer}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(
            f"- loss=rosenbrock\n- optimizer={optimizer}\n"
        )
        trajectory = Trajectory()
        trajectory.record(0, [torch.tensor([-1.5, 2.0])])
        trajectory.record(10, [torch.tensor([0.5 * number, 0.5])])
        save_trajectory(job / "trajectory.json", trajectory, problem)
    figure = draw_sweep_comparison(tmp_path)
    assert figure == tmp_path / "trajectories.png"
    assert decode(figure.read_bytes()) == (640, 480)
    from gradtrain.insight.figures import _job_labels

    assert _job_labels(sorted(p for p in tmp_path.iterdir() if p.is_dir())) == [
        "optimizer=sgd",
        "optimizer=adam",
    ]


@pytest.mark.slow  # a real sweep; the figure itself is drawn in-process above
def test_sweep_of_optimizers_on_rosenbrock_draws_one_figure(
    train: Callable[..., TrainResult], tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    result = train(
        "-m",
        "loss=rosenbrock",
        "optimizer=manual_sgd,sgd,adam",
        "trainer.max_steps=40",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.output
    jobs = sorted(path.name for path in sweep.iterdir() if path.is_dir())
    assert len(jobs) == 3
    assert all((sweep / job / "trajectory.json").exists() for job in jobs)
    assert decode((sweep / "trajectories.png").read_bytes()) == (640, 480)
    assert str(sweep / "trajectories.png") in result.output


def test_figure_settings_are_validated_with_the_rest_of_the_config(composed: Compose) -> None:
    from gradtrain.config import validate_config
    from gradtrain.errors import ConfigError

    cfg = validate_config(composed())
    assert cfg.logger.name == "tensorboard"
    assert cfg.logger.figures is True and cfg.logger.figure_every_n_steps is None
    with pytest.raises(ConfigError) as caught:
        validate_config(composed("logger.figure_every_n_steps=0", "+logger.figurez=1"))
    assert sorted(problem.split(":")[0] for problem in caught.value.problems) == [
        "logger.figure_every_n_steps",
        "logger.figurez",
    ]
