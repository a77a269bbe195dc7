"""explain=true: the backward graph, the gradient check and the autograd demos, on the real
losses and models, and a run that trains exactly as it would without them."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ROOT, QuickRun
from torch import Tensor, nn

from gradtrain.errors import GradientCheckError, GradtrainError
from gradtrain.insight.autograd_graph import walk_backward_graph
from gradtrain.insight.explain import explain, explain_batch
from gradtrain.insight.gradient_check import check_gradients
from gradtrain.losses import LOSSES, MSELoss, QuadraticLoss, RosenbrockLoss
from gradtrain.models import LinearModel, VectorModel
from gradtrain.run import run

Compose = Callable[..., dict[str, Any]]
LECTURE_X = [1.0, 2.0, 3.0, 4.0, 5.0]


def mlp(layers: int, width: int = 4) -> nn.Sequential:
    modules: list[nn.Module] = []
    for _ in range(layers):
        modules += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*modules[:-1])  # no activation after the last layer


def mse_batch(inputs: int, outputs: int, size: int = 16) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(size, inputs, generator=generator), torch.randn(
        size, outputs, generator=generator
    )


# ------------------------------------------------------------------------------ graph walk
def test_graph_of_the_lecture_quadratic_is_sum_sub_pow_x() -> None:
    model = VectorModel(LECTURE_X)
    graph = walk_backward_graph(QuadraticLoss()(model()), dict(model.named_parameters()))
    assert graph.render() == "SumBackward0 <- SubBackward0 <- PowBackward0 <- x"
    assert graph.leaves() == ["x"]


def test_graph_of_a_vector_loss_starts_at_the_subtraction() -> None:
    model = VectorModel(LECTURE_X)
    loss = QuadraticLoss(reduction="none")(model())
    graph = walk_backward_graph(loss, dict(model.named_parameters()))
    assert graph.render() == "SubBackward0 <- PowBackward0 <- x"
    assert graph.root.walk()[-1].name == "AccumulateGrad"


def test_graph_of_rosenbrock_reaches_x_through_both_slices() -> None:
    model = VectorModel([-1.5, 2.0])
    graph = walk_backward_graph(RosenbrockLoss()(model()), dict(model.named_parameters()))
    assert graph.render().splitlines() == [
        "SumBackward0 <- AddBackward0",
        "├─ PowBackward0 <- RsubBackward1 <- SliceBackward0 <- x",  # (a - x[:-1])**2
        "└─ MulBackward0 <- PowBackward0 <- SubBackward0",  # b * (x[1:] - x[:-1]**2)**2
        "   ├─ SliceBackward0 <- x",
        "   └─ PowBackward0 <- SliceBackward0 (shared, inputs shown above)",
    ]
    counts = graph.node_counts()
    assert counts["SliceBackward0"] == 2 and counts["PowBackward0"] == 3
    assert counts["AccumulateGrad"] == 1  # one leaf, reached along three paths


def test_graph_of_the_linear_model_ends_at_weight_and_bias() -> None:
    model = LinearModel(3, 1)
    inputs, targets = mse_batch(3, 1)
    loss = MSELoss()(model(inputs), targets.squeeze(-1))
    graph = walk_backward_graph(loss, dict(model.named_parameters()))
    assert graph.render().splitlines() == [
        "MseLossBackward0 <- SqueezeBackward1 <- AddmmBackward0",
        "├─ bias",
        "└─ TBackward0 <- weight",
    ]


def test_graph_of_an_mlp_names_every_layer_and_folds_repeated_blocks() -> None:
    model = mlp(layers=6)
    inputs, targets = mse_batch(4, 4)
    loss = MSELoss()(model(inputs), targets)
    graph = walk_backward_graph(loss, dict(model.named_parameters()))
    counts = graph.node_counts()
    assert counts["AddmmBackward0"] == 6 and counts["ReluBackward0"] == 5
    assert counts["TBackward0"] == 6 and counts["AccumulateGrad"] == 12
    assert sorted(graph.leaves()) == sorted(name for name, _ in model.named_parameters())

    lines = graph.render().splitlines()
    assert lines[0] == "MseLossBackward0 <- AddmmBackward0"
    assert lines[1:3] == ["├─ 10.bias", "├─ TBackward0 <- 10.weight"]
    # Layers 8..2 are the same block: drawn once, then counted, with the leaves it covers.
    folded = [line for line in lines if "the same block" in line]
    assert len(folded) == 1 and "3 more times" in folded[0]
    assert "6.weight" in folded[0] and "2.bias" in folded[0]
    assert lines[-1].endswith("TBackward0 <- 0.weight")
    assert len(lines) < 13  # unfolded, it takes 16


# -------------------------------------------------------------------------- gradient check
PROBLEMS = {
    "quadratic sum": (lambda: VectorModel(LECTURE_X), lambda: QuadraticLoss(), None),
    "quadratic mean": (lambda: VectorModel(LECTURE_X), lambda: QuadraticLoss("mean"), None),
    "quadratic none": (lambda: VectorModel(LECTURE_X), lambda: QuadraticLoss("none"), None),
    "rosenbrock": (lambda: VectorModel([-1.5, 2.0]), lambda: RosenbrockLoss(), None),
    "rosenbrock 6-d": (
        lambda: VectorModel.random(6, seed=0),
        lambda: RosenbrockLoss(a=2.0, b=10.0),
        None,
    ),
    "linear + mse": (lambda: LinearModel(8, 1), lambda: MSELoss(), (8, None)),
    "mlp + mse": (lambda: mlp(layers=3, width=8), lambda: MSELoss(), (8, 8)),
}


@pytest.mark.parametrize("problem", PROBLEMS)
def test_gradient_check_passes_on_every_builtin_loss_and_model(problem: str) -> None:
    make_model, make_loss, shape = PROBLEMS[problem]
    torch.manual_seed(0)
    model, loss_fn = make_model(), make_loss()
    batch = None
    if shape is not None:
        inputs, targets = mse_batch(shape[0], shape[1] or 1)
        batch = (inputs, targets if shape[1] else targets.squeeze(-1))
    analytic = getattr(loss_fn, "analytic_gradient", None) if batch is None else None
    check = check_gradients(model, loss_fn, batch, analytic)
    assert check.passed, check
    references = [comparison.reference for comparison in check.comparisons]
    assert references[-1].startswith("central differences")
    # An analytic reference only for losses of the parameters alone.
    assert len(references) == (2 if batch is None else 1)
    assert check.max_abs_error < 1e-6


def test_gradient_check_samples_coordinates_of_a_big_model_with_a_seed() -> None:
    torch.manual_seed(0)
    model = mlp(layers=2, width=16)  # 2 * (16 * 16 + 16) = 544 numbers
    batch = mse_batch(16, 16)
    first = check_gradients(model, MSELoss(), batch)
    again = check_gradients(model, MSELoss(), batch)
    (differences,) = first.comparisons
    assert first.total_coordinates == 544 and differences.checked == 64
    assert first.passed
    assert [c.name for c in differences.worst] == [c.name for c in again.comparisons[0].worst]


def test_a_wrong_analytic_gradient_fails_the_check() -> None:
    model = VectorModel(LECTURE_X)
    check = check_gradients(model, QuadraticLoss(), None, lambda x: 3 * x, analytic_name="3x")
    analytic, differences = check.comparisons
    assert not check.passed and not analytic.passed
    assert differences.passed  # autograd itself agrees with finite differences
    assert analytic.max_abs_error == pytest.approx(5.0)  # |2x - 3x| at x = 5
    assert check.summary() == {
        "max_abs_error": pytest.approx(5.0),
        "max_rel_error": pytest.approx(1 / 3),
        "passed": False,
    }


# ------------------------------------------------------------------------------ the report
def test_explain_leaves_parameters_gradients_and_random_state_as_they_were() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 1))
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    inputs, targets = mse_batch(8, 1)
    explain(model, MSELoss(), (inputs, targets))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)  # dropout's draws were given back


class LinearWithSpareParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.spare = nn.Parameter(torch.ones(2))  # never used by forward: it gets no gradient
        self.linear = nn.Linear(3, 1)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.linear(inputs).squeeze(-1)


def test_explain_shows_the_graph_even_under_no_grad_and_with_an_unused_parameter() -> None:
    model = LinearWithSpareParameter()
    with torch.no_grad():
        report = explain(model, MSELoss(), (torch.randn(4, 3), torch.randn(4)))
    assert report.graph.leaves() == ["linear.bias", "linear.weight"]
    assert report.accumulation.parameter == "linear.weight"
    assert report.gradient_check.passed  # the spare parameter's gradient is 0 both ways
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model.spare, torch.ones(2))


def test_report_shows_the_vector_jacobian_product_of_a_vector_loss() -> None:
    report = explain(VectorModel(LECTURE_X), QuadraticLoss(reduction="none"), None)
    assert report.vjp is not None and report.vjp.loss_shape == (5,)
    assert report.vjp.jacobian == torch.diag(2 * torch.tensor(LECTURE_X)).tolist()
    assert report.vjp.product == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert report.vjp.max_diff_from_sum == 0
    markdown = report.to_markdown()
    assert "loss.backward(gradient=torch.ones_like(loss))" in markdown
    assert explain(VectorModel(LECTURE_X), QuadraticLoss(), None).vjp is None


def test_update_under_no_grad_leaves_every_parameter_a_leaf() -> None:
    report = explain(LinearModel(3, 1), MSELoss(), (torch.randn(4, 3), torch.randn(4)), lr=0.5)
    update = report.update
    assert update.changed and update.lr == 0.5
    assert [(f.expression, f.is_leaf, f.grad_fn) for f in update.after] == [
        ("weight", True, None),
        ("bias", True, None),
    ]
    assert "leaf Variable that requires grad" in update.in_place_error
    assert update.out_of_place.grad_fn == "SubBackward0" and not update.out_of_place.is_leaf


def test_two_backward_passes_without_zeroing_sum_their_gradients() -> None:
    report = explain(VectorModel([-1.5, 2.0]), RosenbrockLoss(), None)
    accumulation = report.accumulation
    assert accumulation.after_one == [-155.0, -50.0]
    assert accumulation.after_two == [-310.0, -100.0]
    assert accumulation.max_error == 0


def test_detach_and_no_grad_both_leave_the_graph() -> None:
    report = explain(VectorModel(LECTURE_X), QuadraticLoss(), None)
    facts = {f.expression: f for f in report.detach_vs_no_grad}
    assert facts["x ** 2"].grad_fn == "PowBackward0" and facts["x ** 2"].requires_grad
    assert not facts["x.detach()"].requires_grad and facts["x.detach()"].shares_storage
    assert facts["x.detach() ** 2"].grad_fn is None
    assert facts["with torch.no_grad(): x ** 2"].grad_fn is None
    no_grad_loss = facts["with torch.no_grad(): loss"]
    assert not no_grad_loss.requires_grad and no_grad_loss.grad_fn is None


def test_markdown_states_the_tolerance_and_the_verdict() -> None:
    markdown = explain(VectorModel([-1.5, 2.0]), RosenbrockLoss(), None).to_markdown()
    assert "| RosenbrockLoss.analytic_gradient | 2 of 2 |" in markdown
    assert "<= 1e-05 + 0.001 * |reference|" in markdown
    assert "**Gradient check: PASS**" in markdown
    assert "SumBackward0 <- AddBackward0" in markdown


def test_explain_batch_is_the_first_samples_and_leaves_shuffling_alone(
    composed: Compose,
) -> None:
    from gradtrain.build import build_data
    from gradtrain.config import validate_config

    cfg = validate_config(composed("experiment=linear_regression"))
    loader = build_data(cfg.dataset, seed=0).train_loader
    state = loader.generator.get_state()
    inputs, targets = explain_batch(loader, torch.device("cpu"))
    assert torch.equal(inputs, loader.dataset.inputs[:64])
    assert torch.equal(targets, loader.dataset.targets[:64])
    assert torch.equal(loader.generator.get_state(), state)


# ---------------------------------------------------------------------------------- in runs
@pytest.mark.parametrize(
    "overrides",
    [
        ["loss=rosenbrock", "trainer.max_steps=50"],
        ["experiment=linear_regression", "trainer.max_steps=null"],  # the preset's 20 epochs
    ],
    ids=["rosenbrock", "linear_regression"],
)
def test_a_run_with_explain_trains_exactly_like_one_without(
    quick_config: Compose, tmp_path: Path, overrides: list[str]
) -> None:
    plain = run(quick_config(*overrides), tmp_path / "plain")
    explained = run(quick_config("explain=true", *overrides), tmp_path / "explained")
    assert explained["final_loss"] == plain["final_loss"]
    assert explained.get("params") == plain.get("params")
    assert explained["gradient_check"]["passed"] is True
    assert "gradient_check" not in plain
    assert (tmp_path / "explained" / "explain.md").read_text().startswith("# What autograd")
    assert not (tmp_path / "plain" / "explain.md").exists()


def test_explain_logs_writes_and_records_the_report_then_trains(
    quick_run: Callable[..., QuickRun], caplog: pytest.LogCaptureFixture
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # (train.py prints what the gradtrain logger logs: tests/test_train.py shows the summary.)
    with caplog.at_level(logging.INFO, logger="gradtrain"):
        result = quick_run(
            "loss=quadratic", "explain=true", "logger=tensorboard", "trainer.max_steps=200"
        )
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "SumBackward0 <- SubBackward0 <- PowBackward0 <- x" in logged
    assert "| QuadraticLoss.analytic_gradient | 5 of 5 | 0 | 0 |" in logged
    assert "**Gradient check: PASS**" in logged
    assert logged.index("Gradient check") < logged.index("final loss  -25")
    written = (result.run_dir / "explain.md").read_text()
    assert written.startswith("# What autograd does on this run")
    assert "`x.detach()` | (5,) | False | True | None | yes |" in written
    summary = result.summary
    assert summary["gradient_check"]["passed"] is True
    assert summary["gradient_check"]["max_abs_error"] < 1e-6
    assert summary["final_loss"] == pytest.approx(-25.0)
    accumulator = EventAccumulator(str(result.run_dir / "tensorboard"))
    accumulator.Reload()
    (event,) = accumulator.Tensors("explain/text_summary")
    assert event.tensor_proto.string_val[0].decode() == written


class WrongQuadraticLoss(QuadraticLoss):
    """The lecture's loss with a deliberately wrong derivative: 3x instead of 2x."""

    def analytic_gradient(self, x: Tensor) -> Tensor:
        return 3 * x


def test_a_wrong_analytic_gradient_stops_the_run_before_training(
    quick_config: Compose, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The config schema accepts only the built-in names, so the test swaps what "quadratic"
    # builds; monkeypatch puts the real one back.
    monkeypatch.setitem(LOSSES._entries, "quadratic", WrongQuadraticLoss)
    with pytest.raises(GradientCheckError, match="gradient check FAILED") as caught:
        run(quick_config("explain=true"), tmp_path)
    assert isinstance(caught.value, GradtrainError) and caught.value.exit_code != 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps"] == 0
    assert summary["gradient_check"]["passed"] is False
    assert summary["gradient_check"]["max_abs_error"] == pytest.approx(5.0)
    assert "**Gradient check: FAIL**" in (tmp_path / "explain.md").read_text()


@pytest.mark.slow  # the in-process test above covers the run; test_train.py, train.py's exit path
def test_train_py_exits_non_zero_when_the_gradient_check_fails(tmp_path: Path) -> None:
    # train.py itself, run as __main__ in a fresh interpreter, with the wrong loss registered.
    script = tmp_path / "train_with_wrong_gradient.py"
    script.write_text(
        f"""
import runpy, sys
from gradtrain.losses import LOSSES, QuadraticLoss

class WrongQuadraticLoss(QuadraticLoss):
    def analytic_gradient(self, x):
        return 3 * x

LOSSES._entries["quadratic"] = WrongQuadraticLoss
sys.argv = ["train.py", "loss=quadratic", "explain=true", "hydra.run.dir={tmp_path / "run"}"]
runpy.run_path({str(ROOT / "train.py")!r}, run_name="__main__")
"""
    )
    completed = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "gradtrain: gradient check FAILED" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert "**Gradient check: FAIL**" in completed.stdout
