"""Stopping cleanly on a signal: Ctrl-C, a scheduler's SIGTERM, a cluster's SIGUSR1 preemption."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger("gradtrain")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class SignalStop:
    """While active, the stop signals set `requested` instead of killing the process, so the
    trainer can checkpoint at the next step boundary. A second Ctrl-C stops at once: it raises
    KeyboardInterrupt wherever the run is (`trainer.run` turns it into a message).

    `checkpoints`: whether the run saves one when it stops (said in the warning)."""

    def __init__(self, checkpoints: bool = True) -> None:
        self.signal_number: int | None = None
        self.checkpoints = checkpoints
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_number is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = signum
        then = (
            "saving a checkpoint at the end of this step"
            if self.checkpoints
            else "stopping at the end of this step (no checkpoint: trainer.save_checkpoints=false)"
        )
        log.warning(
            "Received %s: %s (press Ctrl-C again to stop at once).",
            signal.Signals(signum).name,
            then,
        )

    def __enter__(self) -> SignalStop:
        # Python only lets the main thread install handlers (e.g. not inside some launchers).
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
