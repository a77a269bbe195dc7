"""Optimizers: the lecture's hand-written update, and torch.optim behind the same interface.

`ManualSGD` is the lecture's `with torch.no_grad(): p -= lr * p.grad`, then `p.grad.zero_()`.
The others are torch's own classes, registered by name (see `unprofiled.py` for why they are
subclassed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from gradtrain.registry import Registry
from gradtrain.unprofiled import Unprofiled, bare_step

OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("optimizer")


@OPTIMIZERS.register("manual_sgd")
class ManualSGD(Unprofiled, torch.optim.Optimizer):
    """Gradient descent exactly as the lecture writes it: `p -= lr * p.grad`.

    The update runs under `torch.no_grad()`: it must not become part of the graph, so each
    parameter stays a leaf with no `grad_fn` and no history. Gradients are then zeroed in place,
    because `backward()` adds into `.grad` rather than overwriting it.

    With `momentum` > 0 each parameter keeps a velocity `v = momentum * v + grad` (starting at
    the first gradient) and steps `p -= lr * v`: `torch.optim.SGD`'s heavy-ball rule, spelled out.

    Subclassing `torch.optim.Optimizer` gives it `param_groups` (so LR schedulers work) and
    `state_dict`; `Unprofiled` only drops torch's profiler ranges around `step` (see there).
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
                        p -= lr * p.grad
                        continue
                    state = self.state[p]
                    if "velocity" not in state:
                        v = p.grad.clone()  # the first step's velocity is its gradient
                    else:
                        v = momentum * state["velocity"] + p.grad
                    state["velocity"] = v
                    p -= lr * v
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        # The lecture's `x.grad.zero_()`: keep the tensor, clear its values.
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.zero_()


@OPTIMIZERS.register("sgd")
class SGD(Unprofiled, torch.optim.SGD):
    __doc__ = torch.optim.SGD.__doc__
    step = bare_step(torch.optim.SGD)


@OPTIMIZERS.register("adam")
class Adam(Unprofiled, torch.optim.Adam):
    __doc__ = torch.optim.Adam.__doc__
    step = bare_step(torch.optim.Adam)


@OPTIMIZERS.register("adamw")
class AdamW(Unprofiled, torch.optim.AdamW):
    __doc__ = torch.optim.AdamW.__doc__
    step = bare_step(torch.optim.AdamW)


@OPTIMIZERS.register("rmsprop")
class RMSprop(Unprofiled, torch.optim.RMSprop):
    __doc__ = torch.optim.RMSprop.__doc__
    step = bare_step(torch.optim.RMSprop)


@OPTIMIZERS.register("lbfgs")
class LBFGS(Unprofiled, torch.optim.LBFGS):
    __doc__ = torch.optim.LBFGS.__doc__
    step = bare_step(torch.optim.LBFGS)
