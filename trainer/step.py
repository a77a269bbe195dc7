"""The forward and backward of one batch, as the lecture writes them.

    loss = loss_fn(model(inputs), targets)  # forward: every operation joins the graph
    loss.backward()                          # backward: .grad += d loss / d parameter
    with torch.no_grad():
        p -= lr * p.grad                     # the update, outside the graph (optim.ManualSGD)
    p.grad.zero_()                           # backward adds into .grad: clear it for the next

These two functions are gradtrain's only forward and backward: the loop (`Trainer.train_step`),
`explain=true` and the gradient check all call them, so the check verifies exactly what trains.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def forward(model: nn.Module, loss_fn: nn.Module, batch: Any) -> tuple[Tensor, Tensor | None]:
    """The loss of one batch and the model's prediction: `loss_fn(model(inputs), targets)`, or
    `loss_fn(model())` with no prediction for a loss of the parameters alone (`batch` None)."""
    if batch is None:
        return loss_fn(model()), None
    inputs, targets = batch
    prediction = model(inputs)
    return loss_fn(prediction, targets), prediction


def backward(loss: Tensor) -> None:
    """Add d loss / d parameter into every parameter's `.grad`.

    A scalar loss seeds the chain rule with 1. A vector loss needs the vector of the
    vector-Jacobian product: ones, which makes the result the gradient of its sum.
    """
    if loss.dim() == 0:
        loss.backward()
    else:
        loss.backward(gradient=torch.ones_like(loss))


def summed(loss: Tensor) -> Tensor:
    """The scalar whose gradient `backward` computes: the loss itself, or a vector loss's sum."""
    return loss if loss.dim() == 0 else loss.sum()
