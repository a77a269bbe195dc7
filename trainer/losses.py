"""Loss functions, each an `nn.Module` called as `loss_fn(prediction, target)`.

Losses of the parameters alone (quadratic, Rosenbrock) are functions of the model's parameter
vector and take no target; they also know their analytic gradient, so autograd can be checked
against it.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from gradtrain.registry import Registry

LOSSES: Registry[type[nn.Module]] = Registry("loss")


@runtime_checkable
class ParameterLoss(Protocol):
    """A loss of the parameter vector alone, with a known start, gradient and minimum."""

    standard_start: ClassVar[tuple[float, ...]]

    def analytic_gradient(self, x: Tensor) -> Tensor: ...

    def minimum(self, size: int) -> tuple[float, list[float]]: ...


@LOSSES.register("quadratic")
class QuadraticLoss(nn.Module):
    """The lecture's loss `x**2 - offset`, elementwise.

    With reduction "none" the loss stays a vector, and backward needs `gradient=` (a
    vector-Jacobian product); "sum" and "mean" give a scalar.
    """

    standard_start: ClassVar[tuple[float, ...]] = (1.0, 2.0, 3.0, 4.0, 5.0)

    def __init__(
        self, reduction: Literal["sum", "mean", "none"] = "sum", offset: float = 5.0
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.offset = offset

    def forward(self, x: Tensor, target: None = None) -> Tensor:
        elementwise = x**2 - self.offset
        if self.reduction == "sum":
            return elementwise.sum()
        if self.reduction == "mean":
            return elementwise.mean()
        return elementwise

    def analytic_gradient(self, x: Tensor) -> Tensor:
        """d/dx of the summed loss: 2x (over n for mean). For "none", the VJP with ones."""
        gradient = 2 * x
        return gradient / x.numel() if self.reduction == "mean" else gradient

    def minimum(self, size: int) -> tuple[float, list[float]]:
        """The loss at its minimizer x = 0, and the minimizer."""
        per_element = -self.offset
        value = per_element if self.reduction == "mean" else per_element * size
        return value, [0.0] * size


@LOSSES.register("rosenbrock")
class RosenbrockLoss(nn.Module):
    """Rosenbrock's function `sum (a - x_i)**2 + b * (x_{i+1} - x_i**2)**2`, a curved valley that
    plain gradient descent crosses slowly; minimum 0 at x = (a, a**2, ...) (all ones by default)."""

    standard_start: ClassVar[tuple[float, ...]] = (-1.5, 2.0)

    def __init__(self, a: float = 1.0, b: float = 100.0) -> None:
        super().__init__()
        self.a = a
        self.b = b

    def forward(self, x: Tensor, target: None = None) -> Tensor:
        head, tail = x[:-1], x[1:]
        return ((self.a - head) ** 2 + self.b * (tail - head**2) ** 2).sum()

    def analytic_gradient(self, x: Tensor) -> Tensor:
        """d/dx_i = -2(a - x_i) - 4b x_i (x_{i+1} - x_i**2) + 2b (x_i - x_{i-1}**2), each term
        where its neighbour exists."""
        head, tail = x[:-1], x[1:]
        valley = tail - head**2
        gradient = torch.zeros_like(x)
        gradient[:-1] += -2 * (self.a - head) - 4 * self.b * head * valley
        gradient[1:] += 2 * self.b * valley
        return gradient

    def minimum(self, size: int) -> tuple[float, list[float]]:
        minimizer = [self.a]
        for _ in range(size - 1):
            minimizer.append(minimizer[-1] ** 2)
        return 0.0, minimizer


@LOSSES.register("mse")
class MSELoss(nn.MSELoss):
    """Mean squared error between predictions and targets."""


@LOSSES.register("huber")
class HuberLoss(nn.HuberLoss):
    """Squared error below `delta`, absolute error above: robust to outliers."""


@LOSSES.register("cross_entropy")
class CrossEntropyLoss(nn.CrossEntropyLoss):
    """Softmax cross-entropy of logits (batch, n_classes) against class indices (batch,)."""


@LOSSES.register("bce_with_logits")
class BCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """Binary cross-entropy of one logit per sample against class indices 0/1."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return super().forward(logits, target.to(logits.dtype))
