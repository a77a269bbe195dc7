"""Optimizers: the lecture's hand-written update, and torch.optim behind the same interface."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

import torch
from torch import Tensor
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from gradtrain.registry import Registry

OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("optimizer")

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
            if _step_is_watched(self):
                return watched_step(self, *args, **kwargs)
            return func(self, *args, **kwargs)

        return cast(F, step)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """`torch.optim.Optimizer.zero_grad`: `.grad = None` (default), or zeros in place."""
        optimizer = cast(torch.optim.Optimizer, self)
        if _step_is_watched(optimizer):
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


def _bare_step(optimizer_class: type[torch.optim.Optimizer]) -> Callable[..., Any]:
    """`optimizer_class.step` without torch's profiler wrapper, which torch puts on the class
    when its first instance is made (the subclass gets its own wrapper, `Unprofiled`'s)."""
    step = optimizer_class.step
    return getattr(step, "__wrapped__", step) if getattr(step, "hooked", False) else step


@OPTIMIZERS.register("manual_sgd")
class ManualSGD(Unprofiled, torch.optim.Optimizer):
    """Gradient descent exactly as the lecture writes it: `p -= lr * p.grad`.

    The update runs under `torch.no_grad()`: it must not become part of the graph, so each
    parameter stays a leaf with no `grad_fn` and no history. Gradients are then zeroed in place,
    because `backward()` accumulates into `.grad` rather than overwriting it. (The update is
    written `p.add_(p.grad, alpha=-lr)`: the same arithmetic in one kernel, without the
    temporary `lr * p.grad`, which costs a tenth of a 5-element step.)

    With `momentum` > 0 each parameter keeps a velocity `v = momentum * v + grad` (starting at
    the first gradient) and steps `p -= lr * v`: `torch.optim.SGD`'s heavy-ball rule, spelled out.

    Subclassing `torch.optim.Optimizer` gives it `param_groups` (so LR schedulers work) and
    `state_dict`; the arithmetic, and the lecture's in-place `zero_grad`, are all here.
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 0.1, momentum: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum})

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = closure() if closure is not None else None
        with torch.no_grad():
            for group in self.param_groups:
                lr, momentum = group["lr"], group["momentum"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    if momentum == 0:
                        p.add_(p.grad, alpha=-lr)  # p -= lr * p.grad, in one kernel
                        continue
                    state = self.state[p]
                    if "velocity" not in state:
                        state["velocity"] = p.grad.clone()
                    else:
                        state["velocity"].mul_(momentum).add_(p.grad)
                    p.add_(state["velocity"], alpha=-lr)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        # The lecture's `x.grad.zero_()`: keep the tensor, clear its values.
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.zero_()


def _step_is_watched(optimizer: torch.optim.Optimizer) -> bool:
    return bool(
        torch._C._autograd._profiler_enabled()
        or optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or _global_optimizer_pre_hooks
        or _global_optimizer_post_hooks
    )


@OPTIMIZERS.register("sgd")
class SGD(Unprofiled, torch.optim.SGD):
    __doc__ = torch.optim.SGD.__doc__
    step = _bare_step(torch.optim.SGD)


@OPTIMIZERS.register("adam")
class Adam(Unprofiled, torch.optim.Adam):
    __doc__ = torch.optim.Adam.__doc__
    step = _bare_step(torch.optim.Adam)


@OPTIMIZERS.register("adamw")
class AdamW(Unprofiled, torch.optim.AdamW):
    __doc__ = torch.optim.AdamW.__doc__
    step = _bare_step(torch.optim.AdamW)


@OPTIMIZERS.register("rmsprop")
class RMSprop(Unprofiled, torch.optim.RMSprop):
    __doc__ = torch.optim.RMSprop.__doc__
    step = _bare_step(torch.optim.RMSprop)


@OPTIMIZERS.register("lbfgs")
class LBFGS(Unprofiled, torch.optim.LBFGS):
    __doc__ = torch.optim.LBFGS.__doc__
    step = _bare_step(torch.optim.LBFGS)
