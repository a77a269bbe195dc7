"""Minimization reaches the mathematically known answer: least squares, logistic regression,
and the equivalences the optimizers and accumulation promise."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import RecordingSink

from gradtrain.build import build_data, build_trainer
from gradtrain.config import validate_config
from gradtrain.loop import Trainer
from gradtrain.models import MLP
from gradtrain.optim import ManualSGD
from gradtrain.run import seed_everything

Compose = Callable[..., dict[str, Any]]


def fit(raw: dict[str, Any], sink: RecordingSink | None = None) -> Trainer:
    cfg = validate_config(raw)
    seed_everything(cfg.seed)
    trainer = build_trainer(cfg, sink or RecordingSink())
    trainer.fit()
    return trainer


def training_tensors(raw: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = validate_config(raw)
    loader = build_data(cfg.dataset, seed=cfg.seed).train_loader
    assert loader is not None
    return loader.dataset.inputs, loader.dataset.targets  # type: ignore[attr-defined]


def mse(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    with torch.no_grad():
        return torch.mean((model(inputs) - targets) ** 2).item()


@pytest.mark.parametrize(
    "optimizer", [["optimizer=sgd", "optimizer.lr=0.2"], ["optimizer=lbfgs", "trainer.max_steps=5"]]
)
def test_linear_regression_reaches_the_least_squares_optimum(
    composed: Compose, optimizer: list[str]
) -> None:
    raw = composed(
        "experiment=linear_regression",
        "dataset.batch_size=null",  # full batch: gradient descent proper
        "trainer.max_steps=300",
        "trainer.max_epochs=null",
        *optimizer,
    )
    model = fit(raw).model
    inputs, targets = training_tensors(raw)
    design = torch.cat([inputs, torch.ones(len(inputs), 1)], dim=1).double()
    solution = torch.linalg.lstsq(design, targets.double().unsqueeze(1)).solution.squeeze(1)
    optimum = torch.mean((design @ solution - targets.double()) ** 2).item()
    relative_excess = (mse(model, inputs, targets) - optimum) / optimum
    assert relative_excess < 1e-4


def test_logistic_regression_separates_separable_classes(composed: Compose) -> None:
    raw = composed("experiment=logistic_regression", "dataset.spread=0.3", "dataset.val_fraction=0")
    trainer = fit(raw)
    assert trainer.train_loader is not None
    assert trainer.evaluate(trainer.train_loader)["accuracy"] == 1.0


def reference_logistic_loss(inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Cross-entropy at its minimum by float64 L-BFGS, written here independently of gradtrain."""
    weight = torch.zeros(inputs.shape[1], 2, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    x, y = inputs.double(), targets
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y)
        loss.backward()
        return loss

    optimizer.step(closure)  # type: ignore[arg-type]
    return closure().item()


@pytest.mark.parametrize(
    "optimizer",
    [
        ["optimizer=lbfgs", "trainer.max_steps=10"],
        ["optimizer=sgd", "optimizer.lr=1.0", "optimizer.momentum=0.9", "trainer.max_steps=600"],
    ],
)
def test_logistic_regression_on_overlapping_classes_matches_lbfgs_reference(
    composed: Compose, optimizer: list[str]
) -> None:
    raw = composed(
        "experiment=logistic_regression",
        "dataset.spread=3.0",
        "dataset.val_fraction=0",
        "dataset.batch_size=null",
        "trainer.max_epochs=null",
        *optimizer,
    )
    trainer = fit(raw)
    inputs, targets = training_tensors(raw)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(trainer.model(inputs), targets).item()
    reference = reference_logistic_loss(inputs, targets)
    assert trainer.evaluate(trainer.train_loader)["accuracy"] < 1.0  # truly overlapping
    assert loss == pytest.approx(reference, abs=1e-4)


def test_csv_round_trip_trains_like_the_synthetic_path(composed: Compose, tmp_path: Path) -> None:
    synthetic = composed("experiment=linear_regression", "trainer.max_epochs=3")
    inputs, targets = training_tensors(synthetic)
    rows = ["f0,f1,f2,f3,f4,f5,f6,f7,target"]
    for x, y in zip(inputs.tolist(), targets.tolist(), strict=True):
        rows.append(",".join(repr(v) for v in [*x, y]))  # repr: floats round-trip exactly
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    from_csv = composed(
        "experiment=csv_regression",
        f"dataset.path={tmp_path / 'data.csv'}",
        "dataset.target=target",
        "dataset.standardize=false",
        "dataset.val_fraction=0",
        "optimizer.lr=0.1",
        "trainer.max_epochs=3",
    )
    a, b = fit(synthetic).model, fit(from_csv).model
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), name


def test_manual_sgd_with_momentum_equals_torch_sgd_step_for_step() -> None:
    torch.manual_seed(0)
    ours, theirs = MLP(4, 1, hidden_sizes=[8]), MLP(4, 1, hidden_sizes=[8])
    theirs.load_state_dict(ours.state_dict())
    manual = ManualSGD(ours.parameters(), lr=0.05, momentum=0.9)
    reference = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9)
    for _ in range(20):
        x, y = torch.randn(16, 4), torch.randn(16)
        for model, optimizer in ((ours, manual), (theirs, reference)):
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
        for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_gradient_accumulation_equals_the_larger_batch(composed: Compose) -> None:
    common = ["experiment=linear_regression", "dataset.shuffle=false", "trainer.max_epochs=2"]
    accumulated = fit(
        composed(*common, "dataset.batch_size=32", "trainer.accumulate_grad_batches=4")
    )
    large = fit(composed(*common, "dataset.batch_size=128"))
    assert accumulated.state.step == large.state.step == 2 * 1024 // 128
    for p, q in zip(accumulated.model.parameters(), large.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_validation_runs_every_n_epochs_in_eval_mode_without_graph(composed: Compose) -> None:
    sink = RecordingSink()
    trainer = fit(
        composed(
            "experiment=mlp_classification",
            "model.dropout=0.5",
            "trainer.max_epochs=4",
            "trainer.val_every_n_epochs=2",
        ),
        sink,
    )
    steps_per_epoch = len(trainer.train_loader)  # type: ignore[arg-type]
    assert [s for s, _ in sink.scalars["val/loss"]] == [2 * steps_per_epoch, 4 * steps_per_epoch]
    assert [s for s, _ in sink.scalars["train/accuracy"]] == [
        e * steps_per_epoch for e in (1, 2, 3, 4)
    ]
    assert "val/accuracy" in sink.scalars
    # With dropout, only eval mode makes two evaluations agree.
    assert trainer.val_loader is not None
    assert trainer.evaluate(trainer.val_loader) == trainer.evaluate(trainer.val_loader)
    assert trainer.model.training  # evaluate() hands the model back in training mode


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        (
            ["scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.5"],
            [0.1, 0.1, 0.05, 0.05, 0.025, 0.025],
        ),
        (
            ["scheduler=exponential", "scheduler.gamma=0.5"],
            [0.1, 0.05, 0.025, 0.0125, 0.00625, 0.003125],
        ),
        (
            ["scheduler=linear_warmup", "scheduler.warmup_steps=4"],
            [0.025, 0.05, 0.075, 0.1, 0.1, 0.1],
        ),
        (["scheduler=cosine"], [0.1, 0.0933, 0.075, 0.05, 0.025, 0.0067]),
    ],
)
def test_schedulers_set_the_logged_lr_each_step(
    composed: Compose, scheduler: list[str], expected: list[float]
) -> None:
    sink = RecordingSink()
    fit(composed("trainer.max_steps=6", "trainer.log_every_n_steps=1", *scheduler), sink)
    lrs = [lr for _, lr in sink.scalars["watch/lr"]]
    assert lrs == pytest.approx(expected, abs=1e-4)
