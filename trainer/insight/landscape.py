"""The loss surface of a network around its training path, evaluated once training is done.

`landscape=interpolation`: the loss along the straight line θ(α) = (1 - α) θ₀ + α θ_final through
the initial and final weights, α from -0.5 to 1.5 (Goodfellow et al., 2015). A line that falls
without a bump says the optimizer had no barrier to cross on the way.

`landscape=filter_normalized`: the loss on a 2-D slice θ_final + a d₁ + b d₂ around the final
weights, along two seeded Gaussian directions each rescaled filter by filter (row by row of a
weight matrix) to the norm of the weights it perturbs (Li et al., 2018); 1-D parameters (biases)
stay fixed. Without the rescaling, a layer with small weights would look flat only because the
same step means less to it.

Both evaluate under `torch.no_grad()`, in eval mode, on a copy of the model, on one fixed batch
of `landscape.rows` training rows drawn with the run's seed; the config bounds the cost before
training (config.py `_landscape_fits`). Off (landscape=none), nothing here is built.
"""

from __future__ import annotations

import copy
import io
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from torch.utils.data import DataLoader

from gradtrain.metrics.sinks import MetricSink
from gradtrain.step import forward, summed

if TYPE_CHECKING:
    from gradtrain.build import Components
    from gradtrain.config import Config, LandscapeConfig

log = logging.getLogger("gradtrain")

LANDSCAPE_FILE = "landscape.png"
LANDSCAPE_TAG = "watch/landscape"
ALPHA_RANGE = (-0.5, 1.5)


def landscape_rows(loader: DataLoader[Any], rows: int, seed: int, device: torch.device) -> Any:
    """(inputs, targets): `rows` training rows drawn without replacement with `seed`, read from
    the dataset directly so that the loader's own shuffling is left as it was."""
    dataset: Any = loader.dataset
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:rows].tolist()
    getitems = getattr(dataset, "__getitems__", None)
    samples = getitems(indices) if getitems is not None else [dataset[i] for i in indices]
    inputs, targets = loader.collate_fn(samples)
    return inputs.to(device), targets.to(device)


def trainable(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def losses_at(model: nn.Module, loss_fn: nn.Module, batch: Any, points: Iterable[Tensor]) -> Tensor:
    """The loss on `batch` at each flat weight vector of `points`, as one tensor (read back
    once by the caller). The model itself is left as it is: a copy is moved."""
    probe = copy.deepcopy(model).eval()
    weights = trainable(probe)
    values = []
    with torch.no_grad():
        for point in points:
            vector_to_parameters(point, weights)
            values.append(summed(forward(probe, loss_fn, batch)[0]).float())
    return torch.stack(values)


def interpolation_alphas(points: int) -> list[float]:
    """`points` values of α evenly over ALPHA_RANGE, with 0 and 1 (the run's two ends) always
    among them."""
    low, high = ALPHA_RANGE
    grid = torch.linspace(low, high, points, dtype=torch.float64).tolist()
    # linspace lands a hair off 0 (2.8e-17 for 41 points): such a value is 0 itself, not a
    # second point beside it.
    ends = (0.0, 1.0)
    grid = [next((end for end in ends if abs(a - end) < 1e-9), a) for a in grid]
    return sorted(set(grid) | set(ends))


def interpolation(
    model: nn.Module, loss_fn: nn.Module, batch: Any, start: Tensor, alphas: list[float]
) -> Tensor:
    """The loss along θ(α) = (1 - α) θ₀ + α θ_final, θ_final the model's weights now."""
    final = parameters_to_vector(trainable(model)).detach()
    return losses_at(model, loss_fn, batch, ((1 - a) * start + a * final for a in alphas))


def filter_normalized_directions(model: nn.Module, seed: int) -> tuple[Tensor, Tensor]:
    """Two flat directions shaped like the trainable weights: Gaussian, each filter (slice
    along dim 0) rescaled to the norm of the same filter of the weights; 1-D parameters get 0."""
    generator = torch.Generator().manual_seed(seed)
    directions = []
    for _ in range(2):
        pieces = []
        for weight in trainable(model):
            w = weight.detach()
            direction = torch.randn(w.shape, generator=generator, dtype=torch.float64)
            direction = direction.to(w.device, w.dtype)
            if w.dim() <= 1:
                direction.zero_()
            else:
                filters, weights = direction.flatten(1), w.flatten(1)  # (filters, rest)
                scale = weights.norm(dim=1) / direction.norm(dim=1).clamp(min=1e-12)
                direction = (filters * scale[:, None]).reshape(w.shape)
            pieces.append(direction.reshape(-1))
        directions.append(torch.cat(pieces))
    return directions[0], directions[1]


def filter_normalized(
    model: nn.Module, loss_fn: nn.Module, batch: Any, coordinates: list[float], seed: int
) -> Tensor:
    """The loss at θ_final + a d₁ + b d₂ for a, b in `coordinates`: shape (len(b), len(a)),
    rows following b."""
    center = parameters_to_vector(trainable(model)).detach()
    first, second = filter_normalized_directions(model, seed)
    points = (center + a * first + b * second for b in coordinates for a in coordinates)
    return losses_at(model, loss_fn, batch, points).reshape(len(coordinates), len(coordinates))


class Landscape:
    """A run's landscape: the rows and (for interpolation) θ₀ taken before training, the
    evaluation and the figure after it."""

    def __init__(self, cfg: LandscapeConfig, batch: Any, start: Tensor | None, seed: int) -> None:
        self.cfg = cfg
        self.batch = batch
        self.start = start
        self.seed = seed

    @classmethod
    def for_run(cls, cfg: Config, parts: Components) -> Landscape | None:
        if cfg.landscape.name == "none" or parts.data.train_loader is None:
            return None
        batch = landscape_rows(parts.data.train_loader, cfg.landscape.rows, cfg.seed, parts.device)
        start = None
        if cfg.landscape.name == "interpolation":
            start = parameters_to_vector(trainable(parts.module)).detach().clone()
        return cls(cfg.landscape, batch, start, cfg.seed)

    def evaluate(self, model: nn.Module, loss_fn: nn.Module) -> dict[str, Any]:
        """What summary.json keeps under `landscape`."""
        from gradtrain.config import FilterNormalizedLandscapeConfig

        rows = int(self.batch[1].shape[0])
        if isinstance(self.cfg, FilterNormalizedLandscapeConfig):
            span = self.cfg.span
            coordinates = torch.linspace(-span, span, self.cfg.points, dtype=torch.float64)
            grid = coordinates.tolist()
            values = filter_normalized(model, loss_fn, self.batch, grid, self.seed)
            return {
                "kind": "filter_normalized",
                "rows": rows,
                "grid": {"a": grid, "b": grid},
                "losses": values.tolist(),
            }
        assert self.start is not None
        alphas = interpolation_alphas(self.cfg.points)
        values = interpolation(model, loss_fn, self.batch, self.start, alphas)
        return {"kind": "interpolation", "rows": rows, "alphas": alphas, "losses": values.tolist()}

    def finish(
        self, model: nn.Module, loss_fn: nn.Module, sink: MetricSink, run_dir: Path, step: int
    ) -> dict[str, Any]:
        """Evaluate, draw `<run_dir>/landscape.png` and the TensorBoard image (when matplotlib
        is there), and return the summary entry."""
        from gradtrain.files import write_atomic
        from gradtrain.insight.figures import MATPLOTLIB_MISSING, matplotlib_available

        entry = self.evaluate(model, loss_fn)
        if not matplotlib_available():
            log.warning(MATPLOTLIB_MISSING)
            return entry
        png = landscape_png(entry)
        write_atomic(run_dir / LANDSCAPE_FILE, lambda file: file.write(png))
        sink.log_image(LANDSCAPE_TAG, png, step)
        return entry


def landscape_png(entry: dict[str, Any]) -> bytes:
    """The summary entry drawn: a curve over α, or filled contours over (a, b)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.8), dpi=80, layout="constrained")
    ax = figure.add_subplot()
    rows = entry["rows"]
    if entry["kind"] == "interpolation":
        alphas, losses = entry["alphas"], entry["losses"]
        ax.plot(alphas, losses, "-", color="#1f77b4", linewidth=1.8)
        ends = [alphas.index(0.0), alphas.index(1.0)]
        labels, colors = ("θ₀ (start)", "θ_final"), ("#ff7f0e", "#d62728")
        for index, label, color in zip(ends, labels, colors, strict=True):
            ax.plot([alphas[index]], [losses[index]], "o", color=color, markersize=8, label=label)
        ax.set_xlabel("α in θ(α) = (1 - α) θ₀ + α θ_final")
        ax.set_ylabel("loss")
        ax.set_title(f"loss along the line from the initial to the final weights ({rows} rows)")
        ax.legend(fontsize=8)
    else:
        import numpy as np

        a, b = np.array(entry["grid"]["a"]), np.array(entry["grid"]["b"])
        values = np.array(entry["losses"])
        filled = ax.contourf(a, b, values, levels=24, cmap="viridis")
        ax.contour(a, b, values, levels=12, colors="white", linewidths=0.5, alpha=0.6)
        figure.colorbar(filled, ax=ax, label="loss", format="%.3g")
        ax.plot([0], [0], "*", color="gold", markersize=14, markeredgecolor="black")
        ax.set_xlabel("a (direction d₁, filter-normalized)")
        ax.set_ylabel("b (direction d₂, filter-normalized)")
        ax.set_title(f"loss around the final weights, θ_final + a d₁ + b d₂ ({rows} rows)")
        ax.set_aspect("equal")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
