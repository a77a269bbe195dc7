"""loss=quadratic_form: the rate a run measures against the rate theory gives, in-process runs."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import QuickRun, TrainResult

from gradtrain.config import validate_config
from gradtrain.errors import ConfigError
from gradtrain.insight.convergence import (
    draw_condition_sweep,
    iteration_radius,
    measured_rate,
    optimal_rates,
    theoretical_rate,
)
from gradtrain.insight.gradient_check import check_gradients
from gradtrain.losses import QuadraticFormLoss
from gradtrain.models import VectorModel

QuickRunner = Callable[..., QuickRun]


def quadratic_form_run(quick_run: QuickRunner, kappa: float, *overrides: str) -> dict[str, Any]:
    """A run on quadratic_form with κ, logged every step (the rate is fitted on every iterate),
    long enough for the slowest rate here to leave its transient behind."""
    summary = quick_run(
        "loss=quadratic_form",
        f"loss.condition_number={kappa}",
        "trainer.max_steps=400",
        "trainer.log_every_n_steps=1",
        *overrides,
    ).summary
    return summary["convergence"]


def within_two_percent(convergence: dict[str, Any], steps_per_decade: bool = True) -> None:
    measured, theory = convergence["measured_rate"], convergence["theoretical_rate"]
    assert measured is not None and theory is not None, convergence
    assert abs(measured - theory) <= 0.02 * theory, convergence
    if steps_per_decade:
        # Stricter, as rates near 1 differ little: the steps per decade, 1 / -log ρ, agree too.
        # (Where the two slowest modes' rates lie close, as at small steps and small κ, they
        # separate only slowly; the tests that ask for this choose steps where they do not.)
        assert abs(math.log(measured) - math.log(theory)) <= 0.02 * -math.log(theory), convergence


@pytest.mark.parametrize("kappa", [10.0, 100.0])
@pytest.mark.parametrize("lr_times_l", [0.5, 1.0, 2.0 * 100 / 101])
def test_gradient_descent_rate_matches_max_abs_one_minus_lr_lambda(
    quick_run: QuickRunner, kappa: float, lr_times_l: float
) -> None:
    lr = lr_times_l / kappa  # (at lr_times_l = 200/101, κ = 100: η = 2 / (L + μ))
    convergence = quadratic_form_run(quick_run, kappa, "optimizer=manual_sgd", f"optimizer.lr={lr}")
    assert convergence["theoretical_rate"] == pytest.approx(max(abs(1 - lr), abs(1 - lr * kappa)))
    within_two_percent(convergence)


@pytest.mark.parametrize("kappa", [10.0, 100.0])
@pytest.mark.parametrize("optimizer", ["sgd", "manual_sgd"])
def test_heavy_ball_at_polyaks_parameters_converges_at_sqrt_kappa_rate(
    quick_run: QuickRunner, kappa: float, optimizer: str
) -> None:
    lr, momentum, rate = optimal_rates(kappa)["heavy ball (Polyak)"]
    convergence = quadratic_form_run(
        quick_run,
        kappa,
        f"optimizer={optimizer}",
        f"optimizer.lr={lr}",
        f"optimizer.momentum={momentum}",
    )
    root = math.sqrt(kappa)
    assert rate == pytest.approx((root - 1) / (root + 1))
    assert convergence["theoretical_rate"] == pytest.approx(rate)
    within_two_percent(convergence)
    # Faster than the best gradient descent can be: (κ-1)/(κ+1).
    assert convergence["measured_rate"] < (kappa - 1) / (kappa + 1)


def test_nesterov_rate_matches_its_iteration_matrix(quick_run: QuickRunner) -> None:
    convergence = quadratic_form_run(
        quick_run,
        100.0,
        "optimizer=sgd",
        "optimizer.lr=0.01",
        "optimizer.momentum=0.8",
        "optimizer.nesterov=true",
    )
    within_two_percent(convergence)
    heavy_ball = theoretical_rate(
        validate_config_optimizer("sgd", lr=0.01, momentum=0.8), torch.linspace(1, 100, 10).tolist()
    )
    assert convergence["theoretical_rate"] != pytest.approx(heavy_ball)


def validate_config_optimizer(name: str, **keys: Any) -> Any:
    from gradtrain.config import section_options

    return section_options("optimizer")[name](name=name, **keys)


def test_adam_has_a_measured_rate_but_no_theoretical_one(quick_run: QuickRunner) -> None:
    convergence = quadratic_form_run(
        quick_run, 10.0, "optimizer=adam", "optimizer.lr=0.05", "trainer.max_steps=200"
    )
    assert convergence["optimizer"] == "adam"
    assert convergence["theoretical_rate"] is None
    assert convergence["measured_rate"] is not None and 0 < convergence["measured_rate"] < 1.5


def test_a_schedule_leaves_no_fixed_iteration_to_analyse(quick_run: QuickRunner) -> None:
    convergence = quadratic_form_run(quick_run, 10.0, "optimizer.lr=0.1", "scheduler=exponential")
    assert convergence["theoretical_rate"] is None


def test_gradient_descent_theory_at_the_best_step_is_kappa_minus_one_over_kappa_plus_one() -> None:
    for kappa in (1.0, 10.0, 1000.0):
        eigenvalues = torch.linspace(1, kappa, 7).tolist()
        optimizer = validate_config_optimizer("manual_sgd", lr=2 / (kappa + 1))
        rate = theoretical_rate(optimizer, eigenvalues)
        assert rate == pytest.approx((kappa - 1) / (kappa + 1), abs=1e-12)


def test_torch_momentum_iteration_is_polyaks_heavy_ball() -> None:
    # One eigen-direction, run both ways: torch's v = μv + g, x -= ηv, and Polyak's
    # x_{k+1} = x_k - η g_k + μ (x_k - x_{k-1}); their iterates agree, and both shrink at the
    # radius the 2x2 matrix gives.
    lam, lr, mu = 3.0, 0.2, 0.5
    x_torch = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([x_torch], lr=lr, momentum=mu)
    previous, x_polyak = 1.0, 1.0
    for _ in range(60):
        optimizer.zero_grad()
        (0.5 * lam * x_torch**2).sum().backward()
        optimizer.step()
        previous, x_polyak = x_polyak, x_polyak - lr * lam * x_polyak + mu * (x_polyak - previous)
        assert x_torch.item() == pytest.approx(x_polyak, rel=1e-9, abs=1e-300)
    assert abs(x_polyak) ** (1 / 60) <= iteration_radius(lam, lr, mu) * 1.1


def test_measured_rate_skips_the_transient_and_the_float_floor() -> None:
    steps = list(range(200))
    # A fast mode dying out, a slow one at 0.9, then float32's floor from step 150 on.
    distances = torch.tensor([0.9**k + 5 * 0.3**k for k in steps], dtype=torch.float64)
    distances[150:] = 1e-9
    rate, window = measured_rate(steps, distances, floor=1e-8)
    assert rate == pytest.approx(0.9, rel=1e-3)
    assert window is not None and window[0] >= 70 and window[1] < 150


def test_measured_rate_is_null_without_enough_points_after_the_transient() -> None:
    assert measured_rate([0, 10], torch.tensor([1.0, 0.5]), floor=1e-9) == (None, None)


def test_quadratic_form_gradient_matches_autograd_and_finite_differences() -> None:
    loss = QuadraticFormLoss(dim=6, condition_number=50.0, seed=3)
    model = VectorModel(torch.randn(6, generator=torch.Generator().manual_seed(1)).tolist())
    check = check_gradients(model, loss, None, loss.analytic_gradient)
    assert check.passed, check
    assert len(check.comparisons) == 2


def test_quadratic_form_has_the_eigenvalues_and_minimum_it_promises() -> None:
    loss = QuadraticFormLoss(dim=5, condition_number=40.0, seed=7)
    eigenvalues = torch.linalg.eigvalsh(loss.matrix.double())
    assert eigenvalues.min().item() == pytest.approx(1.0, rel=1e-5)
    assert eigenvalues.max().item() == pytest.approx(40.0, rel=1e-5)
    value, minimizer = loss.minimum(5)
    assert value == 0.0
    assert loss(torch.tensor(minimizer)).item() == pytest.approx(0.0, abs=1e-10)
    assert loss(torch.zeros(5)).item() > 0
    # Seeded: the same seed, the same problem; another seed, another one.
    assert torch.equal(QuadraticFormLoss(5, 40.0, 7).matrix, loss.matrix)
    assert not torch.equal(QuadraticFormLoss(5, 40.0, 8).minimizer, loss.minimizer)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["loss.condition_number=0.5"], "loss.condition_number"),
        (["loss.dim=0"], "loss.dim"),
        (["loss.dim=100000"], "loss.dim"),
        (["loss.seed=-1"], "loss.seed"),
        (["model.size=3"], "loss.dim=10"),
    ],
)
def test_bad_quadratic_form_values_are_refused_by_key(
    composed: Callable[..., dict[str, Any]], overrides: list[str], key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(composed("loss=quadratic_form", *overrides))
    assert caught.value.exit_code == 2
    assert any(key in problem for problem in caught.value.problems), caught.value.problems


def test_explain_shows_the_rate_table(quick_run: QuickRunner) -> None:
    run = quick_run("loss=quadratic_form", "explain=true", "optimizer.lr=0.1")
    text = (run.run_dir / "explain.md").read_text()
    assert "Convergence on this quadratic form" in text
    assert "heavy ball" in text
    assert run.summary["gradient_check"]["passed"]
    for kappa in ("| 1 |", "| 10 |", "| 100 |", "| 1000 |"):
        assert kappa in text


def test_a_sweep_over_condition_numbers_draws_measured_on_theoretical_rates(
    quick_run: QuickRunner, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    for job, kappa in enumerate((2.0, 20.0)):
        quick_run(
            "loss=quadratic_form",
            f"loss.condition_number={kappa}",
            "optimizer.lr=0.05",
            "trainer.max_steps=100",
            "trainer.log_every_n_steps=1",
            run_dir=sweep / f"{job}_loss.condition_number={kappa}",
        )
    figure = draw_condition_sweep(sweep)
    assert figure == sweep / "convergence.png"
    assert figure.read_bytes().startswith(b"\x89PNG")


def test_a_sweep_without_quadratic_form_jobs_draws_no_rate_figure(
    quick_run: QuickRunner, tmp_path: Path
) -> None:
    for job in range(2):
        quick_run("loss=rosenbrock", run_dir=tmp_path / f"{job}_job")
    assert draw_condition_sweep(tmp_path) is None


@pytest.mark.slow  # a real Hydra sweep, in a subprocess
def test_sweep_over_condition_number_writes_the_rate_figure(
    train: Callable[..., TrainResult], tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    result = train(
        "-m",
        "experiment=quadratic_form",
        "loss.condition_number=1,10,100",
        "optimizer=sgd",
        "optimizer.lr=0.015",
        "optimizer.momentum=0,0.5",
        "trainer.max_steps=300",
        "logger=none",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.output
    summaries = [json.loads(file.read_text()) for file in sweep.glob("*/summary.json")]
    assert len(summaries) == 6
    for summary in summaries:
        within_two_percent(summary["convergence"], steps_per_decade=False)
    assert (sweep / "convergence.png").read_bytes().startswith(b"\x89PNG")
    assert str(sweep / "convergence.png") in result.output


def test_a_fast_rate_is_measured_in_a_run_long_enough_to_thin_the_trajectory(
    quick_run: QuickRunner,
) -> None:
    # Past 1024 recorded points the trajectory keeps every other one; the distances are kept
    # whole, so the ~20 steps of this descent still have their points.
    lr, momentum, _ = optimal_rates(10.0)["heavy ball (Polyak)"]
    convergence = quadratic_form_run(
        quick_run,
        10.0,
        "optimizer=sgd",
        f"optimizer.lr={lr}",
        f"optimizer.momentum={momentum}",
        "trainer.max_steps=1100",
    )
    within_two_percent(convergence)
