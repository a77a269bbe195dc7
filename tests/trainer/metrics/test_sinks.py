"""What a run writes to TensorBoard, read back from the real event files."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import RecordingSink, read_scalars

from gradtrain.build import build_trainer
from gradtrain.config import validate_config
from gradtrain.losses import QuadraticLoss
from gradtrain.metrics.sinks import TensorBoardSink
from gradtrain.run import flatten_hparams, run


def read_run(log_dir: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture
def quadratic_run(composed: Callable[..., dict[str, Any]], tmp_path: Path) -> Path:
    run(composed("trainer.max_steps=30", "trainer.log_every_n_steps=10"), tmp_path)
    return tmp_path / "tensorboard"


def test_scalars_hold_loss_grad_norms_and_lr_at_the_logged_steps(quadratic_run: Path) -> None:
    scalars = read_scalars(quadratic_run)
    for tag in ("train/loss", "watch/grad_norm", "watch/grad_norm/x", "watch/lr"):
        assert [step for step, _ in scalars[tag]] == [1, 10, 20, 30], tag
    losses = [value for _, value in scalars["train/loss"]]
    assert losses == sorted(losses, reverse=True)  # gradient descent on a convex bowl
    assert scalars["watch/lr"][0][1] == pytest.approx(0.1)
    # One parameter: its gradient norm is the global norm.
    assert scalars["watch/grad_norm/x"] == scalars["watch/grad_norm"]


def test_event_file_is_the_runs_own_and_holds_config_and_hparams(quadratic_run: Path) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    assert len(list(quadratic_run.iterdir())) == 1  # no hparams sub-run folder
    accumulator = read_run(quadratic_run)
    config_text = accumulator.Tensors("config/text_summary")[0].tensor_proto.string_val[0]
    assert b"name: manual_sgd" in config_text and b"max_steps: 30" in config_text

    content = accumulator.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["optimizer.lr"].number_value == pytest.approx(0.1)
    assert hparams["optimizer.name"].string_value == "manual_sgd"
    assert hparams["model.init"].string_value == "null"
    assert hparams["trainer.progress_bar"].bool_value is True  # a bool, not the number 1
    # No experiment record: TensorBoard would take one run's keys as every run's (see
    # trainer/dashboard.py); it builds the key list from all runs' session records instead.
    assert "_hparams_/experiment" not in content
    assert "_hparams_/session_end_info" in content
    scalars = read_scalars(quadratic_run)
    assert scalars["train/loss_best"][0][0] == 30


def test_linear_model_logs_one_grad_norm_per_parameter(
    composed: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    run(composed("experiment=linear_regression", "trainer.max_steps=3"), tmp_path)
    tags = set(read_scalars(tmp_path / "tensorboard"))
    assert {"watch/grad_norm/weight", "watch/grad_norm/bias", "watch/grad_norm"} <= tags


def test_flatten_hparams_makes_flat_tensorboard_values() -> None:
    flat = flatten_hparams({"a": {"b": 1, "c": None, "d": [1, 2]}, "e": "x", "f": True})
    assert flat == {"a.b": 1, "a.c": "null", "a.d": "[1, 2]", "e": "x", "f": True}


def test_custom_scalars_layout_groups_loss_gradients_and_optimizer(quadratic_run: Path) -> None:
    from tensorboard.plugins.custom_scalar import layout_pb2

    accumulator = read_run(quadratic_run)
    config = accumulator.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]
    layout = layout_pb2.Layout.FromString(config)
    charts = {
        (category.title, chart.title): list(chart.multiline.tag)
        for category in layout.category
        for chart in category.chart
    }
    assert charts[("loss", "train vs val")] == [r"^train/loss$", r"^val/loss$"]
    assert ("gradients", "grad norm per parameter") in charts
    assert charts[("optimizer", "learning rate")] == [r"^watch/lr$"]


class Tee:
    """Hands every call to both sinks: what the loop logged, and what TensorBoard got."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = sinks

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> None:
            for sink in self.sinks:
                getattr(sink, name)(*args, **kwargs)

        return call


def test_logging_every_step_writes_every_value_at_its_true_step(
    composed: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    raw = composed("trainer.max_steps=1000", "trainer.log_every_n_steps=1", "optimizer.lr=0.001")
    recorded, tensorboard = RecordingSink(), TensorBoardSink(tmp_path)  # writes every 256 steps
    build_trainer(validate_config(raw), Tee(recorded, tensorboard)).fit()
    tensorboard.close()
    written = read_scalars(tmp_path)
    for tag in ("train/loss", "watch/grad_norm", "watch/lr"):
        assert [step for step, _ in written[tag]] == list(range(1, 1001)), tag
        assert [value for _, value in written[tag]] == pytest.approx(
            [value for _, value in recorded.scalars[tag]], rel=1e-6
        )


def test_scalars_logged_before_a_failure_reach_the_event_file(
    composed: Callable[..., dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = itertools.count(1)
    forward = QuadraticLoss.forward

    def fail_on_the_eighth_call(self: QuadraticLoss, x: torch.Tensor, target: None = None) -> Any:
        if next(calls) == 8:
            raise RuntimeError("diverged")
        return forward(self, x, target)

    monkeypatch.setattr(QuadraticLoss, "forward", fail_on_the_eighth_call)
    with pytest.raises(RuntimeError, match="diverged"):
        run(composed("trainer.log_every_n_steps=1"), tmp_path)
    steps = [step for step, _ in read_scalars(tmp_path / "tensorboard")["train/loss"]]
    assert steps == [1, 2, 3, 4, 5, 6, 7]


def test_flush_reads_back_device_tensors_of_any_dtype(tmp_path: Path) -> None:
    sink = TensorBoardSink(tmp_path)
    sink.log_scalars({"a": torch.tensor(1.5, dtype=torch.bfloat16), "b": 2.0}, step=3)
    sink.log_scalars({"a": torch.tensor(4), "b": torch.tensor([0.25])}, step=7)
    sink.flush()
    assert read_scalars(tmp_path) == {"a": [(3, 1.5), (7, 4.0)], "b": [(3, 2.0), (7, 0.25)]}
    sink.close()


def test_values_wait_no_longer_than_flush_secs(tmp_path: Path) -> None:
    sink = TensorBoardSink(tmp_path, flush_secs=0)  # every call is already overdue
    sink.log_scalars({"train/loss": torch.tensor(0.5)}, step=1)
    assert read_scalars(tmp_path) == {"train/loss": [(1, 0.5)]}
    sink.close()
