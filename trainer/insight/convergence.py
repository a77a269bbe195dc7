"""Measured against theory: how fast a run on `loss=quadratic_form` approaches its minimizer.

On f(x) = ½ (x - x*)ᵀ A (x - x*) every first-order method with a fixed step is a linear
iteration on the error e_k = x_k - x*, one small matrix per eigenvalue λ of A. Its spectral
radius ρ is the asymptotic linear rate: ‖e_k‖ ~ C k^m ρ^k, where m is zero unless the
iteration matrix has a repeated eigenvalue (critical damping, as at Polyak's parameters).

- Gradient descent, x ← x - η ∇f: e ← (1 - ηλ) e per eigenvalue, so ρ = max_i |1 - η λ_i|.
- Heavy ball as torch writes it (`sgd` and `manual_sgd` with momentum μ): v ← μ v + ∇f,
  x ← x - η v, which is Polyak's x_{k+1} = x_k - η ∇f(x_k) + μ (x_k - x_{k-1}) with α = η,
  β = μ. On (x, v) per eigenvalue: [[1 - ηλ, -ημ], [λ, μ]].
- Nesterov as torch writes it (`nesterov=true`): v ← μ v + ∇f, x ← x - η (∇f + μ v), so
  [[1 - ηλ(1 + μ), -ημ²], [λ, μ]].

The measured rate comes from the run's own path (the trajectory recorded at logging steps, no
extra synchronisation): log ‖x_k - x*‖ is fitted by a + m log k + k log ρ over the second half
of the descent, that is, after the transient (the faster modes dying out) and before float32's
floor (where ‖x_k - x*‖ stops shrinking at about 100 float32 epsilons of ‖x*‖).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gradtrain.config import (
    Config,
    ManualSGDConfig,
    NoSchedulerConfig,
    OptimizerConfig,
    SGDConfig,
)
from gradtrain.insight.trajectory import Trajectory
from gradtrain.losses import ParameterLoss

# The fewest points a rate is fitted on (three unknowns, and one to spare).
MIN_WINDOW_POINTS = 4
# Where float32 parameters stop approaching x*: this many float32 epsilons of max(‖x*‖, 1).
FLOOR_EPSILONS = 100


def spectral_radius_2x2(a: float, b: float, c: float, d: float) -> float:
    """max |z| over the eigenvalues z of [[a, b], [c, d]]."""
    trace, determinant = a + d, a * d - b * c
    discriminant = trace * trace - 4 * determinant
    if discriminant >= 0:
        root = math.sqrt(discriminant)
        return max(abs(trace + root), abs(trace - root)) / 2
    return math.sqrt(determinant)  # complex pair: |z|² = determinant


def iteration_radius(
    eigenvalue: float, lr: float, momentum: float = 0.0, nesterov: bool = False
) -> float:
    """The rate of one eigen-direction: the spectral radius of its iteration matrix on (x, v)
    (gradient descent is momentum 0, where the radius is |1 - η λ|)."""
    lam, eta, mu = eigenvalue, lr, momentum
    if nesterov:
        return spectral_radius_2x2(1 - eta * lam * (1 + mu), -eta * mu * mu, lam, mu)
    return spectral_radius_2x2(1 - eta * lam, -eta * mu, lam, mu)


def theoretical_rate(optimizer: OptimizerConfig, eigenvalues: Sequence[float]) -> float | None:
    """The asymptotic linear rate of ‖x_k - x*‖ for this optimizer on a quadratic with these
    Hessian eigenvalues, or None where there is no such closed form (Adam, RMSprop, L-BFGS: the
    step adapts to the path) or where weight decay moves the minimizer away from x*."""
    if isinstance(optimizer, SGDConfig):
        if optimizer.weight_decay > 0:
            return None
        lr, momentum, nesterov = optimizer.lr, optimizer.momentum, optimizer.nesterov
    elif isinstance(optimizer, ManualSGDConfig):
        lr, momentum, nesterov = optimizer.lr, optimizer.momentum, False
    else:
        return None
    return max(iteration_radius(lam, lr, momentum, nesterov) for lam in eigenvalues)


def measured_rate(
    steps: Sequence[int], distances: Tensor, floor: float
) -> tuple[float | None, tuple[int, int] | None]:
    """(ρ, (first, last) step of the window) fitted on ‖x_k - x*‖ at `steps`, or (None, None)
    when the descent leaves fewer than MIN_WINDOW_POINTS points after its transient."""
    finite = torch.isfinite(distances)
    end = len(steps) if bool(finite.all()) else int((~finite).nonzero()[0])
    below = (distances[:end] < floor).nonzero()
    if len(below):
        end = int(below[0])  # the descent ends where float32 can go no further
    if end < 2:
        return None, None
    middle = (steps[0] + steps[end - 1]) / 2
    window = [i for i in range(end) if steps[i] >= middle and steps[i] >= 1]
    if len(window) < MIN_WINDOW_POINTS:
        return None, None
    k = torch.tensor([float(steps[i]) for i in window], dtype=torch.float64)
    design = torch.stack([torch.ones_like(k), k.log(), k], dim=1)
    target = distances[window].to(torch.float64).log()[:, None]
    coefficients = torch.linalg.lstsq(design, target).solution
    return math.exp(coefficients[2, 0].item()), (steps[window[0]], steps[window[-1]])


def convergence_summary(
    cfg: Config,
    eigenvalues: Sequence[float],
    minimizer: Tensor,
    steps: Sequence[int],
    distances: Tensor,
) -> dict[str, Any]:
    """What summary.json keeps under `convergence`: the measured rate of ‖x_k - x*‖
    (`distances` at `steps`) and the theoretical one."""
    target = minimizer.to("cpu", torch.float64)
    floor = FLOOR_EPSILONS * torch.finfo(torch.float32).eps * max(target.norm().item(), 1.0)
    rate, window = measured_rate(steps, distances, floor)
    theory = theoretical_rate(cfg.optimizer, eigenvalues)
    # A schedule or clipping changes the step as the run goes: no fixed iteration to analyse.
    if not isinstance(cfg.scheduler, NoSchedulerConfig) or cfg.trainer.grad_clip is not None:
        theory = None
    return {
        "measured_rate": rate,
        "theoretical_rate": theory,
        "optimizer": cfg.optimizer.name,
        "condition_number": max(eigenvalues) / min(eigenvalues),
        "window": list(window) if window is not None else None,
    }


# ------------------------------------------------------------------------------- the table
def optimal_rates(condition_number: float) -> dict[str, tuple[float, float, float]]:
    """For μ = 1, L = κ: (lr, momentum, rate) of gradient descent at η = 2/(L+μ) and of
    Polyak's heavy ball at η = 4/(√L+√μ)², β = ((√κ-1)/(√κ+1))²."""
    kappa = condition_number
    root = math.sqrt(kappa)
    heavy_ball_beta = ((root - 1) / (root + 1)) ** 2
    return {
        "gradient descent": (2 / (kappa + 1), 0.0, (kappa - 1) / (kappa + 1)),
        "heavy ball (Polyak)": (4 / (root + 1) ** 2, heavy_ball_beta, (root - 1) / (root + 1)),
    }


def rate_table_markdown(
    cfg: Config, condition_numbers: Sequence[float] = (1, 10, 100, 1000)
) -> str:
    """explain=true on quadratic_form: the theory for this run and for the optimal step sizes
    at a few condition numbers, with the steps each needs per decade of ‖x_k - x*‖."""
    from gradtrain.losses import QuadraticFormLoss

    loss = cfg.loss
    assert loss.name == "quadratic_form"
    kappas = sorted({float(k) for k in condition_numbers} | {float(loss.condition_number)})
    lines = [
        "## Convergence on this quadratic form: theory",
        "",
        "The rate ρ is the factor by which ‖x_k - x*‖ shrinks per step in the end; "
        "steps per decade = ln 10 / -ln ρ. summary.json compares it with the measured one.",
        "",
        f"| κ | {cfg.optimizer.name} as configured | gradient descent, η = 2/(L+μ) | "
        "heavy ball, Polyak's η and β |",
        "|---:|---:|---:|---:|",
    ]
    for kappa in kappas:
        eigenvalues = QuadraticFormLoss(loss.dim, kappa, loss.seed).eigenvalues.tolist()
        configured = theoretical_rate(cfg.optimizer, eigenvalues)
        cells = [_rate_cell(configured)]
        for _, _, rate in optimal_rates(kappa).values():
            cells.append(_rate_cell(rate))
        lines.append(f"| {kappa:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _rate_cell(rate: float | None) -> str:
    if rate is None:
        return "no closed form"
    if rate == 0:
        return "0 (one step)"
    if rate >= 1:
        return f"{rate:.4f} (diverges)" if rate > 1 else "1 (no progress)"
    return f"{rate:.4f} ({math.log(10) / -math.log(rate):.1f} steps/decade)"


# ----------------------------------------------------------------------------- for summary.json
class DistanceRecord:
    """‖x_k - x*‖ at every step the trajectory records (logging steps), from the CPU copy it
    makes anyway: no synchronisation of its own. Kept whole (one float a step), unlike the
    trajectory's points, which are thinned in long runs: a fast rate is over in a few dozen
    steps, and every one of them counts."""

    def __init__(self, minimizer: Tensor) -> None:
        self.target = minimizer.detach().to("cpu", torch.float64)
        self.steps: list[int] = []
        self.distances: list[float] = []

    def attach(self, trajectory: Trajectory | None) -> Trajectory:
        """`trajectory` (a new one if None), now also recording the distance at each step."""
        trajectory = trajectory if trajectory is not None else Trajectory()
        previous = trajectory.on_record

        def on_record(recorded: Trajectory, step: int) -> None:
            _, point = recorded.latest()
            self.steps.append(step)
            self.distances.append((point - self.target).norm().item())
            if previous is not None:
                previous(recorded, step)

        trajectory.on_record = on_record
        return trajectory


def distance_record(loss_fn: nn.Module) -> DistanceRecord | None:
    """What a run on quadratic_form records for its convergence summary; None otherwise."""
    from gradtrain.losses import QuadraticFormLoss

    return DistanceRecord(loss_fn.minimizer) if isinstance(loss_fn, QuadraticFormLoss) else None


def theory_summary(
    cfg: Config, loss_fn: nn.Module, model: nn.Module, distances: DistanceRecord | None
) -> dict[str, Any]:
    """The summary's entries that compare a run with what is known of its problem:
    `convergence` on quadratic_form, `nearest_minimum` on the classic test functions (which of
    Himmelblau's four minima, say, the run ended in)."""
    from gradtrain.config import TWO_PARAMETER_LOSSES
    from gradtrain.losses import QuadraticFormLoss
    from gradtrain.models import VectorModel

    entries: dict[str, Any] = {}
    if isinstance(loss_fn, QuadraticFormLoss) and distances is not None and distances.steps:
        entries["convergence"] = convergence_summary(
            cfg,
            loss_fn.eigenvalues.tolist(),
            loss_fn.minimizer,
            distances.steps,
            torch.tensor(distances.distances, dtype=torch.float64),
        )
    if (
        cfg.loss.name in TWO_PARAMETER_LOSSES
        and isinstance(loss_fn, ParameterLoss)
        and isinstance(model, VectorModel)
    ):
        entries["nearest_minimum"] = nearest_minimum(loss_fn, model.x.detach())
    return entries


def nearest_minimum(loss: ParameterLoss, x: Tensor) -> dict[str, Any]:
    """The known minimum closest to `x`: its number (in the loss's list of minima), point,
    value, and the distance from `x` to it."""
    from gradtrain.losses import known_minima

    point = x.to("cpu", torch.float64)
    minima = known_minima(loss, point.numel())
    distances = [
        (point - torch.tensor(where, dtype=torch.float64)).norm().item() for _, where in minima
    ]
    index = min(range(len(minima)), key=distances.__getitem__)
    value, where = minima[index]
    return {"index": index, "point": where, "value": value, "distance": distances[index]}


# ------------------------------------------------------------------------------ sweep figure
SWEEP_FIGURE = "convergence.png"


def draw_condition_sweep(sweep_dir: Path) -> Path | None:
    """A sweep over `loss.condition_number` on quadratic_form: each job's measured rate (dots)
    on the theoretical one (lines) against κ, one colour per setting of the other swept keys,
    with the optimal gradient descent and heavy ball rates in grey for reference. Written to
    `<sweep dir>/convergence.png`; None when fewer than two jobs measured a rate."""
    import json

    from gradtrain.files import write_atomic
    from gradtrain.insight.figures import matplotlib_available

    jobs = []
    for summary_file in sorted(sweep_dir.glob("*/summary.json")):
        convergence = json.loads(summary_file.read_text()).get("convergence")
        if isinstance(convergence, dict):
            jobs.append((summary_file.parent, convergence))
    if len(jobs) < 2 or not matplotlib_available():
        return None
    labels = _labels_without_kappa([job_dir for job_dir, _ in jobs])
    series: dict[str, list[dict[str, Any]]] = {}
    for label, (_, convergence) in zip(labels, jobs, strict=True):
        series.setdefault(label, []).append(convergence)
    png = _condition_sweep_png(series)
    target = sweep_dir / SWEEP_FIGURE
    write_atomic(target, lambda file: file.write(png))
    return target


def _labels_without_kappa(job_dirs: list[Path]) -> list[str]:
    """What sets each job apart apart from κ: its overrides (Hydra's .hydra/overrides.yaml)
    that not all jobs share, without loss.condition_number."""
    import yaml

    overrides = []
    for job_dir in job_dirs:
        file = job_dir / ".hydra" / "overrides.yaml"
        items = yaml.safe_load(file.read_text()) if file.exists() else []
        overrides.append(
            [str(o) for o in items or [] if not str(o).startswith("loss.condition_number=")]
        )
    shared = set.intersection(*(set(o) for o in overrides)) if overrides else set()
    return [", ".join(o for o in items if o not in shared) or "runs" for items in overrides]


def _condition_sweep_png(series: dict[str, list[dict[str, Any]]]) -> bytes:
    import io

    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), dpi=80, layout="constrained")
    ax = figure.add_subplot()
    kappas = sorted({c["condition_number"] for runs in series.values() for c in runs})
    reference = torch.logspace(0, math.log10(max([*kappas, 10.0])), 200).tolist()
    for name, style in (("gradient descent", ":"), ("heavy ball (Polyak)", "--")):
        rates = [optimal_rates(k)[name][2] for k in reference]
        ax.plot(reference, rates, style, color="0.55", linewidth=1, label=f"optimal {name}")
    colors = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
    for index, (label, runs) in enumerate(series.items()):
        runs = sorted(runs, key=lambda c: c["condition_number"])
        color = colors[index % len(colors)]
        x = [c["condition_number"] for c in runs]
        theory = [c["theoretical_rate"] for c in runs]
        if all(t is not None for t in theory):
            ax.plot(x, theory, "-", color=color, linewidth=1.5, label=f"{label}: theory")
        measured = [c["measured_rate"] for c in runs]
        shown = [(k, m) for k, m in zip(x, measured, strict=True) if m is not None]
        ax.plot(
            [k for k, _ in shown],
            [m for _, m in shown],
            "o",
            color=color,
            markersize=6,
            markeredgecolor="black",
            label=f"{label}: measured",
        )
    ax.set_xscale("log")
    ax.set_xlabel("condition number κ = L / μ")
    ax.set_ylabel("rate ρ: ‖x_k - x*‖ shrinks by ρ per step")
    ax.set_title("quadratic_form: measured rate against theory", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
