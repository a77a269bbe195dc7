"""The training loop reaches the known minima, stops when it should, and logs what it says."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import RecordingSink

from gradtrain.build import build_trainer
from gradtrain.config import TrainerConfig, validate_config
from gradtrain.loop import Trainer
from gradtrain.losses import QuadraticLoss
from gradtrain.models import VectorModel
from gradtrain.optim import ManualSGD
from gradtrain.run import run

Compose = Callable[..., dict[str, Any]]


def quadratic_trainer(sink: RecordingSink, **settings: Any) -> Trainer:
    model = VectorModel([1.0, 2.0, 3.0, 4.0, 5.0])
    return Trainer(
        model,
        QuadraticLoss(),
        ManualSGD(model.parameters(), lr=0.1),
        None,
        TrainerConfig(**settings),
        torch.device("cpu"),
        sink,
    )


def test_quadratic_converges_to_minus_25_with_x_at_zero(composed: Compose, tmp_path: Path) -> None:
    summary = run(composed("logger=none"), tmp_path)
    assert summary["status"] == "completed"
    assert summary["steps"] <= 200
    assert summary["final_loss"] == pytest.approx(-25.0, abs=1e-6)
    assert max(abs(v) for v in summary["params"]) < 1e-6


def test_vector_loss_trains_exactly_like_the_summed_loss(composed: Compose, tmp_path: Path) -> None:
    summed = run(composed("logger=none"), tmp_path / "sum")
    vjp = run(composed("logger=none", "loss.reduction=none"), tmp_path / "none")
    assert vjp["params"] == summed["params"]
    assert vjp["final_loss"] == summed["final_loss"]


def test_rosenbrock_reaches_one_one(composed: Compose, tmp_path: Path) -> None:
    summary = run(composed("loss=rosenbrock", "logger=none"), tmp_path)
    assert summary["params"] == pytest.approx([1.0, 1.0], abs=1e-3)
    assert summary["final_loss"] < 1e-6


def test_rosenbrock_with_adam_reaches_one_one(composed: Compose, tmp_path: Path) -> None:
    summary = run(composed("experiment=rosenbrock", "logger=none"), tmp_path)
    assert summary["params"] == pytest.approx([1.0, 1.0], abs=1e-3)


def test_linear_regression_lowers_the_loss_a_hundredfold(composed: Compose, tmp_path: Path) -> None:
    raw = composed("experiment=linear_regression", "logger=none", "trainer.log_every_n_steps=1")
    sink = RecordingSink()
    trainer = build_trainer(validate_config(raw), sink)
    result = trainer.fit()
    first_loss = sink.scalars["train/loss"][0][1]
    assert result.final_loss < first_loss / 100
    assert isinstance(trainer.model, torch.nn.Linear)
    assert result.epochs == 20 and result.stop_reason == "max_epochs"
    assert result.steps == 20 * len(trainer.train_loader)


def test_logs_the_first_step_every_n_steps_and_always_the_last(tmp_path: Path) -> None:
    sink = RecordingSink()
    quadratic_trainer(sink, max_steps=25, log_every_n_steps=10).fit()
    # Step 1 always: the starting loss is where a curve must begin.
    assert [step for step, _ in sink.scalars["train/loss"]] == [1, 10, 20, 25]
    assert sink.scalars["train/loss"][0][1] == pytest.approx(55.0 - 25.0)
    assert set(sink.scalars) == {"train/loss", "watch/grad_norm", "watch/grad_norm/x", "watch/lr"}


def test_logged_grad_norm_is_the_norm_of_two_x_before_the_update() -> None:
    sink = RecordingSink()
    quadratic_trainer(sink, max_steps=1, log_every_n_steps=1).fit()
    expected = torch.linalg.vector_norm(2 * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])).item()
    assert sink.scalars["watch/grad_norm"] == [(1, pytest.approx(expected))]
    assert sink.scalars["watch/grad_norm/x"] == [(1, pytest.approx(expected))]
    assert sink.scalars["train/loss"] == [(1, pytest.approx(55.0 - 25.0))]
    assert sink.scalars["watch/lr"] == [(1, pytest.approx(0.1))]


def test_tolerance_stops_once_the_loss_settles() -> None:
    sink = RecordingSink()
    result = quadratic_trainer(sink, max_steps=10_000, tolerance=1e-6).fit()
    assert result.stop_reason == "tolerance"
    assert result.steps < 200
    (_, before), (_, last) = sink.scalars["train/loss"][-2:]
    assert abs(last - before) < 1e-6


def test_grad_clip_bounds_each_update() -> None:
    sink = RecordingSink()
    trainer = quadratic_trainer(sink, max_steps=1, grad_clip=1.0)
    start = trainer.model.x.detach().clone()
    trainer.fit()
    step = trainer.model.x.detach() - start
    assert torch.linalg.vector_norm(step).item() == pytest.approx(0.1)  # lr * max_norm
    # The logged norm is the one before clipping.
    assert sink.scalars["watch/grad_norm"][0][1] > 1.0


def test_max_epochs_counts_passes_over_the_data(composed: Compose, tmp_path: Path) -> None:
    summary = run(
        composed(
            "experiment=linear_regression",
            "logger=none",
            "trainer.max_epochs=3",
            "dataset.n_samples=100",
            "dataset.batch_size=32",
        ),
        tmp_path,
    )
    assert summary["epochs"] == 3 and summary["steps"] == 3 * 4  # ceil(100 / 32) = 4


def test_max_steps_can_stop_mid_epoch(composed: Compose, tmp_path: Path) -> None:
    summary = run(
        composed("experiment=linear_regression", "logger=none", "trainer.max_steps=5"),
        tmp_path,
    )
    assert summary["steps"] == 5 and summary["epochs"] == 0
    assert summary["stop_reason"] == "max_steps"


def test_summary_json_holds_the_documented_fields(composed: Compose, tmp_path: Path) -> None:
    import json

    run(composed("logger=none"), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("status", "final_loss", "best_loss", "steps", "epochs", "wall_s", "steps_per_s"):
        assert key in summary
    assert summary["status"] == "completed"
    assert summary["best_loss"] <= summary["final_loss"]
    assert summary["grad_norm"] < 1e-12 and len(summary["params"]) == 5


def test_a_finished_run_is_never_overwritten(composed: Compose, tmp_path: Path) -> None:
    from gradtrain.errors import GradtrainError

    run(composed("logger=none"), tmp_path)
    before = (tmp_path / "summary.json").read_bytes()
    with pytest.raises(GradtrainError, match="already holds a run"):
        run(composed("logger=none", "optimizer.lr=0.5"), tmp_path)
    assert (tmp_path / "summary.json").read_bytes() == before


def test_bf16_runs_the_forward_in_bfloat16_and_keeps_float32_weights(composed: Compose) -> None:
    raw = composed(
        "experiment=linear_regression",
        "logger=none",
        "trainer.precision=bf16",
        "trainer.log_every_n_steps=1",
        "trainer.max_epochs=5",
    )
    sink = RecordingSink()
    trainer = build_trainer(validate_config(raw), sink)
    forward_dtypes: set[torch.dtype] = set()
    gradient_dtypes: set[torch.dtype] = set()
    trainer.model.register_forward_hook(lambda _m, _i, out: forward_dtypes.add(out.dtype))
    for parameter in trainer.model.parameters():
        parameter.register_hook(lambda grad: gradient_dtypes.add(grad.dtype))
    result = trainer.fit()
    assert forward_dtypes == {torch.bfloat16}
    assert gradient_dtypes == {torch.float32}
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    assert math.isfinite(result.final_loss)
    assert result.final_loss < sink.scalars["train/loss"][0][1] / 10


def test_bf16_leaves_a_loss_of_float32_parameters_alone_exact(
    composed: Compose, tmp_path: Path
) -> None:
    fp32 = run(composed("logger=none"), tmp_path / "fp32")
    bf16 = run(composed("logger=none", "trainer.precision=bf16"), tmp_path / "bf16")
    assert bf16["params"] == fp32["params"]  # x**2 has no bf16 kernel under autocast
