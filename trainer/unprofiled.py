"""torch's optimizers without torch's profiler ranges around `step` and `zero_grad` when nothing
records them: ~15 µs a call each, a tenth of a small model's step (benchmarks/overhead.py).

gradtrain's optimizers (`optim.py`) mix `Unprofiled` in; the arithmetic is torch's own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

F = TypeVar("F", bound=Callable[..., Any])


def _unwrapped(method: F) -> F:
    """The function a decorator built with `functools.wraps` wraps, or `method` itself."""
    return getattr(method, "__wrapped__", method)


class Unprofiled:
    """Mixin for `torch.optim.Optimizer` subclasses: the same arithmetic, minus torch's
    bookkeeping around it when nothing uses that bookkeeping.

    torch wraps every optimizer's `step` in a profiler range (with the step hooks), and
    `zero_grad` opens another; each range costs about 15 µs per call on a CPU even when no
    profiler records: a tenth of a small model's step. Here both run torch's own code whenever
    something watches (a profiler records, or a step hook is registered), the bare code
    otherwise.

    torch also wraps `add_param_group`, `state_dict`, `load_state_dict` and `zero_grad` in
    `torch._disable_dynamo`, which imports torch._dynamo (about a second of start-up) at the
    first call. The wrapper only matters under torch.compile, which gradtrain does not use, so
    these run torch's unwrapped code. (A torch whose methods are not wrapped this way gives them
    unchanged.)
    """

    param_groups: list[dict[str, Any]]
    add_param_group = _unwrapped(torch.optim.Optimizer.add_param_group)
    state_dict = _unwrapped(torch.optim.Optimizer.state_dict)
    load_state_dict = _unwrapped(torch.optim.Optimizer.load_state_dict)

    @staticmethod
    def profile_hook_step(func: F) -> F:
        """torch.optim.Optimizer wraps `step` in this when the first instance is made."""
        watched_step = torch.optim.Optimizer.profile_hook_step(func)

        @functools.wraps(func)
        def step(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            if step_is_watched(self):
                return watched_step(self, *args, **kwargs)
            return func(self, *args, **kwargs)

        return cast(F, step)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """`torch.optim.Optimizer.zero_grad`: `.grad = None` (default), or zeros in place."""
        optimizer = cast(torch.optim.Optimizer, self)
        if step_is_watched(optimizer):
            torch.optim.Optimizer.zero_grad(optimizer, set_to_none)  # with its profiler range
            return
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                    continue
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()


def bare_step(optimizer_class: type[torch.optim.Optimizer]) -> Callable[..., Any]:
    """`optimizer_class.step` without torch's profiler wrapper, which torch puts on the class
    when its first instance is made (the subclass gets its own wrapper, `Unprofiled`'s)."""
    step = optimizer_class.step
    return getattr(step, "__wrapped__", step) if getattr(step, "hooked", False) else step


def step_is_watched(optimizer: torch.optim.Optimizer) -> bool:
    return bool(
        torch._C._autograd._profiler_enabled()
        or optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or _global_optimizer_pre_hooks
        or _global_optimizer_post_hooks
    )
