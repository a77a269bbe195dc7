"""Optimizers: the lecture's hand-written update, and torch.optim behind the same interface."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
from torch import Tensor

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
    # `add_param_group`. This eager-only optimizer runs torch's own unwrapped code instead; with
    # another torch whose methods are not wrapped this way, it falls back to them unchanged.
    add_param_group = _unwrapped(torch.optim.Optimizer.add_param_group)
    state_dict = _unwrapped(torch.optim.Optimizer.state_dict)
    load_state_dict = _unwrapped(torch.optim.Optimizer.load_state_dict)

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


OPTIMIZERS.register("sgd")(torch.optim.SGD)
OPTIMIZERS.register("adam")(torch.optim.Adam)
OPTIMIZERS.register("adamw")(torch.optim.AdamW)
OPTIMIZERS.register("rmsprop")(torch.optim.RMSprop)
OPTIMIZERS.register("lbfgs")(torch.optim.LBFGS)
