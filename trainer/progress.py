"""A progress bar on terminals and in Jupyter, nothing elsewhere (CI logs, pipes, sweeps)."""

from __future__ import annotations

import importlib.util
import sys
from types import TracebackType
from typing import Any


class ProgressBar:
    """tqdm when enabled and stderr is a terminal or a Jupyter notebook's; otherwise every call
    is a no-op.

    In a notebook (a Jupyter kernel, `gradtrain.fit` from a cell) the bar is tqdm's widget when
    ipywidgets is installed, else tqdm's text bar, which the notebook redraws in place (it
    honours the carriage return); either stays below the cell when the run ends."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self._bar: Any = None
        if not enabled:
            return
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="step", dynamic_ncols=True, leave=False)
        elif in_jupyter():
            self._bar = _notebook_bar(total)

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


def in_jupyter() -> bool:
    """Whether this process is a Jupyter kernel (a notebook's, or nbconvert's): tqdm's test."""
    ipython = sys.modules.get("IPython")  # (a kernel has imported it; nothing else needs to)
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _notebook_bar(total: int) -> Any:
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as widget_bar

        return widget_bar(total=total, unit="step")
    from tqdm import tqdm

    # (No terminal to measure: a fixed width. sys.stderr is the kernel's, shown in the cell.)
    return tqdm(total=total, unit="step", ncols=100, file=sys.stderr, leave=True)
