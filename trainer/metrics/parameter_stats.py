"""Optional statistics of the parameters, off by default: histograms of parameters and gradients
every `logger.histogram_every_n_steps` steps, and the update-to-weight ratio per parameter at
logging steps (`logger.update_ratio`).

Both read the device only at their own steps, where the loop already synchronises to log; at
every other step they cost one integer comparison.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
from torch import Tensor, nn


class HistogramSink(Protocol):
    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None: ...

    def log_histogram(self, tag: str, values: Tensor, step: int) -> None: ...


class ParameterStats:
    """Called around the optimizer's update: `before_update`, `optimizer.step()`, `after_update`.

    Args:
        named_parameters: the trained parameters, by name (tags use these names).
        sink: where histograms and ratios go.
        histogram_every_n_steps: histogram interval, or None for no histograms.
        update_ratio: whether to log `|p_after - p_before| / |p_before|` per parameter.
    """

    def __init__(
        self,
        named_parameters: list[tuple[str, nn.Parameter]],
        sink: HistogramSink,
        histogram_every_n_steps: int | None,
        update_ratio: bool,
    ) -> None:
        self.named_parameters = named_parameters
        self.sink = sink
        self.histogram_every_n_steps = histogram_every_n_steps
        self.update_ratio = update_ratio
        self._step = 0
        self._weights_before: list[Tensor] | None = None

    def before_update(self, step: int, log_now: bool) -> None:
        """`step` is the number the step in progress will have once its update is done."""
        self._step = step
        self._weights_before = None
        if self.update_ratio and log_now:
            # A copy of the weights to measure this step's update against: logging steps only.
            with torch.no_grad():
                self._weights_before = [p.detach().clone() for _, p in self.named_parameters]

    def after_update(self) -> None:
        """After `optimizer.step()` and before the gradients are cleared."""
        if self._weights_before is not None:
            self._log_update_ratio(self._weights_before)
            self._weights_before = None
        every = self.histogram_every_n_steps
        if every is not None and self._step % every == 0:
            self._log_histograms()

    def _log_update_ratio(self, before: list[Tensor]) -> None:
        names = [name for name, _ in self.named_parameters]
        after = [p.detach() for _, p in self.named_parameters]
        with torch.no_grad():
            update_norms = torch.stack(torch._foreach_norm(torch._foreach_sub(after, before)))
            weight_norms = torch.stack(torch._foreach_norm(before))
            # No update is a ratio of 0, even for a weight of norm 0 (a converged x = 0); an update
            # of a zero weight is an infinite ratio.
            ratios = torch.where(update_norms == 0, 0.0, update_norms / weight_norms)
            values = ratios.tolist()  # one transfer for all parameters
        scalars = {f"watch/update_ratio/{n}": r for n, r in zip(names, values, strict=True)}
        self.sink.log_scalars(scalars, step=self._step)

    def _log_histograms(self) -> None:
        for name, param in self.named_parameters:
            self.sink.log_histogram(f"watch/params/{name}", param.detach(), self._step)
            if param.grad is not None:
                self.sink.log_histogram(f"watch/grads/{name}", param.grad, self._step)
