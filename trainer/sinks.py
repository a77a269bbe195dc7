"""Where metrics go. The trainer talks to a `MetricSink`; TensorBoard is one implementation.

TensorBoard is imported only when a TensorBoard sink is made, keeping `logger=none` start-up lean.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from trainer.dashboard import CHART_LAYOUT, hparams_summaries

if TYPE_CHECKING:
    from torch import Tensor
    from torch.utils.tensorboard import SummaryWriter

HParamValue = int | float | str | bool
# Scalars may arrive as 0-d device tensors; a sink reads them back when it writes them.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class MetricSink(Protocol):
    """Receives scalars (and figures) during training and the run's description at its start and
    end."""

    def log_scalars(self, scalars: Mapping[str, float | Tensor], step: int) -> None: ...

    def log_text(self, tag: str, text: str) -> None: ...

    def log_image(self, tag: str, png: bytes, step: int) -> None: ...

    def log_hparams(
        self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float], step: int
    ) -> None: ...

    def flush(self) -> None:
        """Make everything logged so far durable (called before each checkpoint)."""
        ...

    def close(self) -> None: ...


class NullSink:
    """`logger=none`: metrics are dropped (the summary still reports the outcome)."""

    def log_scalars(self, scalars: Mapping[str, float | Tensor], step: int) -> None:
        pass

    def log_text(self, tag: str, text: str) -> None:
        pass

    def log_image(self, tag: str, png: bytes, step: int) -> None:
        pass

    def log_hparams(
        self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float], step: int
    ) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardSink:
    """Writes one event file per run under `log_dir`."""

    def __init__(self, log_dir: Path, flush_secs: int = 30, purge_step: int | None = None) -> None:
        """`purge_step`: a resumed run's first new step; TensorBoard then drops the events an
        interrupted session wrote from that step on, so no step appears twice."""
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.writer: SummaryWriter = SummaryWriter(
            log_dir=str(log_dir), flush_secs=flush_secs, purge_step=purge_step
        )
        self.writer.add_custom_scalars(CHART_LAYOUT)

    def log_scalars(self, scalars: Mapping[str, float | Tensor], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def log_text(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, text)

    def log_image(self, tag: str, png: bytes, step: int) -> None:
        # The PNG goes into the event file as it is: add_image would want it decoded to pixels
        # only to encode it again.
        from tensorboard.compat.proto.summary_pb2 import Summary

        width, height = png_size(png)
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        summary = Summary(value=[Summary.Value(tag=tag, image=image)])
        self.writer._get_file_writer().add_summary(summary, global_step=step)

    def log_hparams(
        self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float], step: int
    ) -> None:
        # SummaryWriter.add_hparams would write into a new sub-run; writing the hparams records
        # into this run's own file keeps config, metrics and curves in one run.
        file_writer = self.writer._get_file_writer()
        for summary in hparams_summaries(hparams):
            file_writer.add_summary(summary, global_step=step)
        self.log_scalars(metrics, step)

    def flush(self) -> None:
        self.writer.flush()

    def log_histogram(self, tag: str, values: Tensor, step: int) -> None:
        self.writer.add_histogram(tag, values, global_step=step)

    def close(self) -> None:
        self.writer.close()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header: the signature, then the IHDR chunk."""
    if png[:8] != PNG_SIGNATURE or png[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    width, height = struct.unpack(">II", png[16:24])
    return width, height
