"""Where metrics go. The trainer talks to a `MetricSink`; TensorBoard is one implementation.

TensorBoard is imported only when a TensorBoard sink is made, keeping `logger=none` start-up lean.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from trainer.dashboard import CHART_LAYOUT, hparams_summaries

if TYPE_CHECKING:
    from torch import Tensor
    from torch.utils.tensorboard import SummaryWriter

HParamValue = int | float | str | bool


class MetricSink(Protocol):
    """Receives scalars during training and the run's description at its start and end."""

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None: ...

    def log_text(self, tag: str, text: str) -> None: ...

    def log_hparams(
        self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float], step: int
    ) -> None: ...

    def close(self) -> None: ...


class NullSink:
    """`logger=none`: metrics are dropped (the summary still reports the outcome)."""

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        pass

    def log_text(self, tag: str, text: str) -> None:
        pass

    def log_hparams(
        self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float], step: int
    ) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardSink:
    """Writes one event file per run under `log_dir`."""

    def __init__(self, log_dir: Path, flush_secs: int = 30) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.writer: SummaryWriter = SummaryWriter(log_dir=str(log_dir), flush_secs=flush_secs)
        self.writer.add_custom_scalars(CHART_LAYOUT)

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def log_text(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, text)

    def log_hparams(
        self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float], step: int
    ) -> None:
        # SummaryWriter.add_hparams would write into a new sub-run; writing the hparams records
        # into this run's own file keeps config, metrics and curves in one run.
        file_writer = self.writer._get_file_writer()
        for summary in hparams_summaries(hparams):
            file_writer.add_summary(summary, global_step=step)
        self.log_scalars(metrics, step)

    def log_histogram(self, tag: str, values: Tensor, step: int) -> None:
        self.writer.add_histogram(tag, values, global_step=step)

    def close(self) -> None:
        self.writer.close()
