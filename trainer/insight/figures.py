"""Pictures of the minimization: the optimizer's path on the loss landscape.

With 1 or 2 parameters and a loss of the parameters alone (quadratic, Rosenbrock) the path is
drawn on the loss curve or its contours; otherwise it is projected on the path's two principal
directions. matplotlib is optional and imported only here, inside the drawing functions, through
its object-oriented API (no pyplot, no global backend switch); figures are PNG bytes.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from gradtrain.insight.trajectory import (
    MAX_PARAMETERS,
    TRAJECTORY_FILE,
    Trajectory,
    save_trajectory,
)
from gradtrain.losses import ParameterLoss
from gradtrain.metrics.sinks import MetricSink
from gradtrain.models import VectorModel
from gradtrain.step import summed

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from gradtrain.build import Components
    from gradtrain.config import Config

log = logging.getLogger("gradtrain")

FIGURE_TAG = "watch/trajectory"
MATPLOTLIB_MISSING = (
    "figures skipped: matplotlib is not installed (pip install matplotlib, or set "
    "logger.figures=false to stop this message)"
)
# Loss values at points: (n_points, n_parameters) float64 -> (n_points,).
Landscape = Callable[[Tensor], Tensor]


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def loss_landscape(loss_fn: nn.Module) -> Landscape:
    """The loss (summed, if a vector) as a function of the parameter vector, vectorised."""
    loss64 = copy.deepcopy(loss_fn).to("cpu", torch.float64)

    def landscape(points: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.vmap(lambda x: summed(loss64(x)))(points.to(torch.float64))

    return landscape


# ------------------------------------------------------------------------- figures of a run
class TrajectoryFigures:
    """Records a run's parameter path and draws it to the sink: at the first logging step on or
    after each multiple of `every_n_steps` (if set), and at the end."""

    def __init__(
        self,
        sink: MetricSink,
        title: str,
        landscape: Landscape | None = None,
        minimizer: Sequence[float] | None = None,
        every_n_steps: int | None = None,
        draw: bool = True,
        problem: dict[str, Any] | None = None,
    ) -> None:
        self.sink = sink
        self.problem = problem or {}  # saved with the path, for figures across a sweep
        self.title = title
        self.landscape = landscape
        self.minimizer = minimizer
        self.every_n_steps = every_n_steps
        self.draw_enabled = draw
        self.trajectory = Trajectory(on_record=self._on_record)
        self._next_step = every_n_steps
        self._last_drawn: int | None = None

    @classmethod
    def for_run(cls, cfg: Config, parts: Components, sink: MetricSink) -> TrajectoryFigures | None:
        """The figures `cfg` asks for, or None (saying why, when figures were asked for)."""
        logger = cfg.logger
        if logger.name != "tensorboard" or not logger.figures:
            return None
        n_parameters = sum(p.numel() for p in parts.module.parameters() if p.requires_grad)
        if n_parameters > MAX_PARAMETERS:
            log.warning(
                f"figures skipped: the model has {n_parameters} parameters; paths are recorded "
                f"for at most {MAX_PARAMETERS} (set logger.figures=false to stop this message)"
            )
            return None
        draw = matplotlib_available()
        if not draw:
            log.warning(MATPLOTLIB_MISSING)
        landscape, minimizer = None, None
        if parts.data.train_loader is None and isinstance(parts.module, VectorModel):
            landscape = loss_landscape(parts.loss_fn)
            if isinstance(parts.loss_fn, ParameterLoss):
                minimizer = parts.loss_fn.minimum(n_parameters)[1]
        title = f"{cfg.loss.name}, {cfg.optimizer.name} (lr {cfg.optimizer.lr:g})"
        problem = {
            "loss": cfg.loss.model_dump(mode="json"),
            "parameter_loss": landscape is not None,
        }
        return cls(sink, title, landscape, minimizer, logger.figure_every_n_steps, draw, problem)

    def _on_record(self, trajectory: Trajectory, step: int) -> None:
        if self._next_step is not None and step >= self._next_step:
            self.draw(step)
            every = self.every_n_steps or 1
            self._next_step = (step // every + 1) * every

    def draw(self, step: int) -> None:
        if not self.draw_enabled or len(self.trajectory) == 0:
            return
        steps, points = self.trajectory.path()
        png = trajectory_png(steps, points, self.landscape, self.minimizer, self.title)
        self.sink.log_image(FIGURE_TAG, png, step)
        self._last_drawn = step

    def finish(self, step: int, run_dir: Path) -> None:
        """The final figure (unless the last logging step drew it) and `trajectory.json`."""
        if self._last_drawn != step:
            self.draw(step)
        save_trajectory(run_dir / TRAJECTORY_FILE, self.trajectory, self.problem)


# ---------------------------------------------------------------------------------- drawing
def trajectory_png(
    steps: Sequence[int],
    points: Tensor,
    landscape: Landscape | None,
    minimizer: Sequence[float] | None,
    title: str,
) -> bytes:
    """One path: on the landscape when there is one and it has 1 or 2 dimensions."""
    return comparison_png([("path", steps, points)], landscape, minimizer, title, legend=False)


def comparison_png(
    paths: Sequence[tuple[str, Sequence[int], Tensor]],
    landscape: Landscape | None,
    minimizer: Sequence[float] | None,
    title: str,
    legend: bool = True,
) -> bytes:
    """Several labelled paths (label, steps, points of shape (n, d)) on one figure."""
    figure = comparison_figure(paths, landscape, minimizer, title, legend)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def comparison_figure(
    paths: Sequence[tuple[str, Sequence[int], Tensor]],
    landscape: Landscape | None,
    minimizer: Sequence[float] | None,
    title: str,
    legend: bool = True,
) -> Any:
    """The matplotlib Figure of `comparison_png`.

    The frame fits the paths that stayed in scale (and the minimum); a diverged path (one that
    reached non-finite values, or went `DIVERGED_FACTOR` times beyond the problem's scale) is
    drawn up to where it leaves the frame and marked there, so that a path at 1e21 does not
    squash the others into a dot."""
    from matplotlib.figure import Figure

    diverged = diverged_paths(paths, minimizer)
    paths = _finite_part(paths)
    dims = {points.shape[1] for _, _, points in paths}
    if len(dims) != 1:
        raise ValueError(f"paths of different dimensions cannot share a figure: {sorted(dims)}")
    dim = dims.pop()
    figure = Figure(figsize=(6.4, 4.8), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    on_landscape = landscape is not None and dim <= 2
    if landscape is not None and dim == 2:
        _contour_with_paths(figure, ax, paths, landscape, minimizer, diverged)
    elif landscape is not None and dim == 1:
        _curve_with_paths(ax, paths, landscape, minimizer, diverged)
    else:
        _projected_paths(ax, paths, diverged)
    if any(diverged):
        title += " (x: where a diverged path leaves the frame)"
    ax.set_title(title, fontsize=10)
    if on_landscape or (legend and len(paths) > 1):
        ax.legend(fontsize=8, loc="best")
    return figure


# A path is diverged once a coordinate is this many times the problem's scale (see below).
DIVERGED_FACTOR = 100.0


def diverged_paths(
    paths: Sequence[tuple[str, Sequence[int], Tensor]], minimizer: Sequence[float] | None
) -> list[bool]:
    """Which paths diverged: those that reached non-finite values, and those that went beyond
    `DIVERGED_FACTOR` times the scale of the problem (the largest of 1, the starting points,
    the minimum, and the smallest of the paths' extents)."""
    finite = [points[torch.isfinite(points).all(dim=1)] for _, _, points in paths]
    extents = [points.abs().max().item() if len(points) else 0.0 for points in finite]
    starts = [points[0].abs().max().item() for points in finite if len(points)]
    scale = max([1.0, *starts, *(abs(v) for v in minimizer or []), min(extents, default=0.0)])
    return [
        not torch.isfinite(points).all().item() or extent > DIVERGED_FACTOR * scale
        for (_, _, points), extent in zip(paths, extents, strict=True)
    ]


def _finite_part(
    paths: Sequence[tuple[str, Sequence[int], Tensor]],
) -> list[tuple[str, Sequence[int], Tensor]]:
    """A diverged run leaves inf and nan behind; its start (the configured init) is finite."""
    kept: list[tuple[str, Sequence[int], Tensor]] = []
    for label, steps, points in paths:
        finite = torch.isfinite(points).all(dim=1)
        finite_steps = [step for step, ok in zip(steps, finite.tolist(), strict=True) if ok]
        kept.append((label, finite_steps, points[finite]))
    return kept


def _contour_with_paths(
    figure: Any,
    ax: Axes,
    paths: Sequence[tuple[str, Sequence[int], Tensor]],
    landscape: Landscape,
    minimizer: Sequence[float] | None,
    diverged: Sequence[bool],
) -> None:
    from matplotlib.colors import BoundaryNorm

    (x_low, x_high), (y_low, y_high) = _bounds(_in_scale(paths, diverged), minimizer)
    xs = torch.linspace(x_low, x_high, 161, dtype=torch.float64)
    ys = torch.linspace(y_low, y_high, 161, dtype=torch.float64)
    grid_x, grid_y = torch.meshgrid(xs, ys, indexing="xy")  # (161, 161): rows follow y
    values = landscape(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1))
    values = values.reshape(grid_x.shape)
    finite = values[torch.isfinite(values)]
    # Levels at quantiles of the values: a steep wall (Rosenbrock's) no longer hides the valley.
    quantiles = torch.linspace(0, 1, 24, dtype=torch.float64)
    levels = torch.unique(torch.quantile(finite, quantiles)) if len(finite) else finite
    if len(levels) < 2:
        low = levels[0].item() if len(levels) else 0.0
        levels = torch.tensor([low, low + 1.0], dtype=torch.float64)
    values = values.nan_to_num(nan=levels[-1].item()).clamp(levels[0], levels[-1])
    norm = BoundaryNorm(levels.numpy(), ncolors=256)
    gx, gy, gv = grid_x.numpy(), grid_y.numpy(), values.numpy()
    filled = ax.contourf(gx, gy, gv, levels=levels.numpy(), cmap="viridis", norm=norm)
    figure.colorbar(filled, ax=ax, label="loss", format="%.3g")
    frame = (x_low, x_high, y_low, y_high)
    for index, (label, steps, points) in enumerate(paths):
        leaves = frame if diverged[index] else None
        _draw_path(ax, points[:, 0], points[:, 1], label, index, len(paths), steps, leaves)
    if minimizer is not None:
        _mark_minimum(ax, minimizer[0], minimizer[1])
    ax.set_xlim(x_low, x_high)
    ax.set_ylim(y_low, y_high)
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")


def _curve_with_paths(
    ax: Axes,
    paths: Sequence[tuple[str, Sequence[int], Tensor]],
    landscape: Landscape,
    minimizer: Sequence[float] | None,
    diverged: Sequence[bool],
) -> None:
    ((low, high),) = _bounds(_in_scale(paths, diverged), minimizer)
    xs = torch.linspace(low, high, 400, dtype=torch.float64)
    curve = landscape(xs[:, None])
    ax.plot(xs.numpy(), curve.numpy(), color="0.4", linewidth=1.2, label="loss")
    frame = (low, high, curve.min().item(), curve.max().item())
    for index, (label, steps, points) in enumerate(paths):
        leaves = frame if diverged[index] else None
        y = landscape(points)
        _draw_path(ax, points[:, 0], y, label, index, len(paths), steps, leaves)
    if minimizer is not None:
        x_min = torch.tensor([minimizer[:1]], dtype=torch.float64)
        _mark_minimum(ax, float(x_min[0, 0]), float(landscape(x_min)[0]))
    ax.set_xlabel("x")
    ax.set_ylabel("loss")


def _mark_minimum(ax: Axes, x: float, y: float) -> None:
    ax.plot(
        [x],
        [y],
        marker="*",
        color="gold",
        markersize=14,
        linestyle="none",
        markeredgecolor="black",
        label="minimum",
    )


def principal_projection(
    paths: Sequence[Tensor], fit_on: Sequence[Tensor] | None = None
) -> tuple[list[Tensor], list[float]]:
    """Each path (n_i, d) projected on the two leading principal directions of all their points
    together (or of the points of `fit_on`), as (n_i, 2) coordinates, and the share of the
    variance along each direction."""
    everything = torch.cat(list(fit_on if fit_on is not None else paths))
    center = everything.mean(dim=0)
    _, singular, directions = torch.linalg.svd(everything - center, full_matrices=False)
    variance = singular**2 / (singular**2).sum().clamp(min=1e-300)
    projected = []
    for points in paths:
        coords = (points - center) @ directions[:2].T  # (n, k), k = min(2, n, d)
        projected.append(torch.nn.functional.pad(coords, (0, 2 - coords.shape[1])))
    shares = variance[:2].tolist()
    return projected, shares + [0.0] * (2 - len(shares))


def _projected_paths(
    ax: Axes, paths: Sequence[tuple[str, Sequence[int], Tensor]], diverged: Sequence[bool]
) -> None:
    # The directions of the paths that stayed in scale: a diverged one would be all there is.
    in_scale = [points for _, _, points in _in_scale(paths, diverged)]
    projected, shares = principal_projection([points for _, _, points in paths], in_scale)
    kept = [
        (label, steps, coords) for (label, steps, _), coords in zip(paths, projected, strict=True)
    ]
    (x_low, x_high), (y_low, y_high) = _bounds(_in_scale(kept, diverged), None)
    frame = (x_low, x_high, y_low, y_high)
    for index, (label, steps, coords) in enumerate(kept):
        leaves = frame if diverged[index] else None
        _draw_path(ax, coords[:, 0], coords[:, 1], label, index, len(paths), steps, leaves)
    ax.set_xlabel(f"first principal direction ({100 * shares[0]:.1f}% of the path's variance)")
    ax.set_ylabel(f"second principal direction ({100 * shares[1]:.1f}%)")
    dim = paths[0][2].shape[1]
    ax.text(0.01, 0.01, f"{dim} parameters", transform=ax.transAxes, fontsize=8, color="0.4")
    # Equal scales: a direction the path hardly moves along must look flat, not stretched.
    ax.set_aspect("equal", adjustable="datalim")


# Colours that stand out on viridis contours.
PATH_COLORS = ("#ff7f0e", "#d62728", "#e377c2", "#ffffff", "#17becf", "#000000", "#8c564b")


def _draw_path(
    ax: Axes,
    x: Tensor,
    y: Tensor,
    label: str,
    index: int,
    count: int,
    steps: Sequence[int] = (),
    leaves: tuple[float, float, float, float] | None = None,
) -> None:
    """Path `index` of `count`: a line through its points, a dot at its start, an X at its end.

    A diverged path comes with the frame it `leaves` (x_low, x_high, y_low, y_high): it is drawn
    up to the frame's edge, where its X is, with the step it left at in its label."""
    if leaves is not None:
        x, y, left_at = _up_to_frame(x, y, leaves)
        step = steps[left_at] if left_at is not None and left_at < len(steps) else None
        label += " (diverged" + (f": left the frame at step {step})" if step is not None else ")")
    xs, ys = x.numpy(), y.numpy()
    color = PATH_COLORS[index % len(PATH_COLORS)]
    # Earlier paths are drawn wider, so that a later one on the same track leaves them visible.
    width = 1.2 + 0.8 * min(count - 1 - index, 3)
    ax.plot(xs, ys, "-o", color=color, markersize=2.5, linewidth=width, label=label)
    ax.plot(
        xs[:1],
        ys[:1],
        marker="o",
        color=color,
        markersize=7,
        markeredgecolor="black",
        linestyle="none",
    )
    ax.plot(
        xs[-1:],
        ys[-1:],
        marker="X",
        color=color,
        markersize=8,
        markeredgecolor="black",
        linestyle="none",
    )


def _up_to_frame(
    x: Tensor, y: Tensor, frame: tuple[float, float, float, float]
) -> tuple[Tensor, Tensor, int | None]:
    """The path (x, y) up to the point where it crosses the edge of `frame`, that point last,
    and the index of its first point outside (None: it stays inside)."""
    x_low, x_high, y_low, y_high = frame
    outside = (x < x_low) | (x > x_high) | (y < y_low) | (y > y_high)
    if not outside.any() or outside[0]:
        return x, y, None
    first = int(outside.nonzero()[0].item())
    (x0, y0), (x1, y1) = (
        (x[first - 1].item(), y[first - 1].item()),
        (x[first].item(), y[first].item()),
    )
    # The largest fraction t of the segment from inside to outside that stays within the frame.
    t = 1.0
    for start, end, low, high in ((x0, x1, x_low, x_high), (y0, y1, y_low, y_high)):
        if end > high:
            t = min(t, (high - start) / (end - start))
        elif end < low:
            t = min(t, (low - start) / (end - start))
    edge_x = torch.tensor([x0 + t * (x1 - x0)], dtype=x.dtype)
    edge_y = torch.tensor([y0 + t * (y1 - y0)], dtype=y.dtype)
    return torch.cat([x[:first], edge_x]), torch.cat([y[:first], edge_y]), first


def _in_scale(
    paths: Sequence[tuple[str, Sequence[int], Tensor]], diverged: Sequence[bool]
) -> list[tuple[str, Sequence[int], Tensor]]:
    """The paths that set the frame: the whole of those in scale, the start of the others."""
    return [
        (label, steps[:1], points[:1]) if gone else (label, steps, points)
        for (label, steps, points), gone in zip(paths, diverged, strict=True)
    ]


def _bounds(
    paths: Sequence[tuple[str, Sequence[int], Tensor]], minimizer: Sequence[float] | None
) -> list[tuple[float, float]]:
    """Per dimension, the range of all paths and the minimum, with a margin."""
    everything = torch.cat([points for _, _, points in paths])
    if minimizer is not None:
        everything = torch.cat([everything, torch.tensor([minimizer], dtype=torch.float64)])
    low, high = everything.min(dim=0).values, everything.max(dim=0).values
    margin = 0.15 * (high - low) + 0.1
    return list(zip((low - margin).tolist(), (high + margin).tolist(), strict=True))


# ------------------------------------------------------------------------------ sweep figure
SWEEP_FIGURE = "trajectories.png"


def draw_sweep_comparison(sweep_dir: Path) -> Path | None:
    """Every job's `trajectory.json` under `sweep_dir`, drawn on one figure: on the loss
    landscape when all jobs minimized the same loss of 1 or 2 parameters alone, else on shared
    principal directions. Returns the figure's path, or None (saying why) when there is none."""
    from gradtrain.files import write_atomic
    from gradtrain.insight.trajectory import load_trajectory

    files = sorted(sweep_dir.glob(f"*/{TRAJECTORY_FILE}"), key=_job_number)
    if len(files) < 2:
        return None
    if not matplotlib_available():
        log.warning(MATPLOTLIB_MISSING)
        return None
    runs = [load_trajectory(file) for file in files]
    problems = [problem for problem, _, _ in runs]
    dims = {points.shape[1] for _, _, points in runs}
    if len(dims) != 1:
        log.warning(f"{SWEEP_FIGURE} skipped: the jobs' models differ in size ({sorted(dims)})")
        return None
    labels = _job_labels([file.parent for file in files])
    paths = [(label, steps, points) for label, (_, steps, points) in zip(labels, runs, strict=True)]
    landscape, minimizer, title = None, None, "parameter paths of the sweep"
    if all(problem == problems[0] for problem in problems) and problems[0].get("parameter_loss"):
        loss_fn = build_loss_from_dict(problems[0]["loss"])
        landscape = loss_landscape(loss_fn)
        if isinstance(loss_fn, ParameterLoss):
            minimizer = loss_fn.minimum(dims.pop())[1]
        title = f"{problems[0]['loss']['name']}: one path per job"
    png = comparison_png(paths, landscape, minimizer, title)
    target = sweep_dir / SWEEP_FIGURE
    write_atomic(target, lambda file: file.write(png))
    return target


def build_loss_from_dict(loss: dict[str, Any]) -> nn.Module:
    from pydantic import TypeAdapter

    from gradtrain.build import build_loss
    from gradtrain.config import LossConfig

    return build_loss(TypeAdapter(LossConfig).validate_python(loss))


def _job_labels(job_dirs: list[Path]) -> list[str]:
    """What tells the jobs apart: the overrides not shared by all of them (from Hydra's
    `.hydra/overrides.yaml`), else the folder name."""
    import yaml

    overrides: list[list[str]] = []
    for job_dir in job_dirs:
        file = job_dir / ".hydra" / "overrides.yaml"
        if not file.exists():
            return [job_dir.name for job_dir in job_dirs]
        overrides.append([str(item) for item in yaml.safe_load(file.read_text()) or []])
    shared = set.intersection(*(set(o) for o in overrides))
    return [
        ", ".join(item for item in o if item not in shared) or job_dir.name
        for o, job_dir in zip(overrides, job_dirs, strict=True)
    ]


def _job_number(file: Path) -> tuple[int, str]:
    """Hydra names job folders `<number>_<overrides>`: sort 10 after 9."""
    number, _, _ = file.parent.name.partition("_")
    return (int(number), file.parent.name) if number.isdigit() else (1 << 30, file.parent.name)
