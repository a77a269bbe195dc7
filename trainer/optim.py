"""Optimizers: the lecture's hand-written update, and torch.optim behind the same interface."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

import torch
from torch import Tensor
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from trainer.registry import Registry

OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("optimizer")

F = TypeVar("F", bound=Callable[..., Any])


def _unwrapped(method: F) -> F:
    """The function a decorator built with `functools.wraps` wraps, or `method` itself."""
    return getattr(method, "__wrapped__", method)


@OPTIMIZERS.register("manual_sgd")
class ManualSGD(torch.optim.Optimizer):
    """Gradient descent exactly as the lecture writes it.

    The update runs under `torch.no_grad()`: it must not become part of the graph, so each
    parameter stays a leaf with no `grad_fn` and no history. Gradients are then zeroed in place,
    because `backward()` accumulates into `.grad` rather than overwriting it.

    With `momentum` > 0 each parameter keeps a velocity `v = momentum * v + grad` (starting at
    the first gradient) and steps `p -= lr * v`: `torch.optim.SGD`'s heavy-ball rule, spelled out.

    Subclassing `torch.optim.Optimizer` gives it `param_groups` (so LR schedulers work),
    `state_dict` and `zero_grad`; the arithmetic is all here.
    """

    # torch wraps these in `torch._disable_dynamo`, which imports torch._dynamo (about a second
    # of start-up) the first time any optimizer calls them, and `__init__` calls
    # `add_param_group`. The wrapper only matters under torch.compile, which gradtrain does not
    # use: ManualSGD runs torch's own unwrapped code. (A torch whose methods are not wrapped this
    # way gives them unchanged.)
    add_param_group = _unwrapped(torch.optim.Optimizer.add_param_group)
    state_dict = _unwrapped(torch.optim.Optimizer.state_dict)
    load_state_dict = _unwrapped(torch.optim.Optimizer.load_state_dict)

    @staticmethod
    def profile_hook_step(func: F) -> F:
        """torch.optim.Optimizer wraps `step` in this on construction: a profiler range around
        the step hooks and the step. The range costs about 14 µs per call on a CPU even when no
        profiler records, a tenth of a 5-element step; so torch's wrapper runs whenever
        something watches (a profiler records, or a step hook is registered), the bare step
        otherwise."""
        watched_step = torch.optim.Optimizer.profile_hook_step(func)

        @functools.wraps(func)
        def step(self: ManualSGD, *args: Any, **kwargs: Any) -> Any:
            if _step_is_watched(self):
                return watched_step(self, *args, **kwargs)
            return func(self, *args, **kwargs)

        return cast(F, step)

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
                        p -= lr * p.grad
                        continue
                    state = self.state[p]
                    if "velocity" not in state:
                        state["velocity"] = p.grad.clone()
                    else:
                        state["velocity"].mul_(momentum).add_(p.grad)
                    p -= lr * state["velocity"]
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


OPTIMIZERS.register("sgd")(torch.optim.SGD)
OPTIMIZERS.register("adam")(torch.optim.Adam)
OPTIMIZERS.register("adamw")(torch.optim.AdamW)
OPTIMIZERS.register("rmsprop")(torch.optim.RMSprop)
OPTIMIZERS.register("lbfgs")(torch.optim.LBFGS)
