"""Loss functions, each an `nn.Module` called as `loss_fn(prediction, target)`.

Losses of the parameters alone (quadratic, Rosenbrock) are functions of the model's parameter
vector and take no target; they also know their analytic gradient, so autograd can be checked
against it.
"""

from __future__ import annotations

import math
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


@LOSSES.register("quadratic_form")
class QuadraticFormLoss(nn.Module):
    """`½ (x - x*)ᵀ A (x - x*)`: a convex quadratic whose every rate is known in closed form.

    A = Q diag(λ) Qᵀ with a seeded random orthogonal Q and eigenvalues λ spread evenly from
    μ = 1 to L = `condition_number` (κ = L / μ); the minimizer x* is drawn from N(0, 1) with the
    same seed. The start is the origin. On it, gradient descent and momentum converge at rates
    that `gradtrain.insight.convergence` computes from λ and compares with the run.
    """

    def __init__(self, dim: int = 10, condition_number: float = 10.0, seed: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.condition_number = condition_number
        generator = torch.Generator().manual_seed(seed)
        gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)
        # QR's signs are arbitrary; fixing R's diagonal positive makes Q Haar-distributed.
        q = q * torch.sign(torch.diagonal(r))
        self.eigenvalues = torch.linspace(1.0, condition_number, dim, dtype=torch.float64)
        # Buffers: they follow the module to its device and dtype (float64 in gradient checks).
        self.matrix: Tensor
        self.minimizer: Tensor
        self.register_buffer("matrix", ((q * self.eigenvalues) @ q.T).float())
        self.register_buffer(
            "minimizer", torch.randn(dim, generator=generator, dtype=torch.float64).float()
        )
        self.standard_start = (0.0,) * dim

    def forward(self, x: Tensor, target: None = None) -> Tensor:
        error = x - self.minimizer
        return 0.5 * (error @ (self.matrix @ error))

    def analytic_gradient(self, x: Tensor) -> Tensor:
        """A (x - x*), A symmetric."""
        return self.matrix.to(x.dtype) @ (x - self.minimizer.to(x.dtype))

    def minimum(self, size: int) -> tuple[float, list[float]]:
        return 0.0, self.minimizer.tolist()


# Classic two-parameter test functions (Surjanovic & Bingham's library of optimization test
# problems): each with its gradient written out, its known minima, and a usual start.
@LOSSES.register("beale")
class BealeLoss(nn.Module):
    """Beale's function: (1.5 - x + xy)² + (2.25 - x + xy²)² + (2.625 - x + xy³)², a flat
    plateau with steep walls; minimum 0 at (3, 0.5)."""

    standard_start: ClassVar[tuple[float, ...]] = (1.0, 1.0)
    CONSTANTS: ClassVar[tuple[float, float, float]] = (1.5, 2.25, 2.625)

    def forward(self, x: Tensor, target: None = None) -> Tensor:
        u, v = x[0], x[1]
        c1, c2, c3 = self.CONSTANTS
        return (c1 - u + u * v) ** 2 + (c2 - u + u * v**2) ** 2 + (c3 - u + u * v**3) ** 2

    def analytic_gradient(self, x: Tensor) -> Tensor:
        """Σ_i 2 r_i (-1 + y^i, i x y^(i-1)) with r_i = c_i - x + x y^i."""
        u, v = x[0], x[1]
        du, dv = torch.zeros_like(u), torch.zeros_like(v)
        for i, c in enumerate(self.CONSTANTS, start=1):
            residual = c - u + u * v**i
            du = du + 2 * residual * (v**i - 1)
            dv = dv + 2 * residual * i * u * v ** (i - 1)
        return torch.stack([du, dv])

    def minimum(self, size: int) -> tuple[float, list[float]]:
        return 0.0, [3.0, 0.5]


@LOSSES.register("himmelblau")
class HimmelblauLoss(nn.Module):
    """Himmelblau's function: (x² + y - 11)² + (x + y² - 7)², four minima of value 0; which one
    a run reaches depends on the start and the optimizer."""

    standard_start: ClassVar[tuple[float, ...]] = (0.0, 0.0)
    MINIMA: ClassVar[tuple[tuple[float, float], ...]] = (
        (3.0, 2.0),
        (-2.805118086952745, 3.131312518250573),
        (-3.779310253377747, -3.283185991286170),
        (3.584428340330492, -1.848126526964404),
    )

    def forward(self, x: Tensor, target: None = None) -> Tensor:
        u, v = x[0], x[1]
        return (u**2 + v - 11) ** 2 + (u + v**2 - 7) ** 2

    def analytic_gradient(self, x: Tensor) -> Tensor:
        """(4x a + 2b, 2a + 4y b) with a = x² + y - 11, b = x + y² - 7."""
        u, v = x[0], x[1]
        a, b = u**2 + v - 11, u + v**2 - 7
        return torch.stack([4 * u * a + 2 * b, 2 * a + 4 * v * b])

    def minimum(self, size: int) -> tuple[float, list[float]]:
        return 0.0, list(self.MINIMA[0])

    def minima(self, size: int) -> list[tuple[float, list[float]]]:
        return [(0.0, list(point)) for point in self.MINIMA]


@LOSSES.register("booth")
class BoothLoss(nn.Module):
    """Booth's function: (x + 2y - 7)² + (2x + y - 5)², a tilted quadratic bowl; minimum 0 at
    (1, 3)."""

    standard_start: ClassVar[tuple[float, ...]] = (-4.0, -4.0)

    def forward(self, x: Tensor, target: None = None) -> Tensor:
        u, v = x[0], x[1]
        return (u + 2 * v - 7) ** 2 + (2 * u + v - 5) ** 2

    def analytic_gradient(self, x: Tensor) -> Tensor:
        """(2a + 4b, 4a + 2b) with a = x + 2y - 7, b = 2x + y - 5."""
        u, v = x[0], x[1]
        a, b = u + 2 * v - 7, 2 * u + v - 5
        return torch.stack([2 * a + 4 * b, 4 * a + 2 * b])

    def minimum(self, size: int) -> tuple[float, list[float]]:
        return 0.0, [1.0, 3.0]


@LOSSES.register("saddle")
class SaddleLoss(nn.Module):
    """x² - y² + y⁴/4: a saddle point at the origin and minima -1 at (0, ±√2).

    The start (1.5, 0) lies on the saddle's stable manifold y = 0, where the gradient has no y
    component: gradient descent (with or without momentum) slides into the saddle and stays;
    any perturbation of y grows and carries the run to a minimum.
    """

    standard_start: ClassVar[tuple[float, ...]] = (1.5, 0.0)

    def forward(self, x: Tensor, target: None = None) -> Tensor:
        u, v = x[0], x[1]
        return u**2 - v**2 + v**4 / 4

    def analytic_gradient(self, x: Tensor) -> Tensor:
        """(2x, -2y + y³)."""
        u, v = x[0], x[1]
        return torch.stack([2 * u, -2 * v + v**3])

    def minimum(self, size: int) -> tuple[float, list[float]]:
        return -1.0, [0.0, math.sqrt(2.0)]

    def minima(self, size: int) -> list[tuple[float, list[float]]]:
        return [(-1.0, [0.0, math.sqrt(2.0)]), (-1.0, [0.0, -math.sqrt(2.0)])]


def known_minima(loss: ParameterLoss, size: int) -> list[tuple[float, list[float]]]:
    """Every known minimum (value, minimizer) of a loss of the parameters alone: its `minima`
    where it has several (Himmelblau's four), else its one `minimum`."""
    several = getattr(loss, "minima", None)
    return several(size) if several is not None else [loss.minimum(size)]


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
