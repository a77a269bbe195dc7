"""A progress bar on terminals, nothing elsewhere (CI logs, pipes, sweeps)."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any


class ProgressBar:
    """tqdm when enabled and stderr is a terminal; otherwise every call is a no-op."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self._bar: Any = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="step", dynamic_ncols=True, leave=False)

    @property
    def visible(self) -> bool:
        return self._bar is not None

    def update(self, steps: int = 1) -> None:
        if self._bar is not None and steps:
            self._bar.update(steps)

    def show_loss(self, loss: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.6g}", refresh=False)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()
