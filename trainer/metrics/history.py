"""Everything a run logs, kept in memory: what `gradtrain.fit` returns as `Result.history`.

A `History` is a `MetricSink` of its own; `TeeSink` hands it what the run's logger gets (the
TensorBoard sink, or none), so the history holds every scalar TensorBoard would show, without
reading an event file back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import Tensor

from gradtrain.metrics.sinks import HParamValue, MetricSink, _to_floats

# Logging steps whose device tensors wait before they are read back together (as the
# TensorBoard sink does: one host synchronisation per batch of steps, not one per value).
MAX_PENDING_STEPS = 256


class History:
    """Keeps every scalar as `{tag: [(step, value), ...]}` in the order logged, the latest text
    of each tag (`explain`, `config`) and the latest image of each tag (the trajectory figure)."""

    def __init__(self) -> None:
        self._series: dict[str, list[tuple[int, float]]] = {}
        self._pending: list[tuple[int, dict[str, float | Tensor]]] = []
        self.texts: dict[str, str] = {}
        self.images: dict[str, tuple[int, bytes]] = {}

    @property
    def scalars(self) -> dict[str, list[tuple[int, float]]]:
        """Every scalar logged so far, by tag (read back from the device now if still there)."""
        self._settle()
        return {tag: list(points) for tag, points in self._series.items()}

    def log_scalars(self, scalars: Mapping[str, float | Tensor], step: int) -> None:
        self._pending.append((step, dict(scalars)))
        if len(self._pending) >= MAX_PENDING_STEPS:
            self._settle()

    def log_text(self, tag: str, text: str) -> None:
        self.texts[tag] = text

    def log_image(self, tag: str, png: bytes, step: int) -> None:
        self.images[tag] = (step, png)  # the latest only: a figure every n steps adds up

    def log_hparams(
        self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float], step: int
    ) -> None:
        self.log_scalars(metrics, step)  # (summary/final_loss, ...: scalars in TensorBoard too)

    def flush(self) -> None:
        self._settle()

    def close(self) -> None:
        self._settle()

    def _settle(self) -> None:
        """The pending values as floats: all device tensors read back at once."""
        if not self._pending:
            return
        tensors = [
            value
            for _, scalars in self._pending
            for value in scalars.values()
            if isinstance(value, Tensor)
        ]
        read_back = iter(_to_floats(tensors))
        for step, scalars in self._pending:
            for tag, value in scalars.items():
                number = next(read_back) if isinstance(value, Tensor) else float(value)
                self._series.setdefault(tag, []).append((step, number))
        self._pending.clear()


class TeeSink:
    """Hands everything logged to each of `sinks` in turn (histograms to those that take them).

    `close` closes every sink, even when one of them fails; the first failure is raised."""

    def __init__(self, *sinks: MetricSink) -> None:
        self.sinks = sinks

    def log_scalars(self, scalars: Mapping[str, float | Tensor], step: int) -> None:
        for sink in self.sinks:
            sink.log_scalars(scalars, step)

    def log_text(self, tag: str, text: str) -> None:
        for sink in self.sinks:
            sink.log_text(tag, text)

    def log_image(self, tag: str, png: bytes, step: int) -> None:
        for sink in self.sinks:
            sink.log_image(tag, png, step)

    def log_histogram(self, tag: str, values: Tensor, step: int) -> None:
        for sink in self.sinks:
            log_histogram: Callable[[str, Tensor, int], None] | None = getattr(
                sink, "log_histogram", None
            )
            if log_histogram is not None:
                log_histogram(tag, values, step)

    def log_hparams(
        self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float], step: int
    ) -> None:
        for sink in self.sinks:
            sink.log_hparams(hparams, metrics, step)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        failure: BaseException | None = None
        for sink in self.sinks:
            try:
                sink.close()
            except BaseException as exc:  # (the others still close; the first error is raised)
                failure = failure or exc
        if failure is not None:
            raise failure
