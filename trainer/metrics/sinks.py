"""Where metrics go. The trainer talks to a `MetricSink`; TensorBoard is one implementation.

TensorBoard is imported only when a TensorBoard sink is made, keeping `logger=none` start-up lean.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from gradtrain.metrics.dashboard import CHART_LAYOUT, hparams_summaries

if TYPE_CHECKING:
    from gradtrain.metrics.event_file import EventFileWriter

HParamValue = int | float | str | bool
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class MetricSink(Protocol):
    """Receives scalars (and figures) during training and the run's description at its start and
    end.

    Scalars may arrive as 0-d device tensors, which a sink may keep and read back later (in
    batches, to spare the device a synchronisation per value): callers must not modify a tensor
    after logging it.
    """

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
    """Writes one event file per run under `log_dir`.

    Logged scalars wait in memory, device tensors included, until `max_pending_steps` logging
    steps have gathered or `flush_secs` have passed since the last write (checked when scalars
    arrive), and always on `flush()` (before each checkpoint) and `close()`. Then all pending
    tensors are read back with one `.tolist()` per device (a GPU synchronises once per batch,
    not once per value) and each logging step becomes one event with its own step number and
    wall time, so the charts keep every step. (`SummaryWriter.add_scalar` reads each value back
    on its own, and its writer thread checksums one event per value in pure Python.)

    `purge_step`: a resumed run's first new step; TensorBoard then drops the events an
    interrupted session wrote from that step on, so no step appears twice. 0 hides everything
    earlier sessions wrote (a run that starts afresh in a folder whose first session left no
    checkpoint).

    The event file is created when the first thing is logged, not before: a run refused while
    it is being built (a checkpoint that does not fit, bad data) leaves no event file behind.
    """

    def __init__(
        self,
        log_dir: Path,
        flush_secs: int = 30,
        purge_step: int | None = None,
        max_pending_steps: int = 256,
    ) -> None:
        self.log_dir = log_dir
        self.flush_secs = flush_secs
        self.max_pending_steps = max_pending_steps
        self.purge_step = purge_step
        self._events: EventFileWriter | None = None
        self._pending: list[tuple[int, float, dict[str, float | Tensor]]] = []  # step, wall time
        self._last_write = time.monotonic()

    @property
    def events(self) -> EventFileWriter:
        """The event file, created (with the purge and the chart layout) on first use."""
        if self._events is None:
            from tensorboard.compat.proto.event_pb2 import Event, SessionLog
            from torch.utils.tensorboard.summary import custom_scalars

            from gradtrain.metrics.event_file import EventFileWriter

            events = EventFileWriter(self.log_dir)
            if self.purge_step is not None:  # what SummaryWriter(purge_step=...) writes
                restart = SessionLog(status=SessionLog.START)
                events.add_event(
                    Event(wall_time=time.time(), step=self.purge_step, session_log=restart)
                )
            events.add_summary(custom_scalars(CHART_LAYOUT), step=0)
            self._events = events
        return self._events

    def log_scalars(self, scalars: Mapping[str, float | Tensor], step: int) -> None:
        self._pending.append((step, time.time(), dict(scalars)))
        if len(self._pending) >= self.max_pending_steps:
            self._write_pending()
        elif time.monotonic() - self._last_write >= self.flush_secs:
            self.flush()

    def flush(self) -> None:
        self._write_pending()
        if self._events is not None:
            self._events.flush()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        tensors = [
            value
            for _, _, scalars in self._pending
            for value in scalars.values()
            if isinstance(value, torch.Tensor)
        ]
        read_back = iter(_to_floats(tensors))
        steps = []
        for step, wall_time, scalars in self._pending:
            values = [
                next(read_back) if isinstance(value, torch.Tensor) else float(value)
                for value in scalars.values()
            ]
            steps.append((step, wall_time, tuple(scalars), values))
        self.events.add_scalars(steps)
        self._pending.clear()
        self._last_write = time.monotonic()

    def log_text(self, tag: str, text: str) -> None:
        from torch.utils.tensorboard.summary import text as text_summary

        self.events.add_summary(text_summary(tag, text), step=0)

    def log_image(self, tag: str, png: bytes, step: int) -> None:
        # The PNG goes into the event file as it is: add_image would want it decoded to pixels
        # only to encode it again.
        from tensorboard.compat.proto.summary_pb2 import Summary

        width, height = png_size(png)
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        self.events.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def log_histogram(self, tag: str, values: Tensor, step: int) -> None:
        from torch.utils.tensorboard.summary import histogram

        self.events.add_summary(
            histogram(tag, values.detach().float().cpu().numpy(), bins="auto"), step
        )

    def log_hparams(
        self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float], step: int
    ) -> None:
        # SummaryWriter.add_hparams would write into a new sub-run; writing the hparams records
        # into this run's own file keeps config, metrics and curves in one run.
        for summary in hparams_summaries(hparams):
            self.events.add_summary(summary, step)
        self.log_scalars(metrics, step)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._events is not None:
                self._events.close()


@torch.no_grad()
def _to_floats(tensors: list[Tensor]) -> list[float]:
    """The values of one-element tensors, read back with one transfer per device."""
    if not tensors:
        return []
    try:  # the usual case: 0-d tensors on one device, one stack and one copy to the host
        return torch.stack(tensors).float().tolist()  # (stack promotes bf16, int64 to float)
    except RuntimeError:  # several devices, or shapes such as (1,)
        pass
    by_device: dict[torch.device, list[int]] = {}
    for index, tensor in enumerate(tensors):
        by_device.setdefault(tensor.device, []).append(index)
    values = [0.0] * len(tensors)
    for indices in by_device.values():
        group = torch.stack([tensors[i].reshape(()) for i in indices])
        for index, value in zip(indices, group.float().tolist(), strict=True):
            values[index] = value
    return values


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header: the signature, then the IHDR chunk."""
    if png[:8] != PNG_SIGNATURE or png[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    width, height = struct.unpack(">II", png[16:24])
    return width, height
